"""The annotation session: an image folder, its classes, tags, proposals and masks, kept in a project folder.

Project folder (default ``<image folder>/.wfss``)::

    project.json            format/version, image folder, classes, one record per image
    proposals/<key>.png     the model's label map (palette PNG of class ids)
    masks/<key>.png         the user's label map: edited, then accepted (palette PNG of class ids)

``<key>`` is the image's relative path without extension, folders joined by ``__`` (``sub/a.png`` ->
``sub__a``); a clash (``a.png`` beside ``a.jpg``) gets the extension appended (``a_jpg``), then a
number. Keys are assigned once and stored, so they never change for an image.

Images are named in the API by their path relative to the image folder (POSIX ``/``), e.g.
``"sub/a.png"``; absolute paths inside the folder are accepted too.

Status of an image, derived from what is stored (so it cannot disagree with the files):

=========== ====================================================================================
untagged    nothing yet
tagged      has image-level tags (class names present), no proposal or mask
proposed    has a model proposal
edited      has a user mask (edits captured) that is not accepted yet
accepted    the user accepted the mask; never overwritten by a proposal
rejected    the user rejected the proposal (it was deleted); a new proposal may replace it
=========== ====================================================================================

Tags are independent of status: a proposed or accepted image keeps its tags.

Durability: every file is written atomically (:mod:`napari_wfss.atomic`); a mask PNG is written before
``project.json`` refers to it, and a file is deleted only after ``project.json`` stopped referring to
it, so a kill at any moment leaves a consistent project. With ``autosave`` on (the default) every
change is saved at once; :meth:`Session.deferred_save` groups many changes into one write.
All public methods take one re-entrant lock, so worker threads and the UI thread may share a session.

One writer per project: a session that may write holds ``.project.lock`` in the project folder (an
operating-system file lock, released by :meth:`Session.close` or when the process ends, even if it is
killed), so a second napari window, process or ``Session`` on the same project is refused with a clear
error instead of silently overwriting the first one's edits. ``read_only=True`` opens without the lock
(the proposal child process reads the project that way) and refuses every write.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from hhn.errors import UserError

from .atomic import atomic_open, atomic_write_text, remove_stale_temps
from .classes import BACKGROUND_ID, IGNORE_ID, ClassInfo, ClassTable, ClassTableError
from .images import (
    IMAGE_EXTENSIONS,
    ImageFolderError,
    LabelMapError,
    as_label_map,
    image_size,
    list_images,
    natural_key,
    read_image,
    read_label_png,
    write_label_png,
)

FORMAT_NAME = "napari-wfss-project"
FORMAT_VERSION = 1
PROJECT_FILE = "project.json"
PROJECT_LOCK = ".project.lock"
DEFAULT_PROJECT_DIRNAME = ".wfss"
PROPOSALS_DIR = "proposals"
MASKS_DIR = "masks"

UNTAGGED, TAGGED, PROPOSED, EDITED, ACCEPTED, REJECTED = (
    "untagged", "tagged", "proposed", "edited", "accepted", "rejected",
)
STATUSES = (UNTAGGED, TAGGED, PROPOSED, EDITED, ACCEPTED, REJECTED)

_UNSAFE_KEY_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
_MAX_KEY_CHARS = 120
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)


class SessionError(UserError):
    """A project cannot be created/opened, or an action is not allowed in the image's current state."""


class ProjectInUseError(SessionError):
    """Another session (window, process) holds the project for writing."""


class UnknownImageError(SessionError, KeyError):
    """An image name that is not part of the session."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class _Unlocked:
    """Stands in for the writer lock on a file system that cannot lock files (some network shares)."""

    warning = ("this file system cannot lock files: nothing stops another napari-wfss window from opening this "
               "project too, and the last one to save would overwrite the other's edits")

    def release(self) -> None:
        """Nothing to release."""


def _acquire_writer_lock(project: Path):
    """The project's writer lock (``filelock.FileLock``), held; :class:`ProjectInUseError` at once if taken;
    an :class:`_Unlocked` where the file system cannot lock."""
    from filelock import FileLock, Timeout

    try:
        project.mkdir(parents=True, exist_ok=True)
        lock = FileLock(project / PROJECT_LOCK, thread_local=False)
        lock.acquire(timeout=0)
    except NotImplementedError:  # filelock's answer where flock is unsupported
        return _Unlocked()
    except Timeout:
        raise ProjectInUseError(
            f"the project {project} is open in another napari-wfss window, process or session; close it "
            f"there first (its lock is released when that process ends, even if it crashed)"
        ) from None
    except OSError as exc:
        raise SessionError(f"cannot lock the project {project} for writing: {exc}") from exc
    return lock


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dumps_project(data: dict) -> str:
    """JSON text of a project: top-level fields indented, one compact line per image (fast and diffable)."""
    head = json.dumps({k: v for k, v in data.items() if k != "images"}, indent=1, ensure_ascii=False)
    images = ",\n  ".join(map(_LINE_ENCODER.encode, data["images"]))
    return f'{head[:-2]},\n "images": [\n  {images}\n ]\n}}\n'


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


@dataclass
class _Entry:
    """Mutable per-image state; ``tags`` are class ids; meta dicts as stored in project.json."""

    path: str
    key: str
    tags: set[int] = field(default_factory=set)
    proposal: dict | None = None  # {"model", "time", "scores", "classes"}
    mask: dict | None = None  # {"time", "classes"}
    accepted: str | None = None  # time of acceptance
    rejected: str | None = None  # time of rejection
    missing: bool = False  # the file is gone from the image folder (runtime only)

    @property
    def status(self) -> str:
        if self.rejected:
            return REJECTED
        if self.mask is not None:
            return ACCEPTED if self.accepted else EDITED
        if self.proposal is not None:
            return PROPOSED
        return TAGGED if self.tags else UNTAGGED


@dataclass(frozen=True)
class ImageInfo:
    """A snapshot of one image's state (safe to keep; later changes do not alter it).

    ``classes_present`` are the class names in the current label map (the user's mask if any, else the
    proposal). Times are ISO 8601 UTC strings.
    """

    path: str
    key: str
    status: str
    tags: tuple[str, ...]
    proposal_model: str | None
    proposal_time: str | None
    proposal_scores: Mapping[str, float] | None
    mask_time: str | None
    accepted_time: str | None
    classes_present: tuple[str, ...]
    missing: bool


@dataclass
class TagImportReport:
    """What :meth:`Session.import_tags_csv` did and what it could not do (line numbers are 1-based)."""

    path: str
    tags_added: int = 0
    images_tagged: list[str] = field(default_factory=list)
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
        out = [f"{self.path}:{line}: unknown image {name!r} (not in the image folder)" for line, name in self.unknown_images]
        out += [f"{self.path}:{line}: image {name!r} is ambiguous, give its relative path: {', '.join(c[:5])}"
                for line, name, c in self.ambiguous_images]
        out += [f"{self.path}:{line}: {reason}" for line, reason in self.bad_rows]
        return out

    def summary(self) -> str:
        """A one-paragraph account for logs and the CLI."""
        text = f"{self.tags_added} tag(s) on {len(self.images_tagged)} image(s) from {self.path}"
        if self.new_classes:
            text += f"; new classes: {', '.join(self.new_classes)}"
        if not self.ok:
            text += f"; {len(self.problems)} row(s) skipped:\n  " + "\n  ".join(self.problems)
        return text


class Session:
    """An image folder under annotation, persisted in a project folder. Build with :meth:`create`,
    :meth:`open` or :meth:`open_or_create`, not with the constructor."""

    def __init__(self, image_folder: Path, project_dir: Path, classes: ClassTable, recursive: bool) -> None:
        self._image_folder = image_folder
        self._project_dir = project_dir
        self._classes = classes
        self._recursive = recursive
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self._writer = None  # the project's FileLock while this session may write; None when read-only
        self._defer_depth = 0
        self._dirty = False
        self.autosave = True
        self.warnings: list[str] = []

    # ================================================================== construction
    @classmethod
    def create(
        cls,
        image_folder: str | os.PathLike[str],
        project_dir: str | os.PathLike[str] | None = None,
        *,
        recursive: bool = False,
        classes: ClassTable | None = None,
    ) -> Session:
        """Start a project for ``image_folder`` in ``project_dir`` (default ``<image_folder>/.wfss``).

        Raises :class:`SessionError` if a project already exists there, and
        :class:`~napari_wfss.images.ImageFolderError` if the folder has no images.
        """
        folder = Path(image_folder).expanduser().resolve()
        project = Path(project_dir).expanduser().resolve() if project_dir else folder / DEFAULT_PROJECT_DIRNAME
        if (project / PROJECT_FILE).exists():
            raise SessionError(f"a project already exists in {project}; open it instead (resume)")
        session = cls(folder, project, classes.copy() if classes is not None else ClassTable(), recursive)
        session.autosave = False  # nothing is written before the images are found and the lock is held
        added, _ = session.rescan()
        session.autosave = True
        if not added:
            raise ImageFolderError(
                f"no images found in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)}"
                f"{'' if recursive else '; sub-folders are searched only with recursive=True'})"
            )
        session._hold(_acquire_writer_lock(project))
        try:
            if (project / PROJECT_FILE).exists():  # another process created it meanwhile
                raise SessionError(f"a project already exists in {project}; open it instead (resume)")
            session.save()
        except BaseException:
            session.close()
            raise
        return session

    @classmethod
    def open(
        cls, project_dir: str | os.PathLike[str], *, image_folder: str | os.PathLike[str] | None = None,
        read_only: bool = False,
    ) -> Session:
        """Resume a project. ``project_dir`` may also be an image folder holding a ``.wfss`` project.

        ``image_folder`` overrides the stored location (after moving the images). New images in the
        folder are added as untagged; vanished ones are kept (with their masks) but hidden until they
        return. Problems repaired while opening (e.g. a mask file deleted by hand) are listed in
        :attr:`warnings`. Raises :class:`ProjectInUseError` if another session holds the project for
        writing, unless ``read_only`` (then nothing is written: the repairs stay in memory, and every
        change that would be saved raises :class:`SessionError`).
        """
        project = Path(project_dir).expanduser().resolve()
        if not (project / PROJECT_FILE).is_file() and (project / DEFAULT_PROJECT_DIRNAME / PROJECT_FILE).is_file():
            project = project / DEFAULT_PROJECT_DIRNAME
        path = project / PROJECT_FILE
        if not path.is_file():
            raise SessionError(f"no project found in {project} (expected {PROJECT_FILE}); create one first")
        writer = None if read_only else _acquire_writer_lock(project)  # before reading: no stale snapshot
        try:
            session, records = cls._read(project, path, image_folder)
            if writer is not None:
                session._hold(writer)
                for d in (project, project / PROPOSALS_DIR, project / MASKS_DIR):
                    if d.is_dir():
                        remove_stale_temps(d)
            return session._load(records, path)
        except BaseException:
            if writer is not None:
                writer.release()
            raise

    @classmethod
    def _read(cls, project: Path, path: Path, image_folder: str | os.PathLike[str] | None) -> tuple[Session, list]:
        """A session from the project file at ``path``, and its image records (for :meth:`_load`)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SessionError(f"no project found in {project} (expected {PROJECT_FILE}); create one first") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SessionError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise SessionError(f"{path} is not a napari-wfss project file")
        version = data.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SessionError(
                f"{path} has project format version {version!r}; this napari-wfss reads up to "
                f"{FORMAT_VERSION}. Upgrade napari-wfss to open it."
            )
        folder = cls._locate_image_folder(project, data, image_folder)
        try:
            classes = ClassTable.from_records(data.get("classes", []))
        except ClassTableError as exc:
            raise SessionError(f"{path}: invalid class table: {exc}") from exc
        return cls(folder, project, classes, bool(data.get("recursive", False))), data.get("images", [])

    def _load(self, records: list, path: Path) -> Session:
        """Fill the entries from the image ``records`` read from ``path``, rescan, save repairs (if writable)."""
        with self._lock:
            self.autosave = False
            try:
                for rec in records:
                    self._load_entry(rec)
            except (KeyError, TypeError, AttributeError) as exc:
                raise SessionError(f"{path}: malformed image record ({type(exc).__name__}: {exc})") from exc
            self.rescan()
            self.autosave = True
            if self._dirty and self.writable:
                self.save()
        return self

    def _hold(self, writer) -> None:
        """Keep the writer lock from :func:`_acquire_writer_lock` (and say so when it could not lock)."""
        self._writer = writer
        if isinstance(writer, _Unlocked):
            self.warnings.append(writer.warning)

    @property
    def writable(self) -> bool:
        """True while this session holds its project for writing (not read-only, not closed)."""
        return self._writer is not None

    def close(self) -> None:
        """Release the project for other sessions; the session can no longer write (reading still works).
        Changes not saved yet (``autosave`` off, or an error midway) are dropped. Idempotent."""
        with self._lock:
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open_or_create(
        cls,
        image_folder: str | os.PathLike[str],
        project_dir: str | os.PathLike[str] | None = None,
        *,
        recursive: bool = False,
    ) -> Session:
        """:meth:`open` the project if it exists (resume), else :meth:`create` it."""
        folder = Path(image_folder).expanduser().resolve()
        project = Path(project_dir).expanduser().resolve() if project_dir else folder / DEFAULT_PROJECT_DIRNAME
        if (project / PROJECT_FILE).exists():
            return cls.open(project, image_folder=folder)
        return cls.create(folder, project, recursive=recursive)

    @staticmethod
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

    def _load_entry(self, rec: Mapping) -> None:
        rel = str(rec["path"])
        entry = _Entry(rel, str(rec["key"]))
        for name in rec.get("tags", []):
            info = self._classes.find(name)
            if info is None:
                self.warnings.append(f"{rel}: tag {name!r} is not in the class table; dropped")
                self._dirty = True
            else:
                entry.tags.add(info.id)
        entry.proposal = rec.get("proposal")
        entry.mask = rec.get("mask")
        entry.accepted = rec.get("accepted")
        entry.rejected = rec.get("rejected")
        if entry.proposal is not None and not self._file(PROPOSALS_DIR, entry).is_file():
            self.warnings.append(f"{rel}: proposal file {self._file(PROPOSALS_DIR, entry)} is missing; dropped")
            entry.proposal = None
            self._dirty = True
        if entry.mask is not None and not self._file(MASKS_DIR, entry).is_file():
            self.warnings.append(f"{rel}: mask file {self._file(MASKS_DIR, entry)} is missing; dropped")
            entry.mask, entry.accepted = None, None
            self._dirty = True
        self._entries[rel] = entry

    def rescan(self) -> tuple[list[str], list[str]]:
        """Look at the image folder again. Returns ``(added, missing)`` relative paths.

        New files become untagged images; files gone from disk stay in the project (their masks are
        kept) but are hidden from :attr:`images` until they come back.
        """
        with self._lock:
            present = set()
            added = []
            for p in list_images(self._image_folder, recursive=self._recursive):
                if p.is_relative_to(self._project_dir):
                    continue
                rel = p.relative_to(self._image_folder).as_posix()
                present.add(rel)
                if rel not in self._entries:
                    self._entries[rel] = _Entry(rel, self._new_key(rel))
                    added.append(rel)
            missing = []
            for rel, entry in self._entries.items():
                entry.missing = rel not in present
                if entry.missing:
                    missing.append(rel)
            order = sorted(self._entries, key=natural_key)
            self._entries = {rel: self._entries[rel] for rel in order}
            if added:
                self._changed()
            return added, missing

    def _new_key(self, rel: str) -> str:
        taken = {e.key.casefold() for e in self._entries.values()}  # safe on case-insensitive disks
        return next(k for k in _key_candidates(rel) if k.casefold() not in taken)

    # ================================================================== persistence
    @property
    def project_dir(self) -> Path:
        """The project folder (holds project.json, proposals/, masks/)."""
        return self._project_dir

    @property
    def image_folder(self) -> Path:
        """The image folder (absolute)."""
        return self._image_folder

    @property
    def lock(self) -> threading.RLock:
        """The session's re-entrant lock: hold it to read several things as one consistent snapshot."""
        return self._lock

    @property
    def recursive(self) -> bool:
        """Whether sub-folders of the image folder are part of the session."""
        return self._recursive

    def _file(self, kind: str, entry: _Entry) -> Path:
        return self._project_dir / kind / f"{entry.key}.png"

    def _to_json(self) -> dict:
        try:
            rel_folder = os.path.relpath(self._image_folder, self._project_dir)
        except ValueError:  # another drive on Windows
            rel_folder = str(self._image_folder)
        names = {c.id: c.name for c in self._classes}
        images = []
        for e in self._entries.values():
            images.append({
                "path": e.path,
                "key": e.key,
                "status": e.status,  # informative; the status is derived from the fields below on load
                "tags": [names[i] for i in sorted(e.tags)],
                "proposal": e.proposal,
                "mask": e.mask,
                "accepted": e.accepted,
                "rejected": e.rejected,
            })
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "saved": _now(),
            "image_folder": Path(rel_folder).as_posix(),
            "image_folder_absolute": str(self._image_folder),
            "recursive": self._recursive,
            "classes": self._classes.to_records(),
            "images": images,
        }

    def save(self) -> None:
        """Write ``project.json`` now (atomically)."""
        with self._lock:
            self._require_writable()
            atomic_write_text(self._project_dir / PROJECT_FILE, _dumps_project(self._to_json()))
            self._dirty = False

    def _require_writable(self) -> None:
        if self._writer is None:
            raise SessionError(f"this session of {self._project_dir} is read-only or closed; "
                               f"open the project again to change it")

    def _changed(self) -> None:
        self._dirty = True
        if self.autosave and self._defer_depth == 0:
            self.save()

    @contextlib.contextmanager
    def deferred_save(self) -> Iterator[Session]:
        """Group changes: autosave is held back inside the block and done once at its end (if needed).

        Holds the session lock for the whole block.
        """
        with self._lock:
            self._defer_depth += 1
            try:
                yield self
            finally:
                self._defer_depth -= 1
                if self._defer_depth == 0 and self._dirty and self.autosave:
                    self.save()

    # ================================================================== images
    def _entry(self, image: str | os.PathLike[str]) -> _Entry:
        text = os.fspath(image)
        entry = self._entries.get(text)
        if entry is None:
            p = Path(text)
            if p.is_absolute():
                try:
                    rel = p.resolve().relative_to(self._image_folder).as_posix()
                except ValueError:
                    rel = None
            else:
                rel = PurePosixPath(p.as_posix()).as_posix()
            entry = self._entries.get(rel) if rel else None
        if entry is None:
            raise UnknownImageError(f"{text!r} is not an image of this session (folder {self._image_folder})")
        return entry

    @property
    def images(self) -> list[str]:
        """Relative paths of the images present on disk, in natural order."""
        with self._lock:
            return [rel for rel, e in self._entries.items() if not e.missing]

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, image: object) -> bool:
        try:
            with self._lock:
                self._entry(image)  # type: ignore[arg-type]
            return True
        except (UnknownImageError, TypeError):
            return False

    def image_path(self, image: str | os.PathLike[str]) -> Path:
        """Absolute path of the image file."""
        with self._lock:
            return self._image_folder / self._entry(image).path

    def key(self, image: str | os.PathLike[str]) -> str:
        """The image's file-name-safe key (stem of its mask, proposal and exported files)."""
        with self._lock:
            return self._entry(image).key

    def read_image(self, image: str | os.PathLike[str]) -> np.ndarray:
        """The image as ``(H, W, 3)`` ``uint8`` RGB (see :func:`napari_wfss.images.read_image`)."""
        return read_image(self.image_path(image))

    def status(self, image: str | os.PathLike[str]) -> str:
        """One of :data:`STATUSES`."""
        with self._lock:
            return self._entry(image).status

    def images_with_status(self, *statuses: str) -> list[str]:
        """Present images whose status is one of ``statuses``, in session order."""
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; statuses are {', '.join(STATUSES)}")
        with self._lock:
            return [rel for rel, e in self._entries.items() if not e.missing and e.status in statuses]

    def counts(self) -> dict[str, int]:
        """Number of present images per status (every status listed, zeros included)."""
        with self._lock:
            out = dict.fromkeys(STATUSES, 0)
            for e in self._entries.values():
                if not e.missing:
                    out[e.status] += 1
            return out

    def info(self, image: str | os.PathLike[str]) -> ImageInfo:
        """A snapshot of the image's state."""
        with self._lock:
            e = self._entry(image)
            current = e.mask if e.mask is not None else e.proposal
            present = tuple(self._class_names(current["classes"])) if current else ()
            prop = e.proposal or {}
            return ImageInfo(
                path=e.path,
                key=e.key,
                status=e.status,
                tags=tuple(self._classes.by_id(i).name for i in sorted(e.tags)),
                proposal_model=prop.get("model"),
                proposal_time=prop.get("time"),
                proposal_scores=dict(prop["scores"]) if prop.get("scores") else None,
                mask_time=e.mask["time"] if e.mask else None,
                accepted_time=e.accepted,
                classes_present=present,
                missing=e.missing,
            )

    def _class_names(self, ids: Iterable[int]) -> list[str]:
        return [self._classes.by_id(i).name for i in ids if i in self._classes.ids]

    # ================================================================== classes
    @property
    def classes(self) -> ClassTable:
        """The class table. Read it freely; change it only through the session's class methods."""
        return self._classes

    def add_class(self, name: str, color: str | Iterable[int] | None = None, class_id: int | None = None) -> ClassInfo:
        """Add a class (see :meth:`ClassTable.add`) and save."""
        with self._lock:
            info = self._classes.add(name, class_id=class_id, color=color)
            self._changed()
            return info

    def rename_class(self, name: str, new_name: str) -> ClassInfo:
        """Rename a class; tags and masks follow (they store ids)."""
        with self._lock:
            info = self._classes.rename(name, new_name)
            self._changed()
            return info

    def set_class_color(self, name: str, color: str | Iterable[int]) -> ClassInfo:
        """Recolour a class (affects palettes of files written from now on)."""
        with self._lock:
            info = self._classes.set_color(name, color)
            self._changed()
            return info

    def remove_class(self, name: str) -> ClassInfo:
        """Remove a class and its tags. Proposals that contain it are dropped (the model can redo them).

        Raises :class:`SessionError` if a user mask (edited or accepted) contains the class: repaint
        those pixels first.
        """
        with self._lock:
            info = self._classes.get(name)
            in_masks = [e.path for e in self._entries.values() if e.mask and info.id in e.mask["classes"]]
            if in_masks:
                raise SessionError(
                    f"class {info.name!r} is painted in {len(in_masks)} user mask(s) "
                    f"({', '.join(in_masks[:5])}{', ...' if len(in_masks) > 5 else ''}); "
                    "repaint those pixels with another class or background first"
                )
            dropped = []
            for e in self._entries.values():
                e.tags.discard(info.id)
                if e.proposal and info.id in e.proposal["classes"]:
                    e.proposal = None
                    dropped.append(e)
            self._classes.remove(info.name)
            self._save_then_unlink([self._file(PROPOSALS_DIR, e) for e in dropped])
            return info

    def import_classes_csv(self, path: str | os.PathLike[str]) -> list[ClassInfo]:
        """Merge an ``id,name,color`` CSV into the class table (see :meth:`ClassTable.merge`); returns added classes."""
        incoming = ClassTable.read_csv(path)
        with self._lock:
            added = self._classes.merge(incoming)
            self._changed()
            return added

    def export_classes_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the class table as ``id,name,color`` CSV."""
        with self._lock:
            self._classes.write_csv(path)

    # ================================================================== tags
    def tag(self, image: str | os.PathLike[str], class_name: str, *, add_class: bool = False) -> bool:
        """Declare that ``class_name`` is present in ``image``. Returns ``False`` if it already was.

        An unknown class raises :class:`~napari_wfss.classes.ClassTableError` unless ``add_class``.
        """
        with self._lock:
            entry = self._entry(image)
            info = self._classes.find(class_name)
            if info is None:
                if not add_class:
                    self._classes.get(class_name)  # raises with the list of known classes
                info = self._classes.add(class_name)
            if info.id in entry.tags:
                return False
            entry.tags.add(info.id)
            self._changed()
            return True

    def untag(self, image: str | os.PathLike[str], class_name: str) -> bool:
        """Remove a tag. Returns ``False`` if the image did not carry it."""
        with self._lock:
            entry = self._entry(image)
            info = self._classes.get(class_name)
            if info.id not in entry.tags:
                return False
            entry.tags.discard(info.id)
            self._changed()
            return True

    def set_tags(self, image: str | os.PathLike[str], class_names: Iterable[str]) -> None:
        """Replace the image's tags with ``class_names`` (all must be known classes)."""
        with self._lock:
            entry = self._entry(image)
            ids = {self._classes.get(n).id for n in class_names}
            if ids != entry.tags:
                entry.tags = ids
                self._changed()

    def tags_of(self, image: str | os.PathLike[str]) -> list[str]:
        """Class names the image is tagged with, in class-table order."""
        with self._lock:
            tags = self._entry(image).tags
            return [c.name for c in self._classes if c.id in tags]

    def images_tagged(self, class_name: str | None = None) -> list[str]:
        """Present images with at least one tag, or with the tag ``class_name``, in session order."""
        with self._lock:
            wanted = None if class_name is None else self._classes.get(class_name).id
            return [rel for rel, e in self._entries.items()
                    if not e.missing and e.tags and (wanted is None or wanted in e.tags)]

    def _match_image(self, text: str) -> list[str]:
        """Relative paths matching ``text`` by relative path, then file name, then stem (exact, then case-folded)."""
        name = text.strip().replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        if os.path.isabs(name):
            with contextlib.suppress(UnknownImageError):
                return [self._entry(name).path]
        rels = [rel for rel, e in self._entries.items() if not e.missing]
        for field_of in (lambda r: r, lambda r: PurePosixPath(r).name, lambda r: PurePosixPath(r).stem):
            for fold in (lambda s: s, str.casefold):
                hits = [r for r in rels if fold(field_of(r)) == fold(name)]
                if hits:
                    return hits
        return []

    def import_tags_csv(self, path: str | os.PathLike[str]) -> TagImportReport:
        """Apply ``image,class`` rows (one class per row; repeat the image for several classes).

        ``image`` is a relative path, a file name or a file stem (if unique in the folder). A header
        row ``image,class`` is optional; blank rows and rows starting with ``#`` are skipped. Unknown
        class names are added to the class table. Rows that cannot be applied are listed in the
        returned report (nothing is raised for them); the good rows are applied and saved once.
        """
        report = TagImportReport(str(path))
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SessionError(f"cannot read tags file {path}: {exc}") from exc
        first = True
        with self.deferred_save():
            for line, row in enumerate(rows, 1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                is_header = first and [c.lower() for c in cells[:2]] == ["image", "class"]
                first = False
                if is_header:
                    continue
                if len(cells) < 2 or not cells[0] or not cells[1]:
                    report.bad_rows.append((line, f"expected 'image,class', got {','.join(row)!r}"))
                    continue
                hits = self._match_image(cells[0])
                if not hits:
                    report.unknown_images.append((line, cells[0]))
                    continue
                if len(hits) > 1:
                    report.ambiguous_images.append((line, cells[0], hits))
                    continue
                is_new = cells[1] not in self._classes
                try:
                    changed = self.tag(hits[0], cells[1], add_class=True)
                except ClassTableError as exc:
                    report.bad_rows.append((line, str(exc)))
                    continue
                if is_new:
                    report.new_classes.append(self._classes.find(cells[1]).name)
                if changed:
                    report.tags_added += 1
                    if hits[0] not in report.images_tagged:
                        report.images_tagged.append(hits[0])
        return report

    def export_tags_csv(self, path: str | os.PathLike[str]) -> None:
        """Write every tag as an ``image,class`` row (header included), in session and class order."""
        with self._lock:
            rows = [(rel, name) for rel in self._entries for name in self.tags_of(rel)]
        with atomic_open(path, "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["image", "class"])
            w.writerows(rows)

    # ================================================================== label maps
    def _validated(self, entry: _Entry, label_map: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Check shape against the image and ids against the class table; return uint8 map and class ids."""
        arr = as_label_map(label_map)
        expected = image_size(self._image_folder / entry.path)
        if arr.shape != expected:
            raise LabelMapError(
                f"label map for {entry.path} has shape {arr.shape}, the image is {expected} (height, width)"
            )
        values = [int(v) for v in np.unique(arr)]
        allowed = set(self._classes.ids) | {BACKGROUND_ID, IGNORE_ID}
        bad = [v for v in values if v not in allowed]
        if bad:
            known = ", ".join(f"{c.id} {c.name}" for c in self._classes) or "none"
            raise LabelMapError(
                f"label map for {entry.path} uses id(s) {bad} that are not classes (classes: {known}; "
                f"{BACKGROUND_ID} = background, {IGNORE_ID} = ignore); add the class or repaint those pixels"
            )
        return arr, [v for v in values if v not in (BACKGROUND_ID, IGNORE_ID)]

    def set_proposal(
        self,
        image: str | os.PathLike[str],
        label_map: np.ndarray,
        *,
        model: str,
        scores: Mapping[str, float] | None = None,
    ) -> bool:
        """Store the model's label map (``(H, W)`` class ids at the image's size) for ``image``.

        Returns ``False`` and writes nothing if the image has a user mask (edited or accepted): a
        proposal never replaces the user's work. Otherwise replaces any earlier proposal, clears a
        rejection, and returns ``True``. ``model`` names the model (stored with the time);
        ``scores`` is optional per-class-name confidence (JSON numbers).
        """
        with self._lock:
            entry = self._entry(image)
            if entry.mask is not None:
                return False
            arr, present = self._validated(entry, label_map)
            self._require_writable()
            write_label_png(self._file(PROPOSALS_DIR, entry), arr, self._classes.palette())
            entry.proposal = {
                "model": str(model),
                "time": _now(),
                "scores": {str(k): float(v) for k, v in scores.items()} if scores else None,
                "classes": present,
            }
            entry.rejected = None
            self._changed()
            return True

    def proposal(self, image: str | os.PathLike[str]) -> np.ndarray | None:
        """The model's label map ``(H, W)`` ``uint8``, or ``None`` if there is none."""
        with self._lock:
            entry = self._entry(image)
            return read_label_png(self._file(PROPOSALS_DIR, entry)) if entry.proposal is not None else None

    def mask(self, image: str | os.PathLike[str]) -> np.ndarray | None:
        """The user's label map (edited or accepted) ``(H, W)`` ``uint8``, or ``None``."""
        with self._lock:
            entry = self._entry(image)
            return read_label_png(self._file(MASKS_DIR, entry)) if entry.mask is not None else None

    def current_label_map(self, image: str | os.PathLike[str]) -> np.ndarray | None:
        """The user's mask if any, else the proposal, else ``None``."""
        with self._lock:
            m = self.mask(image)
            return m if m is not None else self.proposal(image)

    def mask_file(self, image: str | os.PathLike[str]) -> Path | None:
        """Path of the PNG holding :meth:`current_label_map`, or ``None``."""
        with self._lock:
            entry = self._entry(image)
            if entry.mask is not None:
                return self._file(MASKS_DIR, entry)
            return self._file(PROPOSALS_DIR, entry) if entry.proposal is not None else None

    def _store_mask(self, entry: _Entry, label_map: np.ndarray) -> None:
        arr, present = self._validated(entry, label_map)
        self._require_writable()
        write_label_png(self._file(MASKS_DIR, entry), arr, self._classes.palette())
        entry.mask = {"time": _now(), "classes": present}

    def mark_edited(self, image: str | os.PathLike[str], label_map: np.ndarray) -> None:
        """Capture the user's edited label map; status becomes ``edited`` (also for an accepted image,
        whose mask is then replaced by the edit and must be accepted again)."""
        with self._lock:
            entry = self._entry(image)
            self._store_mask(entry, label_map)
            entry.accepted = None
            entry.rejected = None
            self._changed()

    def accept(self, image: str | os.PathLike[str], label_map: np.ndarray | None = None) -> None:
        """Accept the image's mask and save at once.

        ``label_map`` is the user's final array; without it the captured edit is accepted, or else the
        proposal as it is. Raises :class:`SessionError` if there is nothing to accept.
        """
        with self._lock:
            entry = self._entry(image)
            if label_map is not None:
                self._store_mask(entry, label_map)
            elif entry.mask is None:
                if entry.proposal is None:
                    raise SessionError(f"nothing to accept for {entry.path}: propose it or paint a mask first")
                self._store_mask(entry, self.proposal(image))
            entry.accepted = _now()
            entry.rejected = None
            self.save()  # always, whatever autosave or deferred_save say

    def reject(self, image: str | os.PathLike[str], *, force: bool = False) -> None:
        """Reject the image's proposal (and any unaccepted edit); both are deleted.

        An accepted image raises :class:`SessionError` unless ``force=True`` (which deletes the
        accepted mask too).
        """
        with self._lock:
            entry = self._entry(image)
            if entry.accepted and not force:
                raise SessionError(
                    f"{entry.path} is accepted; to discard its mask reject it with force=True "
                    "(or edit it: edits are kept as a new, unaccepted mask)"
                )
            files = [self._file(PROPOSALS_DIR, entry)] if entry.proposal else []
            files += [self._file(MASKS_DIR, entry)] if entry.mask else []
            entry.proposal = entry.mask = entry.accepted = None
            entry.rejected = _now()
            self._save_then_unlink(files)

    def _save_then_unlink(self, files: Iterable[Path]) -> None:
        """Save project.json (it must stop referring to ``files`` first), then delete ``files``."""
        self.save()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
