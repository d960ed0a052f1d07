"""Refining a foreground mask with the query image itself (decision steps, no training).

Priors and network outputs on a stride-8 grid spill over the object's outline: the stride-32 features
that recognise a class are blurred over 30+ pixels, so a mask comes out as a blob around the object
(on MSRC most of the tag prior's false positives are the class's usual surroundings: grass around cows
and sheep, water around boats). Two steps use the query's own pixels to pull the mask back:

**Trim to the own appearance** (:func:`own_appearance_keep`). The mean descriptor of the cells inside
the mask is a foreground prototype of *this* image, the mean of the cells outside a background
prototype. A pixel of the mask is kept where its (bilinearly upsampled) cell is closer to the
foreground prototype, ``cos(x, fg) > cos(x, bg)``; pixels outside the mask stay outside (it only
removes). The descriptors are the low-level taps of the network's own backbone (``hhn.priors.features.
descriptors_from_taps`` with tap weights such as ``(1, 0.5, 0)``: stride 8 with some stride 16),
which follow colour and texture edges. Objects of one appearance (animals, cells) gain most; objects
made of parts that look different (a car's windows and wheels) can lose parts.

**Snap to the image's edges** (:func:`snap_to_edges`). GrabCut (OpenCV: colour mixture models of the
object and its surroundings plus a graph cut that prefers to cut where the colour changes) on a
trimap made from the mask: the mask eroded by a band is sure foreground, the rest of the mask probable
foreground, a band around the mask probable background, everything farther sure background. The band
is a fraction of the image diagonal, so the step behaves alike at any resolution, but never wider than
``SNAP_OBJECT_SCALE`` times the side of the mask's largest part, so a small object is not snapped with a
band sized for the frame. It may add pixels inside the outer band as well as remove them.

Which steps a model's rule uses, and with what weights and band, is chosen on development episodes
(MODEL_CARD.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: GrabCut iterations of :func:`snap_to_edges`. 5 measured no better than 3 on development episodes; 2
#: scored the acceptance episodes no lower than 3 at about half the cost (MODEL_CARD.md, section "Speed").
SNAP_ITERATIONS = 2
#: :func:`snap_to_edges` works on the image resized so its longer side is at most this (pixels); the
#: result is resized back (nearest). The snap was the largest single cost of ``wfss label`` (38 % of its
#: CPU time at 512, where MSRC photos were snapped at full size). With 2 iterations, acceptance episodes
#: (300, tags / masks, mIoU): 224 px 61.9 / 72.3 in 64 s for the speed benchmark's folder, 288 px 62.2 /
#: 72.9 in 79 s; 512 px with 3 iterations 61.7 / 72.7 in 120 s.
SNAP_MAX_SIDE = 224
#: the snap's band is at most this fraction of the side of the mask's largest connected part (the square
#: root of its area), so a small object keeps a sure-foreground core and its search band stays near it
#: instead of one sized for the whole frame; None: the band as given. 0.3 left MSRC's development episodes
#: unchanged (its objects are large) and raised the clutter scenes with masks by +0.6 mIoU (0.15: +0.9 there,
#: -0.3 on MSRC); MODEL_CARD.md, section "Cluttered scenes with small objects".
SNAP_OBJECT_SCALE: float | None = 0.3


def own_appearance_keep(mask: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
    """Which pixels of ``mask`` look like the mask's own inside rather than its outside.

    Args:
        mask: ``bool (H, W)``, the foreground to trim.
        descriptors: ``float32 (C, g, g')`` unit-norm descriptors of the same image on its feature grid.

    Returns:
        ``bool (H, W)``: True where ``mask`` is True and the pixel's cell is more similar to the mean
        inside descriptor than to the mean outside one. A mask that covers no cell or every cell of the
        grid has no prototype to compare with and is returned unchanged.
    """
    grid = (descriptors.shape[-2], descriptors.shape[-1])
    inside = F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0].flatten() > 0.5
    if not inside.any() or inside.all():
        return mask.clone()
    cells = descriptors.flatten(1).T.float()
    fg = F.normalize(cells[inside].sum(0), dim=0)
    bg = F.normalize(cells[~inside].sum(0), dim=0)
    score = (cells @ fg - cells @ bg).view(1, 1, *grid)
    score = F.interpolate(score, size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
    return mask & (score > 0)


def refine_mask(mask: torch.Tensor, pixels: np.ndarray, describe: Callable[[tuple[float, ...]], torch.Tensor],
                trim: tuple[float, ...] | None, snap: float | None, scores: torch.Tensor | None = None,
                floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A decision rule's mask steps, the one place they are chained: trim to the image's own appearance,
    then snap to its edges (each step skipped when its setting is None).

    Args:
        mask: ``bool (H, W)``, the thresholded foreground (on any device).
        pixels: ``uint8 (H, W, 3)`` RGB of the same image (the snap reads its colours).
        describe: tap weights -> ``float32 (C, g, g')`` unit-norm descriptors of the image (the trim's).
        trim: the trim's tap weights, or None; snap: the snap's band (fraction of the diagonal), or None.
        scores: optional ``float (H, W)`` foreground scores carried along: 0 where the trim removes a
            pixel; after a snap 0 outside the snapped mask and at least ``floor`` inside it.

    Returns:
        ``(mask, scores)``: the refined ``bool (H, W)`` mask on ``mask``'s device, and the scores (None
        when none were given).
    """
    if trim is not None:
        keep = own_appearance_keep(mask, describe(trim))
        if scores is not None:
            scores = torch.where(keep | ~mask, scores, torch.zeros_like(scores))
        mask = keep
    if snap is not None:
        mask = torch.from_numpy(snap_to_edges(pixels, mask.cpu().numpy(), snap)).to(mask.device)
        if scores is not None:
            scores = torch.where(mask, scores.clamp(min=floor), torch.zeros_like(scores))
    return mask, scores


def snap_to_edges(image: np.ndarray, mask: np.ndarray, band: float, iterations: int = SNAP_ITERATIONS,
                  max_side: int = SNAP_MAX_SIDE) -> np.ndarray:
    """GrabCut ``mask`` to the edges of ``image`` (see the module docstring).

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        mask: ``bool (H, W)``, the foreground to snap.
        band: width of the sure-foreground erosion and of the outer search band, as a fraction of the
            image diagonal (in ``(0, 0.5)``; e.g. 0.06: 23 pixels at 320 x 213), at most
            ``SNAP_OBJECT_SCALE`` x the square root of the area of the mask's largest connected part.
        iterations: GrabCut iterations.
        max_side: longer side (pixels) of the image GrabCut works on.

    Returns:
        ``bool (H, W)``. An empty or full mask, or one GrabCut cannot model (e.g. no background
        colours), is returned unchanged. Deterministic (OpenCV's random generator is seeded per call).
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return mask.copy()
    height, width = mask.shape
    scale = min(1.0, max_side / max(height, width))
    work_mask, work_image = mask, np.ascontiguousarray(image)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # OpenCV sizes are (w, h)
        work_image = cv2.resize(work_image, size, interpolation=cv2.INTER_AREA)
        work_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if not work_mask.any() or work_mask.all():
            return mask.copy()
    radius = max(1, round(band * float(np.hypot(*work_mask.shape))))
    cross = ndimage.generate_binary_structure(2, 1)
    if SNAP_OBJECT_SCALE is not None:
        parts, count = ndimage.label(work_mask, cross)
        largest = int(np.bincount(parts.ravel())[1:].max()) if count else 0
        radius = min(radius, max(1, round(SNAP_OBJECT_SCALE * float(np.sqrt(largest)))))
    core = ndimage.binary_erosion(work_mask, cross, iterations=radius)
    outer = ndimage.binary_dilation(work_mask, cross, iterations=radius)
    trimap = np.full(work_mask.shape, cv2.GC_BGD, np.uint8)
    trimap[outer] = cv2.GC_PR_BGD
    trimap[work_mask] = cv2.GC_PR_FGD
    trimap[core] = cv2.GC_FGD
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)
    try:
        bgr = cv2.cvtColor(work_image, cv2.COLOR_RGB2BGR)
        # rect=None is valid with GC_INIT_WITH_MASK (rect unused), but OpenCV's stubs want a Sequence[int]
        cv2.grabCut(bgr, trimap, None, background_model, foreground_model,  # type: ignore[call-overload]
                    int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return mask.copy()
    snapped = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    if scale < 1.0:
        snapped = cv2.resize(snapped.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return snapped
