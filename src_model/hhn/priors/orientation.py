"""Which side of a tag prior's cut is the class: the guard against inverted proposals.

From tags alone a prior can learn the wrong side: when everything in the images tagged with a class
recurs in them and in no image without it (two crops of one photo, coins always on the same dark
cloth), the object and its surroundings are equally "the class", and the prior may mark the
surroundings. A photographed object sits inside the frame; its surroundings fill the frame's edges. So
when the maps of a class's tag-only supports cover the frame's border band clearly more than its inside
(:func:`border_excess` above a decision rule's ``flip_border``, median over the supports), the class's
prior is fitted again with the other side of each positive's map as its mask (exact foreground and
background examples, as if the user had painted them), and the run says so. Not simply ``1 - map``: on
an image without the class that would mark everything. Measured on MSRC-v2 episodes and on the sample's
coin / cat route (``benchmarks/inversion_check.py``), and on the acceptance cells: see MODEL_CARD.md,
"The inversion guard".

A class with any user mask among its images is never flipped: the mask says which side is the class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hhn.priors.base import ClassPrior, TaggedImage

#: the border band's width as a fraction of the image's shorter side
BORDER_BAND = 0.1


def border_excess(prior_map: np.ndarray, band: float = BORDER_BAND) -> float:
    """How much more a map (float (H, W) in [0, 1]) covers the image's border band (``band`` x the shorter
    side) than its inside: mean over the band minus mean inside, in [-1, 1]. About 0 or below for an
    object inside the frame; positive for a map of what surrounds it."""
    h, w = prior_map.shape
    b = max(1, round(band * min(h, w)))
    inside = np.zeros((h, w), bool)
    inside[b:h - b, b:w - b] = True
    if not inside.any() or inside.all():
        return 0.0
    return float(prior_map[~inside].mean() - prior_map[inside].mean())


@dataclass(frozen=True)
class Orientation:
    """What the guard found for one class: the median :func:`border_excess` of its tag-only supports' prior
    maps, and whether the prior was flipped because of it."""

    class_name: str
    border_excess: float
    flipped: bool

    def message(self) -> str:
        """The line a run reports for a flipped class (reason first, then what to do about it)."""
        return (f"{self.class_name}: the tag prior marked the edges of the tagged images more than their middle "
                f"(border excess {self.border_excess:.2f}), so it took the surroundings for the class; its "
                f"proposals use the other side. If {self.class_name} really fills the frame's edges, correct "
                f"and accept one of its masks (a class with a user mask is never flipped)")


def orient(prior: ClassPrior, positives: Sequence[TaggedImage], supports: Sequence[TaggedImage],
           limit: float | None,
           refit: Callable[[list[TaggedImage]], ClassPrior] | None) -> tuple[ClassPrior, Orientation | None]:
    """The class's prior the right way round, and what the guard found (None: not checked).

    Not checked when ``limit`` is None or any positive carries a user mask; else the median border excess
    of the supports' maps (``supports``, tag-only) decides: above ``limit``, ``refit`` (the class's tag
    prior fitted on the given positives, with the same negatives) is called on the positives each carrying
    the other side of its map (``map <= 0.5``) as its mask, and its result is the class's prior."""
    if limit is None or not supports or any(p.mask is not None for p in positives):
        return prior, None
    excess = float(np.median([border_excess(prior(s)) for s in supports]))
    found = Orientation(prior.class_name, excess, excess > limit)
    if not found.flipped:
        return prior, found
    if refit is None:
        raise ValueError(f"{prior.class_name}: the inversion guard flips this class but was given no way to refit")
    other_side = [TaggedImage(p.pixels, (prior(p) <= prior.threshold).astype(np.float32)) for p in positives]
    return refit(other_side), found
