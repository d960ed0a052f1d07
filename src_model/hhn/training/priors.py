"""Tag priors for training, computed once per (image, class) from a seeded gallery.

Test time (``hhn.evaluation.runner``, the engine) fits the class's tag prior on the tagged images of an
episode (supports + extra positives) against negatives, then maps the query. Training needs the prior
of every (image, class) pair many times, so it is computed once per pair with the same protocol: the
prior of class c is fitted on ``positives`` other images tagged c (never the image itself, as for a
query) against ``negatives`` context-matched images without c, then mapped on the image.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from hhn.checkpoints import atomic_write
from hhn.data.base import SegmentationDataset
from hhn.data.episodes import EpisodeSampler
from hhn.preprocess import resize_mask
from hhn.priors.base import TaggedImage, TagPrior


class PriorBank:
    """``prior(name, class_name)`` -> ``float32 (h, w)`` in [0, 1] at ``size`` (computed once, kept in RAM).

    Args:
        dataset: the training dataset.
        prior: the tag prior (e.g. ``CosegPrior``).
        size: stored resolution (the decoder head size is enough: the network resizes priors itself).
        positives / negatives: gallery sizes (as ``wfss eval --prior-positives/--prior-negatives``).
        seed: gallery seed.
        masked: hand the positives to the prior with their pixel masks (as the engine fits a prior on
            accepted masks) instead of by their tags only.
    """

    def __init__(self, dataset: SegmentationDataset, prior: TagPrior, size: tuple[int, int],
                 positives: int = 3, negatives: int = 3, seed: int = 0, masked: bool = False) -> None:
        self.dataset, self.tag_prior, self.size = dataset, prior, (size[0], size[1])
        self.positives, self.seed, self.masked = positives, seed, masked
        self._negatives = EpisodeSampler(dataset, shots=1, seed=seed, prior_negatives=negatives)
        self._maps: dict[tuple[str, str], np.ndarray] = {}

    def _rng(self, name: str, class_name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(f"{name}\0{class_name}".encode())])

    def prior(self, name: str, class_name: str) -> np.ndarray:
        key = (name, class_name)
        if key not in self._maps:
            rng = self._rng(name, class_name)
            others = [n for n in self.dataset.images_with(class_name) if n != name]
            pos = [others[i] for i in rng.permutation(len(others))[:self.positives]]
            neg = self._negatives.negatives_for(class_name, (name,), rng)
            fitted = self.tag_prior.fit(class_name, [self._positive(n, class_name) for n in pos],
                                        [self.dataset.load_image(n) for n in neg])
            self._maps[key] = resize_mask(fitted(self.dataset.load_image(name)), self.size, soft=True)
        return self._maps[key]

    def _positive(self, name: str, class_name: str) -> np.ndarray | TaggedImage:
        image = self.dataset.load_image(name)
        if not self.masked:
            return image
        mask = self.dataset.load_label(name) == self.dataset.class_id(class_name)
        return TaggedImage(image, mask.astype(np.float32))

    def share(self, send: Callable[[dict], dict]) -> None:
        """Replace the maps computed so far by ``send(maps)``, e.g. rank 0's maps broadcast to every process
        of a distributed run (in memory, float32: the ``.npz`` file holds float16)."""
        self._maps = send(self._maps)

    def fill(self, pairs: Iterable[tuple[str, str]], progress: Callable[[int, int], object] | None = None) -> None:
        """Compute the priors of ``pairs`` now (so training steps never wait on them)."""
        pairs = list(pairs)
        for i, (name, class_name) in enumerate(pairs):
            self.prior(name, class_name)
            if progress is not None:
                progress(i + 1, len(pairs))

    def _settings(self) -> str:
        """What the stored maps depend on besides (image, class); a saved file with others is ignored."""
        return json.dumps({"prior": type(self.tag_prior).__name__, "size": list(self.size),
                           "positives": self.positives, "negatives": self._negatives.prior_negatives,
                           "seed": self.seed, **({"masked": True} if self.masked else {})})

    def save(self, path: str | Path) -> None:
        """Keep the computed priors in an ``.npz`` (atomic write) to skip them on ``--resume``: ``maps``
        float16 (N, h, w), ``keys`` (N, 2) image and class names, ``settings`` (see ``_settings``)."""
        keys = list(self._maps)
        maps = np.stack([self._maps[k] for k in keys]).astype(np.float16) if keys else np.zeros((0, *self.size))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy appends ".npz" to a path that lacks it
                np.savez_compressed(f, maps=maps, keys=np.array(keys, dtype=str).reshape(-1, 2),
                                    settings=np.array(self._settings()))

        atomic_write(Path(path), write)

    def load(self, path: str | Path) -> bool:
        """Read priors saved by :meth:`save` with the same settings; False (nothing read) when the file
        is missing or was made with other settings."""
        path = Path(path)
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as z:
            if "settings" not in z.files or str(z["settings"]) != self._settings():
                return False
            for (name, class_name), m in zip(z["keys"].tolist(), z["maps"]):
                self._maps[(name, class_name)] = m.astype(np.float32)
        return True

    def __call__(self, episode) -> tuple[np.ndarray, np.ndarray]:
        """``episode -> (query_prior, first_support_prior)`` for the training loop."""
        return self.prior(episode.query, episode.class_name), self.prior(episode.supports[0], episode.class_name)
