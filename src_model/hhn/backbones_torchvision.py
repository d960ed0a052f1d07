"""The torchvision backbones' tap modules (ResNet-50, VGG-16); taps as described in :mod:`hhn.backbones`.

Kept apart so that torchvision is imported only when one of them is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers


class ResNet50Taps(ResNet):
    """torchvision ResNet-50 without ``fc``/``avgpool``; forward returns the 13 bottleneck taps."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc, self.avgpool

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """images (B, 3, h, w) -> 13 maps: 4 x (B, 512, h/8), 6 x (B, 1024, h/16), 3 x (B, 2048, h/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        taps = []
        for layer in (self.layer2, self.layer3, self.layer4):
            for block in layer:
                identity = x if block.downsample is None else block.downsample(x)
                out = block.relu(block.bn1(block.conv1(x)))
                out = block.relu(block.bn2(block.conv2(out)))
                out = block.bn3(block.conv3(out)) + identity
                taps.append(out)
                x = F.relu(out)  # not the block's inplace ReLU: it would overwrite the tap
        return taps


class VGG16Taps(nn.Module):
    """torchvision VGG-16 ``features`` only (same parameter names); forward returns 7 taps."""

    TAP_MODULES = (17, 19, 21, 24, 26, 28, 30)

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg_make_layers(vgg_cfgs["D"], batch_norm=False)
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False
            elif isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, h, w) -> 7 maps of 512 channels: 3 @ stride 8, 3 @ 16, pool5 @ 32 (floor)."""
        taps, x = [], images
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.TAP_MODULES:
                taps.append(x)
        return taps
