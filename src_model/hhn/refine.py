"""Trimming a foreground mask to the query image's own appearance (a decision step, no training).

Priors and network outputs on a stride-8 grid spill over the object's outline: the stride-32 features
that recognise a class are blurred over 30+ pixels, so a mask comes out as a blob around the object.
The query itself says where its object stops: the mean descriptor of the cells inside the mask is a
foreground prototype of *this* image, the mean of the cells outside a background prototype. A pixel
of the mask is kept where its (bilinearly upsampled) cell is closer to the foreground prototype,
``cos(x, fg) > cos(x, bg)``; pixels outside the mask stay outside (the step only removes).

The descriptors are the low-level taps of the network's own backbone (``hhn.priors.features.
descriptors_from_taps`` with tap weights such as ``(1, 0.5, 0)``: stride 8 with some stride 16),
which follow colour and texture edges. Objects of one appearance (animals, cells) gain most; objects
made of parts that look different (a car's windows and wheels) can lose parts, which is why the
weights of a model's rule are chosen on development episodes (MODEL_CARD.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    grid = tuple(descriptors.shape[-2:])
    inside = F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0].flatten() > 0.5
    if not inside.any() or inside.all():
        return mask.clone()
    cells = descriptors.flatten(1).T.float()
    fg = F.normalize(cells[inside].sum(0), dim=0)
    bg = F.normalize(cells[~inside].sum(0), dim=0)
    score = (cells @ fg - cells @ bg).view(1, 1, *grid)
    score = F.interpolate(score, size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
    return mask & (score > 0)
