"""The generic folder layout: ``images/``, ``masks/`` and ``classes.txt`` (MSRC-v2 and our export follow it).

::

    root/images/<stem>.jpg|jpeg|png|bmp|tif|tiff   RGB photos
    root/masks/<stem>.png                           class-id label maps, 255 = ignore (not background)
    root/classes.txt                                one class per line, see ``parse_classes``

Images without a mask are skipped (they are unlabelled). A class named ``background`` (or
``_background_``) is background, not a class: it is never an episode class or a tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hhn.data.base import IGNORE, DatasetError, SegmentationDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
BACKGROUND_NAMES = frozenset({"background", "_background_"})
_ID_LINE = re.compile(r"^(\d+)\s+([^\[\(#]+)")


def parse_classes(text: str) -> dict[int, str]:
    """Parse ``classes.txt``: ``<id> <name> [anything in brackets or parentheses]`` per line, or one bare
    name per line (id = position among the names). Blank lines and lines starting with ``#`` are skipped.

    Returns label id -> name, without background names. Raises ``DatasetError`` on mixed or duplicate lines.
    """
    entries = [ln.strip() for ln in text.splitlines()]
    entries = [ln for ln in entries if ln and not ln.startswith("#")]
    with_id = [_ID_LINE.match(ln) for ln in entries]
    if all(with_id):
        pairs = [(int(m.group(1)), m.group(2).strip()) for m in with_id if m is not None]
    elif not any(with_id):
        pairs = list(enumerate(entries))
    else:
        raise DatasetError("classes.txt mixes '<id> <name>' lines with bare names; use one form for every line.")
    ids = [i for i, _ in pairs]
    names = [n for _, n in pairs]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise DatasetError("classes.txt lists an id or a name twice; every class needs one id and one name.")
    if IGNORE in ids:
        raise DatasetError(f"classes.txt uses id {IGNORE}, which is reserved for 'ignore'; renumber that class.")
    return {i: n for i, n in pairs if n.lower() not in BACKGROUND_NAMES}


class GenericDataset(SegmentationDataset):
    """A folder in the generic layout (see the module docstring); ``name`` = file stem.

    ``only``: keep just these image names (e.g. the accepted masks of an export, or one split of them).
    """

    def __init__(self, root: str | Path, min_fraction: float = 0.0, exclude: Iterable[str] = (),
                 only: Iterable[str] | None = None) -> None:
        self.root = Path(root)
        classes_file = self.root / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(f"{classes_file} not found: a generic dataset needs images/, masks/ and classes.txt.")
        self._class_names = parse_classes(classes_file.read_text(encoding="utf-8"))
        self._images = self._index_images(self.root / "images")
        masks_dir = self.root / "masks"
        if not masks_dir.is_dir():
            raise DatasetError(f"{masks_dir} not found: put one PNG label map per image there (same stem).")
        keep = None if only is None else set(only)
        self._names = tuple(sorted(s for s in self._images if (masks_dir / f"{s}.png").is_file()
                                   and (keep is None or s in keep)))
        if not self._names:
            raise DatasetError(f"no image in {self.root / 'images'} has a mask in {masks_dir} (same file stem).")
        super().__init__(self._class_names, self._names, min_fraction=min_fraction, exclude=exclude)

    @staticmethod
    def _index_images(images_dir: Path) -> dict[str, Path]:
        if not images_dir.is_dir():
            raise DatasetError(f"{images_dir} not found: put the photos of the dataset there.")
        found: dict[str, Path] = {}
        for p in sorted(images_dir.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if p.stem in found:
                    raise DatasetError(f"two images share the stem {p.stem!r} ({found[p.stem].name}, {p.name}); "
                                       "rename one of them.")
                found[p.stem] = p
        return found

    def image_path(self, name: str) -> Path:
        return self._images[name]

    def label_path(self, name: str) -> Path:
        return self.root / "masks" / f"{name}.png"
