"""The methods ``wfss eval`` compares. Each turns one episode's inputs into a query mask.

- ``all-fg``: every pixel foreground (the trivial floor; FB-IoU exposes it).
- ``prior``: the tag prior of the query alone, thresholded (``ClassPrior.threshold``).
- ``map``: masked-average-pooling prototypes on the frozen backbone descriptors.
  Both may be trimmed to the query's own appearance (``wfss eval --trim``) and snapped to its edges
  (``--snap``), the controls for a model rule's trim and snap (``hhn.refine``).
- ``hhn``: the network through the product's few-shot pipeline (``hhn.pipeline``).

Support supervision: under ``masks`` the support masks are the ground truth (``uint8``, 255 = ignore);
under ``tags`` they are the support priors (``float32`` in ``[0, 1]``), which ``map`` thresholds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from hhn.evaluation.baselines import area_weights, binary_to_float, map_scores, upsample
from hhn.priors.base import ClassPrior, TaggedImage
from hhn.priors.features import DenseFeatures
from hhn.refine import refine_mask


@dataclass
class MethodInputs:
    """What a method may look at (never the query's ground truth).

    class_name: the episode class. query_image / support_images: ``uint8 (H, W, 3)``. support_masks:
    ``uint8`` {0, 1, 255} ground truth (``masks``) or ``float32`` priors in [0, 1] (``tags``). query_prior:
    ``float32 (H, W)`` in [0, 1] or None when the method does not use one. class_prior: the episode class's
    fitted ``ClassPrior`` (the one that gave the priors), or None when no method uses a prior. For the
    inversion guard (``hhn.priors.orientation.orient``): prior_positives, the images the class prior was
    fitted on (supports first, then the episode's extra positives), and refit_prior, the episode class's
    tag prior fitted again on given positives with the same negatives (None when no method uses a prior).
    """

    class_name: str
    query_image: np.ndarray
    support_images: list[np.ndarray]
    support_masks: list[np.ndarray]
    query_prior: np.ndarray | None
    class_prior: ClassPrior | None = None
    prior_positives: list[TaggedImage] = field(default_factory=list)
    refit_prior: Callable[[list[TaggedImage]], ClassPrior] | None = None


class Method(ABC):
    """A way to segment the query of an episode."""

    name = ""
    needs_query_prior = False
    needs_support_masks = True

    @abstractmethod
    def predict(self, inputs: MethodInputs) -> np.ndarray:
        """``bool (H, W)`` foreground mask of the query."""


class AllForeground(Method):
    name = "all-fg"
    needs_support_masks = False

    def predict(self, inputs: MethodInputs) -> np.ndarray:
        return np.ones(inputs.query_image.shape[:2], dtype=bool)


class _Refinable(Method):
    """A baseline whose mask may be refined with the query image as a model's decision rule can be
    (``hhn.refine``): ``trim`` = tap weights of the query's descriptors from ``features`` for the trim to
    its own appearance, or None; ``snap`` = band of the snap to its edges, or None. Trim first."""

    def __init__(self, features: DenseFeatures | None = None, trim: tuple[float, ...] | None = None,
                 snap: float | None = None) -> None:
        if trim is not None and features is None:
            raise ValueError("a trim needs the features to describe the query with")
        self.features, self.trim, self.snap = features, trim, snap

    def predict(self, inputs: MethodInputs) -> np.ndarray:
        mask, _ = refine_mask(torch.from_numpy(self.unrefined(inputs)), inputs.query_image,
                              partial(self._describe, inputs.query_image), self.trim, self.snap)
        return mask.numpy()

    def _describe(self, pixels: np.ndarray, weights: tuple[float, ...]) -> torch.Tensor:
        """The trim's descriptors of ``pixels`` (called only with a trim, which needs ``features``)."""
        if self.features is None:
            raise ValueError("a trim needs the features to describe the query with")
        return self.features(pixels, weights)

    @abstractmethod
    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        """The baseline's own bool (H, W) mask."""


class PriorOnly(_Refinable):
    name = "prior"
    needs_query_prior = True
    needs_support_masks = False

    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        if inputs.query_prior is None:
            raise ValueError("method 'prior' needs the query's prior")
        return inputs.query_prior > ClassPrior.threshold


class MaskedAveragePooling(_Refinable):
    """MAP prototypes; priors are thresholded at ``ClassPrior.threshold`` into hard support masks."""

    name = "map"
    features: DenseFeatures  # required here (None is allowed by the base class only)

    def __init__(self, features: DenseFeatures, trim: tuple[float, ...] | None = None,
                 snap: float | None = None) -> None:
        super().__init__(features, trim, snap)

    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        q = self.features(inputs.query_image)
        grid = (q.shape[-2], q.shape[-1])
        feats, fgs, bgs = [], [], []
        for image, mask in zip(inputs.support_images, inputs.support_masks):
            if np.issubdtype(mask.dtype, np.floating):
                mask = (mask > ClassPrior.threshold).astype(np.float32)
            fg, bg = area_weights(mask, grid)
            feats.append(self.features(image))
            fgs.append(fg)
            bgs.append(bg)
        return upsample(map_scores(q, feats, fgs, bgs), inputs.query_image.shape[:2]) > 0


class HHNMethod(Method):
    """The network through the product's few-shot pipeline (``hhn.pipeline.FewShotPipeline``): the episode
    class's fitted prior and its supports (true masks, used as they are, or tags: their prior maps, refined
    when the rule says so) encoded by ``FewShotPipeline.encode_class``, the query predicted by the
    resulting ``ClassSegmenter`` with the query prior the runner computed; under tags, the class's prior
    first oriented by the rule's inversion guard (``FewShotPipeline.orient``), as in the product.

    Args:
        pipeline: an ``hhn.pipeline.FewShotPipeline`` (its text source serves models that read CLIP text).
        decision: the ``hhn.config.DecisionRule`` to score (default: the pipeline's rule for ``support``).
        support: ``"tags"`` or ``"masks"``, the episodes' support supervision: under ``masks`` the default
            rule is the pipeline's ``mask_rule`` (``FewShotPipeline.rule_for``), as in the product.
        shared: a dict shared by several ``HHNMethod`` on one pipeline (different rules): the network then
            runs once per episode for all of them that encode the supports alike (``refine_supports`` and,
            with it, the same trim and snap; under tags, the same ``flip_border``).
    """

    name = "hhn"
    needs_query_prior = True
    needs_support_masks = False  # under tags the pipeline maps the supports with the class prior itself

    def __init__(self, pipeline, decision=None, shared: dict | None = None, support: str = "tags") -> None:
        self.pipeline = pipeline
        self.decision = decision if decision is not None else (
            pipeline.mask_rule if support == "masks" else pipeline.rule)
        self._shared = shared if shared is not None else {}

    def predict(self, inputs: MethodInputs) -> np.ndarray:
        if self._shared.get("inputs") is not inputs:  # holding the inputs keeps their identity unique
            self._shared.clear()
            self._shared["inputs"] = inputs
            self.pipeline.forget_images()
        given = [m for m in inputs.support_masks if m.dtype == np.uint8]  # true masks; tags: none given
        refine = self.decision.refine_supports and not given
        encoding = (("refined", self.decision.trim, self.decision.snap) if refine else "as given",
                    None if given else self.decision.flip_border)
        if encoding not in self._shared:  # one network pass per episode and way of encoding the supports
            masks: list[np.ndarray | None] = [binary_to_float(m) for m in given] or [None] * len(inputs.support_images)
            supports = [TaggedImage(im, m) for im, m in zip(inputs.support_images, masks)]
            prior, orientation = self.pipeline.orient(inputs.class_prior, inputs.prior_positives or supports, supports,
                                                      self.decision, inputs.refit_prior)
            query_prior = inputs.query_prior if prior is inputs.class_prior else prior(inputs.query_image)
            segmenter = self.pipeline.encode_class(inputs.class_name, prior, supports, self.decision, orientation)
            self._shared[encoding], = segmenter.logits([inputs.query_image], [query_prior])
        return self.pipeline.predictor.decide(self._shared[encoding], self.decision).mask
