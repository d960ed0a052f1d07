"""Segment-anything-style inference: encode images once, encode a class's supports once, predict many.

Typical use::

    predictor = Predictor(model, device="auto")
    support = predictor.encode_support([img_a, img_b], [mask_a, mask_b], text=embeddings)
    for image, prior in queries:
        pred = predictor.predict(image, support, prior)   # pred.fg_prob, pred.mask at image size

Images are numpy uint8 (H, W, 3) RGB of any size; they are squash-resized (aspect ratio not kept, as
in the paper) to the network geometry with antialiased bilinear interpolation and ImageNet-normalised.
Masks and priors are float (H, W) in [0, 1] at their image's size, resized bilinearly (not
thresholded). Images and maps go through :mod:`hhn.preprocess`, the path training and the priors use.
K-shot: one 1-shot forward per support; ``fg_prob`` is the mean over shots of the per-shot foreground
score and ``mask`` the vote rule of :func:`hhn.kshot.vote_kshot`, both computed on the head logits
upsampled straight to the original size (bilinear, align_corners=True), like the released evaluation
with ``use_original_imgsize``. The per-shot score and decision follow a
:class:`hhn.config.DecisionRule` (the model config's unless given; default: the foreground softmax and
its argmax, as released).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from hhn.config import DecisionRule
from hhn.device import inference_dtype, select_device
from hhn.errors import UserError
from hhn.kshot import vote_kshot
from hhn.network import HHN, ClassEmbeddings
from hhn.preprocess import resize_mask, to_network_input
from hhn.priors.base import ClassPrior
from hhn.priors.features import descriptors_from_taps
from hhn.refine import refine_mask


class InvalidInputError(UserError, ValueError):
    """An image, mask or prior given to the predictor has the wrong type, shape or value range."""


@dataclass(frozen=True)
class EncodedImage:
    """Backbone taps of one image at the network geometry, reusable for every class.

    features: one (1, C_l, h_l, w_l) float32 tensor per tap, on the predictor's device.
    original_size: (H, W) of the image as given. model_name: the config that produced the taps.
    pixels: the image itself, uint8 (H, W, 3) (a decision rule's snap to its edges reads it).
    """

    features: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]
    model_name: str
    pixels: np.ndarray


@dataclass(frozen=True)
class SupportSet:
    """The encoded supports of one class (K shots), computed once and reused for every query.

    features: one (K, C_l, h_l, w_l) tensor per tap. masks: (K, h, w) float32 in [0, 1] at the
    network geometry (pixel masks or priors; they weight the support features only when the model's
    ``mask_support_features`` is on). text: embeddings with (1, 512) fields, or None.
    """

    features: tuple[torch.Tensor, ...]
    masks: torch.Tensor
    text: ClassEmbeddings | None
    model_name: str

    @property
    def shots(self) -> int:
        """Number of support images K."""
        return int(self.masks.shape[0])


@dataclass(frozen=True)
class Prediction:
    """fg_prob: (H, W) float32 in [0, 1], mean over shots of the foreground score (the softmax, blended
    with the query prior by the predictor's decision rule). mask: (H, W) bool, the K-shot vote of the
    per-shot decisions (default rule, K = 1: argmax of the logits)."""

    fg_prob: np.ndarray
    mask: np.ndarray


class QueryLogits(NamedTuple):
    """The network's output for one query, ready for :meth:`Predictor.decide`: ``logits`` (K, 2, h2, w2)
    head logits (one row per shot), ``prior`` float32 (H, W) the checked query prior, ``query`` the
    query's :class:`EncodedImage` (its taps serve a rule's trim, its pixels a rule's snap)."""

    logits: torch.Tensor
    prior: np.ndarray
    query: EncodedImage


def _check_image(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = (f"{type(image).__name__}" if not isinstance(image, np.ndarray)
                else f"{image.dtype} array of shape {image.shape}")
        raise InvalidInputError(f"{what} must be a uint8 RGB array (H, W, 3), got a {desc}; "
                                f"convert gray/RGBA images to RGB first")
    if min(image.shape[:2]) < 1:
        raise InvalidInputError(f"{what} is empty (shape {image.shape})")


def _check_map(values: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        shape = getattr(values, "shape", None)
        raise InvalidInputError(f"{what} must be a 2-D array (H, W) in [0, 1], got shape {shape}")
    if tuple(values.shape) != tuple(size):
        raise InvalidInputError(f"{what} has shape {values.shape} but its image is {tuple(size)}; "
                                f"give it at the image's size")
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise InvalidInputError(f"{what} must hold finite values in [0, 1]")
    return values


class Predictor:
    """Runs an :class:`HHN` on numpy images. model: the network (moved to ``device``, eval mode).
    batch_pairs: (query, support) pairs per network call in :meth:`predict_batch`. decision: how
    foreground is decided (default: the model config's rule). precision: one of ``hhn.device_names.PRECISIONS``; the
    backbone and the network run under ``torch.autocast`` at the dtype ``hhn.device.inference_dtype`` gives
    (``auto``: float16 on CUDA, float32 elsewhere); taps are kept and logits returned as float32, so the
    decision steps, the priors and the trim always work in float32."""

    def __init__(self, model: HHN, device: str | torch.device = "auto", batch_pairs: int = 4,
                 decision: DecisionRule | None = None, precision: str = "auto") -> None:
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.decision = decision if decision is not None else model.config.decision
        self.batch_pairs = max(1, int(batch_pairs))
        self.dtype = inference_dtype(precision, self.device)

    def _compute(self) -> contextlib.AbstractContextManager:
        """No autograd, under autocast at :attr:`dtype` when it is not float32."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        return stack

    # ------------------------------------------------------------------ encoding
    def _network_map(self, values: np.ndarray) -> torch.Tensor:
        """float32 (H, W) in [0, 1] -> (1, h, w) at the network geometry, in [0, 1], on the device."""
        return torch.from_numpy(resize_mask(values, self.config.image_size, soft=True))[None].to(self.device)

    def encode_image(self, image: np.ndarray) -> EncodedImage:
        """uint8 (H, W, 3) RGB -> :class:`EncodedImage` (backbone taps + original size)."""
        _check_image(image, "image")
        with self._compute():
            feats = self.model.extract_features(to_network_input(image, self.config.image_size).to(self.device))
        return EncodedImage(tuple(f.float() for f in feats), (int(image.shape[0]), int(image.shape[1])),
                            self.config.name, image)

    def _encoded(self, item: np.ndarray | EncodedImage) -> EncodedImage:
        if isinstance(item, EncodedImage):
            if item.model_name != self.config.name:
                raise InvalidInputError(f"image was encoded by model {item.model_name!r}, not "
                                        f"{self.config.name!r}; encode it again with this predictor")
            return item
        return self.encode_image(item)

    def encode_support(self, images: Sequence[np.ndarray | EncodedImage], masks: Sequence[np.ndarray],
                       text: ClassEmbeddings | None = None) -> SupportSet:
        """Encode the K supports of one class once.

        images: K uint8 (H_k, W_k, 3) arrays or :class:`EncodedImage`. masks: K float (H_k, W_k) in
        [0, 1] (pixel masks or priors). text: the class embeddings, fields (512,) or (1, 512); required
        when the model uses text, ignored otherwise.
        """
        if len(images) == 0 or len(images) != len(masks):
            raise InvalidInputError(f"give one mask per support image (got {len(images)} images, "
                                    f"{len(masks)} masks; at least one)")
        if self.config.use_text and text is None:
            raise UserError(f"model {self.config.name!r} needs the class's CLIP text embeddings (hhn.text); "
                            f"without CLIP weights use a model without text, e.g. wfss-lite0")
        encoded = [self._encoded(im) for im in images]
        maps = [self._network_map(_check_map(m, e.original_size, f"support mask {k}"))
                for k, (m, e) in enumerate(zip(masks, encoded))]
        feats = tuple(torch.cat(level, dim=0) for level in zip(*(e.features for e in encoded)))
        embeddings = None
        if self.config.use_text and text is not None:  # text is not None: checked above
            embeddings = ClassEmbeddings(*(torch.as_tensor(t, dtype=torch.float32, device=self.device)
                                           .reshape(1, -1) for t in text))
        return SupportSet(feats, torch.cat(maps, dim=0), embeddings, self.config.name)

    def support_map(self, image: np.ndarray | EncodedImage, prior: np.ndarray,
                    rule: DecisionRule | None = None) -> np.ndarray:
        """The map a support known by its tags only is encoded with, under ``rule`` (default: the
        predictor's): its tag prior (float (H, W) in [0, 1]) as it is, or, when the rule has
        ``refine_supports``, the prior thresholded at ``ClassPrior.threshold`` (0.5), trimmed and snapped
        with the rule's steps on the support's own pixels and taps, as float32 {0, 1}. When that leaves
        no pixel, the prior is kept. Supports with a pixel mask skip this: their mask is used as it is."""
        rule = self.decision if rule is None else rule
        if isinstance(image, EncodedImage):
            size = image.original_size
        else:
            _check_image(image, "support image")
            size = tuple(image.shape[:2])
        prior = _check_map(prior, size, "support prior")
        if not rule.refine_supports:  # no backbone pass needed
            return prior
        encoded = self._encoded(image)
        mask = torch.from_numpy(prior > ClassPrior.threshold).to(self.device)
        mask, _ = refine_mask(mask, encoded.pixels, partial(self.descriptors, encoded), rule.trim, rule.snap)
        refined = mask.cpu().numpy()
        return refined.astype(np.float32) if refined.any() else prior

    # ------------------------------------------------------------------ prediction
    def predict(self, query: np.ndarray | EncodedImage, support: SupportSet,
                query_prior: np.ndarray) -> Prediction:
        """One query: uint8 (H, W, 3) image or :class:`EncodedImage`, its class prior float (H, W) in
        [0, 1] -> :class:`Prediction` at (H, W)."""
        return self.predict_batch([query], support, [query_prior])[0]

    def predict_batch(self, queries: Sequence[np.ndarray | EncodedImage], support: SupportSet,
                      priors: Sequence[np.ndarray]) -> list[Prediction]:
        """Several queries of the same class; (query, shot) pairs are batched ``batch_pairs`` at a time."""
        return [self.decide(scored) for scored in self.logits_batch(queries, support, priors)]

    def logits_batch(self, queries: Sequence[np.ndarray | EncodedImage], support: SupportSet,
                     priors: Sequence[np.ndarray]) -> list[QueryLogits]:
        """The network part of :meth:`predict_batch`: one :class:`QueryLogits` per query, ready for
        :meth:`decide` (under one rule or several)."""
        if len(queries) != len(priors):
            raise InvalidInputError(f"give one prior per query (got {len(queries)} queries, {len(priors)} priors)")
        if support.model_name != self.config.name:
            raise InvalidInputError(f"support set was encoded by model {support.model_name!r}, not "
                                    f"{self.config.name!r}; encode it again with this predictor")
        shots = support.shots
        per_call = max(1, self.batch_pairs // shots)
        results: list[QueryLogits] = []
        for start in range(0, len(queries), per_call):
            chunk = [self._encoded(q) for q in queries[start:start + per_call]]
            checked = [_check_map(p, e.original_size, f"query prior {start + i}")
                       for i, (p, e) in enumerate(zip(priors[start:start + per_call], chunk))]
            maps = [self._network_map(p) for p in checked]
            n = len(chunk)
            q_feats = [torch.cat([e.features[level].expand(shots, -1, -1, -1) for e in chunk])
                       for level in range(len(support.features))]
            s_feats = [f.repeat(n, 1, 1, 1) for f in support.features]
            q_prior = torch.cat([m.expand(shots, -1, -1) for m in maps])
            with self._compute():
                logits = self.model.forward_query(q_feats, s_feats, q_prior, support.text,
                                                  support_weight=support.masks.repeat(n, 1, 1)).float()
            results += [QueryLogits(logits[i * shots:(i + 1) * shots], prior, encoded)
                        for i, (prior, encoded) in enumerate(zip(checked, chunk))]
        return results

    def decide(self, scored: QueryLogits, rule: DecisionRule | None = None) -> Prediction:
        """One query's :class:`QueryLogits` -> Prediction at (H, W) (one shot at a time, then the vote,
        then the trim, then the snap) under ``rule`` (default: the predictor's decision rule)."""
        rule = self.decision if rule is None else rule
        shot_logits, prior = scored.logits, scored.prior
        size = tuple(prior.shape)
        prior_t = torch.from_numpy(prior).to(shot_logits.device) if not rule.is_argmax else None
        prob_sum: torch.Tensor | None = None
        labels = []
        for logits in shot_logits.split(1):
            full = F.interpolate(logits, size, mode="bilinear", align_corners=True)
            prob = full.softmax(dim=1)[0, 1]
            if prior_t is None:
                labels.append(full[0].argmax(dim=0).bool())
            else:
                prob = (1.0 - rule.prior_weight) * prob + rule.prior_weight * prior_t
                labels.append(prob > rule.threshold)
            prob_sum = prob if prob_sum is None else prob_sum + prob
        mask = vote_kshot(torch.stack(labels).unsqueeze(0))[0]
        assert prob_sum is not None  # at least one shot (else torch.stack raised)
        fg_prob = prob_sum / shot_logits.shape[0]
        # pixels trimmed away score 0; after a snap, pixels that leave score 0, pixels that join the threshold
        mask, scores = refine_mask(mask, scored.query.pixels, partial(self.descriptors, scored.query), rule.trim,
                                   rule.snap, fg_prob, rule.threshold)
        assert scores is not None  # refine_mask returns scores when given some
        return Prediction(fg_prob=scores.float().cpu().numpy(), mask=mask.cpu().numpy())

    def descriptors(self, image: EncodedImage, weights: Sequence[float] | None = None) -> torch.Tensor:
        """``float32 (C, g, g')`` unit-norm descriptors of ``image`` from its own backbone taps (those the
        co-segmentation prior reads) with per-tap ``weights`` (``hhn.priors.features.descriptors_from_taps``):
        what a rule's trim compares, and what a tag prior reuses instead of running its own backbone."""
        return descriptors_from_taps([image.features[i] for i in self.model.spec.support_taps], weights)
