"""What every segmentation dataset offers the episode sampler: images, label maps and class presence.

A dataset is a set of named images, each with a label map of class ids (``IGNORE`` = 255 = unlabelled,
never background). Subclasses say where files live and which ids mean which class; this base class
derives everything else from the label maps: per-image class presence ("tags"), binary masks of one
class, and the images with or without a class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hhn.errors import UserError

IGNORE = 255


class DatasetError(UserError):
    """A dataset folder is missing files or holds files of the wrong kind; the message says which."""


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is ``"trn"`` or ``"val"`` (the fold datasets' two splits)."""
    if split not in ("trn", "val"):
        raise ValueError(f"split must be 'trn' or 'val', got {split!r}")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as upright ``uint8 (H, W, 3)`` RGB: its EXIF orientation is applied, as viewers
    (and napari-wfss's exports, whose masks are drawn on the upright image) show it; label maps have none."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports a broken PNG as SyntaxError
        raise DatasetError(f"cannot read image ({exc}): {path}; replace or remove the file") from exc


def read_label(path: Path) -> np.ndarray:
    """Read a PNG label map as an integer array ``(H, W)`` of class ids (palette indices for palette PNGs).

    Raises ``DatasetError`` for colour (RGB) PNGs, which hold colours rather than class ids.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                raise DatasetError(f"{path} is a {im.mode} image; label maps must be single-channel PNGs whose "
                                   "pixel values are class ids (255 = ignore). Convert it to 8-bit class ids.")
            return np.asarray(im).astype(np.int32)
    except Image.UnidentifiedImageError as exc:
        raise DatasetError(f"not a PNG label map, or its header is corrupt: {path}; export it again or remove "
                           "it with its image") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports a broken PNG as SyntaxError
        raise DatasetError(f"cannot read label map ({exc}): {path}; export it again or remove it with its "
                           "image") from exc


class SegmentationDataset(ABC):
    """Named images with class-id label maps and derived class presence.

    Args:
        min_fraction: a class is *present* in an image (the image is "tagged" with it, and can be a
            query or a support of that class) when it covers at least this fraction of the image's
            pixels (and at least one pixel). ``0.0`` = any pixel.
        exclude: class names never used as episode classes (e.g. ``horse`` on MSRC, 3 images).
    """

    def __init__(self, class_names: Mapping[int, str], names: Iterable[str], min_fraction: float = 0.0,
                 exclude: Iterable[str] = ()) -> None:
        self._class_names = dict(class_names)
        self._names = tuple(names)
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
        self.min_fraction = float(min_fraction)
        self.exclude = frozenset(exclude)
        unknown = self.exclude - set(self.class_names.values())
        if unknown:
            raise DatasetError(f"cannot exclude unknown class(es) {sorted(unknown)}; known: {self.classes}")
        self._fractions: dict[str, dict[str, float]] = {}

    # --- what subclasses provide -------------------------------------------------------------
    @property
    def class_names(self) -> Mapping[int, str]:
        """Label value -> class name for the real classes (background and ignore are not listed)."""
        return self._class_names

    @property
    def names(self) -> tuple[str, ...]:
        """All image names (stable order)."""
        return self._names

    @abstractmethod
    def image_path(self, name: str) -> Path:
        """Path of the image file of ``name``."""

    @abstractmethod
    def label_path(self, name: str) -> Path:
        """Path of the label-map PNG of ``name``."""

    # --- derived ----------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label-id order (background and ignore excluded)."""
        return tuple(self.class_names[i] for i in sorted(self.class_names))

    @property
    def episode_classes(self) -> tuple[str, ...]:
        """Classes that may be episode classes (``classes`` minus ``exclude``)."""
        return tuple(c for c in self.classes if c not in self.exclude)

    def class_id(self, class_name: str) -> int:
        """Label value of ``class_name``; ``DatasetError`` if the dataset has no such class."""
        for i, n in self.class_names.items():
            if n == class_name:
                return i
        raise DatasetError(f"unknown class {class_name!r}; this dataset has: {', '.join(self.classes)}")

    def load_image(self, name: str) -> np.ndarray:
        """``uint8 (H, W, 3)`` RGB image of ``name``."""
        return read_rgb(self.image_path(name))

    def load_label(self, name: str) -> np.ndarray:
        """``int32 (H, W)`` label map of ``name`` (class ids; ``IGNORE`` = unlabelled)."""
        return read_label(self.label_path(name))

    def binary_mask(self, name: str, class_name: str) -> np.ndarray:
        """``uint8 (H, W)`` mask of one class: 1 = the class, 0 = anything else, 255 = ignore."""
        label = self.load_label(name)
        out = (label == self.class_id(class_name)).astype(np.uint8)
        out[label == IGNORE] = IGNORE
        return out

    def class_fractions(self, name: str) -> dict[str, float]:
        """Fraction of the image's pixels covered by each class that occurs in it (cached)."""
        if name not in self._fractions:
            label = self.load_label(name)
            ids, counts = np.unique(label, return_counts=True)
            total = float(label.size)
            self._fractions[name] = {self.class_names[int(i)]: c / total
                                     for i, c in zip(ids, counts) if int(i) in self.class_names}
        return self._fractions[name]

    def tags(self, name: str) -> frozenset[str]:
        """Classes present in ``name`` (covering at least ``min_fraction`` of its pixels)."""
        return frozenset(c for c, f in self.class_fractions(name).items() if f >= self.min_fraction)

    def touches(self, name: str) -> frozenset[str]:
        """Classes with at least one pixel in ``name`` (an image that touches a class is never its negative)."""
        return frozenset(self.class_fractions(name))

    def images_with(self, class_name: str) -> tuple[str, ...]:
        """Images where ``class_name`` is present (see ``tags``)."""
        self.class_id(class_name)
        return tuple(n for n in self.names if class_name in self.tags(n))

    def select_pairs(self, pairs: Iterable[tuple[str, str]], classes: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The (image, class) pairs whose class is in ``classes`` and not excluded (list order kept)."""
        keep = set(classes) - self.exclude
        return tuple((img, c) for img, c in pairs if c in keep)

    def images_without(self, class_name: str) -> tuple[str, ...]:
        """Images with no pixel of ``class_name`` (negatives for a tag prior)."""
        self.class_id(class_name)
        return tuple(n for n in self.names if class_name not in self.touches(n))
