"""Frozen feature backbones: one registry, ``BACKBONES[name] -> BackboneSpec``.

Each backbone module's ``forward(images)`` takes ImageNet-normalised images (B, 3, h, w) float32 and
returns the list of *tapped* feature maps (spec 1.4). Parameter names are the upstream ones
(torchvision / lukemelas EfficientNet), so the authors' ``module.backbone.*`` keys load 1:1 and the
ImageNet weight files load after removing :attr:`BackboneSpec.absent_pretrained_prefixes`.

Taps (channels @ stride, for a 400x400 input where it matters):

- ``resnet50`` (torchvision, v1.5): the output of every bottleneck of layer2..layer4 taken after the
  residual addition and BEFORE the block's final ReLU: 4 x 512 @ 8 (50x50), 6 x 1024 @ 16 (25x25),
  3 x 2048 @ 32 (13x13). Stem and layer1 run, their outputs are not kept. ``fc`` is not built.
- ``vgg16`` (torchvision): ``features`` modules 17, 19, 21 (conv4_1..3, pre-ReLU, 512 @ 8),
  24, 26, 28 (conv5_1..3, pre-ReLU, 512 @ 16) and 30 (pool5, 512 @ 32, 12x12 at 400: VGG floors).
  The ReLUs are made non-inplace so the taps are not overwritten. ``classifier`` is not built.
- ``efficientnet_lite0`` (``efficientnet_lite_pytorch``, our choice): the output of every MBConv
  block from the first stride-8 block on, i.e. blocks 3-4 (40 @ 8), 5-7 (80 @ 16), 8-10 (112 @ 16),
  11-14 (192 @ 32) and 15 (320 @ 32): 13 taps grouped 2 / 6 / 5 by stride, like ResNet's 4 / 6 / 3.
  MBConv blocks end with a linear projection (+ skip), so these are pre-activation maps as for ResNet.
  The conv head and classifier are not built. 'Same' padding is computed for the configured size.

The torchvision backbones live in :mod:`hhn.backbones_torchvision`, imported only when one is built: importing
torchvision costs 164 MB of resident memory that the default (EfficientNet-Lite0) model does not need.

HA tap choice (spec 1.6), generalised as "query = first tap of each stride group, support = last tap
of each stride group", with the residual taken from the support's stride-16 tap. For ResNet-50 that is
query (0, 4, 10), support (3, 9, 12), residual 9 exactly as released; VGG-16 is listed explicitly
(query (0, 3, 6), support (2, 5, 6), residual 5) because its pool5 tap is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn


class EfficientNetLite0Taps(EfficientNet):
    """lukemelas-style EfficientNet-Lite0 without head/classifier; forward returns 13 block taps."""

    FIRST_TAP_BLOCK = 3

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """images (B, 3, h, w) -> 2 x (B, 40, h/8), 3 x 80 + 3 x 112 @ h/16, 4 x 192 + 320 @ h/32."""
        x = self._swish(self._bn0(self._conv_stem(images)))
        taps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index >= self.FIRST_TAP_BLOCK:
                taps.append(x)
        return taps


def _build_resnet50(image_size: tuple[int, int]) -> nn.Module:
    from hhn.backbones_torchvision import ResNet50Taps  # torchvision (164 MB resident) only when used

    return ResNet50Taps()


def _build_vgg16(image_size: tuple[int, int]) -> nn.Module:
    from hhn.backbones_torchvision import VGG16Taps

    return VGG16Taps()


def _build_efficientnet_lite0(image_size: tuple[int, int]) -> nn.Module:
    model = EfficientNetLite0Taps.from_name("efficientnet-lite0", image_size=list(image_size))
    del model._conv_head, model._bn1, model._fc, model._avg_pooling, model._dropout
    return model


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: how to build it and what its taps are.

    tap_channels / tap_strides: one entry per tapped map, in forward order (how a map's side follows
    from the input side is ``hhn.registry.BACKBONE_ROUNDING[name]``).
    query_taps / support_taps: HA's (low, mid, high) tap indices for each image (spec 1.6).
    residual_tap: the support tap feeding HT's heterogeneous residual of BOTH branches (spec 1.7.5).
    absent_pretrained_prefixes: key prefixes of the upstream ImageNet weight file that this module
    does not build (remove them, then ``load_state_dict(strict=True)``).
    """

    name: str
    tap_channels: tuple[int, ...]
    tap_strides: tuple[int, ...]
    query_taps: tuple[int, int, int]
    support_taps: tuple[int, int, int]
    residual_tap: int
    absent_pretrained_prefixes: tuple[str, ...]
    factory: Callable[[tuple[int, int]], nn.Module]

    def pyramid_groups(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Tap indices of the correlation groups (deep = stride 32, middle = 16, shallow = 8)."""
        return tuple(tuple(i for i, s in enumerate(self.tap_strides) if s == stride)
                     for stride in (32, 16, 8))  # type: ignore[return-value]

    def projection_channels(self) -> tuple[int, ...]:
        """Distinct channel counts of the HA / residual taps: one shared 1x1 conv -> 128 per count."""
        taps = (*self.query_taps, *self.support_taps, self.residual_tap)
        return tuple(sorted({self.tap_channels[i] for i in taps}))

    def build(self, image_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
        """Create the tap module in eval mode; ``pretrained`` fills it via ``hhn.weights.files``.

        Raises ``hhn.errors.WeightsNotFoundError`` when pretrained weights are requested but absent.
        """
        module = self.factory((image_size[0], image_size[1]))
        if pretrained:
            from hhn.weights.files import load_backbone_weights

            load_backbone_weights(self.name, module)
        return module.eval()


def _stride_groups(*groups: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(count, channels, stride) groups -> (tap_channels, tap_strides)."""
    channels = tuple(c for n, c, _ in groups for _ in range(n))
    strides = tuple(s for n, _, s in groups for _ in range(n))
    return channels, strides


_RESNET_CH, _RESNET_ST = _stride_groups((4, 512, 8), (6, 1024, 16), (3, 2048, 32))
_VGG_CH, _VGG_ST = _stride_groups((3, 512, 8), (3, 512, 16), (1, 512, 32))
_LITE_CH, _LITE_ST = _stride_groups((2, 40, 8), (3, 80, 16), (3, 112, 16), (4, 192, 32), (1, 320, 32))

BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        name="resnet50", tap_channels=_RESNET_CH, tap_strides=_RESNET_ST,
        query_taps=(0, 4, 10), support_taps=(3, 9, 12), residual_tap=9,
        absent_pretrained_prefixes=("fc.",), factory=_build_resnet50),
    "vgg16": BackboneSpec(
        name="vgg16", tap_channels=_VGG_CH, tap_strides=_VGG_ST,
        query_taps=(0, 3, 6), support_taps=(2, 5, 6), residual_tap=5,
        absent_pretrained_prefixes=("classifier.",), factory=_build_vgg16),
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", tap_channels=_LITE_CH, tap_strides=_LITE_ST,
        query_taps=(0, 2, 8), support_taps=(1, 7, 12), residual_tap=7,
        absent_pretrained_prefixes=("_conv_head.", "_bn1.", "_fc."), factory=_build_efficientnet_lite0),
}


def build_backbone(name: str, image_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
    """Build the tap module of backbone ``name`` for inputs of ``image_size`` (h, w)."""
    return BACKBONES[name].build(image_size, pretrained)
