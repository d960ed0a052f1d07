"""A tag prior that averages the maps of several tag priors (e.g. one co-segmentation prior per input size)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hhn.priors.base import ClassPrior, TaggedImage, TagPrior


class MeanPrior(TagPrior):
    """Fits every member prior on the same tagged images; an image's map is the mean of their maps.

    A user mask still replaces the prior of its own image (``ClassPrior.__call__``); each member also
    learns from it at fit time as it would alone.
    """

    name = "mean"

    def __init__(self, members: Sequence[TagPrior]) -> None:
        if not members:
            raise ValueError("MeanPrior needs at least one member prior")
        self.members = list(members)

    def fit(self, class_name: str, positives: Sequence[TaggedImage | np.ndarray],
            negatives: Sequence[TaggedImage | np.ndarray] = ()) -> ClassPrior:
        return MeanClassPrior(class_name, [m.fit(class_name, positives, negatives) for m in self.members])

    def forget(self, pixels: np.ndarray) -> None:
        for member in self.members:
            member.forget(pixels)


class MeanClassPrior(ClassPrior):
    """The fitted :class:`MeanPrior` of one class."""

    def __init__(self, class_name: str, members: Sequence[ClassPrior]) -> None:
        super().__init__(class_name)
        self.members = list(members)

    def _map(self, pixels: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for member in self.members:
            m = np.clip(member._map(pixels), 0.0, 1.0).astype(np.float32)
            total = m if total is None else total + m
        if total is None:
            raise ValueError("MeanClassPrior needs at least one member prior")
        return total / len(self.members)
