"""The methods ``wfss eval`` compares. Each turns one episode's inputs into a query mask.

- ``all-fg``: every pixel foreground (the trivial floor; FB-IoU exposes it).
- ``prior``: the tag prior of the query alone, thresholded (``ClassPrior.threshold``).
- ``map``: masked-average-pooling prototypes on the frozen backbone descriptors.
  Both may be trimmed to the query's own appearance (``wfss eval --trim``) and snapped to its edges
  (``--snap``), the controls for a model rule's trim and snap (``hhn.refine``).
- ``hhn``: the network through ``hhn.predictor.Predictor``.

Support supervision: under ``masks`` the support masks are the ground truth (``uint8``, 255 = ignore);
under ``tags`` they are the support priors (``float32`` in ``[0, 1]``), which ``map`` thresholds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from hhn.evaluation.baselines import area_weights, binary_to_float, map_scores, upsample
from hhn.priors.base import ClassPrior
from hhn.priors.features import DenseFeatures
from hhn.refine import own_appearance_keep, snap_to_edges


@dataclass
class MethodInputs:
    """What a method may look at (never the query's ground truth).

    class_name: the episode class. query_image / support_images: ``uint8 (H, W, 3)``. support_masks: ``uint8`` {0, 1, 255} ground truth
    (``masks``) or ``float32`` priors in [0, 1] (``tags``). query_prior: ``float32 (H, W)`` in [0, 1] or
    None when the method does not use one.
    """

    class_name: str
    query_image: np.ndarray
    support_images: list[np.ndarray]
    support_masks: list[np.ndarray]
    query_prior: np.ndarray | None


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
        mask = self.unrefined(inputs)
        if self.trim is not None:
            descriptors = self.features(inputs.query_image, self.trim)
            mask = own_appearance_keep(torch.from_numpy(mask), descriptors).numpy()
        if self.snap is not None:
            mask = snap_to_edges(inputs.query_image, mask, self.snap)
        return mask

    @abstractmethod
    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        """The baseline's own bool (H, W) mask."""


class PriorOnly(_Refinable):
    name = "prior"
    needs_query_prior = True
    needs_support_masks = False

    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        return inputs.query_prior > ClassPrior.threshold


class MaskedAveragePooling(_Refinable):
    """MAP prototypes; priors are thresholded at ``ClassPrior.threshold`` into hard support masks."""

    name = "map"

    def __init__(self, features: DenseFeatures, trim: tuple[float, ...] | None = None,
                 snap: float | None = None) -> None:
        super().__init__(features, trim, snap)

    def unrefined(self, inputs: MethodInputs) -> np.ndarray:
        q = self.features(inputs.query_image)
        grid = tuple(q.shape[-2:])
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
    """The network: supports (masks, or priors through ``Predictor.support_map``) and the query prior
    through a ``Predictor``.

    Args:
        predictor: an ``hhn.predictor.Predictor``.
        text: class name -> ``ClassEmbeddings`` (``hhn.text.TextEncoder.class_embeddings``) for models
            that use CLIP text; None otherwise.
        decision: the ``hhn.config.DecisionRule`` to score (default: the predictor's).
        shared: a dict shared by several ``HHNMethod`` on one predictor (different rules): the network then
            runs once per episode for all of them that encode the supports alike (``refine_supports`` and,
            with it, the same trim and snap).
    """

    name = "hhn"
    needs_query_prior = True

    def __init__(self, predictor, text=None, decision=None, shared: dict | None = None) -> None:
        self.predictor, self.text = predictor, text
        self.decision = decision if decision is not None else predictor.decision
        self._shared = shared if shared is not None else {}

    def predict(self, inputs: MethodInputs) -> np.ndarray:
        if self._shared.get("inputs") is not inputs:  # holding the inputs keeps their identity unique
            self._shared.clear()
            self._shared["inputs"] = inputs
        refine = self.decision.refine_supports and any(m.dtype != np.uint8 for m in inputs.support_masks)
        encoding = ("refined", self.decision.trim, self.decision.snap) if refine else "as given"
        if encoding not in self._shared:  # one network pass per episode and way of encoding the supports
            images = [self.predictor.encode_image(im) for im in inputs.support_images]
            masks = [binary_to_float(m) if m.dtype == np.uint8  # a pixel mask, used as it is
                     else self.predictor.support_map(e, m, self.decision) for e, m in zip(images, inputs.support_masks)]
            text = self.text(inputs.class_name) if self.text is not None else None
            support = self.predictor.encode_support(images, masks, text=text)
            self._shared[encoding], = self.predictor.logits_batch([inputs.query_image], support, [inputs.query_prior])
        return self.predictor.decide(self._shared[encoding], self.decision).mask
