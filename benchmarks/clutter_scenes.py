"""How well are SMALL objects of CO-OCCURRING novel classes labelled in CLUTTERED scenes from image-level tags
only (and from accepted masks)? Measured through the product's engine on composites built from MSRC-v2 photos.

Usage::

    python benchmarks/clutter_scenes.py [--data ../shared/data/msrc_v2] [--seed 0] [--tagged 3] [--queries 60]
        [--objects 1,3] [--sizes 0.01,0.06] [--min-area 1500] [--feather 0.8] [--max-overlap 0.2]
        [--support-share 0.3] [--threads 1] [--work ../cache/clutter-scenes]
        [--record benchmarks/results/clutter-scenes.jsonl] [--check-only] [--preview DIR]

1. **The scenes** (cached in ``--work``, never in the repo; deterministic given ``--seed``). The classes are the
   shipped model's held-out fold 0 (cow, sheep, cat, dog, bird: never trained on). Objects: the connected
   components (>= ``--min-area`` px) of their true masks in MSRC-v2 photos, cut out with their mask.
   Backgrounds: MSRC photos touching none of the five classes (their own MSRC classes all count as background).
   A composite is one background at its own size showing two of the classes, ``--objects`` (1-3) objects of
   each, every object scaled to cover a share of the frame drawn uniformly from ``--sizes``, its edge feathered
   (``--feather``: Gaussian sigma in px), pasted at a random position overlapping earlier objects by at most
   ``--max-overlap`` of its area (the best of 50 tries; the later paste wins). Label map: 0 background, 1-5 the
   classes where the pasted alpha > 0.5. Every object photo and every background serves either the tagged
   composites or the queries, never both (``--support-share`` of each class's object photos go to the tagged
   side). The tagged set: pairs chosen so every class shows in at least ``--tagged`` of them; the queries:
   ``--queries`` composites going round all ten pairs.
2. **The runs**, per support type: ``tags`` (every tagged composite tagged with each class it shows, through
   :class:`napari_wfss.session.Session`, as a user would) and ``masks`` (the same composites also carry an
   ACCEPTED user mask equal to their label map). Methods, each through :meth:`napari_wfss.engine.Engine.propose`
   (``"default"``, CPU, 5 shots, ``--threads``), one engine per decision rule shared by both support types:
   ``shipped`` (the model's own rule), ``network`` (``DecisionRule()``: the network's argmax), ``prior``
   (``DecisionRule(prior_weight=1)``: the tag prior alone). ``map``: masked-average pooling
   (``hhn.evaluation.baselines``, on ``DenseFeatures`` as ``wfss eval`` builds them) on the same supports (masks:
   the accepted masks; tags: the engine's fitted class prior's maps of the supports thresholded at 0.5, as
   ``wfss eval --method map`` does under tags), each class's score ``cos(fg) - cos(bg)`` mapped to
   ``(score + 2) / 4`` and resolved over the classes with the engine's ``resolve_label_map`` at 0.5 (background
   where every class's score is below 0, the baseline's own cut); the glue is here, the library has no
   multi-class MAP. ``all-fg``: per class, every query pixel labelled with that class (the floor).
3. **Scores** over the queries, pixel counts pooled over all queries per class: IoU (percent), precision and
   recall; mIoU over the five classes; FB-IoU = mean of the IoU of foreground (any class) and of background.

4. **Presence** (engine rows, ``presence_study``): whether the engine's per-class presence decision
   (``--min-score``, off by default) could help: the ROC AUC of its image-level score for queries showing a
   class against those that do not, the scores it gives at a few minimums, and the bound of removing every
   absent class from each map.

Prints one table per support type (and one presence table) and appends one JSON line to ``--record``
(``--record ''``: none).
``--check-only`` builds the scenes, checks them (label map vs pasted alpha, object sizes, disjoint sources,
pairs; the cache against a fresh build when it exists) and stops: no model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cow", "sheep", "cat", "dog", "bird")  # the default model's held-out fold 0 (model.json: test_classes)
TAGGED, QUERY = "tagged", "query"
IGNORE = 255
PAD = 2  # px of room around a scaled object for its feathered edge
VERSION = 1  # bump when the scenes a seed gives change (invalidates the cache)
METHODS = ("shipped", "network", "prior", "map", "all-fg")
ENGINE_METHODS = ("shipped", "network", "prior")  # the rows computed by the product's Engine
MIN_SCORES = (0.5, 0.6, 0.7, 0.8)  # the presence decision's minimums the study tries (engine default: 0, off)


# ============================================================================================ scenes


@dataclass(frozen=True, eq=False)
class Cutout:
    """One object: a connected component of a class's true mask in an MSRC photo, with a margin of its photo."""

    source: str  # the photo
    component: int  # its number among the photo's components of the class
    class_name: str
    rgb: np.ndarray  # uint8 (h, w, 3)
    mask: np.ndarray  # bool (h, w)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class SceneOptions:
    """How the scenes are built (the cache key, with the seed and the data folder)."""

    tagged: int = 3
    queries: int = 60
    objects: tuple[int, int] = (1, 3)
    sizes: tuple[float, float] = (0.01, 0.06)
    min_area: int = 1500
    feather: float = 0.8
    max_overlap: float = 0.2
    support_share: float = 0.3


@dataclass(eq=False)
class Placement:
    """One pasted object: class index (1-5), its source, where its scaled box went and the frame share it covers
    (``alpha > 0.5``, before later pastes). ``alpha`` (float32, the box) is kept in memory only."""

    class_index: int
    source: str
    component: int
    y: int
    x: int
    fraction: float
    alpha: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "alpha"}


@dataclass(eq=False)
class Scene:
    """One composite: ``image`` uint8 (H, W, 3) and ``label`` uint8 (H, W) (0 background, 1-5 the classes)."""

    name: str
    split: str
    classes: tuple[str, ...]
    background: str
    placements: list[Placement]
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def sources(self) -> set[str]:
        """Every MSRC photo whose pixels are in the composite."""
        return {self.background} | {p.source for p in self.placements}

    def to_json(self) -> dict:
        return {"name": self.name, "split": self.split, "classes": list(self.classes), "background": self.background,
                "placements": [p.to_json() for p in self.placements]}


def find_cutouts(data, classes: Sequence[str], min_area: int, margin: int = 3) -> dict[str, list[Cutout]]:
    """Per class, every connected component (8-connected) of at least ``min_area`` px of its true mask in the
    photos showing it (photo order, then component order)."""
    from scipy import ndimage

    out: dict[str, list[Cutout]] = {c: [] for c in classes}
    for c in classes:
        cid = data.class_id(c)
        for name in data.images_with(c):
            label = data.load_label(name)
            comps, _ = ndimage.label(label == cid, structure=np.ones((3, 3), bool))
            image = None
            for k, box in enumerate(ndimage.find_objects(comps), 1):
                if box is None or np.count_nonzero(comps[box] == k) < min_area:
                    continue
                if image is None:
                    image = data.load_image(name)
                    if image.shape[:2] != label.shape:
                        raise ValueError(f"{name}: image {image.shape[:2]} and mask {label.shape} differ in size")
                y0, x0 = max(0, box[0].start - margin), max(0, box[1].start - margin)
                y1, x1 = min(label.shape[0], box[0].stop + margin), min(label.shape[1], box[1].stop + margin)
                out[c].append(Cutout(name, k, c, image[y0:y1, x0:x1].copy(), comps[y0:y1, x0:x1] == k))
    return out


def split_sources(cutouts: dict[str, list[Cutout]], share: float, rng: np.random.Generator) -> dict[str, str]:
    """Photo -> ``TAGGED`` or ``QUERY``: per class (fewest photos first), ``share`` of its object photos (at
    least one) serve the tagged composites; a photo keeps the side it got first."""
    side: dict[str, str] = {}
    for c in sorted(cutouts, key=lambda c: (len({k.source for k in cutouts[c]}), c)):
        photos = sorted({k.source for k in cutouts[c]})
        want = max(1, round(share * len(photos)))
        have = sum(side.get(p) == TAGGED for p in photos)
        for i in rng.permutation(len(photos)):
            p = photos[int(i)]
            if p not in side:
                side[p] = TAGGED if have < want else QUERY
                have += side[p] == TAGGED
    for c, items in cutouts.items():
        for s in (TAGGED, QUERY):
            if not any(side[k.source] == s for k in items):
                raise ValueError(f"class {c!r} has no object photo left for the {s} composites; "
                                 f"change --support-share or --min-area")
    return side


def pair_schedule(classes: Sequence[str], tagged: int, queries: int,
                  rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(pairs of the tagged composites, pairs of the queries). Tagged: greedily the pair that brings the most
    classes still short of ``tagged`` composites (unused pairs, then the lowest counts first; seeded ties) until
    every class shows in ``tagged``; queries: rounds of all pairs, each round in a seeded order."""
    pairs = list(combinations(classes, 2))
    rank = {p: int(r) for p, r in zip(pairs, rng.permutation(len(pairs)))}
    counts = dict.fromkeys(classes, 0)
    used = dict.fromkeys(pairs, 0)
    chosen: list[tuple[str, str]] = []
    while min(counts.values()) < tagged:
        best = min(pairs, key=lambda p: (-sum(counts[c] < tagged for c in p), used[p], counts[p[0]] + counts[p[1]],
                                         rank[p]))
        chosen.append(best)
        used[best] += 1
        for c in best:
            counts[c] += 1
    rounds: list[tuple[str, str]] = []
    while len(rounds) < queries:
        rounds += [pairs[int(i)] for i in rng.permutation(len(pairs))]
    return chosen, rounds[:queries]


def scaled(cutout: Cutout, fraction: float, frame: tuple[int, int], feather: float) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb uint8, alpha float32)`` of the cutout scaled so ``alpha > 0.5`` covers ``fraction`` of ``frame``
    (a few corrections of the scale; never larger than the frame), with ``PAD`` px of room for the feather."""
    import cv2

    H, W = frame
    h, w = cutout.mask.shape
    s = math.sqrt(fraction * H * W / cutout.area)
    for _ in range(6):
        s = min(s, (H - 2 * PAD) / h, (W - 2 * PAD) / w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        rgb = np.pad(cv2.resize(cutout.rgb, size, interpolation=interp), ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
        soft = np.pad(cv2.resize(cutout.mask.astype(np.float32), size, interpolation=interp), PAD)
        alpha = np.clip(cv2.GaussianBlur(soft, (0, 0), feather) if feather > 0 else soft, 0.0, 1.0)
        ratio = fraction * H * W / max(np.count_nonzero(alpha > 0.5), 1)
        if abs(ratio - 1) < 0.02:
            break
        s *= math.sqrt(ratio)
    return rgb, alpha.astype(np.float32)


def compose(background: np.ndarray, objects: Sequence[tuple[int, Cutout]], options: SceneOptions,
            rng: np.random.Generator, tries: int = 50) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
    """Paste ``objects`` ((class index, cutout), in paste order) into ``background``: ``(image, label,
    placements)``; see the module doc, step 1."""
    H, W = background.shape[:2]
    out = background.astype(np.float32)
    label = np.zeros((H, W), np.uint8)
    placements = []
    for index, cutout in objects:
        rgb, alpha = scaled(cutout, float(rng.uniform(*options.sizes)), (H, W), options.feather)
        fg = alpha > 0.5
        h, w = alpha.shape
        best = None
        for _ in range(tries):
            y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            overlap = np.count_nonzero(label[y:y + h, x:x + w][fg]) / max(np.count_nonzero(fg), 1)
            if best is None or overlap < best[0]:
                best = (overlap, y, x)
            if overlap <= options.max_overlap:
                break
        assert best is not None
        _, y, x = best
        region = out[y:y + h, x:x + w]
        region[:] = alpha[..., None] * rgb + (1 - alpha[..., None]) * region
        label[y:y + h, x:x + w][fg] = index
        placements.append(Placement(index, cutout.source, cutout.component, y, x,
                                    round(np.count_nonzero(fg) / (H * W), 5), alpha))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), label, placements


class _Cycle:
    """Draws items without repeat in a seeded order, reshuffled once all were drawn."""

    def __init__(self, items: Sequence, rng: np.random.Generator) -> None:
        self.items, self.rng, self.todo = list(items), rng, []

    def next(self):
        if not self.todo:
            self.todo = [self.items[int(i)] for i in self.rng.permutation(len(self.items))]
        return self.todo.pop()


def background_names(data, classes: Sequence[str]) -> list[str]:
    """MSRC photos with no pixel of any of ``classes``."""
    return [n for n in data.names if not data.touches(n) & set(classes)]


def build_scenes(data, options: SceneOptions, seed: int, classes: Sequence[str] = CLASSES,
                 cutouts: dict[str, list[Cutout]] | None = None) -> list[Scene]:
    """The tagged composites, then the queries (module doc, step 1). Deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    cutouts = cutouts if cutouts is not None else find_cutouts(data, classes, options.min_area)
    side = split_sources(cutouts, options.support_share, rng)
    tagged_pairs, query_pairs = pair_schedule(classes, options.tagged, options.queries, rng)
    backgrounds = background_names(data, classes)
    need = len(tagged_pairs) + len(query_pairs)
    if len(backgrounds) < need:
        raise ValueError(f"{need} composites need as many backgrounds; only {len(backgrounds)} photos show none "
                         f"of {', '.join(classes)}")
    backgrounds = [backgrounds[int(i)] for i in rng.permutation(len(backgrounds))[:need]]
    pickers = {(s, c): _Cycle([k for k in cutouts[c] if side[k.source] == s], rng) for s in (TAGGED, QUERY)
               for c in classes}
    scenes = []
    jobs = [(TAGGED, f"tagged_{i:02d}", p) for i, p in enumerate(tagged_pairs)]
    jobs += [(QUERY, f"query_{i:03d}", p) for i, p in enumerate(query_pairs)]
    for (split, name, pair), background in zip(jobs, backgrounds):
        objects = [(classes.index(c) + 1, pickers[split, c].next()) for c in pair
                   for _ in range(int(rng.integers(options.objects[0], options.objects[1] + 1)))]
        objects = [objects[int(i)] for i in rng.permutation(len(objects))]
        image, label, placements = compose(data.load_image(background), objects, options, rng)
        scenes.append(Scene(name, split, tuple(pair), background, placements, image, label))
    return scenes


def check_scenes(scenes: Sequence[Scene], options: SceneOptions, classes: Sequence[str] = CLASSES,
                 tolerance: float = 0.05) -> list[str]:
    """What is wrong with ``scenes`` (empty: nothing): label map vs the pasted alphas (when in memory), object
    sizes (within ``options.sizes`` +- ``tolerance`` of them), tagged and query sources disjoint, every class
    visible where it is said to be, every class in ``options.tagged`` tagged composites, every pair among the
    queries (when there are enough)."""
    problems = []
    lo, hi = options.sizes
    for s in scenes:
        ids = {classes.index(c) + 1 for c in s.classes}
        if not set(np.unique(s.label).tolist()) <= ids | {0}:
            problems.append(f"{s.name}: label values {np.unique(s.label).tolist()} beyond {sorted(ids)}")
        for i in ids:
            if not np.any(s.label == i):
                problems.append(f"{s.name}: {classes[i - 1]} is not visible")
        if all(p.alpha is not None for p in s.placements):
            expected = np.zeros_like(s.label)
            for p in s.placements:
                assert p.alpha is not None
                h, w = p.alpha.shape
                expected[p.y:p.y + h, p.x:p.x + w][p.alpha > 0.5] = p.class_index
            if not np.array_equal(expected, s.label):
                problems.append(f"{s.name}: label map differs from the pasted alpha at "
                                f"{np.count_nonzero(expected != s.label)} px")
        for p in s.placements:
            if not lo * (1 - tolerance) <= p.fraction <= hi * (1 + tolerance):
                problems.append(f"{s.name}: {p.source}#{p.component} covers {p.fraction:.4f} of the frame, "
                                f"outside {lo}-{hi}")
    tagged = set().union(*(s.sources for s in scenes if s.split == TAGGED))
    queried = set().union(*(s.sources for s in scenes if s.split == QUERY))
    if tagged & queried:
        problems.append(f"photos in both tagged composites and queries: {sorted(tagged & queried)[:5]}")
    for c in classes:
        n = sum(c in s.classes for s in scenes if s.split == TAGGED)
        if n < options.tagged:
            problems.append(f"{c} shows in {n} tagged composites, fewer than {options.tagged}")
    query_pairs = {s.classes for s in scenes if s.split == QUERY}
    if options.queries >= math.comb(len(classes), 2) and len(query_pairs) < math.comb(len(classes), 2):
        problems.append(f"only {len(query_pairs)} of the {math.comb(len(classes), 2)} pairs among the queries")
    return problems


def cache_key(data_root: Path, options: SceneOptions, seed: int) -> str:
    text = json.dumps([VERSION, str(Path(data_root).resolve()), dataclasses.asdict(options), seed], sort_keys=True)
    return f"seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def save_scenes(scenes: Sequence[Scene], folder: Path, meta: dict) -> None:
    """``folder/images/<name>.png``, ``folder/labels/<name>.png`` and ``folder/scenes.json``, written into a
    temporary folder first and renamed (a half-written cache is never read)."""
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for s in scenes:
            Image.fromarray(s.image).save(tmp / "images" / s.file)
            Image.fromarray(s.label).save(tmp / "labels" / s.file)
        (tmp / "scenes.json").write_text(json.dumps({**meta, "scenes": [s.to_json() for s in scenes]}, indent=1))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_scenes(folder: Path) -> list[Scene]:
    """The scenes :func:`save_scenes` wrote (without the alphas)."""
    from PIL import Image

    stored = json.loads((folder / "scenes.json").read_text())
    scenes = []
    for rec in stored["scenes"]:
        name = rec["name"]
        image = np.asarray(Image.open(folder / "images" / f"{name}.png").convert("RGB"))
        label = np.asarray(Image.open(folder / "labels" / f"{name}.png"))
        scenes.append(Scene(name, rec["split"], tuple(rec["classes"]), rec["background"],
                            [Placement(**p) for p in rec["placements"]], image, label))
    return scenes


def scenes_for(data, data_root: Path, options: SceneOptions, seed: int, work: Path) -> tuple[list[Scene], Path, float]:
    """``(scenes, their cache folder, seconds spent building them, 0 when cached)``; built, checked and cached
    when the cache has none for these options."""
    folder = Path(work) / cache_key(data_root, options, seed)
    if (folder / "scenes.json").is_file():
        return load_scenes(folder), folder, 0.0
    t0 = time.perf_counter()
    scenes = build_scenes(data, options, seed)
    problems = check_scenes(scenes, options)
    if problems:
        raise RuntimeError("the scenes fail their checks:\n  " + "\n  ".join(problems))
    folder.parent.mkdir(parents=True, exist_ok=True)
    save_scenes(scenes, folder, {"version": VERSION, "seed": seed, "data": str(Path(data_root).resolve()),
                                 "options": dataclasses.asdict(options)})
    return scenes, folder, round(time.perf_counter() - t0, 1)


def describe(scenes: Sequence[Scene]) -> dict:
    """Sizes of the scene set (for the record and --check-only)."""
    fractions = [p.fraction for s in scenes for p in s.placements]
    visible = {c: [] for c in CLASSES}
    for s in scenes:
        if s.split == QUERY:
            for c in s.classes:
                visible[c].append(float(np.mean(s.label == CLASSES.index(c) + 1)))
    return {
        "tagged": [{"name": s.name, "classes": list(s.classes), "objects": len(s.placements)}
                   for s in scenes if s.split == TAGGED],
        "queries": sum(s.split == QUERY for s in scenes),
        "objects": len(fractions),
        "object_fraction": {"min": round(min(fractions), 4), "mean": round(float(np.mean(fractions)), 4),
                            "max": round(max(fractions), 4)},
        "query_class_fraction_mean": {c: round(float(np.mean(v)), 4) if v else None for c, v in visible.items()},
        "tagged_sources": len(set().union(*(s.sources for s in scenes if s.split == TAGGED))),
        "query_sources": len(set().union(*(s.sources for s in scenes if s.split == QUERY))),
    }


def save_preview(scenes: Sequence[Scene], folder: Path, count: int = 3) -> list[Path]:
    """The first ``count`` tagged composites and queries, each beside its label map over it (class colours)."""
    from PIL import Image

    colours = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
                       np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in (TAGGED, QUERY):
        for s in [s for s in scenes if s.split == split][:count]:
            over = s.image.copy()
            fg = s.label > 0
            over[fg] = (0.4 * over[fg] + 0.6 * colours[s.label[fg]]).astype(np.uint8)
            path = folder / f"{s.name}_{'-'.join(s.classes)}.png"
            Image.fromarray(np.concatenate([s.image, over], axis=1)).save(path)
            paths.append(path)
    return paths


# ============================================================================================ scores


class Scoreboard:
    """Pixel counts pooled over query label maps: a confusion matrix over 0 (background) and 1..n (classes);
    truth ``IGNORE`` pixels are left out."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        n = len(self.classes) + 1
        self.confusion = np.zeros((n, n), np.int64)  # rows: truth, columns: prediction

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
        valid = truth != IGNORE
        p, t = pred[valid].astype(np.int64), truth[valid].astype(np.int64)
        n = len(self.classes) + 1
        if p.size and (p.max() >= n or t.max() >= n):
            raise ValueError(f"label values beyond 0..{n - 1}")
        self.confusion += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def summary(self) -> dict:
        """IoU (percent), precision and recall (0-1; precision None without predicted pixels) per class, their
        mIoU, FB-IoU (percent), and the share of the pixels predicted as each class."""
        cm = self.confusion
        total = int(cm.sum())
        tp = np.diag(cm)[1:]
        predicted, actual = cm.sum(axis=0)[1:], cm.sum(axis=1)[1:]
        iou = {c: 100.0 * tp[k] / max(predicted[k] + actual[k] - tp[k], 1) for k, c in enumerate(self.classes)}
        i_fg, i_bg = int(cm[1:, 1:].sum()), int(cm[0, 0])
        fb = [i_bg / max(total - i_fg, 1), i_fg / max(total - i_bg, 1)]  # U_bg = all but fg-fg, U_fg = all but bg-bg
        return _rounded(iou, {c: tp[k] / predicted[k] if predicted[k] else None for k, c in enumerate(self.classes)},
                        {c: tp[k] / max(actual[k], 1) for k, c in enumerate(self.classes)},
                        100.0 * float(np.mean(fb)),
                        {c: predicted[k] / max(total, 1) for k, c in enumerate(self.classes)})

    def all_foreground(self) -> dict:
        """The floor: per class, the scores of labelling every pixel with it (IoU = precision = its share of
        the pixels, recall 1); FB-IoU of labelling every pixel foreground."""
        cm = self.confusion
        total = max(int(cm.sum()), 1)
        share = {c: cm[k + 1].sum() / total for k, c in enumerate(self.classes)}
        return _rounded({c: 100.0 * v for c, v in share.items()}, share, dict.fromkeys(self.classes, 1.0),
                        100.0 * (1 - cm[0].sum() / total) / 2, dict.fromkeys(self.classes, 1.0))


def _rounded(iou: dict, precision: dict, recall: dict, fbiou: float, predicted: dict) -> dict:
    def r(v, nd):
        return None if v is None else round(float(v), nd)

    return {"miou": r(np.mean(list(iou.values())), 2), "fbiou": r(fbiou, 2),
            "iou": {c: r(v, 2) for c, v in iou.items()}, "precision": {c: r(v, 4) for c, v in precision.items()},
            "recall": {c: r(v, 4) for c, v in recall.items()},
            "predicted_fraction": {c: r(v, 4) for c, v in predicted.items()}}


# ============================================================================================ runs


def make_session(scenes: Sequence[Scene], images: Path, project: Path, support: str):
    """A session over the composites: the classes with ids 1-5, every tagged composite tagged with each class
    it shows and, for ``masks``, accepted with its label map as the user's mask."""
    from napari_wfss.session import Session

    session = Session.create(images, project_dir=project)
    with session.deferred_save():
        for i, c in enumerate(CLASSES):
            session.add_class(c, class_id=i + 1)
        for s in scenes:
            if s.split == TAGGED:
                for c in s.classes:
                    session.tag(s.file, c)
    if support == "masks":
        for s in scenes:
            if s.split == TAGGED:
                session.accept(s.file, s.label)
    return session


def _to_indices(label_map: np.ndarray, plan) -> np.ndarray:
    """A proposal's session class ids -> class indices 1-5 (0 stays background)."""
    lut = np.zeros(256, np.uint8)
    for c in plan.classes:
        lut[c.id] = CLASSES.index(c.name) + 1
    return lut[label_map]


def propose_engine(engine, session, plan) -> dict[str, object]:
    """Query file -> its ``ProposalResult`` from ``Engine.propose`` (nothing stored)."""
    out = {}
    for result in engine.propose(session, plan=plan, store=False):
        if result.error is not None:
            raise RuntimeError(f"{result.image}: {result.error}")
        out[Path(result.image).name] = result
    return out


def presence_study(results: dict, truth: dict[str, np.ndarray], plan,
                   min_scores: Sequence[float] = MIN_SCORES) -> dict:
    """Would a per-class presence decision help? From one method's ``ProposalResult`` per query (made with
    ``min_score`` 0, the default) and the true label maps:

    - ``auc``: per class and pooled, the ROC AUC of the image-level score the engine's presence decision
      reads (``ProposalResult.scores``: the class's mean ``fg_prob`` over its pixels, 0 when it has none) for
      the queries showing the class against those that do not (0.5: the score cannot tell them apart);
    - ``min_score``: mIoU / FB-IoU after the engine's own decision (``engine.decide_no_class``) at each of
      ``min_scores`` (what ``--min-score`` would give);
    - ``oracle``: mIoU / FB-IoU when every class absent from a query is removed from its map (the best any
      decision of that kind could reach).
    """
    import copy

    from napari_wfss.engine import decide_no_class

    shows = {name: {c: bool((label == k + 1).any()) for k, c in enumerate(CLASSES)} for name, label in truth.items()}
    auc = {}
    for c in [*CLASSES, None]:
        pairs = [(shows[n][k], results[n].scores.get(k, 0.0)) for n in truth for k in ([c] if c else CLASSES)]
        auc[c or "all"] = _auc([v for present, v in pairs if present], [v for present, v in pairs if not present])

    def scored(drop) -> dict:
        board = Scoreboard(CLASSES)
        for name, label in truth.items():
            result = copy.deepcopy(results[name])
            drop(result, name)
            board.update(_to_indices(result.label_map, plan), label)
        summary = board.summary()
        return {"miou": summary["miou"], "fbiou": summary["fbiou"]}

    def absent(result, name) -> None:
        result.label_map[np.isin(result.label_map, [c.id for c in plan.classes if not shows[name][c.name]])] = 0

    return {"auc": auc, "oracle": scored(absent),
            "min_score": {str(t): scored(lambda result, name, t=t: decide_no_class(result, t, plan.classes))
                          for t in min_scores}}


def _auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """ROC AUC of scores (ties count half); None without both kinds."""
    if not positive or not negative:
        return None
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None]
    return round(float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / pos.size / neg.size), 3)


def propose_map(pipeline, features, session, plan, support: str) -> dict[str, np.ndarray]:
    """Query file -> label map (class indices) by masked-average pooling (module doc, step 2): prototypes of
    each class from its supports (masks: the accepted masks; tags: its prior fitted like the engine's, on the
    same positives and negatives, thresholded at ``ClassPrior.threshold``), per query the MAP scores of every
    class resolved with the engine's per-pixel decision (``(score + 2) / 4`` at 0.5 = score 0)."""
    from hhn.evaluation.baselines import area_weights, map_scores, upsample
    from hhn.priors.base import ClassPrior, TaggedImage
    from napari_wfss.engine import resolve_label_map

    pixels = {rel: session.read_image(rel) for c in plan.classes for rel in (*c.positives, *c.negatives)}
    prototypes = []
    try:
        for c in plan.classes:
            if support == "masks":
                masks = [(session.mask(rel) == c.id).astype(np.uint8) for rel in c.supports]
            else:
                prior = pipeline.fit_prior(c.name, [TaggedImage(pixels[rel]) for rel in c.positives],
                                           [pixels[rel] for rel in c.negatives])
                masks = [(prior(pixels[rel]) > ClassPrior.threshold).astype(np.float32) for rel in c.supports]
            feats = [features(pixels[rel]) for rel in c.supports]
            weights = [area_weights(m, tuple(feats[0].shape[-2:])) for m in masks]
            prototypes.append((feats, [w[0] for w in weights], [w[1] for w in weights]))
    finally:
        pipeline.forget_images()
    out = {}
    for rel in plan.queries:
        image = session.read_image(rel)
        q = features(image)
        fg = [np.clip((upsample(map_scores(q, *p), image.shape[:2]) + 2.0) / 4.0, 0.0, 1.0) for p in prototypes]
        label, _ = resolve_label_map(fg, [c.id for c in plan.classes], 0.5)
        out[Path(rel).name] = _to_indices(label, plan)
    return out


def measure(scenes: Sequence[Scene], images: Path, args, project_root: Path) -> dict:
    """Step 2 and 3: per support type, every method's scores over the queries and its seconds."""
    from hhn.config import DecisionRule
    from hhn.priors.features import DenseFeatures
    from napari_wfss.engine import Engine, plan_run

    # every row as `wfss label --tag-prior` runs it (None: the model's own prior); min_score 0: the default
    same = {"device": "cpu", "threads": args.threads, "shots": 5, "tag_prior": args.prior}
    engines = {"shipped": Engine("default", **same),
               "network": Engine("default", **same, decision=DecisionRule()),
               "prior": Engine("default", **same, decision=DecisionRule(prior_weight=1.0, threshold=0.5))}
    features = DenseFeatures(device="cpu")
    truth = {s.file: s.label for s in scenes if s.split == QUERY}
    runs: dict[str, dict] = {}
    for support in ("tags", "masks"):
        session = make_session(scenes, images, project_root / support, support)
        plan = plan_run(session, sorted(truth), shots=5)
        runs[support] = {}
        try:
            for method in [m for m in METHODS[:-1] if m in args.methods]:
                t0 = time.perf_counter()
                results = {}
                if method == "map":
                    maps = propose_map(engines["shipped"].pipeline(), features, session, plan, support)
                else:
                    results = propose_engine(engines[method], session, plan)
                    maps = {name: _to_indices(r.label_map, plan) for name, r in results.items()}
                seconds = round(time.perf_counter() - t0, 1)
                board = Scoreboard(CLASSES)
                for name, label in truth.items():
                    board.update(maps[name], label)
                runs[support][method] = {**board.summary(), "seconds": seconds}
                if results:
                    runs[support][method]["presence"] = presence_study(results, truth, plan)
                if method in engines and engines[method].warnings:
                    runs[support][method]["warnings"] = list(engines[method].warnings)
                print(f"  {support} / {method}: mIoU {runs[support][method]['miou']:.1f} in {seconds} s",
                      file=sys.stderr, flush=True)
            runs[support]["all-fg"] = {**board.all_foreground(), "seconds": 0.0}
            runs[support]["supports"] = {c.name: list(c.supports) for c in plan.classes}
        finally:
            session.close()
    return runs


def format_table(support: str, rows: dict, scenes_info: dict) -> str:
    """One support type's methods as a Markdown table (class cells: IoU / precision / recall)."""
    head = (f"support: {support} ({len(scenes_info['tagged'])} tagged composites, {scenes_info['queries']} queries; "
            "class cells: IoU / precision / recall)")
    lines = [head,
             "| method | mIoU | FB-IoU | " + " | ".join(CLASSES) + " | seconds |",
             "|---" * (len(CLASSES) + 4) + "|"]

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    for method in [m for m in METHODS if m in rows]:  # a screening run (--methods) has some rows only
        r = rows[method]
        cells = [f"{r['iou'][c]:.1f} / {ratio(r['precision'][c])} / {ratio(r['recall'][c])}" for c in CLASSES]
        lines.append(f"| {method} | {r['miou']:.1f} | {r['fbiou']:.1f} | " + " | ".join(cells)
                     + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


def format_presence(support: str, rows: dict) -> str:
    """The presence study of one support type's engine rows as a Markdown table (``presence_study``)."""
    lines = [(f"presence decision, support: {support} (AUC of the image-level score per class; mIoU / FB-IoU "
              "with the engine's decision at each minimum, and with every absent class removed)"),
             "| method | AUC all | " + " | ".join(f"AUC {c}" for c in CLASSES) + " | "
             + " | ".join(f"min {t}" for t in MIN_SCORES) + " | absent removed |",
             "|---" * (len(CLASSES) + len(MIN_SCORES) + 3) + "|"]

    def auc(value):
        return "-" if value is None else f"{value:.2f}"

    for method in ENGINE_METHODS:
        study = rows[method].get("presence")
        if study is None:
            continue
        cuts = [study["min_score"][str(t)] for t in MIN_SCORES]
        lines.append(f"| {method} | {auc(study['auc']['all'])} | " + " | ".join(auc(study["auc"][c]) for c in CLASSES)
                     + " | " + " | ".join(f"{v['miou']:.1f} / {v['fbiou']:.1f}" for v in cuts)
                     + f" | {study['oracle']['miou']:.1f} / {study['oracle']['fbiou']:.1f} |")
    return "\n".join(lines) if len(lines) > 3 else ""


def _pair(text: str, kind):
    a, b = (kind(v) for v in text.split(","))
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"need 0 < low <= high, got {text}")
    return a, b


def check_only(data, data_root: Path, options: SceneOptions, seed: int, work: Path, preview: str | None) -> int:
    """Build the scenes afresh, check them, compare with the cache when it holds them; no model."""
    t0 = time.perf_counter()
    scenes = build_scenes(data, options, seed)
    problems = check_scenes(scenes, options)
    cached = Path(work) / cache_key(data_root, options, seed)
    if (cached / "scenes.json").is_file():
        for old, new in zip(load_scenes(cached), scenes):
            if not (np.array_equal(old.image, new.image) and np.array_equal(old.label, new.label)):
                problems.append(f"{new.name}: the cached composite differs from a fresh build")
    info = describe(scenes)
    print(f"{len(info['tagged'])} tagged composites, {info['queries']} queries, {info['objects']} objects covering "
          f"{info['object_fraction']['min']:.3f}-{info['object_fraction']['max']:.3f} of the frame; "
          f"{info['tagged_sources']} tagged / {info['query_sources']} query source photos; built and checked in "
          f"{time.perf_counter() - t0:.1f} s")
    if preview:
        print("preview: " + ", ".join(str(x) for x in save_preview(scenes, Path(preview))))
    for p in problems:
        print(f"PROBLEM: {p}")
    print("checks: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


def render(record: Path, seed: int) -> int:
    """Print the tables of ``record``'s last complete line for ``seed`` run with the default model's own prior
    (``--prior`` unset, or the ``tag_prior`` it names now: the model card's section)."""
    rows = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
    from hhn.model_names import declared_config

    own = declared_config("default").tag_prior
    rows = [r for r in rows if r["seed"] == seed and r.get("prior") in (None, own)
            and set(METHODS[:-1]) <= set(r["runs"]["tags"])]
    if not rows:
        print(f"{record} has no line for seed {seed}", file=sys.stderr)
        return 1
    tables = [format_table(support, rows[-1]["runs"][support], rows[-1]["scenes"]) for support in ("tags", "masks")]
    tables += [format_presence(support, rows[-1]["runs"][support]) for support in ("tags", "masks")]
    print("\n\n".join(t for t in tables if t))
    return 0


def main(argv: list[str] | None = None) -> int:
    from hhn.data import open_dataset
    from hhn.registry import TAG_PRIORS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msrc_v2"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tagged", type=int, default=3, help="tagged composites showing each class (default: 3)")
    p.add_argument("--queries", type=int, default=60, help="query composites (default: 60)")
    p.add_argument("--objects", type=lambda t: _pair(t, int), default=(1, 3),
                   help="objects of each class per composite, low,high (default: 1,3)")
    p.add_argument("--sizes", type=lambda t: _pair(t, float), default=(0.01, 0.06),
                   help="share of the frame one object covers, low,high (default: 0.01,0.06)")
    p.add_argument("--min-area", type=int, default=1500, help="smallest object component in px (default: 1500)")
    p.add_argument("--feather", type=float, default=0.8, help="Gaussian sigma of the pasted edge, px (default: 0.8)")
    p.add_argument("--max-overlap", type=float, default=0.2,
                   help="share of an object that may cover earlier ones (default: 0.2)")
    p.add_argument("--support-share", type=float, default=0.3,
                   help="share of each class's object photos kept for the tagged composites (default: 0.3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(ROOT.parent / "cache" / "clutter-scenes"),
                   help="cache of the composites (outside the repo)")
    p.add_argument("--record", default=str(ROOT / "benchmarks" / "results" / "clutter-scenes.jsonl"),
                   help="append one JSON line to this file ('' for none)")
    p.add_argument("--prior", default=None, choices=TAG_PRIORS,
                   help="run every row with this tag prior instead of the model's own (a screening run)")
    p.add_argument("--methods", type=lambda t: t.split(","), default=list(METHODS[:-1]),
                   help=f"comma-separated rows to run (default: {','.join(METHODS[:-1])})")
    p.add_argument("--check-only", action="store_true", help="build and check the scenes only (no model)")
    p.add_argument("--preview", default=None, help="save a few composites beside their label maps in this folder")
    p.add_argument("--render", default=None, metavar="RECORD",
                   help="print the tables of RECORD's last line for --seed (as the model card shows them) and stop")
    args = p.parse_args(argv)
    if args.render:
        return render(Path(args.render), args.seed)
    if args.tagged < 1 or args.queries < 1:
        p.error("--tagged and --queries must be at least 1")

    options = SceneOptions(args.tagged, args.queries, args.objects, args.sizes, args.min_area, args.feather,
                           args.max_overlap, args.support_share)
    data_root = Path(args.data)
    data = open_dataset(data_root)
    if args.check_only:
        return check_only(data, data_root, options, args.seed, Path(args.work), args.preview)

    from hhn.device import set_cpu_threads

    set_cpu_threads(args.threads)
    t0 = time.perf_counter()
    scenes, folder, build_seconds = scenes_for(data, data_root, options, args.seed, Path(args.work))
    info = describe(scenes)
    print(f"scenes: {folder} ({'built in ' + str(build_seconds) + ' s' if build_seconds else 'cached'}): "
          f"{len(info['tagged'])} tagged composites, {info['queries']} queries, objects covering "
          f"{info['object_fraction']['min']:.3f}-{info['object_fraction']['max']:.3f} of the frame "
          f"(mean {info['object_fraction']['mean']:.3f})")
    if args.preview:
        print("preview: " + ", ".join(str(x) for x in save_preview(scenes, Path(args.preview))))
    with tempfile.TemporaryDirectory(prefix="wfss-clutter-scenes-") as tmp:
        runs = measure(scenes, folder / "images", args, Path(tmp))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import torch

    row = {"seed": args.seed, "prior": args.prior, "classes": list(CLASSES), "options": dataclasses.asdict(options),
           "scenes": info, "cache": folder.name, "runs": runs, "build_seconds": build_seconds,
           "seconds": round(time.perf_counter() - t0, 1), "commit": commit, "command": " ".join(sys.argv),
           "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": platform.python_version(),
                       "torch": torch.__version__, "platform": platform.platform(), "threads": args.threads}}
    for support in ("tags", "masks"):
        print(format_table(support, runs[support], info) + "\n")
        print(format_presence(support, runs[support]) + "\n")
    print(f"total {row['seconds']} s")
    if args.record:
        with open(args.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
