"""The few-shot pipeline, assembled in one place: tag prior -> support maps -> encoded supports -> predictions.

Typical use::

    pipeline = FewShotPipeline.from_model("default", device="cpu")
    cow = pipeline.fit("cow", positives=[TaggedImage(a), TaggedImage(b, mask_b)], negatives=[c], shots=5)
    prediction = cow.predict(query)           # hhn.predictor.Prediction at the query's size

:meth:`FewShotPipeline.fit` learns one class: it fits the class's tag prior (the model's own unless
another is given) on the positives and negatives, takes the supports' maps (a positive's pixel mask as
it is; else its prior map, refined first when the decision rule says so: ``Predictor.support_map``) and
encodes the supports once; the returned :class:`ClassSegmenter` then predicts any number of queries
under the pipeline's decision rule for its kind of supports (the model's ``decision``, or its
``decision_masks`` when every support has a pixel mask; with the run's overrides: :func:`override_rule`).
Every image is run through the backbone at most once while the pipeline holds its taps
(:class:`TapCache`; :meth:`FewShotPipeline.forget_images` drops them), and the co-segmentation prior reads
those taps instead of running a backbone of its own when they are the ones it would compute.

Callers: the plugin's proposal engine (planning, per-pixel resolution over classes,
storage), ``wfss eval`` (``hhn.evaluation.methods.HHNMethod``) and the benchmarks, so every one of
them measures the path that ships.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from hhn.config import DecisionRule
from hhn.predictor import EncodedImage, Prediction, Predictor, QueryLogits
from hhn.priors.base import ClassPrior, TaggedImage, TagPrior
from hhn.priors.features import image_key
from hhn.priors.orientation import Orientation, orient

if TYPE_CHECKING:
    import torch

    from hhn.network import ClassEmbeddings

#: class name -> the class's CLIP text embeddings (models that read text)
TextSource = Callable[[str], "ClassEmbeddings"]


def override_rule(rule: DecisionRule, *, decision: DecisionRule | None = None, threshold: float | None = None,
                  snap: bool = True, refine_supports: bool | None = None) -> DecisionRule:
    """The decision rule a run uses: ``decision`` (default: ``rule``, the model's own) with the user's
    overrides. ``snap=False`` drops the snap to the image's edges; ``refine_supports`` True / False
    refines tag supports or not (None: as the rule says); a ``threshold`` strictly inside (0, 1) becomes
    the rule's threshold, so each class's mask is decided there before the rule's trim and snap (and
    the pixels the snap adds, scored at the threshold, stay foreground). Thresholds 0 and 1 leave the
    rule's own (a rule's threshold lies inside (0, 1)); they only act on the per-pixel decision between
    classes and background."""
    chosen = decision if decision is not None else rule
    if not snap:
        chosen = dataclasses.replace(chosen, snap=None)
    if refine_supports is not None:
        chosen = dataclasses.replace(chosen, refine_supports=bool(refine_supports))
    if threshold is not None and 0.0 < threshold < 1.0:
        chosen = dataclasses.replace(chosen, threshold=float(threshold))
    return chosen


class TapCache:
    """Backbone taps per image (keyed by its pixels), so each image is encoded once however many classes
    it serves. Calling it returns the image's ``EncodedImage``; :meth:`descriptors` gives the
    co-segmentation prior's dense descriptors from the same taps."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._items: dict[str, EncodedImage] = {}

    def __call__(self, image: np.ndarray | EncodedImage) -> EncodedImage:
        """``uint8 (H, W, 3)`` (or an already encoded image, returned as it is) -> ``EncodedImage``."""
        if isinstance(image, EncodedImage):
            return image
        key = image_key(image)
        if key not in self._items:
            self._items[key] = self.predictor.encode_image(image)
        return self._items[key]

    def descriptors(self, pixels: np.ndarray, weights: Sequence[float] | None = None) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> ``float32 (C, g, g)`` unit-norm descriptors with per-tap ``weights``
        (the signature of ``hhn.priors.features.DenseFeatures.__call__``)."""
        return self.predictor.descriptors(self(pixels), weights)

    def forget(self, pixels: np.ndarray) -> None:
        """Forget one image's taps."""
        self._items.pop(image_key(pixels), None)

    def clear(self) -> None:
        """Forget every image's taps (frees their memory)."""
        self._items.clear()


def taps_match_prior_features(model: Any, features: Any) -> bool:
    """True when ``model``'s backbone pass gives exactly the taps ``features`` (a ``DenseFeatures``)
    would compute: same backbone, same square input size, and ImageNet weights bit for bit."""
    from hhn.checkpoints import backbone_is_pretrained

    config = model.config
    return (config.backbone == features.backbone and tuple(config.image_size) == (features.size, features.size)
            and features.pretrained and backbone_is_pretrained(model))


def default_tag_prior(predictor: Predictor, vocabulary: Sequence[str] = (), taps: TapCache | None = None,
                      name: str | None = None) -> TagPrior:
    """The tag prior called ``name`` (``hhn.priors.catalog``), by default the one the model is used with: its
    config's ``tag_prior``; when that is unset, CLIP Grad-CAM (``vocabulary``: the competing class names) for
    a model that reads CLIP text, like the paper's, else the CLIP-free co-segmentation prior. A
    co-segmentation prior reads ``taps`` when they are the ones it would compute
    (:func:`taps_match_prior_features`), else runs its own backbone."""
    from hhn.priors.catalog import build_tag_prior

    config = predictor.config
    name = name or config.tag_prior or ("gradcam" if config.use_text else "coseg")

    def reuse(features):
        if taps is None or not taps_match_prior_features(predictor.model, features):
            return None
        return taps.descriptors

    return build_tag_prior(name, device=predictor.device, vocabulary=vocabulary, reuse=reuse)


def clip_text_source(config: Any, device: Any) -> TextSource | None:
    """The class-name -> CLIP text embeddings function of a model that reads text (None otherwise)."""
    if not config.use_text:
        return None
    from hhn.text import TextEncoder

    encoder = TextEncoder(config.clip_model, config.clip_pretrained, device=device)
    return lambda name: encoder.class_embeddings(name, template=config.text_template, benchmark=config.benchmark)


def decision_threads() -> int:
    """Threads :meth:`ClassSegmenter.predict_batch` decides queries on: torch's CPU thread count (the
    cores the run was given), at least 1."""
    import torch

    return max(1, torch.get_num_threads())


class ClassSegmenter:
    """One class, learnt: its fitted tag prior and its encoded supports. Predicts any query.

    ``prior``: the fitted ``ClassPrior`` (refitted the other way round when the inversion guard said so);
    ``support``: the encoded ``SupportSet``; ``rule``: the decision rule the supports were encoded under and
    the default of every prediction; ``orientation``: what the inversion guard found
    (``hhn.priors.orientation.Orientation``), None when it did not run.
    """

    def __init__(self, pipeline: FewShotPipeline, name: str, prior: ClassPrior, support: Any,
                 rule: DecisionRule, orientation: Orientation | None = None) -> None:
        self.pipeline, self.name, self.prior, self.support, self.rule = pipeline, name, prior, support, rule
        self.orientation = orientation

    def logits(self, queries: Sequence[np.ndarray | EncodedImage],
               priors: Sequence[np.ndarray] | None = None) -> list[QueryLogits]:
        """The network's part: one ``QueryLogits`` per query (``uint8 (H, W, 3)`` or encoded), ready for
        :meth:`decide`. ``priors``: the queries' prior maps when already computed (else the class prior's)."""
        if priors is None:
            priors = [self.prior(q.pixels if isinstance(q, EncodedImage) else q) for q in queries]
        encoded = [self.pipeline.taps(q) for q in queries]
        return self.pipeline.predictor.logits_batch(encoded, self.support, priors)

    def decide(self, scored: QueryLogits, rule: DecisionRule | None = None) -> Prediction:
        """One query's logits -> ``Prediction`` under ``rule`` (default: the class's rule)."""
        return self.pipeline.predictor.decide(scored, self.rule if rule is None else rule)

    def predict_batch(self, queries: Sequence[np.ndarray | EncodedImage],
                      priors: Sequence[np.ndarray] | None = None) -> list[Prediction]:
        """One ``Prediction`` (``fg_prob`` float32 (H, W) in [0, 1], ``mask`` bool (H, W)) per query.
        The queries' decisions run side by side on up to ``torch.get_num_threads()`` threads: a rule's snap
        (OpenCV's GrabCut) uses one core and releases the GIL. Each decision is deterministic on its own
        (GrabCut's random generator is seeded per call, per thread), so the results do not depend on it."""
        scored = self.logits(queries, priors)
        workers = min(len(scored), decision_threads())
        if workers <= 1:
            return [self.decide(item) for item in scored]
        with ThreadPoolExecutor(workers, thread_name_prefix="hhn-decide") as pool:
            return list(pool.map(self.decide, scored))

    def predict(self, query: np.ndarray | EncodedImage, prior: np.ndarray | None = None) -> Prediction:
        """:meth:`predict_batch` for one query."""
        return self.predict_batch([query], None if prior is None else [prior])[0]


class FewShotPipeline:
    """Learns classes from tagged (or painted) images and segments queries with one HHN model.

    Args:
        predictor: the ``hhn.predictor.Predictor`` (its decision rule is the pipeline's).
        prior: the ``TagPrior`` fitted per class; default :func:`default_tag_prior` on ``vocabulary``.
        tag_prior: the name of that default prior (``hhn.registry.TAG_PRIORS``); None: the model's own.
        vocabulary: the names of the classes that compete (CLIP Grad-CAM priors only).
        text: class name -> CLIP text embeddings for models that read text; default
            :func:`clip_text_source` (loaded on first use).
        mask_rule: the decision rule of a class whose supports all carry pixel masks
            (:meth:`rule_for`); default: the predictor's rule, as for every other class.
    """

    def __init__(self, predictor: Predictor, prior: TagPrior | None = None, vocabulary: Sequence[str] = (),
                 text: TextSource | None = None, mask_rule: DecisionRule | None = None,
                 tag_prior: str | None = None) -> None:
        if prior is not None and tag_prior is not None:
            raise ValueError("give either a prior or the name of one (tag_prior), not both")
        self.predictor = predictor
        self.tag_prior = tag_prior
        self.mask_rule = predictor.decision if mask_rule is None else mask_rule
        self.taps = TapCache(predictor)
        self._given_prior = prior
        self._prior: TagPrior | None = prior
        self.vocabulary = tuple(vocabulary)
        self._text = text

    @classmethod
    def from_model(cls, model: Any, device: Any = "auto", *, decision: DecisionRule | None = None,
                   threshold: float | None = None, snap: bool = True, refine_supports: bool | None = None,
                   precision: str = "auto", **kwargs: Any) -> FewShotPipeline:
        """A pipeline on ``model`` (a name or path ``hhn.factory.create_model`` takes, or an ``HHN``) under
        its decision rules (``decision``, and ``decision_masks`` for classes with pixel-mask supports) with
        the overrides of :func:`override_rule` (a given ``decision`` replaces both), computing at ``precision``
        (``hhn.device_names.PRECISIONS``, see ``Predictor``); ``kwargs`` go to the constructor."""
        if isinstance(model, str | os.PathLike):
            from hhn.factory import create_model

            model = create_model(os.fspath(model), device=device)
        declared = model.config.decision
        rule, mask_rule = (override_rule(own, decision=decision, threshold=threshold, snap=snap,
                                         refine_supports=refine_supports)
                           for own in (declared, model.config.decision_masks or declared))
        return cls(Predictor(model, device=device, decision=rule, precision=precision), mask_rule=mask_rule, **kwargs)

    @property
    def rule(self) -> DecisionRule:
        """The decision rule of a class learnt from tags (at least one support without a pixel mask)."""
        return self.predictor.decision

    def rule_for(self, supports: Sequence[TaggedImage]) -> DecisionRule:
        """The decision rule of a class learnt from ``supports``: :attr:`mask_rule` when every support carries
        a pixel mask, else :attr:`rule`."""
        return self.mask_rule if supports and all(s.mask is not None for s in supports) else self.rule

    @property
    def prior(self) -> TagPrior:
        """The tag prior fitted per class (built on first use)."""
        if self._prior is None:
            self._prior = default_tag_prior(self.predictor, self.vocabulary, self.taps, self.tag_prior)
        return self._prior

    def use_vocabulary(self, names: Sequence[str]) -> None:
        """The competing class names of the next fits (a default CLIP prior is rebuilt when they change)."""
        if tuple(names) != self.vocabulary:
            self.vocabulary = tuple(names)
            self._prior = self._given_prior

    def text(self, name: str) -> ClassEmbeddings | None:
        """The class's CLIP text embeddings for a model that reads text, else None."""
        if not self.predictor.config.use_text:
            return None
        if self._text is None:
            self._text = clip_text_source(self.predictor.config, self.predictor.device)
        assert self._text is not None  # the model reads text, so it has a text source
        return self._text(name)

    def forget_images(self) -> None:
        """Drop the backbone taps held for images seen so far (e.g. once the supports are encoded)."""
        self.taps.clear()

    def forget_image(self, pixels: np.ndarray) -> None:
        """Drop everything held in memory for one image that will not be seen again (a finished query): its
        taps and what the tag prior keeps of it, so memory stays flat over a long run."""
        self.taps.forget(pixels)
        if self._prior is not None:
            self._prior.forget(pixels)

    def fit_prior(self, name: str, positives: Sequence[TaggedImage],
                  negatives: Sequence[np.ndarray] = ()) -> ClassPrior:
        """Fit the class's tag prior (positives' masks, where given, are trusted)."""
        return self.prior.fit(name, list(positives), list(negatives))

    def orient(self, prior: ClassPrior, positives: Sequence[TaggedImage], supports: Sequence[TaggedImage],
               rule: DecisionRule, refit: Callable[[list[TaggedImage]], ClassPrior] | None,
               ) -> tuple[ClassPrior, Orientation | None]:
        """The inversion guard (``hhn.priors.orientation.orient`` at ``rule.flip_border``): ``prior``, or the
        class's prior refitted (``refit``) on the other side of its maps when its maps of the tag-only
        ``supports`` cover the frames' borders; and what it found."""
        return orient(prior, positives, supports, rule.flip_border, refit)

    def encode_class(self, name: str, prior: ClassPrior, supports: Sequence[TaggedImage],
                     rule: DecisionRule | None = None, orientation: Orientation | None = None) -> ClassSegmenter:
        """Encode the class's supports once: a support's pixel mask as it is, else its map under ``prior``
        (refined first when ``rule`` refines supports: ``Predictor.support_map``); ``rule`` (default
        :meth:`rule_for` the supports) is also the segmenter's rule; ``orientation``: what :meth:`orient`
        found, kept on the segmenter."""
        rule = self.rule_for(supports) if rule is None else rule
        images, maps = [], []
        for support in supports:
            images.append(self.taps(support.pixels))
            prior_map = prior(support)  # its pixel mask where it has one
            maps.append(prior_map if support.mask is not None
                        else self.predictor.support_map(images[-1], prior_map, rule))
        encoded = self.predictor.encode_support(images, maps, text=self.text(name))
        return ClassSegmenter(self, name, prior, encoded, rule, orientation)

    def fit(self, name: str, positives: Sequence[TaggedImage], negatives: Sequence[np.ndarray] = (),
            shots: int | None = None, supports: Sequence[TaggedImage] | None = None) -> ClassSegmenter:
        """Learn one class: fit its prior on ``positives`` and ``negatives``, orient it (:meth:`orient`), then
        encode its supports: ``supports`` (among the positives) when given, else the first ``shots`` positives
        (all: None)."""
        prior = self.fit_prior(name, positives, negatives)
        chosen = list(supports) if supports is not None else list(positives)[:shots]
        rule = self.rule_for(chosen)
        prior, orientation = self.orient(prior, positives, chosen, rule,
                                         lambda flipped: self.fit_prior(name, flipped, negatives))
        return self.encode_class(name, prior, chosen, rule, orientation)
