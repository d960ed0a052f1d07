"""Center-pivot 4D convolution and the HSNet "squeeze" encoder of the correlation pyramid (spec 1.5).

4D tensors are (B, C, Ha, Wa, Hb, Wb): dims Ha, Wa index the first image (kept at full size), dims
Hb, Wb the second image (squeezed by the strides).

Speed (CPU) without changing the arithmetic beyond float32 summation order (~1e-6):

- Memory layout. The encoder keeps its 4D tensors *channels-last*: logically (B, C, Ha, Wa, Hb, Wb),
  stored as (B, Ha, Wa, Hb, Wb, C) (see :func:`channels_last_4d`). Both 2D convs of a center-pivot
  conv then read NHWC views (oneDNN's fast path), the second-image conv without any copy, and the
  bilinear resize of the first-image dims is a plain NHWC resize.
- Tiny second-image grids. When the second conv's input grid is no larger than its kernel
  (Hb * Wb <= k * k: the mix blocks' 2 x 2 and the last squeeze units' 3 x 3 grids), most kernel taps
  fall on padding; it is computed as one matrix product with the conv's (Hb*Wb*Cin, Ho*Wo*Cout)
  matrix, gathered from the kernel (:func:`dense_conv_matrix`).
- GroupNorm + ReLU run as one autograd function on the channels-last data
  (:class:`GroupNormReLUFunction`), two-pass statistics as ``torch.nn.GroupNorm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

#: Output channels of the three units of every encoder block.
SQUEEZE_CHANNELS = (16, 64, 128)
ENCODER_DIM = 128
GROUPNORM_GROUPS = 4


def channels_last_4d(x: torch.Tensor) -> torch.Tensor:
    """The same logical (B, C, Ha, Wa, Hb, Wb) tensor, stored channel-innermost (a copy only if needed)."""
    return x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) contiguous -> the (N, C, H, W) channels_last view that 2D ops take."""
    return x.permute(0, 3, 1, 2)


@lru_cache(maxsize=64)
def _dense_index(cin: int, cout: int, kernel: int, stride: int, hin: int, win: int,
                 device: torch.device) -> torch.Tensor:
    """int64 (hin*win*cin, ho*wo*cout) on ``device``: position of each matrix entry in the flattened
    kernel (cout, cin, k, k), or cout*cin*k*k (a zero) where the tap falls outside the kernel. Cached per
    device, so a GPU forward does not copy it from the host every time."""
    pad = kernel // 2
    ho, wo = (hin + 2 * pad - kernel) // stride + 1, (win + 2 * pad - kernel) // stride + 1
    i, j, c, a, b, o = torch.meshgrid(*(torch.arange(n) for n in (hin, win, cin, ho, wo, cout)), indexing="ij")
    ki, kj = i - a * stride + pad, j - b * stride + pad
    inside = (ki >= 0) & (ki < kernel) & (kj >= 0) & (kj < kernel)
    flat = ((o * cin + c) * kernel + ki.clamp(0, kernel - 1)) * kernel + kj.clamp(0, kernel - 1)
    index = torch.where(inside, flat, cout * cin * kernel * kernel).reshape(hin * win * cin, ho * wo * cout)
    return index.to(device)


def dense_conv_matrix(conv: nn.Conv2d, hin: int, win: int) -> torch.Tensor:
    """The linear map of ``conv`` (square kernel k, stride s, padding k // 2, no bias) on inputs of
    (hin, win), as a (hin*win*Cin, ho*wo*Cout) matrix acting on NHWC-flattened rows: an input row
    (hin, win, Cin) times the matrix is the output (ho, wo, Cout). Differentiable in ``conv.weight``."""
    cout, cin, k, _ = conv.weight.shape
    index = _dense_index(cin, cout, k, conv.stride[0], hin, win, conv.weight.device)
    return torch.cat([conv.weight.reshape(-1), conv.weight.new_zeros(1)])[index]


class CenterPivotConv4d(nn.Module):
    """Center-pivot 4D conv: a 2D conv over the first image's dims plus one over the second's.

    ``first``: Conv2d(k x k, stride 1, pad k//2) over (Ha, Wa), evaluated only at second-image
    positions 0, s, 2s, ... . ``second``: Conv2d(k x k, stride s, pad k//2) over (Hb, Wb), at every
    first-image position. Both have bias; the output is their sum (first + second).
    (B, Cin, Ha, Wa, Hb, Wb) -> (B, Cout, Ha, Wa, ceil(Hb/s), ceil(Wb/s)), stored channels-last
    (any input layout is accepted; channels-last input avoids a copy).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.first = nn.Conv2d(in_channels, out_channels, kernel, stride=1, padding=kernel // 2)
        self.second = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        rows = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1)  # (B, Ha, Wa, Hb, Wb, Cin), contiguous
        bsz, ha, wa, hb, wb, cin = rows.shape
        ho, wo = -(-hb // s), -(-wb // s)
        pivots = rows[:, :, :, ::s, ::s] if s > 1 else rows  # no slice: its backward would copy
        pivots = pivots.permute(0, 3, 4, 1, 2, 5).reshape(bsz * ho * wo, ha, wa, cin)
        k = self.second.kernel_size[0]
        if hb * wb <= k * k:  # most taps on padding: one matrix product, which also adds ``first``
            first_bias, second_bias = self.first.bias, self.second.bias
            assert first_bias is not None and second_bias is not None  # both convs are built with a bias
            first = F.conv2d(_nhwc(pivots), self.first.weight, first_bias + second_bias,
                             padding=self.first.padding)
            first = first.permute(0, 2, 3, 1).reshape(bsz, ho, wo, ha, wa, -1).permute(0, 3, 4, 1, 2, 5)
            out = torch.addmm(first.reshape(bsz * ha * wa, -1), rows.reshape(bsz * ha * wa, -1),
                              dense_conv_matrix(self.second, hb, wb))
        else:
            first = self.first(_nhwc(pivots)).permute(0, 2, 3, 1).reshape(bsz, ho, wo, ha, wa, -1)
            second = self.second(_nhwc(rows.reshape(bsz * ha * wa, hb, wb, cin))).permute(0, 2, 3, 1)
            out = second.reshape(bsz, ha, wa, ho, wo, -1) + first.permute(0, 3, 4, 1, 2, 5)
        return out.reshape(bsz, ha, wa, ho, wo, -1).permute(0, 5, 1, 2, 3, 4)


class GroupNormReLUFunction(torch.autograd.Function):
    """relu(group_norm(x)) on channel-innermost data, with a hand-written backward.

    x (B, S, C) contiguous float, S = every spatial position; groups of C / G consecutive channels.
    Statistics per (sample, group) over S x C/G values, in two passes like ``torch.nn.GroupNorm``:
    the mean, then the biased variance as the mean of (x - mean)^2. Returns (B, S, C).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                eps: float) -> torch.Tensor:
        bsz, _, ch = x.shape
        grouped = x.view(bsz, -1, groups, ch // groups)
        mean = x.mean(dim=1).view(bsz, 1, groups, -1).mean(dim=3, keepdim=True)  # (B, 1, G, 1)
        buffer = torch.sub(grouped, mean).square_()  # reused for the output: fresh pages are slow
        var = buffer.mean(dim=1).mean(dim=2).view_as(mean)
        rstd = (var + eps).rsqrt()
        scale = rstd * weight.view(1, 1, groups, -1)
        shift = bias.view(1, 1, groups, -1) - mean * scale
        out = torch.addcmul(shift, grouped, scale, out=buffer).relu_().view_as(x)
        ctx.groups = groups
        ctx.save_for_backward(x, out, weight, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, out, weight, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        bsz, _, ch = x.shape
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0)  # through the ReLU: 0 where out <= 0
        sum_g = grad.sum(dim=1).view(bsz, groups, -1)  # (B, G, C/G)
        sum_gx = (grad * x).sum(dim=1).view(bsz, groups, -1)
        mean, rstd = mean.view(bsz, groups, 1), rstd.view(bsz, groups, 1)
        sum_g_xhat = rstd * (sum_gx - mean * sum_g)  # per channel: sum of grad * normalised x
        w = weight.view(1, groups, -1)
        count = x.shape[1] * (ch // groups)
        mean_wg = (w * sum_g).sum(dim=2, keepdim=True) / count  # mean over the group of grad * weight
        mean_wg_xhat = (w * sum_g_xhat).sum(dim=2, keepdim=True) / count
        # d x = rstd * (w g - mean(w g) - xhat * mean(w g xhat)), written as g * a + x * b + c
        coef_x = -rstd * rstd * mean_wg_xhat
        const = rstd * (rstd * mean_wg_xhat * mean - mean_wg)
        grouped = x.view(bsz, -1, groups, ch // groups)
        grad_x = torch.addcmul(const.unsqueeze(1), grouped, coef_x.unsqueeze(1))
        grad_x.addcmul_(grad.reshape(grouped.shape), (rstd * w).unsqueeze(1))
        return grad_x.view_as(x), sum_g_xhat.sum(dim=0).reshape(-1), sum_g.sum(dim=0).reshape(-1), None, None


class Conv4dUnit(nn.Module):
    """CenterPivotConv4d -> GroupNorm(4) -> ReLU; output stored channels-last."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = CenterPivotConv4d(in_channels, out_channels, kernel, stride)
        self.norm = nn.GroupNorm(GROUPNORM_GROUPS, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # logical (B, C, Ha, Wa, Hb, Wb), stored (B, Ha, Wa, Hb, Wb, C)
        rows = y.permute(0, 2, 3, 4, 5, 1)
        # float32 statistics also under mixed precision (a no-op for float32 input)
        flat = GroupNormReLUFunction.apply(rows.reshape(rows.shape[0], -1, rows.shape[-1]).float(),
                                           self.norm.weight, self.norm.bias, self.norm.num_groups, self.norm.eps)
        return flat.view(rows.shape).permute(0, 5, 1, 2, 3, 4)


def _block(in_channels: int, out_channels: Sequence[int], kernels: Sequence[int],
           strides: Sequence[int]) -> nn.Sequential:
    chans = (in_channels, *out_channels)
    return nn.Sequential(*(Conv4dUnit(chans[i], chans[i + 1], kernels[i], strides[i]) for i in range(3)))


def upsample_first_dims(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of dims Ha, Wa of (B, C, Ha, Wa, Hb, Wb) to ``size``;
    the result is stored channels-last."""
    rows = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1)  # (B, Ha, Wa, Hb, Wb, C)
    bsz, _, _, hb, wb, ch = rows.shape
    flat = F.interpolate(_nhwc(rows.reshape(bsz, *rows.shape[1:3], -1)), size, mode="bilinear", align_corners=True)
    return flat.permute(0, 2, 3, 1).reshape(bsz, *size, hb, wb, ch).permute(0, 5, 1, 2, 3, 4)


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
        """pyramid: (deep, middle, shallow) correlations (B, n_l, Ha_l, Wa_l, Hb_l, Wb_l), fastest when
        stored channels-last (as :func:`hhn.correlation.correlation_pyramid` returns them) ->
        (B, 128, Ha_shallow, Wa_shallow) contiguous, aligned with the FIRST image of the correlation."""
        deep = self.squeeze_deep(pyramid[0])
        middle = self.squeeze_middle(pyramid[1])
        shallow = self.squeeze_shallow(pyramid[2])
        mixed = self.mix_deep_middle(upsample_first_dims(deep, middle.shape[2:4]) + middle)
        mixed = self.mix_middle_shallow(upsample_first_dims(mixed, shallow.shape[2:4]) + shallow)
        rows = mixed.permute(0, 2, 3, 4, 5, 1)  # (B, Ha, Wa, Hb, Wb, C)
        return rows.reshape(*rows.shape[:3], -1, rows.shape[-1]).mean(dim=3).permute(0, 3, 1, 2).contiguous()
