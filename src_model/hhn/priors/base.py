"""The tag-prior interface: learn one class from tagged images, then map where it probably is.

A ``TagPrior`` is fitted per class from *positives* (images tagged with the class) and *negatives*
(images tagged, but not with the class) and returns a ``ClassPrior``, which maps any image (a support,
a positive, or an untagged query) to a float32 ``(H, W)`` map in ``[0, 1]`` at the image's size;
``map > ClassPrior.threshold`` (0.5) is the prior's mask.

User-corrected masks: a ``TaggedImage`` may carry a ``mask`` that the user drew or corrected. Such a
mask **replaces the prior for that image** (``ClassPrior.__call__`` returns it unchanged), and a prior
may also learn from it at fit time (the co-segmentation prior does: a corrected positive gives exact
foreground and background examples).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class TaggedImage:
    """An image handed to a prior.

    Attributes:
        pixels: ``uint8 (H, W, 3)`` RGB.
        mask: optional ``float32 (H, W)`` in ``[0, 1]``, a user-corrected mask of the class being fitted
            (1 = the class). When present it is returned as the prior of this image.
    """

    pixels: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] != 3 or self.pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 (H, W, 3), got {self.pixels.dtype} {self.pixels.shape}")
        if self.mask is not None:
            m = self.mask
            if m.shape != self.pixels.shape[:2]:
                raise ValueError(f"mask {m.shape} does not match the image {self.pixels.shape[:2]}")
            if not np.issubdtype(m.dtype, np.floating) or m.min(initial=0.0) < 0 or m.max(initial=0.0) > 1:
                raise ValueError("mask must be float (H, W) with values in [0, 1]")


def as_tagged(image: TaggedImage | np.ndarray) -> TaggedImage:
    """Wrap a bare ``uint8 (H, W, 3)`` array as a ``TaggedImage`` without a mask."""
    return image if isinstance(image, TaggedImage) else TaggedImage(np.asarray(image))


class ClassPrior(ABC):
    """A prior fitted to one class; call it on any image."""

    threshold = 0.5

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name

    def __call__(self, image: TaggedImage | np.ndarray) -> np.ndarray:
        """``float32 (H, W)`` in ``[0, 1]`` at the image's size; the image's own ``mask`` when it has one."""
        image = as_tagged(image)
        if image.mask is not None:
            return image.mask.astype(np.float32)
        out = self._map(image.pixels)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    @abstractmethod
    def _map(self, pixels: np.ndarray) -> np.ndarray:
        """The prior of an image without a user mask: ``(H, W)`` values in ``[0, 1]``."""


class TagPrior(ABC):
    """Learns a ``ClassPrior`` from image-level tags."""

    name: str = ""

    @abstractmethod
    def fit(self, class_name: str, positives: Sequence[TaggedImage | np.ndarray],
            negatives: Sequence[TaggedImage | np.ndarray] = ()) -> ClassPrior:
        """Fit the prior of ``class_name``.

        Args:
            class_name: the class (a free-form name; priors that read text, like CLIP, use it).
            positives: images tagged with the class (supports count too); masks, where given, are trusted.
            negatives: images whose tags do not include the class (no pixel of it).
        """

    def forget(self, pixels: np.ndarray) -> None:  # noqa: B027 (a hook: most priors hold nothing per image)
        """Drop what this prior keeps in memory about an image it will not see again (a query that is
        done); what fitted classes learnt stays. Default: nothing is kept."""
