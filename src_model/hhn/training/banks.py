"""In-memory banks that make CPU training practical: every image goes through the frozen backbone once.

- ``FeatureBank``: backbone taps of each image at the network geometry, float16 on the CPU, optionally
  cached on disk (safetensors, keyed by image name, backbone and input size; refused on mismatch).
- ``TargetBank``: binary masks of (image, class) at the network input size: 1 = class, 0 = other,
  255 = void.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from hhn.data.base import IGNORE, SegmentationDataset
from hhn.preprocess import resize_mask, to_network_input


class FeatureBank:
    """Backbone taps per image name: ``features(name)`` -> list of ``float16 (C_t, h_t, w_t)`` tensors.

    Args:
        model: an ``HHN`` (its ``extract_features`` and ``config.image_size`` are used).
        dataset: where the images come from.
        names: images to encode.
        cache_file: optional ``.safetensors`` file; reused when its metadata matches, rewritten otherwise.
        progress: optional callback ``(done, total)``.
        write_cache: False: only read ``cache_file`` (features missing from it are computed in memory), e.g.
            on the training ranks other than the one writing the cache.
    """

    def __init__(self, model, dataset: SegmentationDataset, names: Iterable[str],
                 cache_file: str | Path | None = None,
                 progress: Callable[[int, int], object] | None = None, write_cache: bool = True) -> None:
        self.size = tuple(model.config.image_size)
        self.signature = {"backbone": model.config.backbone, "size": list(self.size), "version": 1}
        names = sorted(set(names))
        self._feats: dict[str, list[torch.Tensor]] = {}
        cache_file = Path(cache_file) if cache_file is not None else None
        if cache_file is not None and cache_file.is_file():
            self._load(cache_file, names)
        missing = [n for n in names if n not in self._feats]
        device = next(model.parameters()).device
        for i, name in enumerate(missing):
            x = to_network_input(dataset.load_image(name), self.size).to(device)
            self._feats[name] = [t[0].to("cpu", torch.float16) for t in model.extract_features(x)]
            if progress is not None:
                progress(i + 1, len(missing))
        if cache_file is not None and missing and write_cache:
            self._save(cache_file)

    def features(self, name: str) -> list[torch.Tensor]:
        """Taps of ``name``, float16 ``(C, h, w)`` each."""
        return self._feats[name]

    def _load(self, path: Path, names: Sequence[str]) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("signature", "{}")) != self.signature:
                return  # another backbone or size: recompute (and overwrite the cache)
            keys = set(f.keys())
            for name in names:
                taps = sorted((k for k in keys if k.startswith(name + "/")), key=lambda k: int(k.rsplit("/", 1)[1]))
                if taps:
                    self._feats[name] = [f.get_tensor(k) for k in taps]

    def _save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from hhn.checkpoints import atomic_write

        tensors = {f"{n}/{i}": t.contiguous() for n, taps in self._feats.items() for i, t in enumerate(taps)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"signature": json.dumps(self.signature)}))


class TargetBank:
    """``target(name, class_name)`` -> ``uint8 (h, w)`` at the network size: 1 class, 0 other, 255 void."""

    def __init__(self, dataset: SegmentationDataset, size: tuple[int, int]) -> None:
        self.dataset, self.size = dataset, (size[0], size[1])
        self._labels: dict[str, np.ndarray] = {}

    def target(self, name: str, class_name: str) -> np.ndarray:
        if name not in self._labels:
            self._labels[name] = resize_mask(self.dataset.load_label(name).astype(np.int32), self.size, soft=False)
        label = self._labels[name]
        out = (label == self.dataset.class_id(class_name)).astype(np.uint8)
        out[label == IGNORE] = IGNORE
        return out
