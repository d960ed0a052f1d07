"""Dense frozen-backbone descriptors shared by the co-segmentation prior and the MAP baseline.

An image is squash-resized to ``size x size`` and ImageNet-normalised (``hhn.preprocess``), then run
through a backbone of the ``hhn.backbones`` registry (default EfficientNet-Lite0, ImageNet weights).
The backbone's ``support_taps`` (the last tap of its stride-8, -16 and -32 groups; for Lite0 blocks 4,
10 and 15 with 40, 112 and 320 channels) are bilinearly resized to the stride-8 grid, L2-normalised
per tap, multiplied by per-tap weights (default equal), concatenated and L2-normalised again, so a dot
product of two descriptors is a cosine similarity in which tap ``i`` weighs ``w_i^2``
(``descriptors_from_taps``).

The same function turns the taps of ``hhn.predictor.EncodedImage`` into descriptors, so an
application that already encoded an image for the network need not run the backbone again.

Taps are cached per image in memory (float16, about 0.3 MB per image for Lite0 at 320x320; the
1024 most recently used images by default) and, with
``cache_dir``, on disk (``.npz`` named by the SHA-1 of the pixels, the backbone and the input size).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hhn.backbones import BACKBONES, build_backbone
from hhn.preprocess import to_network_input


class BoundedCache(OrderedDict):
    """A dict that keeps its ``max_items`` most recently used entries (memory flat in the number of
    images a long run meets). ``get_or_make(key, make)`` returns the entry, making it on a miss; it may
    be called from several threads (``make`` runs outside the lock, so two threads missing the same key
    both make it, and the last one is kept)."""

    def __init__(self, max_items: int) -> None:
        super().__init__()
        self.max_items = max(1, int(max_items))
        self._lock = threading.Lock()

    def __reduce__(self):
        """Pickled empty (a cache: its entries are remade on demand), e.g. when a prepared class is shipped to
        another process."""
        return (type(self), (self.max_items,))

    def get_or_make(self, key, make):
        with self._lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self._lock:
            self[key] = value
            while len(self) > self.max_items:
                self.popitem(last=False)
        return value

    def discard(self, key) -> None:
        """Drop ``key``'s entry if there is one."""
        with self._lock:
            self.pop(key, None)


def image_key(image: np.ndarray) -> str:
    """SHA-1 of an image's shape and pixels (a cache key that survives renames)."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def descriptors_from_taps(taps: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Tap maps ``(C_i, h_i, w_i)`` or ``(1, C_i, h_i, w_i)``, first one at stride 8 ->
    ``float32 (sum C_i, h_0, w_0)`` descriptors of unit L2 norm (each tap normalised first, then
    scaled by ``weights[i]``; ``None`` = all 1)."""
    maps = [t[0] if t.dim() == 4 else t for t in taps]
    weights = [1.0] * len(maps) if weights is None else list(weights)
    if len(weights) != len(maps):
        raise ValueError(f"{len(weights)} tap weights for {len(maps)} taps")
    size = tuple(maps[0].shape[-2:])
    out = [w * F.normalize(F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0], dim=0)
           for m, w in zip(maps, weights)]
    return F.normalize(torch.cat(out, dim=0), dim=0)


class DenseFeatures:
    """Image -> unit-norm descriptors on the backbone's stride-8 grid.

    Args:
        backbone: a name of ``hhn.backbones.BACKBONES``.
        size: square network input side; the grid is ``size / 8`` per side.
        device: torch device for the backbone.
        cache_dir: optional folder for the on-disk tap cache.
        pretrained: load the backbone's ImageNet weights (``hhn.weights.files``); False = random (tests).
        memory_items: images whose taps stay in memory (least recently used dropped; ~0.3 MB each).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", size: int = 320, device: str | torch.device = "cpu",
                 cache_dir: str | Path | None = None, pretrained: bool = True, memory_items: int = 1024) -> None:
        self.backbone, self.size, self.pretrained = backbone, int(size), pretrained
        self.taps = BACKBONES[backbone].support_taps
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._model: torch.nn.Module | None = None
        self._memory = BoundedCache(memory_items)
        self._build_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its backbone and lock (rebuilt on first use where it is unpickled)."""
        state = self.__dict__.copy()
        state["_model"], state["_build_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Descriptor length (40 + 112 + 320 = 472 for EfficientNet-Lite0)."""
        return sum(BACKBONES[self.backbone].tap_channels[i] for i in self.taps)

    def _tap_maps(self, image: np.ndarray, key: str) -> list[torch.Tensor]:
        path = self.cache_dir / f"{key}.npz" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                maps = [torch.from_numpy(z[f"t{i}"]) for i in range(len(self.taps))]
        else:
            with self._build_lock:  # one backbone, also when several threads ask at once
                if self._model is None:
                    self._model = build_backbone(self.backbone, (self.size, self.size),
                                                 self.pretrained).to(self.device)
            with torch.no_grad():
                out = self._model(to_network_input(image, (self.size, self.size)).to(self.device))
            maps = [out[i][0].float().cpu() for i in self.taps]
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + ".tmp.npz")
                arrays: dict[str, Any] = {f"t{i}": m.numpy() for i, m in enumerate(maps)}
                np.savez(tmp, **arrays)
                tmp.replace(path)
        return maps

    def __call__(self, image: np.ndarray, weights: Sequence[float] | None = None) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> ``float32 (C, g, g)``, every descriptor of unit L2 norm.

        ``weights``: one multiplier per tap (see ``descriptors_from_taps``); None = equal weights.
        """
        key = self._key(image)
        taps = self._memory.get_or_make(key, lambda: [m.half() for m in self._tap_maps(image, key)])
        return descriptors_from_taps(taps, weights)

    def _key(self, image: np.ndarray) -> str:
        origin = "imagenet" if self.pretrained else "random"
        return f"{image_key(image)}-{self.backbone}-{origin}-{self.size}"

    def forget(self, image: np.ndarray) -> None:
        """Drop the image's taps from memory (the on-disk cache keeps them)."""
        self._memory.discard(self._key(image))
