"""Training-free baselines on dense descriptors: masked-average-pooling (MAP) prototypes.

MAP (as in the floor study): the support descriptors are averaged under the support's foreground
weights and, separately, under its background weights (over all K shots together), giving one
foreground and one background prototype; a query cell is foreground when its cosine similarity to the
foreground prototype exceeds that to the background prototype. Scores live on the descriptor grid and
are upsampled bilinearly to the query's size before the sign is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hhn.data.base import IGNORE


def area_weights(mask: np.ndarray, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background weights of a mask on a ``grid`` (area average, squash resize).

    Args:
        mask: ``(H, W)``: ``uint8`` {0, 1, 255 = ignore} (ignore counts for neither side), or float
            in ``[0, 1]`` (soft foreground; background = 1 - mask).

    Returns:
        ``(fg, bg)``, ``float32 (gh, gw)`` each, in ``[0, 1]``.
    """
    if np.issubdtype(mask.dtype, np.floating):
        fg = mask.astype(np.float32)
        bg = 1.0 - fg
    else:
        fg = (mask == 1).astype(np.float32)
        bg = (mask == 0).astype(np.float32)
    both = torch.from_numpy(np.stack([fg, bg]))[None]
    pooled = F.adaptive_avg_pool2d(both, grid)[0]
    return pooled[0], pooled[1]


def map_scores(query: torch.Tensor, supports: Sequence[torch.Tensor], fg: Sequence[torch.Tensor],
               bg: Sequence[torch.Tensor]) -> torch.Tensor:
    """MAP decision scores.

    Args:
        query: ``(C, gh, gw)`` unit-norm descriptors of the query.
        supports: K ``(C, gh, gw)`` descriptors; fg / bg: K ``(gh, gw)`` weights (``area_weights``).

    Returns:
        ``float32 (gh, gw)``: cos(query, fg prototype) - cos(query, bg prototype); > 0 = foreground.
        Without any foreground (or background) weight, that prototype is zero and its cosine 0.
    """
    s = torch.stack(list(supports))                       # (K, C, gh, gw)
    f_w, b_w = torch.stack(list(fg))[:, None], torch.stack(list(bg))[:, None]
    proto_fg = F.normalize((s * f_w).sum(dim=(0, 2, 3)), dim=0)
    proto_bg = F.normalize((s * b_w).sum(dim=(0, 2, 3)), dim=0)
    return torch.einsum("chw,c->hw", query, proto_fg) - torch.einsum("chw,c->hw", query, proto_bg)


def upsample(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(gh, gw)`` grid scores -> ``float32 (H, W)`` by bilinear interpolation (align_corners=False)."""
    return F.interpolate(scores[None, None].float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def binary_to_float(mask: np.ndarray) -> np.ndarray:
    """``uint8`` {0, 1, 255} -> ``float32`` {0, 1} (ignore becomes 0, i.e. not foreground)."""
    return ((mask == 1) & (mask != IGNORE)).astype(np.float32)
