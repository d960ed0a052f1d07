"""Center-pivot 4D convolution and the HSNet "squeeze" encoder of the correlation pyramid (spec 1.5).

4D tensors are (B, C, Ha, Wa, Hb, Wb): dims Ha, Wa index the first image (kept at full size), dims
Hb, Wb the second image (squeezed by the strides).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Output channels of the three units of every encoder block.
SQUEEZE_CHANNELS = (16, 64, 128)
ENCODER_DIM = 128
GROUPNORM_GROUPS = 4


class CenterPivotConv4d(nn.Module):
    """Center-pivot 4D conv: a 2D conv over the first image's dims plus one over the second's.

    ``first``: Conv2d(k x k, stride 1, pad k//2) over (Ha, Wa), evaluated only at second-image
    positions 0, s, 2s, ... . ``second``: Conv2d(k x k, stride s, pad k//2) over (Hb, Wb), at every
    first-image position. Both have bias; the output is their sum (first + second).
    (B, Cin, Ha, Wa, Hb, Wb) -> (B, Cout, Ha, Wa, ceil(Hb/s), ceil(Wb/s)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.first = nn.Conv2d(in_channels, out_channels, kernel, stride=1, padding=kernel // 2)
        self.second = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        pivots = x[..., ::s, ::s] if s > 1 else x
        bsz, cin, ha, wa, hb, wb = pivots.shape
        out1 = self.first(pivots.permute(0, 4, 5, 1, 2, 3).reshape(-1, cin, ha, wa))
        out1 = out1.view(bsz, hb, wb, *out1.shape[-3:]).permute(0, 3, 4, 5, 1, 2)
        hb, wb = x.shape[-2:]
        out2 = self.second(x.permute(0, 2, 3, 1, 4, 5).reshape(-1, cin, hb, wb))
        out2 = out2.view(bsz, ha, wa, *out2.shape[-3:]).permute(0, 3, 1, 2, 4, 5)
        return out1 + out2


class Conv4dUnit(nn.Module):
    """CenterPivotConv4d -> GroupNorm(4) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = CenterPivotConv4d(in_channels, out_channels, kernel, stride)
        self.norm = nn.GroupNorm(GROUPNORM_GROUPS, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def _block(in_channels: int, out_channels: Sequence[int], kernels: Sequence[int],
           strides: Sequence[int]) -> nn.Sequential:
    chans = (in_channels, *out_channels)
    return nn.Sequential(*(Conv4dUnit(chans[i], chans[i + 1], kernels[i], strides[i]) for i in range(3)))


def upsample_first_dims(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of dims Ha, Wa of (B, C, Ha, Wa, Hb, Wb) to ``size``."""
    bsz, ch, ha, wa, hb, wb = x.shape
    flat = x.permute(0, 4, 5, 1, 2, 3).reshape(bsz * hb * wb, ch, ha, wa)
    flat = F.interpolate(flat, size, mode="bilinear", align_corners=True)
    return flat.view(bsz, hb, wb, ch, *size).permute(0, 3, 4, 5, 1, 2)


class SqueezeEncoder(nn.Module):
    """The "HPN learner" without its decoder: correlation pyramid -> (B, 128, H8, W8).

    Blocks (kernels / strides of their three units): ``squeeze_deep`` (3,3,3 / 2,2,2) on the stride-32
    group, ``squeeze_middle`` (5,3,3 / 4,2,2) on stride 16, ``squeeze_shallow`` (5,5,3 / 4,4,2) on
    stride 8; ``mix_deep_middle`` and ``mix_middle_shallow`` (3,3,3 / 1,1,1) at 128 channels.
    Flow: deep -> upsample first dims -> + middle -> mix -> upsample -> + shallow -> mix -> mean over
    the second image's dims.
    """

    def __init__(self, group_sizes: Sequence[int]) -> None:
        """group_sizes: number of taps (input channels) of the deep, middle and shallow groups."""
        super().__init__()
        deep, middle, shallow = group_sizes
        self.squeeze_deep = _block(deep, SQUEEZE_CHANNELS, (3, 3, 3), (2, 2, 2))
        self.squeeze_middle = _block(middle, SQUEEZE_CHANNELS, (5, 3, 3), (4, 2, 2))
        self.squeeze_shallow = _block(shallow, SQUEEZE_CHANNELS, (5, 5, 3), (4, 4, 2))
        mix = (ENCODER_DIM,) * 3
        self.mix_deep_middle = _block(ENCODER_DIM, mix, (3, 3, 3), (1, 1, 1))
        self.mix_middle_shallow = _block(ENCODER_DIM, mix, (3, 3, 3), (1, 1, 1))

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """pyramid: (deep, middle, shallow) correlations (B, n_l, Ha_l, Wa_l, Hb_l, Wb_l) ->
        (B, 128, Ha_shallow, Wa_shallow), aligned with the FIRST image of the correlation."""
        deep = self.squeeze_deep(pyramid[0])
        middle = self.squeeze_middle(pyramid[1])
        shallow = self.squeeze_shallow(pyramid[2])
        mixed = self.mix_deep_middle(upsample_first_dims(deep, middle.shape[2:4]) + middle)
        mixed = self.mix_middle_shallow(upsample_first_dims(mixed, shallow.shape[2:4]) + shallow)
        bsz, ch, ha, wa = mixed.shape[:4]
        return mixed.reshape(bsz, ch, ha, wa, -1).mean(dim=-1)
