"""Datasets for few-shot training and evaluation: the generic folder layout, Pascal-5i, COCO-20i.

``open_dataset(root, layout)`` picks the loader; ``resolve_test_classes`` turns ``--test-classes`` or
``--fold`` into the held-out classes. Class folds of a generic dataset come from ``<root>/folds.json``
or, for MSRC-v2, from the packaged ``msrc_folds.json`` (same format: ``{"exclude": [...],
"folds": [[class, ...], ...]}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from hhn.data.base import IGNORE, DatasetError, SegmentationDataset
from hhn.data.coco import CocoDataset
from hhn.data.generic import GenericDataset
from hhn.data.pascal import PascalDataset

__all__ = ["IGNORE", "DatasetError", "SegmentationDataset", "GenericDataset", "PascalDataset", "CocoDataset",
           "detect_layout", "open_dataset", "load_folds", "msrc_folds", "resolve_test_classes"]

LAYOUTS = ("generic", "pascal", "coco")


def detect_layout(root: str | Path) -> str:
    """``generic`` (classes.txt), ``pascal`` (JPEGImages + SegmentationClassAug) or ``coco`` (annotations/)."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return "generic"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClassAug").is_dir():
        return "pascal"
    if any((root / "annotations" / s).is_dir() for s in ("train2014", "val2014")):
        return "coco"
    raise DatasetError(f"cannot tell the layout of {root}: expected classes.txt + images/ + masks/ (generic), "
                       "JPEGImages/ + SegmentationClassAug/ (pascal) or annotations/train2014|val2014 (coco).")


def open_dataset(root: str | Path, layout: str = "auto", fold: int | None = None, split: str = "val",
                 min_fraction: float = 0.0, exclude: Iterable[str] = ()) -> SegmentationDataset:
    """Open a dataset. ``fold`` and ``split`` (``val``/``trn``) are required by / used for pascal and coco only."""
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    if layout == "generic":
        return GenericDataset(root, min_fraction=min_fraction, exclude=exclude)
    if fold is None:
        raise DatasetError(f"the {layout} layout needs a fold: pass --fold 0..3")
    cls = PascalDataset if layout == "pascal" else CocoDataset
    return cls(root, fold, split=split, min_fraction=min_fraction, exclude=exclude)


def msrc_folds() -> dict:
    """The packaged MSRC-v2 fold definition (``msrc_folds.json``: ``folds``, ``exclude``); fold 0 holds the
    default model's held-out classes."""
    return json.loads(resources.files("hhn.data").joinpath("msrc_folds.json").read_text(encoding="utf-8"))


def load_folds(root: str | Path, classes: Iterable[str]) -> dict:
    """Fold definition of a generic dataset: ``<root>/folds.json``, else the packaged MSRC-v2 folds when
    every class they name exists in ``classes``. Raises ``DatasetError`` when there is none."""
    own = Path(root) / "folds.json"
    if own.is_file():
        return json.loads(own.read_text(encoding="utf-8"))
    msrc = msrc_folds()
    named = {c for fold in msrc["folds"] for c in fold} | set(msrc.get("exclude", ()))
    if named <= set(classes):
        return msrc
    raise DatasetError(f"no class folds for {root}: write {own} as {{\"folds\": [[class, ...], ...]}} "
                       "or name the held-out classes with --test-classes a,b,c")


def resolve_test_classes(dataset: SegmentationDataset, root: str | Path, test_classes: str | None = None,
                         fold: int | None = None) -> tuple[str, ...]:
    """Held-out classes: ``test_classes`` ("a,b,c") if given; else fold ``fold`` (pascal/coco: the
    standard fold; generic: ``load_folds``); else every episode class of the dataset."""
    if test_classes:
        names = tuple(dict.fromkeys(c.strip() for c in test_classes.split(",") if c.strip()))
        for c in names:
            dataset.class_id(c)
            if c in dataset.exclude:
                raise DatasetError(f"class {c!r} is excluded; remove it from --test-classes")
        return names
    if fold is not None:
        if hasattr(dataset, "test_classes"):
            return tuple(c for c in dataset.test_classes if c not in dataset.exclude)
        folds = load_folds(root, dataset.classes)["folds"]
        if not 0 <= fold < len(folds):
            raise DatasetError(f"fold {fold} does not exist: this dataset has folds 0..{len(folds) - 1}")
        return tuple(c for c in folds[fold] if c not in dataset.exclude)
    return dataset.episode_classes
