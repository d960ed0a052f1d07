"""CLIP-free tag prior: discriminative co-segmentation on frozen ImageNet features.

What recurs in the other images tagged with a class, and not in images without it, is the class. On
the dense descriptors of ``hhn.priors.features`` (EfficientNet-Lite0 strides 8, 16, 32 with tap
weights 1, 1, 2: the semantic stride-32 tap counts most; cosine similarity), three steps:

1. **Recurrence** (first pass). For each cell ``x`` of an image,
   ``s1(x) = mean over positives p of max_y cos(x, p_y) - max over negatives n of max_y cos(x, n_y)``
   (an image is never its own positive). Grass next to a cow is matched as well by an image of grass
   without cows as by the other cow images, so it scores near 0; the cow scores high. The cut is the
   Otsu threshold of the image's scores. Context-matched negatives (``hhn.data.episodes``) make this
   work: they hold the class's usual surroundings. With ``contrast="ratio"`` the two terms are
   compared as ``log((pos + 0.05) / (neg + 0.05))`` instead (cosines clamped at 0): textures such as
   grass match each other at a higher cosine than objects do, so when the positives share one field's
   grass and the negatives' grass is another, the difference can favour the grass (cos 0.80 against
   0.50) over the animal (0.52 against 0.23), while the ratio favours the animal.
2. **Foreground / background banks** (second pass, ``refine``). The first pass is run on every
   positive (each against the others); its mask splits the positives' cells into a foreground bank
   and a background bank, and every negative cell joins the background bank (a per-class background
   model: the class's own surroundings in the tagged images count as background). A cell's score is
   ``s2(x) = mean of its top-k cosines to the foreground bank - mean of its top-k to the background
   bank`` (an image's own cells are left out of both banks), cut at 0, so an image without the class
   can come out empty (the first pass always finds something).
3. **Self-support** (``self_support``). The cut of the previous step splits the image's own cells;
   their mean foreground and mean background descriptors are prototypes, and the final score is
   ``cos(x, own fg prototype) - cos(x, own bg prototype)``, cut at 0. The image's own appearance fills
   the object in and pulls the boundary to where the image itself changes. An empty previous mask
   stays empty.

Gallery descriptors are average-pooled ``bank_pool`` x ``bank_pool`` (coarser cells match more
semantically and cost less); the image being mapped keeps the full stride-8 grid.

User masks: a positive with a ``mask`` gives exact examples: its foreground cells are its only cells
in the first pass, its other cells count as negative cells, and in the second pass its mask splits
it into the banks directly. Its own prior is its mask (see ``hhn.priors.base``).

The map is ``sigmoid((s - cut) / temperature)`` of the last step's score, bilinearly upsampled to
the image, so ``map > 0.5`` is the prior's mask.

Objects in clutter (``objectness``, a ``hhn.priors.objectness.ObjectnessHead``). When the class is small
and its surroundings recur in every tagged image, the three steps above learn the surroundings: most
of each positive is context, and the Otsu cut always finds something. With an objectness head, a class
learnt from tags only (no positive carries a user mask: masks give exact examples, and the steps above
measurably do better with them) is mapped differently when its positives' most recurrent cells (the top
``THING_TOP`` of each positive's first-pass scores, averaged over the positives; decided per class at its
first use) look like *things* (mean objectness at least ``THING_CUT``) and either

- stand out as objects in their images (that objectness exceeds the mean objectness of all the positives'
  cells by at least ``THING_LIFT``: an animal on grass, a car on a road; the most recurrent cells of sky,
  water or foliage look like the rest of their images, whatever the head makes of them), or
- are surely things (mean objectness at least ``THING_SURE``: an object that fills its images, such as
  a pile of coins or a close-up of a face, stands out from nothing), or
- do not clearly recur (their mean first-pass score is below ``CLEAR_RECURRENCE``: the class hides in
  clutter that recurs in the negatives as well, so the steps above would find only context),

and the class recurs in the positives' object cells themselves: restricting the positives to their object cells
(the thing path's first pass below) keeps their top recurrence within ``OBJECT_RECURRENCE_DROP`` of the plain
first pass's (a cow's most recurrent cells are cow, whether or not the grass is kept; sky's are sky, and among
object cells only buildings and trees are left, which recur far less).

Such a class is mapped as follows; every other class keeps the three steps above:

- its positives contribute only their object cells (objectness above ``OBJECT_CUT``) to the first
  pass, while every cell of the negatives stays a negative: the context that recurs with every tag is
  matched as well by images without the class, so it scores near 0, and co-occurring tagged classes
  compete (an image tagged {car, pedestrian} is a negative of neither, but the pedestrians' cells are
  matched by the other pedestrian images only, and the cars' cells by the other car images);
- the score is the first pass, always with the ``difference`` contrast (on the clutter benchmark's
  prior alone, 11.3 / 53.2 mIoU / FB-IoU against 10.5 / 48.2 with the ratio), cut at 0 (not Otsu: an
  image without the class can come out empty), without the second pass and the self-support (whose
  banks are built from the Otsu cut); cells that are not objects are cut out of the map.

The defaults are the best of a study on MSRC-v2 (12 object classes, 1-shot, 3 extra positives and
3 context negatives): thresholded-prior mIoU on supports 44 -> 54 and on queries 42 -> 50 compared
with the first pass alone at equal tap weights (the floor study's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from hhn.priors.base import ClassPrior, TaggedImage, TagPrior, as_tagged
from hhn.priors.features import BoundedCache, DenseFeatures, image_key

if TYPE_CHECKING:
    from hhn.priors.objectness import ObjectnessHead

#: image, tap weights -> ``float32 (C, g, g)`` unit-norm descriptors (``DenseFeatures.__call__``).
Features = Callable[..., torch.Tensor]

#: the first pass's ways of comparing recurrence in positives with recurrence in negatives
CONTRASTS = ("difference", "ratio")

#: added to both cosines of the ``ratio`` contrast, so cells matched weakly by both score near 0
RATIO_OFFSET = 0.05

#: objectness above which a cell counts as part of a thing
OBJECT_CUT = 0.5

#: a class is a thing class when the top ``THING_TOP`` share of its positives' first-pass cells has a mean
#: objectness of at least ``THING_CUT`` (module docstring). Measured with the shipped head (top decile, mean
#: over positives): MSRC stuff classes 0.07-0.35 except one road draw (0.59), MSRC things 0.32-0.87, the
#: clutter benchmark's small animals 0.40-0.51 (on their first-pass Otsu regions instead, 33-83 % of each
#: image: 0.17-0.73 per image, and three of the five classes fell back).
THING_TOP, THING_CUT = 0.1, 0.35

#: ... and that objectness exceeds the positives' mean objectness by at least ``THING_LIFT``, or their mean
#: first-pass score is below ``CLEAR_RECURRENCE`` (module docstring). Chosen on development episodes (seed 1,
#: 400 per MSRC fold, each fold's head refitted without the fold's classes) as the pair that lost least on
#: the worst fold against ``coseg-ratio`` while keeping the clutter benchmark's animals (first-pass scores
#: -0.22 to 0.14) things; median per episode, MSRC things lift 0.04-0.43 (book 0.04: books fill their
#: images), unseen stuff (sky, tree, water) -0.02 to 0.01 (MODEL_CARD.md, "Objects in clutter").
THING_LIFT, CLEAR_RECURRENCE = 0.1, 0.15

#: ... and the class recurs *in* those object cells: restricting the positives to their object cells (the thing
#: path's first pass) lowers the top ``THING_TOP`` recurrence of each positive's object cells, compared with
#: the top of the plain first pass (difference contrast) over all its cells, by less than ``OBJECT_RECURRENCE_DROP``
#: on average (module docstring). Chosen on development episodes (seed 1, 400 per MSRC fold, each fold's head
#: refitted without the fold's classes) from {0.01, ..., 0.1}, prior alone against ``coseg-ratio``: the worst fold
#: (fold 3) goes from -2.1 mIoU without the test to +1.1 at 0.05 (+1.2 at 0.04, which costs fold 0 0.8 and
#: leaves less margin to the clutter benchmark's animals, whose drops are 0.016-0.030 on its seed 0, up to 0.077
#: on seed 1); median drop per fit: MSRC things -0.03 to 0.003, unseen stuff 0.03-0.14 (building 0.03, water
#: 0.06, road 0.07, sky and tree 0.14).
OBJECT_RECURRENCE_DROP = 0.05

#: ... or that objectness is at least ``THING_SURE`` (module docstring). Chosen on the same development
#: episodes from {0.55, 0.6, 0.65, 0.7, 0.75} as the best for the worst fold among the cuts that keep the
#: README sample's coins and cat crops (0.63 and 0.77, objects filling their frames) things; unseen stuff
#: (sky, tree, water, road, building) has 0.38-0.50 (median per fit).
THING_SURE = 0.6


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
    return float((centers[best[0]] + centers[best[-1] + 1]) / 2)


def _top_share(scores: torch.Tensor) -> torch.Tensor:
    """``(M,)`` scores -> indices of the top ``THING_TOP`` share of them (at least one)."""
    return scores.topk(max(1, round(THING_TOP * len(scores)))).indices


def top_k_similarity(cells: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """``(M, C)`` cells, ``(N, C)`` bank -> ``(M,)`` mean of each cell's ``k`` largest cosines (k=1: max)."""
    sims = cells @ bank.T
    if k == 1:
        return sims.amax(dim=1)
    return sims.topk(min(k, sims.shape[1]), dim=1).values.mean(dim=1)


@dataclass
class _Example:
    """A gallery image: its key, cells ``(N, C)`` on the bank grid, optional user fg weights ``(N,)`` and,
    with an objectness head, its cells' objectness ``(N,)``."""

    key: str
    cells: torch.Tensor
    fg: torch.Tensor | None
    objectness: torch.Tensor | None = None


class CosegPrior(TagPrior):
    """The co-segmentation prior (see the module docstring).

    Args:
        features: ``features(image, weights)`` -> ``(C, g, g)`` descriptors; default ``DenseFeatures()``.
        tap_weights: per-tap weights of the descriptors (stride 8, 16, 32).
        bank_pool: average-pool factor of the gallery cells (4: a 10x10 bank at a 320 input).
        top_k: cosines averaged per bank in the second pass.
        refine: run the second pass.
        self_support: run the self-support step.
        temperature: softness of the map around its cut (score units).
        contrast: how the first pass compares recurrence in positives with recurrence in negatives:
            ``"difference"`` or ``"ratio"`` (see the module docstring).
        objectness: a thing-vs-stuff head on these descriptors (module docstring, "Objects in clutter");
            None: every class is mapped by the three steps.
    """

    name = "coseg"

    def __init__(self, features: Features | None = None, tap_weights: Sequence[float] = (1.0, 1.0, 2.0),
                 bank_pool: int = 4, top_k: int = 5, refine: bool = True, self_support: bool = True,
                 temperature: float = 0.03, contrast: str = "difference",
                 objectness: ObjectnessHead | None = None) -> None:
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
        if objectness is not None and tuple(objectness.tap_weights) != tuple(float(w) for w in tap_weights):
            raise ValueError(f"the objectness head reads tap weights {objectness.tap_weights}, this prior uses "
                             f"{tuple(tap_weights)}")
        self.contrast, self.objectness = contrast, objectness
        self.features = features if features is not None else DenseFeatures()
        self.tap_weights = tuple(float(w) for w in tap_weights)
        self.bank_pool, self.top_k, self.refine = int(bank_pool), int(top_k), refine
        self.self_support = self_support
        self.temperature = float(temperature)
        self._bank_cells = BoundedCache(4096)  # pooled gallery cells: ~0.2 MB per image at bank_pool 4

    def descriptors(self, pixels: np.ndarray) -> torch.Tensor:
        """``(C, g, g)`` descriptors of an image with this prior's tap weights."""
        return self.features(pixels, self.tap_weights)

    def cell_objectness(self, desc: torch.Tensor) -> torch.Tensor:
        """``(C, g, g)`` descriptors -> ``(g, g)`` objectness (needs ``objectness``)."""
        if self.objectness is None:
            raise ValueError("this prior has no objectness head")
        return self.objectness(desc)

    def _pooled_cells(self, pixels: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """Gallery cells ``(N, C)`` of an image on the bank grid, that grid ``(g, g)`` and, with an
        objectness head, the cells' objectness ``(N,)`` (the full grid's, average-pooled the same way)."""
        desc = self.descriptors(pixels)
        obj = self.cell_objectness(desc) if self.objectness is not None else None
        if self.bank_pool > 1:
            desc = F.normalize(F.avg_pool2d(desc[None], self.bank_pool, ceil_mode=True)[0], dim=0)
            if obj is not None:
                obj = F.avg_pool2d(obj[None, None], self.bank_pool, ceil_mode=True)[0, 0]
        return (desc.flatten(1).T.contiguous(), (desc.shape[-2], desc.shape[-1]),
                None if obj is None else obj.flatten())

    def _example(self, image: TaggedImage) -> _Example:
        key = image_key(image.pixels)
        cells, grid, obj = self._bank_cells.get_or_make(key, lambda: self._pooled_cells(image.pixels))
        fg = None
        if image.mask is not None:
            m = torch.from_numpy(np.ascontiguousarray(image.mask, dtype=np.float32))[None, None]
            fg = F.adaptive_avg_pool2d(m, grid)[0, 0].flatten()
        return _Example(key, cells, fg, obj)

    def fit(self, class_name: str, positives: Sequence[TaggedImage | np.ndarray],
            negatives: Sequence[TaggedImage | np.ndarray] = ()) -> ClassPrior:
        pos = [self._example(as_tagged(p)) for p in positives]
        neg = [self._example(as_tagged(n)) for n in negatives]
        return CosegClassPrior(class_name, self, pos, neg)

    def forget(self, pixels: np.ndarray) -> None:
        """Drop the image's taps when the descriptors come from a ``DenseFeatures`` (its memory cache)."""
        if isinstance(self.features, DenseFeatures):
            self.features.forget(pixels)


class CosegClassPrior(ClassPrior):
    """The fitted co-segmentation prior of one class (see the module docstring)."""

    def __init__(self, class_name: str, owner: CosegPrior, positives: list[_Example],
                 negatives: list[_Example]) -> None:
        super().__init__(class_name)
        self.owner, self.positives, self.negatives = owner, positives, negatives
        self._banks: tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]] | None = None
        self._thing: bool | None = None

    @property
    def is_thing(self) -> bool:
        """Whether this class is mapped as an object in clutter (module docstring): the prior has an
        objectness head, no positive carries a user mask, and the top ``THING_TOP`` of the positives'
        first-pass cells are things (``THING_CUT``) that stand out (``THING_LIFT``), are surely things
        (``THING_SURE``) or do not clearly recur (``CLEAR_RECURRENCE``), and the class's recurrence stays in
        the object cells (``OBJECT_RECURRENCE_DROP``), on average over the positives. Decided once."""
        if self._thing is None:
            tagged_only = all(p.fg is None and p.objectness is not None for p in self.positives)
            self._thing = False
            if self.owner.objectness is not None and self.positives and tagged_only:
                top_objectness, lift, top_score = np.mean([self._top_cells(p) for p in self.positives], axis=0)
                self._thing = bool(top_objectness >= THING_CUT and (
                    lift >= THING_LIFT or top_objectness >= THING_SURE or top_score < CLEAR_RECURRENCE)
                    and np.mean([self._object_recurrence_drop(p) for p in self.positives]) < OBJECT_RECURRENCE_DROP)
        return self._thing

    def _top_cells(self, p: _Example) -> tuple[float, float, float]:
        """A tagged positive's top ``THING_TOP`` first-pass cells: their mean objectness, its excess over the
        mean objectness of all the positive's cells, and their mean first-pass score."""
        assert p.objectness is not None  # is_thing asks only with a head
        s = self._first_pass(p.cells, p.key)
        top = _top_share(s)
        objectness = float(p.objectness[top].mean())
        return objectness, objectness - float(p.objectness.mean()), float(s[top].mean())

    def _object_recurrence_drop(self, p: _Example) -> float:
        """How much a tagged positive's recurrence drops on the thing path: the mean of the top ``THING_TOP`` of
        its cells' plain first-pass scores (difference contrast), minus that of its object cells' (all cells when
        it has none) thing-path scores. Near 0 when the class's most recurrent cells are objects; large when it
        recurs mostly outside them (sky, water, foliage)."""
        assert p.objectness is not None  # is_thing asks only with a head
        objects = p.objectness > OBJECT_CUT
        gated = self._first_pass(p.cells, p.key, gated=True)
        gated = gated[objects] if bool(objects.any()) else gated
        plain = self._first_pass(p.cells, p.key, contrast="difference")
        return float(plain[_top_share(plain)].mean()) - float(gated[_top_share(gated)].mean())

    @staticmethod
    def _positive_cells(p: _Example, gated: bool) -> torch.Tensor:
        """A positive's cells in the first pass: its user mask's, else (``gated``: a thing class) its object
        cells if it has any, else all."""
        if p.fg is not None:
            return p.cells[p.fg > 0.5]
        if gated and p.objectness is not None and bool((p.objectness > OBJECT_CUT).any()):
            return p.cells[p.objectness > OBJECT_CUT]
        return p.cells

    def _first_pass(self, cells: torch.Tensor, key: str, gated: bool = False,
                    contrast: str | None = None) -> torch.Tensor:
        """``(M, C)`` cells of an image -> ``(M,)`` recurrence in positives minus recurrence in negatives;
        ``gated``: a thing class's pass (object cells of the positives, always the difference contrast);
        ``contrast``: instead of the prior's own (ungated passes only)."""
        pos = [self._positive_cells(p, gated) for p in self.positives if p.key != key]
        neg = [n.cells for n in self.negatives if n.key != key]
        neg += [p.cells[p.fg <= 0.5] for p in self.positives if p.fg is not None and p.key != key]
        pos, neg = [p for p in pos if len(p)], [n for n in neg if len(n)]
        zero = torch.zeros(len(cells))
        s_pos = torch.stack([top_k_similarity(cells, p, 1) for p in pos]).mean(0) if pos else zero
        s_neg = torch.stack([top_k_similarity(cells, n, 1) for n in neg]).amax(0) if neg else zero
        if (contrast or self.owner.contrast) == "ratio" and not gated:
            return torch.log((s_pos.clamp(min=0) + RATIO_OFFSET) / (s_neg.clamp(min=0) + RATIO_OFFSET))
        return s_pos - s_neg

    def _bank_split(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        """Foreground and background banks as (key, cells) per gallery image, built once."""
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
        k = self.owner.top_k
        return top_k_similarity(cells, torch.cat(fg), k) - top_k_similarity(cells, torch.cat(bg), k)

    @staticmethod
    def _self_support(cells: torch.Tensor, inside: torch.Tensor) -> torch.Tensor | None:
        """Score against the image's own prototypes: cos(x, mean fg cell) - cos(x, mean bg cell)."""
        if not inside.any() or inside.all():
            return None
        fg = F.normalize(cells[inside].sum(0), dim=0)
        bg = F.normalize(cells[~inside].sum(0), dim=0)
        return cells @ fg - cells @ bg

    def scores(self, pixels: np.ndarray) -> tuple[torch.Tensor, float]:
        """Grid scores ``float32 (g, g)`` of an image and the cut above which a cell is the class."""
        desc = self.owner.descriptors(pixels)
        grid = (desc.shape[-2], desc.shape[-1])
        cells = desc.flatten(1).T.contiguous()
        key = image_key(pixels)
        if self.is_thing:
            recurrence = self._first_pass(cells, key, gated=True)
            objects = self.owner.cell_objectness(desc).flatten() > OBJECT_CUT
            return torch.where(objects, recurrence, torch.full_like(recurrence, -1.0)).view(grid), 0.0
        s = self._second_pass(cells, key) if self.owner.refine else None
        cut = 0.0
        if s is None:
            s = self._first_pass(cells, key)
            cut = otsu(s)
        if self.owner.self_support:
            own = self._self_support(cells, s > cut)
            if own is not None:
                s, cut = own, 0.0
        return s.view(grid), cut

    def _map(self, pixels: np.ndarray) -> np.ndarray:
        s, t = self.scores(pixels)
        soft = torch.sigmoid((s - t) / self.owner.temperature)
        return F.interpolate(soft[None, None], size=pixels.shape[:2], mode="bilinear",
                             align_corners=False)[0, 0].numpy()
