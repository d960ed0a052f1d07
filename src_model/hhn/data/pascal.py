"""Pascal-5i in the HSNet layout (spec section 2.3).

::

    root/JPEGImages/<image>.jpg
    root/SegmentationClassAug/<image>.png      label values 1..20 = classes, 0 = background, 255 = ignore
    splits/{trn,val}/fold<f>.txt               lines ``<image>__<class 1-based>`` (HSNet's split lists)

Fold f holds out classes 5f+1 .. 5f+5 (f0 aeroplane..bottle, f1 bus..cow, f2 diningtable..person,
f3 pottedplant..tvmonitor). The ``val`` episodes come from ``val/fold<f>.txt``; the ``trn`` pairs are
the union of ``trn/fold<j>.txt`` for j != f. Without the split lists, pairs are derived from
``ImageSets/Segmentation/{train,val}.txt`` and the label maps (every image containing the class).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hhn.data.base import DatasetError, SegmentationDataset, check_split

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
N_FOLDS = 4


def pascal_fold_classes(fold: int) -> tuple[str, ...]:
    """The 5 test classes of Pascal-5i fold ``fold`` (0-3)."""
    if fold not in range(N_FOLDS):
        raise DatasetError(f"Pascal-5i has folds 0-3, got {fold}.")
    return PASCAL_CLASSES[5 * fold: 5 * fold + 5]


class PascalDataset(SegmentationDataset):
    """One split of one Pascal-5i fold: its (image, class) pairs and the images they name.

    Args:
        root: the VOC2012 folder (``JPEGImages/``, ``SegmentationClassAug/``).
        fold: 0-3.
        split: ``"val"`` (test classes of the fold) or ``"trn"`` (the other 15 classes).
        splits_dir: folder with ``trn/`` and ``val/`` list files (default ``root/splits/pascal``).
    """

    episode_order = "cycle"

    def __init__(self, root: str | Path, fold: int, split: str = "val", splits_dir: str | Path | None = None,
                 min_fraction: float = 0.0, exclude: Iterable[str] = ()) -> None:
        check_split(split)
        self.root = Path(root)
        for sub in ("JPEGImages", "SegmentationClassAug"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root / sub} not found: point --data at the VOC2012 folder of the "
                                   "HSNet layout (JPEGImages/, SegmentationClassAug/).")
        self.fold, self.split = fold, split
        self.test_classes = pascal_fold_classes(fold)
        test = set(self.test_classes)
        self.split_classes = tuple(c for c in PASCAL_CLASSES if (c in test) == (split == "val"))
        self._class_names = {i + 1: n for i, n in enumerate(PASCAL_CLASSES)}
        splits = Path(splits_dir) if splits_dir is not None else self.root / "splits" / "pascal"
        listed = self._read_lists(splits)
        self._names = tuple(sorted({img for img, _ in listed})) if listed is not None else self._read_imagesets()
        super().__init__(self._class_names, self._names, min_fraction=min_fraction, exclude=exclude)
        if listed is None:
            listed = [(n, c) for c in self.split_classes for n in self.images_with(c)]
        self.pairs = self.select_pairs(listed, self.split_classes)

    def _read_lists(self, splits: Path) -> list[tuple[str, str]] | None:
        folds = [self.fold] if self.split == "val" else [j for j in range(N_FOLDS) if j != self.fold]
        files = [splits / self.split / f"fold{j}.txt" for j in folds]
        if not all(f.is_file() for f in files):
            return None
        pairs = []
        for f in files:
            for line in f.read_text().split():
                image, _, cls = line.rpartition("__")
                if not image or not cls.isdigit() or not 1 <= int(cls) <= len(PASCAL_CLASSES):
                    raise DatasetError(f"{f}: bad line {line!r}; expected '<image>__<class 1-20>'.")
                pairs.append((image, PASCAL_CLASSES[int(cls) - 1]))
        return pairs

    def _read_imagesets(self) -> tuple[str, ...]:
        lst = self.root / "ImageSets" / "Segmentation" / ("val.txt" if self.split == "val" else "train.txt")
        if not lst.is_file():
            raise DatasetError(f"neither the HSNet split lists nor {lst} exist; add the split lists "
                               "(splits/pascal/{trn,val}/fold<f>.txt) under the dataset root.")
        return tuple(sorted(set(lst.read_text().split())))

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        return self.root / "SegmentationClassAug" / f"{name}.png"
