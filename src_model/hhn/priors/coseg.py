"""CLIP-free tag prior: discriminative co-segmentation on frozen ImageNet features.

What recurs in the other images tagged with a class, and not in images without it, is the class. On
the dense descriptors of ``hhn.priors.features`` (EfficientNet-Lite0, strides 8 + 16 + 32, cosine
similarity), for each cell ``x`` of an image:

    s(x) = mean over positives p of max_y cos(x, p_y)  -  max over negatives n of max_y cos(x, n_y)

(the image itself is never among its own positives). Grass next to a cow is matched as well by an
image of grass without cows as by the other cow images, so it scores near 0; the cow scores high.
Context-matched negatives (``hhn.data.episodes``) make this work: they hold the class's usual
surroundings.

Refinement (``refine=True``): the first pass is run on every positive (each against the others), and
its mask splits the positives into a foreground bank and a background bank; the background bank is
joined by every negative cell. A cell's second-pass score is its similarity to the nearest foreground
example minus that to the nearest background example, so the class's own surroundings in the tagged
images count as background too (a per-class background model).

User masks: a positive with a ``mask`` gives exact banks (its foreground cells to the foreground bank
and to the first pass as the only cells of that positive; its other cells to the background bank).

The map is ``sigmoid((s - t) / temperature)`` upsampled to the image, with ``t`` the Otsu threshold of
the image's own scores (first pass) or 0 (second pass), so ``map > 0.5`` is the prior's mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hhn.priors.base import ClassPrior, TaggedImage, TagPrior, as_tagged
from hhn.priors.features import DenseFeatures, image_key

Features = Callable[[np.ndarray], torch.Tensor]


def otsu(values: torch.Tensor, bins: int = 64) -> float:
    """Otsu threshold of a 1-D tensor: the cut between ``bins`` histogram bins that maximises the
    between-class variance (the middle of the cuts that tie, e.g. across empty bins between two modes)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-8:
        return lo
    hist = torch.histc(values.float(), bins=bins, min=lo, max=hi).double()
    centers = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centers = (centers[:-1] + centers[1:]) / 2
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centers).cumsum(0) / w0.clamp(min=1e-12)
    m1 = ((hist * centers).sum() - (hist * centers).cumsum(0)) / w1.clamp(min=1e-12)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    best = torch.nonzero(between >= between.max() * (1 - 1e-9)).flatten()
    cut = (centers[best[0]] + centers[best[-1] + 1]) / 2
    return float(cut)


@dataclass
class _Example:
    """One gallery image: its key, descriptors ``(M, C)`` on the bank grid, and optional fg weights ``(M,)``."""

    key: str
    cells: torch.Tensor
    fg: torch.Tensor | None


class CosegPrior(TagPrior):
    """The co-segmentation prior.

    Args:
        features: image -> ``(C, g, g)`` unit-norm descriptors; default ``DenseFeatures()``.
        bank_pool: average-pool factor of the gallery descriptors (2 = a 20x20 bank at 320 input:
            4x less compute, the target stays at full grid resolution).
        refine: run the second pass (foreground / background banks).
        temperature: softness of the map around the threshold (score units).
    """

    name = "coseg"

    def __init__(self, features: Features | None = None, bank_pool: int = 2, refine: bool = True,
                 temperature: float = 0.03) -> None:
        self.features = features if features is not None else DenseFeatures()
        self.bank_pool, self.refine, self.temperature = int(bank_pool), refine, float(temperature)

    def _example(self, image: TaggedImage) -> _Example:
        desc = self.features(image.pixels)
        cells = desc
        if self.bank_pool > 1:
            cells = F.normalize(F.avg_pool2d(desc[None], self.bank_pool, ceil_mode=True)[0], dim=0)
        fg = None
        if image.mask is not None:
            m = torch.from_numpy(np.ascontiguousarray(image.mask, dtype=np.float32))[None, None]
            fg = F.adaptive_avg_pool2d(m, tuple(cells.shape[-2:]))[0, 0].flatten()
        return _Example(image_key(image.pixels), cells.flatten(1).T.contiguous(), fg)

    def fit(self, class_name: str, positives: Sequence[TaggedImage | np.ndarray],
            negatives: Sequence[TaggedImage | np.ndarray] = ()) -> ClassPrior:
        pos = [self._example(as_tagged(p)) for p in positives]
        neg = [self._example(as_tagged(n)) for n in negatives]
        return CosegClassPrior(class_name, self, pos, neg)


class CosegClassPrior(ClassPrior):
    """The fitted co-segmentation prior of one class (see the module docstring)."""

    def __init__(self, class_name: str, owner: CosegPrior, positives: list[_Example],
                 negatives: list[_Example]) -> None:
        super().__init__(class_name)
        self.owner, self.positives, self.negatives = owner, positives, negatives
        self._banks: tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]] | None = None

    # ------------------------------------------------------------------ first pass
    def _first_pass(self, cells: torch.Tensor, key: str) -> torch.Tensor:
        """``(M, C)`` cells of an image -> ``(M,)`` scores: recurrence in positives minus in negatives."""
        pos = [p.cells if p.fg is None else p.cells[p.fg > 0.5] for p in self.positives if p.key != key]
        pos = [p for p in pos if len(p)]
        neg = [n.cells for n in self.negatives if n.key != key]
        neg += [p.cells[p.fg <= 0.5] for p in self.positives if p.fg is not None and p.key != key]
        neg = [n for n in neg if len(n)]
        zero = torch.zeros(len(cells))
        s_pos = torch.stack([(cells @ p.T).amax(1) for p in pos]).mean(0) if pos else zero
        s_neg = torch.stack([(cells @ n.T).amax(1) for n in neg]).amax(0) if neg else zero
        return s_pos - s_neg

    # ------------------------------------------------------------------ second pass
    def _bank_split(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        """Foreground and background banks: (key, cells) of every positive / negative, built once."""
        if self._banks is None:
            fg, bg = [], [(n.key, n.cells) for n in self.negatives]
            for p in self.positives:
                if p.fg is not None:
                    inside = p.fg > 0.5
                else:
                    s = self._first_pass(p.cells, p.key)
                    inside = s > otsu(s)
                fg.append((p.key, p.cells[inside]))
                bg.append((p.key, p.cells[~inside]))
            self._banks = (fg, bg)
        return self._banks

    def _second_pass(self, cells: torch.Tensor, key: str) -> torch.Tensor | None:
        fg_bank, bg_bank = self._bank_split()
        fg = [c for k, c in fg_bank if k != key and len(c)]
        bg = [c for k, c in bg_bank if k != key and len(c)]
        if not fg or not bg:
            return None
        return (cells @ torch.cat(fg).T).amax(1) - (cells @ torch.cat(bg).T).amax(1)

    # ------------------------------------------------------------------ map
    def scores(self, pixels: np.ndarray) -> tuple[torch.Tensor, float]:
        """Grid scores ``(g, g)`` of an image and the threshold that separates the class."""
        desc = self.owner.features(pixels)
        grid = tuple(desc.shape[-2:])
        cells = desc.flatten(1).T.contiguous()
        key = image_key(pixels)
        s = self._second_pass(cells, key) if self.owner.refine else None
        if s is not None:
            return s.view(grid), 0.0
        s = self._first_pass(cells, key)
        return s.view(grid), otsu(s)

    def _map(self, pixels: np.ndarray) -> np.ndarray:
        s, t = self.scores(pixels)
        soft = torch.sigmoid((s - t) / self.owner.temperature)
        return F.interpolate(soft[None, None], size=pixels.shape[:2], mode="bilinear",
                             align_corners=False)[0, 0].numpy()
