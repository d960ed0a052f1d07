"""Multi-layer 4D cosine correlation (spec 1.5), grouped by stride into the encoder's pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Added to each channel-vector norm before dividing (released code: 1e-5).
NORM_EPS = 1e-5


def layer_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Clamped cosine similarity between every position of two feature maps.

    first (B, C, Ha, Wa), second (B, C, Hb, Wb) float -> (B, Ha, Wa, Hb, Wb) in [0, 1]:
    ``max(0, <a_i / (|a_i| + eps), b_j / (|b_j| + eps)>)``.
    """
    bsz, ch, ha, wa = first.shape
    hb, wb = second.shape[-2:]
    a = first.reshape(bsz, ch, -1)
    a = a / (a.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    b = second.reshape(bsz, ch, -1)
    b = b / (b.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    return torch.bmm(a.transpose(1, 2), b).view(bsz, ha, wa, hb, wb).clamp(min=0)


def weight_by_mask(features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """HSNet-style masking: each map (B, C, h, w) times ``mask`` (B, H, W) in [0, 1] resized to (h, w)
    (bilinear, align_corners=True). Used only when ``config.mask_support_features`` is on."""
    mask = mask.unsqueeze(1).to(features[0].dtype)
    return [f * F.interpolate(mask, f.shape[-2:], mode="bilinear", align_corners=True) for f in features]


def correlation_pyramid(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor],
                        groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Correlations of paired taps, stacked per group.

    first / second: the tap lists of two images (same backbone). groups: tap indices per group, in
    the encoder's order (deep, middle, shallow). Returns one (B, n_taps_in_group, Ha, Wa, Hb, Wb)
    tensor per group, whose dims 2-3 index ``first``'s positions and dims 4-5 ``second``'s.
    """
    return [torch.stack([layer_correlation(first[i], second[i]) for i in group], dim=1) for group in groups]


def swap_pyramid(pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """corr(second -> first) from corr(first -> second): swap the two position pairs (a view).

    Exactly equal to recomputing it, since the cosine similarity is symmetric (spec, intro)."""
    return [c.permute(0, 1, 4, 5, 2, 3) for c in pyramid]
