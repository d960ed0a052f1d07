"""The class table: ordered classes with a name, a label id and a colour.

Label ids: ``0`` = background (no class), ``1..254`` = classes, ``255`` = ignore (unlabelled, not
background). Names are free text (CLIP reads them), compared case-insensitively after stripping and
collapsing runs of white space; ``background`` and ``ignore`` are reserved. A class keeps its id for
life (masks store ids), so renaming or recolouring never touches a mask.

Files: CSV ``id,name,color`` with colours as ``#rrggbb`` (:meth:`ClassTable.write_csv`,
:meth:`ClassTable.read_csv`), and a JSON list of ``{"id", "name", "color"}`` records
(:meth:`ClassTable.to_records`, :meth:`ClassTable.to_json`).
"""

from __future__ import annotations

import colorsys
import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from hhn.errors import UserError

from .atomic import atomic_open

BACKGROUND_ID = 0
IGNORE_ID = 255
MIN_CLASS_ID = 1
MAX_CLASS_ID = 254
BACKGROUND_COLOR = (0, 0, 0)
IGNORE_COLOR = (128, 128, 128)
RESERVED_NAMES = ("background", "ignore")
NEGATIVE_TAG_NAMES = ("-", "none")  #: class cells (case-folded) that make a negative tag in a tags file
MAX_NAME_LENGTH = 64
FORBIDDEN_NAME_CHARS = ",#[("

Color = tuple[int, int, int]


class ClassTableError(UserError):
    """An invalid class name, id, colour or class file; the message says which and why."""


@dataclass(frozen=True)
class ClassInfo:
    """One class: ``id`` in 1..254 (its pixel value in label maps), display ``name``, ``color`` RGB 0..255."""

    id: int
    name: str
    color: Color

    @property
    def hex_color(self) -> str:
        """The colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)


def normalize_class_name(name: str) -> str:
    """Return ``name`` stripped with inner white space collapsed; raise :class:`ClassTableError` if invalid.

    Invalid: empty, longer than :data:`MAX_NAME_LENGTH`, containing a control character or one of
    :data:`FORBIDDEN_NAME_CHARS` (``,`` separates CSV cells; in ``classes.txt`` ``#`` starts a comment
    and ``[`` / ``(`` start an annotation after the name, as in MSRC's file), or a reserved name
    (``background``, ``ignore``, and :data:`NEGATIVE_TAG_NAMES`).
    """
    if not isinstance(name, str):
        raise ClassTableError(f"a class name must be text, got {type(name).__name__}")
    clean = " ".join(name.split())
    if not clean:
        raise ClassTableError("a class name cannot be empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise ClassTableError(f"class name {clean[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
    bad = sorted({ch for ch in clean if ch in FORBIDDEN_NAME_CHARS or not ch.isprintable()})
    if bad:
        raise ClassTableError(
            f"class name {clean!r} may not contain {' '.join(repr(c) for c in bad)} "
            f"(not allowed: {' '.join(FORBIDDEN_NAME_CHARS)} and control characters)"
        )
    if clean.casefold() in RESERVED_NAMES:
        raise ClassTableError(
            f"{clean!r} is reserved (id {BACKGROUND_ID} = background, {IGNORE_ID} = ignore); choose another name"
        )
    if clean.casefold() in NEGATIVE_TAG_NAMES:
        raise ClassTableError(f"{clean!r} is reserved: in a tags file it marks an image holding none of the "
                              "classes; choose another name")
    return clean


def parse_color(value: str | Iterable[int]) -> Color:
    """``"#rrggbb"`` (``#`` optional) or three ints 0..255 -> an RGB tuple; :class:`ClassTableError` otherwise."""
    if isinstance(value, str):
        m = re.fullmatch(r"#?([0-9a-fA-F]{6})", value.strip())
        if not m:
            raise ClassTableError(f"colour {value!r} is not of the form #rrggbb")
        h = m.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    rgb = tuple(value)
    if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
        raise ClassTableError(f"colour {rgb!r} must be three integers 0..255")
    return rgb  # type: ignore[return-value]


def default_color(class_id: int) -> Color:
    """A vivid colour for ``class_id``: hues step by the golden angle, so neighbouring ids differ strongly.

    Saturation and value cycle through three levels so ids a full hue turn apart stay distinguishable;
    none is black or grey (those mean background and ignore).
    """
    hue = (class_id * 0.618033988749895) % 1.0
    sat, val = ((0.85, 0.95), (0.6, 0.85), (0.95, 0.7))[(class_id // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


class ClassTable:
    """Ordered, validated classes. Iterating yields :class:`ClassInfo` in table order.

    Not thread-safe by itself: a :class:`~napari_wfss.session.Session` guards its table with its lock,
    so change a session's classes through the session's methods.
    """

    def __init__(self, classes: Iterable[ClassInfo | Mapping] = ()) -> None:
        self._classes: list[ClassInfo] = []
        for c in classes:
            if isinstance(c, ClassInfo):
                self.add(c.name, class_id=c.id, color=c.color)
            else:
                self.add(c["name"], class_id=c.get("id"), color=c.get("color"))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(list(self._classes))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassTable) and self._classes == other._classes

    def __repr__(self) -> str:
        return f"ClassTable({', '.join(f'{c.id}:{c.name}' for c in self._classes)})"

    @property
    def names(self) -> list[str]:
        """Class names in table order."""
        return [c.name for c in self._classes]

    @property
    def ids(self) -> list[int]:
        """Class ids in table order."""
        return [c.id for c in self._classes]

    def find(self, name: str) -> ClassInfo | None:
        """The class called ``name`` (case-insensitive, white space normalised), or ``None``."""
        key = " ".join(str(name).split()).casefold()
        return next((c for c in self._classes if c.name.casefold() == key), None)

    def get(self, name: str) -> ClassInfo:
        """The class called ``name``; :class:`ClassTableError` listing the known names if there is none."""
        info = self.find(name)
        if info is None:
            known = ", ".join(self.names) or "none yet"
            raise ClassTableError(f"unknown class {name!r} (known classes: {known})")
        return info

    def by_id(self, class_id: int) -> ClassInfo:
        """The class with label id ``class_id``; :class:`ClassTableError` if none."""
        info = next((c for c in self._classes if c.id == class_id), None)
        if info is None:
            raise ClassTableError(f"no class has id {class_id}")
        return info

    # ---------------------------------------------------------------- mutation
    def _free_id(self) -> int:
        used = set(self.ids)
        free = next((i for i in range(MIN_CLASS_ID, MAX_CLASS_ID + 1) if i not in used), None)
        if free is None:
            raise ClassTableError(f"the class table is full ({MAX_CLASS_ID} classes)")
        return free

    def add(self, name: str, class_id: int | None = None, color: str | Iterable[int] | None = None) -> ClassInfo:
        """Append a class and return it. ``class_id`` defaults to the lowest free id, ``color`` to
        :func:`default_color` of the id. Raises :class:`ClassTableError` on a duplicate name or id."""
        clean = normalize_class_name(name)
        if self.find(clean) is not None:
            raise ClassTableError(f"class {clean!r} already exists (names are case-insensitive)")
        if class_id is None:
            class_id = self._free_id()
        elif (not isinstance(class_id, int) or isinstance(class_id, bool)
              or not MIN_CLASS_ID <= class_id <= MAX_CLASS_ID):
            raise ClassTableError(
                f"class id {class_id!r} for {clean!r} must be an integer in {MIN_CLASS_ID}..{MAX_CLASS_ID} "
                f"({BACKGROUND_ID} = background and {IGNORE_ID} = ignore are reserved)"
            )
        elif class_id in self.ids:
            raise ClassTableError(f"class id {class_id} is already used by {self.by_id(class_id).name!r}")
        info = ClassInfo(class_id, clean, default_color(class_id) if color is None else parse_color(color))
        self._classes.append(info)
        return info

    def _replace(self, old: ClassInfo, new: ClassInfo) -> ClassInfo:
        self._classes[self._classes.index(old)] = new
        return new

    def rename(self, name: str, new_name: str) -> ClassInfo:
        """Rename a class (its id and colour stay); raises if ``new_name`` is taken by another class."""
        info = self.get(name)
        clean = normalize_class_name(new_name)
        other = self.find(clean)
        if other is not None and other.id != info.id:
            raise ClassTableError(f"cannot rename {info.name!r} to {clean!r}: that class already exists")
        return self._replace(info, ClassInfo(info.id, clean, info.color))

    def set_color(self, name: str, color: str | Iterable[int]) -> ClassInfo:
        """Change a class's colour."""
        info = self.get(name)
        return self._replace(info, ClassInfo(info.id, info.name, parse_color(color)))

    def remove(self, name: str) -> ClassInfo:
        """Remove a class and return it (its id becomes free for a later class)."""
        info = self.get(name)
        self._classes.remove(info)
        return info

    def merge(self, other: ClassTable) -> list[ClassInfo]:
        """Add ``other``'s classes that are new here and take ``other``'s colours for shared names.

        A shared name must have the same id in both tables (masks store ids). Returns the added
        classes. Raises :class:`ClassTableError` before changing anything on a conflict.
        """
        for c in other:
            mine = self.find(c.name)
            if mine is not None and mine.id != c.id:
                raise ClassTableError(
                    f"class {c.name!r} has id {mine.id} here but {c.id} in the imported table; "
                    "ids of existing classes cannot change because masks store them"
                )
            if mine is None and c.id in self.ids:
                raise ClassTableError(
                    f"imported class {c.name!r} wants id {c.id}, which is already {self.by_id(c.id).name!r}"
                )
        added = []
        for c in other:
            mine = self.find(c.name)
            if mine is None:
                added.append(self.add(c.name, class_id=c.id, color=c.color))
            else:
                self.set_color(mine.name, c.color)
        return added

    def copy(self) -> ClassTable:
        """An independent copy."""
        return ClassTable(self._classes)

    # ---------------------------------------------------------------- colours
    def colors(self) -> dict[int, Color]:
        """Label id -> RGB for every class plus 0 (background, black) and 255 (ignore, grey)."""
        table = {BACKGROUND_ID: BACKGROUND_COLOR, IGNORE_ID: IGNORE_COLOR}
        table.update({c.id: c.color for c in self._classes})
        return table

    def palette(self) -> bytes:
        """768-byte PIL palette (256 RGB triples): class colours at their ids, 0 black, 255 grey, rest black."""
        pal = bytearray(768)
        for class_id, rgb in self.colors().items():
            pal[3 * class_id : 3 * class_id + 3] = bytes(rgb)
        return bytes(pal)

    # ---------------------------------------------------------------- files
    def to_records(self) -> list[dict]:
        """``[{"id": int, "name": str, "color": "#rrggbb"}, ...]`` in table order (JSON-ready)."""
        return [{"id": c.id, "name": c.name, "color": c.hex_color} for c in self._classes]

    @classmethod
    def from_records(cls, records: Iterable[Mapping]) -> ClassTable:
        """Inverse of :meth:`to_records`; ``id`` and ``color`` may be missing (defaults apply)."""
        return cls(records)

    def to_json(self) -> str:
        """The records as a JSON string."""
        return json.dumps(self.to_records(), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ClassTable:
        """Inverse of :meth:`to_json`."""
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClassTableError(f"class table JSON is invalid: {exc}") from exc
        if not isinstance(records, list) or not all(isinstance(r, dict) and "name" in r for r in records):
            raise ClassTableError('class table JSON must be a list of {"id", "name", "color"} objects')
        return cls.from_records(records)

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Atomically write ``id,name,color`` rows (header included, colours ``#rrggbb``)."""
        with atomic_open(path, "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["id", "name", "color"])
            w.writerows([c.id, c.name, c.hex_color] for c in self._classes)

    @classmethod
    def read_csv(cls, path: str | os.PathLike[str]) -> ClassTable:
        """Read a CSV with a header naming at least ``name`` (``id`` and ``color`` optional, may be blank).

        Lines that are blank or start with ``#`` are skipped. All problems are reported together in
        one :class:`ClassTableError` naming the file and the line numbers.
        """
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ClassTableError(f"cannot read class file {path}: {exc}") from exc
        numbered = [(i, r) for i, r in enumerate(rows, 1) if r and any(r) and not r[0].lstrip().startswith("#")]
        if not numbered:
            raise ClassTableError(f"class file {path} is empty; expected a header 'id,name,color' and one row "
                                  f"per class")
        header = [h.strip().lower() for h in numbered[0][1]]
        if "name" not in header:
            raise ClassTableError(f"class file {path}: the header must name the columns, e.g. 'id,name,color'")
        col = {k: header.index(k) for k in ("id", "name", "color") if k in header}

        def cell(row: list[str], key: str) -> str:
            return row[col[key]].strip() if key in col and col[key] < len(row) else ""

        body = numbered[1:]
        # Rows without an id take the lowest id that no row of the file claims explicitly.
        claimed = {int(cell(r, "id")) for _, r in body if cell(r, "id").isdigit()}
        auto_ids = (i for i in range(MIN_CLASS_ID, MAX_CLASS_ID + 1) if i not in claimed)
        table, problems = cls(), []
        for line, row in body:
            try:
                class_id = cell(row, "id")
                if class_id and not class_id.isdigit():
                    raise ClassTableError(f"id {class_id!r} is not an integer")
                table.add(cell(row, "name"), class_id=int(class_id) if class_id else next(auto_ids, None),
                          color=cell(row, "color") or None)
            except ClassTableError as exc:
                problems.append(f"line {line}: {exc}")
        if problems:
            raise ClassTableError(f"class file {path} has errors:\n  " + "\n  ".join(problems))
        return table
