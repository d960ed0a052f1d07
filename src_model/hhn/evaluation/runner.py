"""Runs methods over seeded episodes and scores them (spec section 3).

Per episode: read the pixels (``load_episode``); when a method needs a prior (the query prior, or
support priors under ``tags``), fit the tag prior of the episode class once on the supports plus the
episode's extra positives and its negatives (under ``masks`` the supports carry their true masks,
which a prior learns from and which replace the prior on those images); every method predicts;
each method's meter accumulates. Several methods on one run share the episodes and the priors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from hhn.data.base import SegmentationDataset
from hhn.data.episodes import EpisodeSampler, load_episode
from hhn.evaluation.baselines import binary_to_float
from hhn.evaluation.methods import Method, MethodInputs
from hhn.metrics import FewShotMeter
from hhn.priors.base import TaggedImage, TagPrior


def _uses_prior(method: Method, supervision: str) -> bool:
    return method.needs_query_prior or (supervision == "tags" and method.needs_support_masks)


def evaluate(dataset: SegmentationDataset, sampler: EpisodeSampler, methods: Sequence[Method], episodes: int,
             supervision: str = "tags", prior: TagPrior | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Score each of ``methods`` on episodes ``0 .. episodes-1`` of ``sampler``.

    Returns one dict per method: ``FewShotMeter.summary()`` (miou, fbiou, per_class, precision, recall,
    episodes_per_class) plus ``episodes``, ``shots``, ``method``, ``support``, ``seed`` and ``seconds``
    (wall time of the whole run, priors included).
    """
    need_prior = any(_uses_prior(m, supervision) for m in methods)
    if need_prior and prior is None:
        raise ValueError(f"methods {[m.name for m in methods]} with {supervision!r} supports need a tag prior")
    need_support_priors = supervision == "tags" and any(m.needs_support_masks for m in methods)
    need_query_prior = any(m.needs_query_prior for m in methods)
    meters = [FewShotMeter(sampler.classes) for _ in methods]
    start = time.perf_counter()
    for i, episode in enumerate(sampler.episodes(episodes)):
        data = load_episode(dataset, episode, supervision)
        support_masks = data.support_masks or []
        query_prior = class_prior = refit = None
        positives = []
        if need_prior and prior is not None:  # prior is not None: checked above
            no_masks: list[np.ndarray | None] = [None] * len(data.support_images)
            given = data.support_masks or no_masks
            positives = [TaggedImage(img, None if m is None else binary_to_float(m))
                         for img, m in zip(data.support_images, given)]
            positives += [TaggedImage(dataset.load_image(n)) for n in episode.positives]
            negatives = [dataset.load_image(n) for n in episode.negatives]
            class_prior = prior.fit(episode.class_name, positives, negatives)

            def refit(flipped, name=episode.class_name, negatives=negatives):
                return prior.fit(name, flipped, negatives)
            if need_support_priors:
                support_masks = [class_prior(p) for p in positives[:len(data.support_images)]]
            if need_query_prior:
                query_prior = class_prior(data.query_image)
        inputs = MethodInputs(episode.class_name, data.query_image, data.support_images, support_masks, query_prior,
                              class_prior, positives, refit)
        for method, meter in zip(methods, meters):
            meter.update(episode.class_name, method.predict(inputs), data.query_mask)
        if progress is not None:
            progress(i + 1, episodes)
    seconds = round(time.perf_counter() - start, 1)
    results = []
    for method, meter in zip(methods, meters):
        result = meter.summary()
        result.update(episodes=episodes, shots=sampler.shots, method=method.name, support=supervision,
                      seed=sampler.seed, seconds=seconds)
        results.append(result)
    return results
