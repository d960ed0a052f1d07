"""Seeded few-shot episodes: a query, its class, K supports, and a small tagged gallery for tag priors.

Episode ``i`` of a sampler depends only on ``(seed, i)`` and the sampler's settings, never on which
other episodes were drawn, so runs are reproducible and episode sets can be compared across methods.
Two independent random streams are used: one for (class, query, supports, extra positives) and one for
the negatives, so changing the negative rule never changes the query or the supports.

The gallery of an episode serves tag priors (``hhn.priors``), which learn a class from image-level tags:
``positives`` are extra images tagged with the class (never the query or a support) and ``negatives`` are
images without a single pixel of it. Negatives are ``random`` or ``context`` matched: drawn among the
``context_pool`` images whose tag sets overlap most (Jaccard) with the supports' other tags (for a cow
on grass under sky: images of grass and sky without cows). Only support tags are used, never the query's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hhn.data.base import DatasetError, SegmentationDataset

ORDERS = ("class-uniform", "cycle")
NEGATIVE_RULES = ("context", "random")
SUPERVISIONS = ("tags", "masks")


@dataclass(frozen=True)
class Episode:
    """Image names of one episode; ``query`` is never among ``supports`` or ``positives``."""

    index: int
    class_name: str
    query: str
    supports: tuple[str, ...]
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class EpisodeSampler:
    """Draws episodes for the given classes of a dataset.

    Args:
        dataset: any ``SegmentationDataset``.
        classes: episode classes (default: ``dataset.episode_classes``); ignored when ``pairs`` is given.
        pairs: explicit (image, class) query candidates (e.g. the Pascal-5i lists); default: every image
            where the class is present.
        shots: supports per episode (distinct images, drawn without replacement).
        seed: base seed.
        order: ``class-uniform`` (class uniformly, then query uniformly among its images) or ``cycle``
            (episode i uses ``pairs[i mod len(pairs)]``, as the Pascal-5i val protocol does).
        prior_positives: extra tagged images of the class for the prior (fewer if the class has fewer).
        prior_negatives: images without the class for the prior.
        negatives: ``context`` or ``random`` (see the module docstring).
        context_pool: size of the most-overlapping pool that context negatives are drawn from.
    """

    def __init__(self, dataset: SegmentationDataset, classes: Sequence[str] | None = None,
                 pairs: Sequence[tuple[str, str]] | None = None, shots: int = 1, seed: int = 0,
                 order: str = "class-uniform", prior_positives: int = 0, prior_negatives: int = 0,
                 negatives: str = "context", context_pool: int = 15) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if negatives not in NEGATIVE_RULES:
            raise ValueError(f"negatives must be one of {NEGATIVE_RULES}, got {negatives!r}")
        if shots < 1 or prior_positives < 0 or prior_negatives < 0 or context_pool < 1:
            raise ValueError("shots and context_pool must be >= 1, prior_positives/negatives >= 0")
        self.dataset, self.shots, self.seed, self.order = dataset, shots, seed, order
        self.prior_positives, self.prior_negatives = prior_positives, prior_negatives
        self.negatives, self.context_pool = negatives, context_pool
        if pairs is None:
            classes = tuple(classes) if classes is not None else dataset.episode_classes
            for c in classes:
                dataset.class_id(c)
                if c in dataset.exclude:
                    raise DatasetError(f"class {c!r} is excluded from episodes; pick other test classes.")
            pairs = [(n, c) for c in classes for n in dataset.images_with(c)]
        self.pairs = tuple(pairs)
        self.classes = tuple(dict.fromkeys(c for _, c in self.pairs))
        if not self.classes:
            raise DatasetError("no episode can be drawn: no image contains any of the requested classes.")
        self._members = {c: tuple(sorted({n for n, k in self.pairs if k == c} | set(dataset.images_with(c))))
                         for c in self.classes}
        for c, members in self._members.items():
            if len(members) < shots + 1:
                raise DatasetError(f"class {c!r} is present in only {len(members)} image(s); a {shots}-shot "
                                   f"episode needs {shots + 1} (query + supports). Use fewer shots or drop the class.")

    def episode(self, index: int) -> Episode:
        """Episode number ``index`` (deterministic given the seed and the settings)."""
        rng = np.random.default_rng([self.seed, index, 0])
        if self.order == "cycle":
            query, cls = self.pairs[index % len(self.pairs)]
        else:
            cls = self.classes[rng.integers(len(self.classes))]
            members = self._members[cls]
            query = members[rng.integers(len(members))]
        others = [n for n in self._members[cls] if n != query]
        perm = rng.permutation(len(others))
        supports = tuple(others[j] for j in perm[:self.shots])
        positives = tuple(others[j] for j in perm[self.shots:self.shots + self.prior_positives])
        negatives = self.negatives_for(cls, supports, np.random.default_rng([self.seed, index, 1]))
        return Episode(index, cls, query, supports, positives, negatives)

    def episodes(self, n: int) -> list[Episode]:
        """Episodes ``0 .. n-1``."""
        return [self.episode(i) for i in range(n)]

    def negatives_for(self, cls: str, supports: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
        """Up to ``prior_negatives`` images without ``cls`` (context-matched to the tags of ``supports``)."""
        if self.prior_negatives == 0:
            return ()
        pool = list(self.dataset.images_without(cls))
        if not pool:
            raise DatasetError(f"every image contains {cls!r}, so a tag prior has no negative image for it.")
        order = rng.permutation(len(pool))
        pool = [pool[j] for j in order]
        if self.negatives == "context":
            context = frozenset().union(*(self.dataset.tags(s) for s in supports)) - {cls}
            pool.sort(key=lambda n: -jaccard(self.dataset.tags(n), context))  # stable: ties stay random
            pool = pool[:max(self.context_pool, self.prior_negatives)]
        pick = rng.choice(len(pool), size=min(self.prior_negatives, len(pool)), replace=False)
        return tuple(pool[j] for j in pick)


@dataclass
class EpisodeData:
    """Pixels of one episode.

    Images are ``uint8 (H, W, 3)``; masks are ``uint8 (H, W)`` with 1 = the episode class, 0 = other,
    255 = ignore. ``support_masks`` is ``None`` under ``tags`` supervision (the supports are only tagged).
    ``query_mask`` is the ground truth for scoring or for the training loss; no method may read it.
    """

    episode: Episode
    query_image: np.ndarray
    query_mask: np.ndarray
    support_images: list[np.ndarray]
    support_masks: list[np.ndarray] | None


def load_episode(dataset: SegmentationDataset, episode: Episode, supervision: str = "masks") -> EpisodeData:
    """Read the query and support pixels of ``episode``; ``supervision`` is ``tags`` or ``masks``."""
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    c = episode.class_name
    return EpisodeData(
        episode=episode,
        query_image=dataset.load_image(episode.query),
        query_mask=dataset.binary_mask(episode.query, c),
        support_images=[dataset.load_image(s) for s in episode.supports],
        support_masks=[dataset.binary_mask(s, c) for s in episode.supports] if supervision == "masks" else None,
    )
