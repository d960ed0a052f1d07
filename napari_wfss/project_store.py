"""The on-disk project: folder layout, ``project.json`` format, image keys and the writer lock.

Project folder (default ``<image folder>/.wfss``)::

    project.json            format/version, image folder, classes, one record per image
    project.json.bak        the previous version of project.json (kept by every save but the first)
    .project.lock           the writer lock (see :func:`acquire_writer_lock`)
    proposals/<key>.png     the model's label map (palette PNG of class ids)
    masks/<key>.png         the user's label map: edited, then accepted (palette PNG of class ids)

``<key>`` is the image's relative path without extension, folders joined by ``__`` (``sub/a.png`` ->
``sub__a``); a clash (``a.png`` beside ``a.jpg``) gets the extension appended (``a_jpg``), then a
number. Keys are assigned once and stored, so they never change for an image.

What project.json says is checked before it is used, so a crafted or damaged project cannot make a
session read or write outside its folders: a key is a plain file name (no ``/``, ``\\``, ``:``, no
leading ``.``, so no ``..`` and no absolute path), no two images share a key, an image path is relative
with no ``..`` part, and ``proposals/`` and ``masks/`` must not be symbolic links leading elsewhere.

``project.json`` is UTF-8 JSON: the top-level fields indented, then one compact line per image record
(``path``, ``key``, ``status``, ``tags`` as class names, ``proposal``, ``mask``, ``accepted``,
``rejected``, ``no_class``: the time of the image's negative tag, or null; records written before negative
tags existed have no ``no_class`` and read as null). Times are ISO 8601 UTC strings to the second. Every
file is written atomically (:mod:`napari_wfss.atomic`). Each save first keeps the file it replaces as
``project.json.bak``, so a project.json damaged outside napari-wfss (a full disk, a sync tool, an editor)
can be restored; the error that reports a damaged project.json names the backup.

One writer per project: a session that may write holds ``.project.lock`` (an operating-system file
lock, released on close or when the process ends, even if it is killed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath, PurePosixPath

from .atomic import atomic_copy, atomic_link_or_copy, atomic_write_text, remove_stale_temps, subfolders_leading_out
from .classes import ClassTable, ClassTableError
from .session_errors import ProjectInUseError, SessionError
from .statuses import ImageState

FORMAT_NAME = "napari-wfss-project"
FORMAT_VERSION = 1
PROJECT_FILE = "project.json"
PROJECT_BACKUP = "project.json.bak"
PROJECT_LOCK = ".project.lock"
DEFAULT_PROJECT_DIRNAME = ".wfss"
PROPOSALS_DIR = "proposals"
MASKS_DIR = "masks"

_UNSAFE_KEY_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
_MAX_KEY_CHARS = 120
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)


def utc_now() -> str:
    """The current time as stored in project.json (ISO 8601, UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- writer lock
class Unlocked:
    """Stands in for the writer lock on a file system that cannot lock files (some network shares)."""

    warning = ("this file system cannot lock files: nothing stops another napari-wfss window from opening this "
               "project too, and the last one to save would overwrite the other's edits")

    def release(self) -> None:
        """Nothing to release."""


def acquire_writer_lock(project: Path):
    """The project's writer lock (``filelock.FileLock``), held; :class:`ProjectInUseError` at once if taken;
    an :class:`Unlocked` where the file system cannot lock. Creates the project folder."""
    from filelock import FileLock, Timeout

    try:
        project.mkdir(parents=True, exist_ok=True)
        lock = FileLock(project / PROJECT_LOCK, thread_local=False)
        lock.acquire(timeout=0)
    except NotImplementedError:  # filelock's answer where flock is unsupported
        return Unlocked()
    except Timeout:
        raise ProjectInUseError(
            f"the project {project} is open in another napari-wfss window, process or session; close it "
            f"there first (its lock is released when that process ends, even if it crashed)"
        ) from None
    except OSError as exc:
        raise SessionError(f"cannot lock the project {project} for writing: {exc}") from exc
    return lock


# ---------------------------------------------------------------------- keys and files
def _key_candidates(rel: str) -> Iterator[str]:
    """File-name-safe keys for ``rel`` in order of preference (see the module doc)."""
    p = PurePosixPath(rel)
    base = "__".join((*p.parent.parts, p.stem)) if str(p.parent) != "." else p.stem
    base = _UNSAFE_KEY_CHARS.sub("_", base).lstrip(".") or "image"
    if len(base) > _MAX_KEY_CHARS:
        base = f"{base[:_MAX_KEY_CHARS - 9]}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
    yield base
    ext = p.suffix.lstrip(".").lower()
    if ext:
        yield f"{base}_{ext}"
    for n in itertools.count(2):
        yield f"{base}_{n}"


def new_key(rel: str, taken: Iterable[str]) -> str:
    """The key for a new image ``rel``, unlike every key in ``taken`` (case-folded: safe on
    case-insensitive disks)."""
    folded = {k.casefold() for k in taken}
    return next(k for k in _key_candidates(rel) if k.casefold() not in folded)


def check_key(key: object) -> str:
    """``key`` if it is a safe image key: a non-empty plain file name without the characters keys never
    hold (``\\ / : * ? " < > |``, control characters) and not starting with ``.`` (so not ``..``);
    ``ValueError`` naming the problem otherwise."""
    if not isinstance(key, str) or not key or key.startswith(".") or _UNSAFE_KEY_CHARS.search(key):
        raise ValueError(f"key {key!r} is not a plain file name (no '/', '\\', ':', '..' or leading '.')")
    return key


def check_image_path(path: object) -> str:
    """``path`` if it is a relative image path that stays in the image folder on this system (no root, no
    drive, no ``..`` part, as this system's paths read it); ``ValueError`` naming the problem otherwise."""
    if not isinstance(path, str) or not path or PurePath(path).anchor or ".." in PurePath(path).parts:
        raise ValueError(f"image path {path!r} is not a relative path inside the image folder")
    return path


def label_file(project: Path, kind: str, key: str) -> Path:
    """The label-map PNG of ``kind`` (:data:`PROPOSALS_DIR` or :data:`MASKS_DIR`) for the image ``key``
    (a key checked by :func:`check_key` or made by :func:`new_key`)."""
    return project / kind / f"{key}.png"


def check_label_folders(project: Path) -> None:
    """Raise :class:`SessionError` if ``proposals/`` or ``masks/`` of ``project`` is a symbolic link leading
    elsewhere (label maps written there would land outside the project)."""
    leading_out = subfolders_leading_out(project, (PROPOSALS_DIR, MASKS_DIR))
    if leading_out:
        raise SessionError(f"label-map folder is a link to {leading_out[0].resolve()}, outside the project: "
                           f"{leading_out[0]}; replace the link by a real folder")


def remove_project_temps(project: Path, older_than: float) -> None:
    """Delete the temporary files a killed writer left in the project folder and its label-map folders,
    if last modified more than ``older_than`` seconds ago (0 when no other writer can be alive)."""
    for d in (project, project / PROPOSALS_DIR, project / MASKS_DIR):
        if d.is_dir():
            remove_stale_temps(d, older_than=older_than)


def earlier_project_files(project: Path) -> list[Path]:
    """What an earlier project left in ``project`` when its project.json is gone: the backup, and the
    label-map folders if they hold files. A new project there would overwrite those label maps."""
    found = [project / PROJECT_BACKUP] if (project / PROJECT_BACKUP).is_file() else []
    return found + [d for d in (project / PROPOSALS_DIR, project / MASKS_DIR) if d.is_dir() and any(d.iterdir())]


class DamagedProjectError(SessionError):
    """project.json cannot be read or is not a project file; ``backup`` is its previous version, if kept."""

    def __init__(self, project: Path, message: str) -> None:
        super().__init__(message)
        self.project = project
        backup = project / PROJECT_BACKUP
        self.backup = backup if backup.is_file() else None


def restore_backup(project: Path) -> Path:
    """Put the previous version of ``project``'s project.json back in place; the damaged file is kept beside
    it (``project.json.damaged-<time>``, returned) for the user to look at, never deleted."""
    path, backup = project / PROJECT_FILE, project / PROJECT_BACKUP
    if not backup.is_file():
        raise SessionError(f"no backup to restore: {backup} does not exist")
    kept = project / f"{PROJECT_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists():
        os.replace(path, kept)
    atomic_copy(backup, path)
    return kept


def restore_hint(project: Path) -> str:
    """How to get the project back after its project.json was lost or damaged (names the backup if any)."""
    path, backup = project / PROJECT_FILE, project / PROJECT_BACKUP
    if backup.is_file():
        return (f"its previous version is kept in {backup}: copy that file to {path} to restore the project "
                "as it was one save earlier")
    return f"there is no backup ({backup} is kept from a project's second save on)"


# ---------------------------------------------------------------------- project.json
@dataclass
class StoredProject:
    """The top level of a project.json as read: where the images are, the classes, the image records."""

    image_folder: Path
    recursive: bool
    classes: ClassTable
    images: list


def _no_project(project: Path) -> SessionError:
    return SessionError(f"no project found in {project} (expected {PROJECT_FILE}); create one first")


def find_project(project_dir: str | os.PathLike[str]) -> Path:
    """The project folder ``project_dir``, or the ``.wfss`` project inside it if ``project_dir`` is an
    image folder; :class:`SessionError` if neither holds a project.json."""
    project = Path(project_dir).expanduser().resolve()
    if not (project / PROJECT_FILE).is_file() and (project / DEFAULT_PROJECT_DIRNAME / PROJECT_FILE).is_file():
        project = project / DEFAULT_PROJECT_DIRNAME
    if not (project / PROJECT_FILE).is_file():
        raise _no_project(project)
    return project


def read_project(project: Path, image_folder: str | os.PathLike[str] | None) -> StoredProject:
    """Read and check ``project/project.json``; ``image_folder`` overrides the stored image location."""
    path = project / PROJECT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _no_project(project) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedProjectError(project, f"cannot read the project file, it is damaged ({exc}): {path}; "
                                           f"{restore_hint(project)}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise DamagedProjectError(project, f"not a napari-wfss project file: {path}; {restore_hint(project)}")
    version = data.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SessionError(
            f"{path} has project format version {version!r}; this napari-wfss reads up to "
            f"{FORMAT_VERSION}. Upgrade napari-wfss to open it."
        )
    folder = _locate_image_folder(project, data, image_folder)
    try:
        classes = ClassTable.from_records(data.get("classes", []))
    except ClassTableError as exc:
        raise SessionError(f"{path}: invalid class table: {exc}") from exc
    return StoredProject(folder, bool(data.get("recursive", False)), classes, data.get("images", []))


def _locate_image_folder(project: Path, data: dict, override: str | os.PathLike[str] | None) -> Path:
    if override is not None:
        candidates = [Path(override).expanduser().resolve()]
    else:
        candidates = [(project / data.get("image_folder", "..")).resolve()]
        if data.get("image_folder_absolute"):
            candidates.append(Path(data["image_folder_absolute"]))
    for c in candidates:
        if c.is_dir():
            return c
    tried = " or ".join(str(c) for c in candidates)
    raise SessionError(f"image folder of project {project} not found ({tried}); pass its new location")


def state_from_record(rec: Mapping) -> tuple[ImageState, list]:
    """An image record of project.json as an :class:`ImageState` without tags, and its tag names.
    A malformed record raises ``KeyError``, ``TypeError`` or ``AttributeError``; an unsafe key or image
    path (:func:`check_key`, :func:`check_image_path`) raises ``ValueError``."""
    state = ImageState(check_image_path(rec["path"]), check_key(rec["key"]))
    tags = rec.get("tags", [])
    state.proposal = rec.get("proposal")
    state.mask = rec.get("mask")
    state.accepted = rec.get("accepted")
    state.rejected = rec.get("rejected")
    state.no_class = rec.get("no_class")
    return state, tags


def _record(state: ImageState, tags: list[str]) -> dict:
    return {
        "path": state.path,
        "key": state.key,
        "status": state.status,  # informative; the status is derived from the fields below on load
        "tags": tags,
        "proposal": state.proposal,
        "mask": state.mask,
        "accepted": state.accepted,
        "rejected": state.rejected,
        "no_class": state.no_class,
    }


def _dumps(data: dict) -> str:
    """JSON text of a project: top-level fields indented, one compact line per image (fast and diffable)."""
    head = json.dumps({k: v for k, v in data.items() if k != "images"}, indent=1, ensure_ascii=False)
    images = ",\n  ".join(map(_LINE_ENCODER.encode, data["images"]))
    return f'{head[:-2]},\n "images": [\n  {images}\n ]\n}}\n'


def write_project(project: Path, image_folder: Path, recursive: bool, classes: ClassTable,
                  states: Iterable[ImageState]) -> None:
    """Atomically write ``project/project.json`` for these images (in this order), after keeping the file
    it replaces as ``project.json.bak`` (a hard link where possible: no copy)."""
    try:
        rel_folder = os.path.relpath(image_folder, project)
    except ValueError:  # another drive on Windows
        rel_folder = str(image_folder)
    names = {c.id: c.name for c in classes}
    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "saved": utc_now(),
        "image_folder": Path(rel_folder).as_posix(),
        "image_folder_absolute": str(image_folder),
        "recursive": recursive,
        "classes": classes.to_records(),
        "images": [_record(s, [names[i] for i in sorted(s.tags)]) for s in states],
    }
    text = _dumps(data)
    if (project / PROJECT_FILE).is_file():
        atomic_link_or_copy(project / PROJECT_FILE, project / PROJECT_BACKUP)
    atomic_write_text(project / PROJECT_FILE, text)
