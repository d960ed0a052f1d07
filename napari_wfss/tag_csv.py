"""Image-level tags as CSV: ``image,class`` rows (UTF-8, one class per row) into and out of a session.

Import (:func:`import_tags`) names an image by relative path, file name or file stem; rows it cannot
apply are listed in a :class:`TagImportReport` (line numbers are 1-based) instead of raising.

Negative tags: the class ``-`` or ``none`` (any case) says the image holds none of the classes
(:meth:`Session.set_no_class`), so ``none`` and ``-`` are not class names in a tags CSV. A negative tag
and a class tag on one image contradict each other: the row that comes second is a bad row. Export
writes a negative tag as ``image,-``.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from .atomic import atomic_open
from .classes import NEGATIVE_TAG_NAMES, ClassTableError
from .session_errors import SessionError, UnknownImageError, capped

if TYPE_CHECKING:
    from .session import Session

NEGATIVE_TAG = "-"  #: the class cell of a negative tag as export writes it


@dataclass
class TagImportReport:
    """What :meth:`Session.import_tags_csv` did and what it could not do (line numbers are 1-based)."""

    path: str
    tags_added: int = 0
    images_tagged: list[str] = field(default_factory=list)
    images_no_class: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    unknown_images: list[tuple[int, str]] = field(default_factory=list)
    ambiguous_images: list[tuple[int, str, list[str]]] = field(default_factory=list)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every row was applied."""
        return not (self.unknown_images or self.ambiguous_images or self.bad_rows)

    @property
    def problems(self) -> list[str]:
        """One readable line per row that was not applied."""
        out = [f"{self.path}:{line}: unknown image {name!r} (not in the image folder)"
               for line, name in self.unknown_images]
        out += [f"{self.path}:{line}: image {name!r} is ambiguous, give its relative path: {', '.join(c[:5])}"
                for line, name, c in self.ambiguous_images]
        out += [f"{self.path}:{line}: {reason}" for line, reason in self.bad_rows]
        return out

    def summary(self) -> str:
        """A one-paragraph account for logs and the CLI (the skipped rows capped by ``session_errors.capped``)."""
        text = f"{self.tags_added} tag(s) on {len(self.images_tagged)} image(s) from {self.path}"
        if self.images_no_class:
            text += f"; {len(self.images_no_class)} image(s) with a negative tag (none of the classes)"
        if self.new_classes:
            text += f"; new classes: {', '.join(self.new_classes)}"
        if not self.ok:
            text += f"; {len(self.problems)} row(s) skipped:\n  " + "\n  ".join(capped(self.problems))
        return text


def match_image(session: Session, text: str) -> list[str]:
    """Relative paths of present images matching ``text`` by relative path, then file name, then stem
    (exact, then case-folded); an absolute path inside the image folder names its image directly."""
    name = text.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if os.path.isabs(name):
        with contextlib.suppress(UnknownImageError):
            return [session.info(name).path]
    rels = session.images
    for field_of in (lambda r: r, lambda r: PurePosixPath(r).name, lambda r: PurePosixPath(r).stem):
        for fold in (lambda s: s, str.casefold):
            hits = [r for r in rels if fold(field_of(r)) == fold(name)]
            if hits:
                return hits
    return []


def import_tags(session: Session, path: str | os.PathLike[str]) -> TagImportReport:
    """Apply the CSV's ``image,class`` rows to ``session`` (see :meth:`Session.import_tags_csv`)."""
    report = TagImportReport(str(path))
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SessionError(f"cannot read tags file {path}: {exc}") from exc
    first = True
    with session.deferred_save():
        for line, row in enumerate(rows, 1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            is_header = first and [c.lower() for c in cells[:2]] == ["image", "class"]
            first = False
            if is_header:
                continue
            if len(cells) >= 2 and cells[0] and not cells[1]:
                report.bad_rows.append((line, f"empty class name for image {cells[0]!r}; give 'image,class'"))
                continue
            if len(cells) < 2 or not cells[0] or not cells[1]:
                report.bad_rows.append((line, f"expected 'image,class', got {','.join(row)!r}"))
                continue
            hits = match_image(session, cells[0])
            if not hits:
                report.unknown_images.append((line, cells[0]))
                continue
            if len(hits) > 1:
                report.ambiguous_images.append((line, cells[0], hits))
                continue
            if cells[1].casefold() in NEGATIVE_TAG_NAMES:
                _apply_negative(session, hits[0], cells[1], line, report)
                continue
            is_new = cells[1] not in session.classes
            try:
                changed = session.tag(hits[0], cells[1], add_class=True)
            except (ClassTableError, SessionError) as exc:
                report.bad_rows.append((line, _contradiction(session, hits[0], cells[1]) or str(exc)))
                continue
            if is_new:
                report.new_classes.append(session.classes.get(cells[1]).name)  # just added
            if changed:
                report.tags_added += 1
                if hits[0] not in report.images_tagged:
                    report.images_tagged.append(hits[0])
    return report


def _contradiction(session: Session, image: str, cell: str) -> str:
    """Why the row ``image,cell`` contradicts the image's tags so far (``""`` when it does not)."""
    if cell.casefold() in NEGATIVE_TAG_NAMES and session.tags_of(image):
        return (f"negative tag {cell!r} for {image}, which is tagged {', '.join(session.tags_of(image))} (by an "
                "earlier row or before): an image holds none of the classes or some; keep one of the rows")
    if cell.casefold() not in NEGATIVE_TAG_NAMES and session.info(image).no_class:
        return (f"class {cell!r} for {image}, which has a negative tag ('-' or 'none': it holds none of the "
                "classes; by an earlier row or before): keep one of the rows")
    return ""


def _apply_negative(session: Session, image: str, cell: str, line: int, report: TagImportReport) -> None:
    """Give ``image`` the negative tag of the row at ``line`` (its class cell ``cell``), or list the row as bad."""
    try:
        changed = session.set_no_class(image)
    except SessionError as exc:
        report.bad_rows.append((line, _contradiction(session, image, cell) or str(exc)))
        return
    if changed:
        report.images_no_class.append(image)


def write_tags(path: str | os.PathLike[str], rows: Iterable[tuple[str, str]]) -> None:
    """Atomically write ``(image, class)`` rows as CSV, header ``image,class`` first."""
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "class"])
        w.writerows(rows)
