"""Image and mask preprocessing shared by the predictor, the priors, training and evaluation.

One function per conversion so every path sees identical network inputs:

- ``to_network_input``: ``uint8 (H, W, 3)`` RGB -> ``float32 (1, 3, h, w)``, squash-resized (aspect ratio
  not kept, as in the paper) with antialiased bilinear interpolation, ImageNet mean/std normalised.
- ``resize_mask``: ``(H, W)`` mask or prior -> ``(h, w)``; nearest for label-like arrays, bilinear for
  soft maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a ``uint8 (H, W, 3)`` array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {got}")


def to_network_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``float32 (1, 3, h, w)`` ImageNet-normalised at ``size = (h, w)``."""
    check_rgb(image)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_mask(mask: np.ndarray, size: tuple[int, int], soft: bool) -> np.ndarray:
    """Resize a ``(H, W)`` mask to ``size = (h, w)``.

    soft=False: nearest neighbour, dtype kept (label maps, binary masks with 255 = ignore).
    soft=True: bilinear (align_corners=False) on float32 values (priors in [0, 1]).
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    if tuple(mask.shape) == tuple(size):
        return mask.astype(np.float32) if soft else mask
    t = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))[None, None]
    if soft:
        return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return F.interpolate(t, size=tuple(size), mode="nearest")[0, 0].numpy().astype(mask.dtype)
