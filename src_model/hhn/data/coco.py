"""COCO-20i in the HSNet layout (spec section 2.3).

::

    root/{train2014,val2014}/<image>.jpg
    root/annotations/{train2014,val2014}/<image>.png   label value = class index + 1 (1..80), 0 = background
    splits/{trn,val}/fold<f>.pkl                       dict class index (0-based) -> ['val2014/<image>.jpg', ...]

Fold f holds out the 20 interleaved classes {f + 4v, v = 0..19}; the other 60 are training classes.
Image names are ``<subset>/<stem>`` (e.g. ``val2014/COCO_val2014_000000000042``). The split pickles are
read with an unpickler that accepts plain containers and strings only. Without them, pairs are derived
from the label maps of the subset (every image containing the class; slow on the full set).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path

from hhn.data.base import DatasetError, SegmentationDataset, check_split

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
N_FOLDS = 4


def coco_fold_classes(fold: int) -> tuple[str, ...]:
    """The 20 test classes of COCO-20i fold ``fold`` (0-3): class indices fold, fold+4, ..., fold+76."""
    if fold not in range(N_FOLDS):
        raise DatasetError(f"COCO-20i has folds 0-3, got {fold}.")
    return tuple(COCO_CLASSES[fold + N_FOLDS * v] for v in range(len(COCO_CLASSES) // N_FOLDS))


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers only; any class reference is refused."""

    def find_class(self, module: str, name: str):
        raise DatasetError(f"split file refers to {module}.{name}; only plain lists of image names are accepted.")


def _load_split_pickle(path: Path) -> dict[int, list[str]]:
    data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a dict class index -> list of image paths.")
    return {int(k): [str(v) for v in vals] for k, vals in data.items()}


class CocoDataset(SegmentationDataset):
    """One split of one COCO-20i fold.

    Args:
        root: the COCO2014 folder (``train2014/``, ``val2014/``, ``annotations/``).
        fold: 0-3.
        split: ``"val"`` (test classes, images of val2014) or ``"trn"`` (other 60 classes, train2014).
        splits_dir: folder with ``trn/`` and ``val/`` pickles (default ``root/splits/coco``).
    """

    episode_order = "class-uniform"

    def __init__(self, root: str | Path, fold: int, split: str = "val", splits_dir: str | Path | None = None,
                 min_fraction: float = 0.0, exclude: Iterable[str] = ()) -> None:
        check_split(split)
        self.root = Path(root)
        self.subset = "val2014" if split == "val" else "train2014"
        if not (self.root / "annotations" / self.subset).is_dir():
            raise DatasetError(f"{self.root / 'annotations' / self.subset} not found: point --data at the "
                               "COCO2014 folder of the HSNet layout (train2014/, val2014/, annotations/).")
        self.fold, self.split = fold, split
        self.test_classes = coco_fold_classes(fold)
        test = set(self.test_classes)
        self.split_classes = tuple(c for c in COCO_CLASSES if (c in test) == (split == "val"))
        self._class_names = {i + 1: n for i, n in enumerate(COCO_CLASSES)}
        splits = Path(splits_dir) if splits_dir is not None else self.root / "splits" / "coco"
        pkl = splits / split / f"fold{fold}.pkl"
        listed = None
        if pkl.is_file():
            listed = [(p.rsplit(".", 1)[0], COCO_CLASSES[k])
                      for k, paths in _load_split_pickle(pkl).items() for p in paths]
            self._names = tuple(sorted({img for img, _ in listed}))
        else:
            ann = self.root / "annotations" / self.subset
            self._names = tuple(sorted(f"{self.subset}/{p.stem}" for p in ann.glob("*.png")))
        super().__init__(self._class_names, self._names, min_fraction=min_fraction, exclude=exclude)
        if listed is None:
            listed = [(n, c) for c in self.split_classes for n in self.images_with(c)]
        self.pairs = self.select_pairs(listed, self.split_classes)

    def image_path(self, name: str) -> Path:
        return self.root / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        subset, stem = name.split("/", 1)
        return self.root / "annotations" / subset / f"{stem}.png"
