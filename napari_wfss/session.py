"""The annotation session: an image folder, its classes, tags, proposals and masks, kept in a project folder.

:class:`Session` composes the project store (:mod:`~napari_wfss.project_store`: folder layout,
project.json, image keys, writer lock), the image statuses (:mod:`~napari_wfss.statuses`) and the tag
CSV files (:mod:`~napari_wfss.tag_csv`).

Images are named in the API by their path relative to the image folder (POSIX ``/``), e.g.
``"sub/a.png"``; absolute paths inside the folder are accepted too. Label maps are ``(H, W)`` arrays of
class ids at the image's size.

Durability: every file is written atomically (:mod:`napari_wfss.atomic`); a mask PNG is written before
``project.json`` refers to it, and a file is deleted only after ``project.json`` stopped referring to
it, so a kill at any moment leaves a consistent project. With ``autosave`` on (the default) every
change is saved at once; :meth:`Session.deferred_save` groups many changes into one write.
All public methods take one re-entrant lock, so worker threads and the UI thread may share a session.

One writer per project: a session that may write holds the project's writer lock, so a second napari
window, process or ``Session`` on the same project is refused with a clear error
(:class:`ProjectInUseError`) instead of silently overwriting the first one's edits. ``read_only=True``
opens without the lock (the proposal child process reads the project that way) and refuses every write.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from . import tag_csv
from .classes import BACKGROUND_ID, IGNORE_ID, ClassInfo, ClassTable
from .images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
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
from .project_store import (
    DEFAULT_PROJECT_DIRNAME,
    MASKS_DIR,
    PROJECT_FILE,
    PROPOSALS_DIR,
    Unlocked,
    acquire_writer_lock,
    check_label_folders,
    earlier_project_files,
    find_project,
    label_file,
    new_key,
    read_project,
    remove_project_temps,
    restore_hint,
    state_from_record,
    utc_now,
    write_project,
)
from .session_errors import ProjectInUseError, SessionError, UnknownImageError
from .statuses import ACCEPTED, EDITED, PROPOSED, REJECTED, STATUSES, TAGGED, UNTAGGED, ImageState
from .tag_csv import TagImportReport

__all__ = [
    "ACCEPTED", "EDITED", "PROPOSED", "REJECTED", "STATUSES", "TAGGED", "UNTAGGED",
    "ImageInfo", "ProjectInUseError", "Session", "SessionError", "TagImportReport", "UnknownImageError",
]


@dataclass(frozen=True)
class ImageInfo:
    """A snapshot of one image's state (safe to keep; later changes do not alter it).

    ``classes_present`` are the class names in the current label map (the user's mask if any, else the
    proposal). ``no_class``: the image has a negative tag (it holds none of the classes; its status is then
    accepted and, without a user mask, its label map all background; a proposal made before the tag is
    hidden: ``proposal_*`` are None). Times are ISO 8601 UTC strings.
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
    no_class: bool = False


class Session:
    """An image folder under annotation, persisted in a project folder. Build with :meth:`create`,
    :meth:`open` or :meth:`open_or_create`, not with the constructor."""

    def __init__(self, image_folder: Path, project_dir: Path, classes: ClassTable, recursive: bool) -> None:
        self._image_folder = image_folder
        self._project_dir = project_dir
        self._classes = classes
        self._recursive = recursive
        self._entries: dict[str, ImageState] = {}
        self._lock = threading.RLock()
        self._writer = None  # the project's FileLock while this session may write; None when read-only
        self._defer_depth = 0
        self._dirty = False
        self.autosave = True
        self.warnings: list[str] = []
        self.max_pixels = MAX_PIXELS  #: :meth:`read_image` refuses larger images (before decoding them)

    # ================================================================== construction
    @staticmethod
    def _project_of(folder: Path, project_dir: str | os.PathLike[str] | None) -> Path:
        """``project_dir`` resolved, by default ``<folder>/.wfss``."""
        return Path(project_dir).expanduser().resolve() if project_dir else folder / DEFAULT_PROJECT_DIRNAME

    @staticmethod
    def _refuse_existing(project: Path) -> None:
        """Refuse to create a project where one exists, or where a lost one left label maps or a backup."""
        if (project / PROJECT_FILE).exists():
            raise SessionError(f"a project already exists in {project}; open it instead (resume)")
        left = earlier_project_files(project)
        if left:
            raise SessionError(
                f"{project / PROJECT_FILE} is missing but an earlier project left {', '.join(p.name for p in left)} "
                f"in {project}: a new project would overwrite its label maps; {restore_hint(project)}, or move "
                f"{project} away to start over"
            )

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
        project = cls._project_of(folder, project_dir)
        cls._refuse_existing(project)
        session = cls(folder, project, classes.copy() if classes is not None else ClassTable(), recursive)
        session.autosave = False  # nothing is written before the images are found and the lock is held
        added, _ = session.rescan()
        session.autosave = True
        if not added:
            raise ImageFolderError(
                f"no images found in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)}"
                f"{'' if recursive else '; sub-folders are searched only with recursive=True'})"
            )
        session._hold(acquire_writer_lock(project))
        try:
            cls._refuse_existing(project)  # another process created it meanwhile
            check_label_folders(project)
            session._remove_temps()
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
        project = find_project(project_dir)
        writer = None if read_only else acquire_writer_lock(project)  # before reading: no stale snapshot
        try:
            stored = read_project(project, image_folder)
            check_label_folders(project)
            session = cls(stored.image_folder, project, stored.classes, stored.recursive)
            if writer is not None:
                session._hold(writer)
                session._remove_temps()
            return session._load(stored.images)
        except BaseException:
            if writer is not None:
                writer.release()
            raise

    def _load(self, records: list) -> Session:
        """Fill the entries from project.json's image ``records``, rescan, save repairs (if writable)."""
        with self._lock:
            self.autosave = False
            try:
                for rec in records:
                    self._load_entry(rec)
            except ValueError as exc:  # an unsafe key or image path (project_store.state_from_record)
                raise SessionError(f"unsafe image record ({exc}): {self._project_dir / PROJECT_FILE}; "
                                   "fix or remove that record") from exc
            except (KeyError, TypeError, AttributeError) as exc:
                raise SessionError(f"malformed image record ({type(exc).__name__}: {exc}): "
                                   f"{self._project_dir / PROJECT_FILE}; fix or remove that record") from exc
            self._refuse_shared_keys()
            self.rescan()
            self.autosave = True
            if self._dirty and self.writable:
                self.save()
        return self

    def _refuse_shared_keys(self) -> None:
        """Raise :class:`SessionError` if two images of project.json have the same key (case-folded): one's
        label maps would overwrite the other's."""
        seen: dict[str, str] = {}
        for rel, entry in self._entries.items():
            other = seen.setdefault(entry.key.casefold(), rel)
            if other != rel:
                raise SessionError(f"images {other!r} and {rel!r} share the key {entry.key!r}: "
                                   f"{self._project_dir / PROJECT_FILE}; give one of them another key")

    def _remove_temps(self) -> None:
        """Delete the temporary files a killed writer left in the project. Holding the writer lock, no other
        writer is alive, so all of them go; where the file system cannot lock, only those older than 10 min."""
        remove_project_temps(self._project_dir, older_than=600.0 if isinstance(self._writer, Unlocked) else 0.0)

    def _hold(self, writer) -> None:
        """Keep the writer lock from :func:`~napari_wfss.project_store.acquire_writer_lock` (and say so
        when it could not lock)."""
        self._writer = writer
        if isinstance(writer, Unlocked):
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
        project = cls._project_of(folder, project_dir)
        if (project / PROJECT_FILE).exists():
            return cls.open(project, image_folder=folder)
        return cls.create(folder, project, recursive=recursive)

    def _load_entry(self, rec: Mapping) -> None:
        """Add one project.json image record, dropping (with a warning) what no longer exists."""
        entry, tag_names = state_from_record(rec)
        rel = entry.path
        for name in tag_names:
            info = self._classes.find(name)
            if info is None:
                self.warnings.append(f"{rel}: tag {name!r} is not in the class table; dropped")
                self._dirty = True
            else:
                entry.tags.add(info.id)
        if entry.no_class and entry.tags:
            self.warnings.append(f"{rel}: has class tags and a negative tag, which says it holds none of the "
                                 "classes; the negative tag dropped")
            entry.no_class = None
            self._dirty = True
        if entry.proposal is not None and not self._file(PROPOSALS_DIR, entry).is_file():
            self.warnings.append(f"{rel}: proposal file {self._file(PROPOSALS_DIR, entry)} is missing; dropped")
            entry.drop_proposal()
            self._dirty = True
        if entry.mask is not None and not self._file(MASKS_DIR, entry).is_file():
            self.warnings.append(f"{rel}: mask file {self._file(MASKS_DIR, entry)} is missing; dropped")
            entry.drop_mask()
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
                    self._entries[rel] = ImageState(rel, new_key(rel, (e.key for e in self._entries.values())))
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

    def _file(self, kind: str, entry: ImageState) -> Path:
        return label_file(self._project_dir, kind, entry.key)

    def save(self) -> None:
        """Write ``project.json`` now (atomically)."""
        with self._lock:
            self._require_writable()
            write_project(self._project_dir, self._image_folder, self._recursive, self._classes,
                          self._entries.values())
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
    def _entry(self, image: str | os.PathLike[str]) -> ImageState:
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
        """The image as ``(H, W, 3)`` ``uint8`` RGB (see :func:`napari_wfss.images.read_image`); an image of
        more than :attr:`max_pixels` pixels raises :class:`~napari_wfss.images.ImageTooLargeError`."""
        return read_image(self.image_path(image), self.max_pixels)

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
            hidden = e.no_class is not None and e.mask is None  # the negative tag hides a proposal
            current = e.mask if e.mask is not None else None if hidden else e.proposal
            present = tuple(self._class_names(current["classes"])) if current else ()
            prop = {} if hidden else e.proposal or {}
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
                no_class=e.no_class is not None,
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
                    e.drop_proposal()
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

        An unknown class raises :class:`~napari_wfss.classes.ClassTableError` unless ``add_class``; an image
        with a negative tag raises :class:`SessionError` (:meth:`set_no_class`).
        """
        with self._lock:
            entry = self._entry(image)
            self._refuse_negative(entry, class_name)
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
        """Replace the image's tags with ``class_names`` (all must be known classes; none on an image with a
        negative tag, see :meth:`tag`)."""
        with self._lock:
            entry = self._entry(image)
            ids = {self._classes.get(n).id for n in class_names}
            if ids:
                self._refuse_negative(entry, self._classes.by_id(min(ids)).name)
            if ids != entry.tags:
                entry.tags = ids
                self._changed()

    @staticmethod
    def _refuse_negative(entry: ImageState, class_name: str) -> None:
        """Raise :class:`SessionError` if ``entry`` has a negative tag (``class_name`` would contradict it)."""
        if entry.no_class:
            raise SessionError(f"{entry.path} has a negative tag (it holds none of the classes), so it cannot be "
                               f"tagged {class_name!r}: remove the negative tag first")

    def set_no_class(self, image: str | os.PathLike[str], value: bool = True) -> bool:
        """Give ``image`` a negative tag (``value`` True: it holds none of the classes) or remove it. Returns
        ``False`` if nothing changed.

        With the tag the image is never proposed, counts as a negative of every class when classes are
        learnt, and is accepted as "no class present": its label map is all background (unless the user
        painted a mask without classes: that one). Raises :class:`SessionError` if the image has class tags
        or a user mask painting a class.
        """
        with self._lock:
            entry = self._entry(image)
            if not entry.set_no_class(value, utc_now()):
                return False
            self._changed()
            return True

    def images_no_class(self) -> list[str]:
        """Present images with a negative tag (:meth:`set_no_class`), in session order."""
        with self._lock:
            return [rel for rel, e in self._entries.items() if not e.missing and e.no_class]

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

    def import_tags_csv(self, path: str | os.PathLike[str]) -> TagImportReport:
        """Apply ``image,class`` rows (one class per row; repeat the image for several classes).

        ``image`` is a relative path, a file name or a file stem (if unique in the folder). A header
        row ``image,class`` is optional; blank rows and rows starting with ``#`` are skipped. Unknown
        class names are added to the class table. The class ``-`` or ``none`` (any case) is a negative tag
        (:meth:`set_no_class`); with a class tag on the same image it makes the later row a bad one. Rows that
        cannot be applied are listed in the returned report (nothing is raised for them); the good rows are
        applied and saved once.
        """
        return tag_csv.import_tags(self, path)

    def export_tags_csv(self, path: str | os.PathLike[str]) -> None:
        """Write every tag as an ``image,class`` row (header included), in session and class order; a
        negative tag as ``image,-``."""
        with self._lock:
            rows = [(rel, name) for rel, e in self._entries.items()
                    for name in ([tag_csv.NEGATIVE_TAG] if e.no_class else self.tags_of(rel))]
        tag_csv.write_tags(path, rows)

    # ================================================================== label maps
    def _validated(self, entry: ImageState, label_map: np.ndarray) -> tuple[np.ndarray, list[int]]:
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
            if not entry.takes_proposal:
                return False
            arr, present = self._validated(entry, label_map)
            self._require_writable()
            write_label_png(self._file(PROPOSALS_DIR, entry), arr, self._classes.palette())
            entry.propose({
                "model": str(model),
                "time": utc_now(),
                "scores": {str(k): float(v) for k, v in scores.items()} if scores else None,
                "classes": present,
            })
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
        """The user's mask if any, else all background ``(H, W)`` for an image with a negative tag, else the
        proposal, else ``None``."""
        with self._lock:
            entry = self._entry(image)
            m = self.mask(image)
            if m is None and entry.no_class:
                return np.zeros(image_size(self._image_folder / entry.path), np.uint8)
            return m if m is not None else self.proposal(image)

    def mask_file(self, image: str | os.PathLike[str]) -> Path | None:
        """Path of the PNG holding :meth:`current_label_map`, or ``None`` (also for the all-background map of
        an image with a negative tag and no user mask: no file holds it)."""
        with self._lock:
            entry = self._entry(image)
            if entry.mask is not None:
                return self._file(MASKS_DIR, entry)
            return self._file(PROPOSALS_DIR, entry) if entry.proposal is not None and not entry.no_class else None

    def _write_mask(self, entry: ImageState, label_map: np.ndarray) -> dict:
        """Validate and write the user's label map for ``entry``; return its metadata (not recorded yet)."""
        arr, present = self._validated(entry, label_map)
        self._require_writable()
        write_label_png(self._file(MASKS_DIR, entry), arr, self._classes.palette())
        return {"time": utc_now(), "classes": present}

    def mark_edited(self, image: str | os.PathLike[str], label_map: np.ndarray) -> None:
        """Capture the user's edited label map; status becomes ``edited`` (also for an accepted image,
        whose mask is then replaced by the edit and must be accepted again)."""
        with self._lock:
            entry = self._entry(image)
            entry.edit(self._write_mask(entry, label_map))
            self._changed()

    def accept(self, image: str | os.PathLike[str], label_map: np.ndarray | None = None) -> None:
        """Accept the image's mask and save at once.

        ``label_map`` is the user's final array; without it the captured edit is accepted, or else the
        proposal as it is (an image with a negative tag is accepted already). Raises :class:`SessionError`
        if there is nothing to accept.
        """
        with self._lock:
            entry = self._entry(image)
            if label_map is None and entry.mask is None:
                if entry.no_class:
                    return
                label_map = self.proposal(image)  # the proposal as it is; None if there is none
            entry.accept(utc_now(), None if label_map is None else self._write_mask(entry, label_map))
            self.save()  # always, whatever autosave or deferred_save say

    def reject(self, image: str | os.PathLike[str], *, force: bool = False) -> None:
        """Reject the image's proposal (and any unaccepted edit); both are deleted.

        An accepted image raises :class:`SessionError` unless ``force=True`` (which deletes the
        accepted mask too).
        """
        with self._lock:
            entry = self._entry(image)
            files = [self._file(PROPOSALS_DIR, entry)] if entry.proposal else []
            files += [self._file(MASKS_DIR, entry)] if entry.mask else []
            entry.reject(utc_now(), force=force)
            self._save_then_unlink(files)

    def _save_then_unlink(self, files: Iterable[Path]) -> None:
        """Save project.json (it must stop referring to ``files`` first), then delete ``files``."""
        self.save()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
