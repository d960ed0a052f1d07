"""Multi-layer 4D cosine correlation (spec 1.5), grouped by stride into the encoder's pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Added to each channel-vector norm before dividing (released code: 1e-5).
NORM_EPS = 1e-5


def weight_by_mask(features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """HSNet-style masking: each map (B, C, h, w) times ``mask`` (B, H, W) in [0, 1] resized to (h, w)
    (bilinear, align_corners=True). Used only when ``config.mask_support_features`` is on."""
    mask = mask.unsqueeze(1).to(features[0].dtype)
    return [f * F.interpolate(mask, f.shape[-2:], mode="bilinear", align_corners=True) for f in features]


def _unit_columns(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*w): each position's channel vector divided by (its 2-norm + 1e-5)."""
    flat = features.reshape(*features.shape[:2], -1)
    return flat / (flat.norm(dim=1, p=2, keepdim=True) + NORM_EPS)


@torch.no_grad()
def correlation_pyramid(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor],
                        groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Clamped cosine similarities of paired taps, stacked per group (no autograd: the inputs are
    frozen backbone features).

    first / second: the tap lists of two images (same backbone), float (B, C_t, h_t, w_t). groups:
    tap indices per group, in the encoder's order (deep, middle, shallow). Returns one
    (B, n_taps_in_group, Ha, Wa, Hb, Wb) tensor per group with values in [0, 1],
    ``max(0, <a_i / (|a_i| + eps), b_j / (|b_j| + eps)>)`` for position i of ``first``'s tap (dims 2-3)
    and j of ``second``'s (dims 4-5). Stored channels-last (the tap dim innermost; see
    :func:`hhn.encoder4d.channels_last_4d`). ``correlation_pyramid(second, first, groups)`` is this one
    with the two position pairs swapped.
    """
    pyramid = []
    for group in groups:
        bsz, _, ha, wa = first[group[0]].shape
        hb, wb = second[group[0]].shape[-2:]
        stacked = first[group[0]].new_empty(bsz, ha * wa, hb * wb, len(group))
        scratch = stacked.new_empty(bsz, ha * wa, hb * wb)  # one buffer: no fresh pages per tap
        for slot, tap in enumerate(group):
            torch.bmm(_unit_columns(first[tap]).transpose(1, 2), _unit_columns(second[tap]), out=scratch)
            torch.clamp(scratch, min=0, out=stacked[..., slot])
        pyramid.append(stacked.view(bsz, ha, wa, hb, wb, -1).permute(0, 5, 1, 2, 3, 4))
    return pyramid


def swap_images(pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The same correlations seen from the other image: each (B, n, Ha, Wa, Hb, Wb) becomes
    (B, n, Hb, Wb, Ha, Wa), what ``correlation_pyramid(second, first, groups)`` computes (the same
    dot products: measured bit for bit equal on CPU), without computing it again. A view; the encoder
    stores it channels-last with one copy."""
    return [level.permute(0, 1, 4, 5, 2, 3) for level in pyramid]
