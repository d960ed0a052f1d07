"""``wfss label FOLDER --tags TAGS.csv --out OUT``: propose a label map for every untagged image, resumably.

``OUT`` ends up as the export layout of :mod:`napari_wfss.export` (``masks/<key>.png`` palette PNGs,
``images/``, ``coco.json``, ``classes.txt``, ``classes.json``, ``manifest.json|csv``), a dataset
that ``wfss train`` and ``wfss eval`` read as it is. The run's state lives beside it in
``OUT/.wfss-project/`` (a :class:`~napari_wfss.session.Session` project: tags, proposals, statuses);
nothing is ever written into ``FOLDER``. The project can also be opened in the napari widget to
review the proposals.

Streaming and resuming: images are proposed in batches of ``--batch-size``; each batch's proposals
are saved in the project with one write, then every image of the batch is exported at once. The
index files (``coco.json``, manifest, ...) are rebuilt after a batch when the last rebuild is long
enough ago (their cost grows with the folder; at most about 10 % of the run), and always at the end.
Every file is written atomically, so a run killed at any moment (even ``kill -9``) loses at most the
batch in flight: the rerun of the same command skips the finished images ("N already done"), exports
any proposal the killed run saved but had not exported yet, removes the killed run's temporary files
and labels the rest. One run at a time writes an ``OUT``: a second one stops with a clear message.
An ``OUT`` that holds an export but has lost its project file is refused (labelling again would
overwrite exported masks that may hold accepted edits); the message names the project's backup.

Images: the files of ``FOLDER`` with an image extension (``napari_wfss.images``); the summary counts
and lists the other files (e.g. GIF), which are skipped. An image of more than ``--max-megapixels``
is refused before it is decoded (memory grows with the pixel count), and reported like an unreadable one.
Sub-folders are searched only with ``--recursive`` (images are then named by their relative path, and
their keys, the stems of the exported files, say the sub-folder: ``sub/x.jpg`` -> ``sub__x``); ``OUT``
must then lie outside ``FOLDER``. An ``OUT`` keeps the choice of its first run: a rerun the other way is
refused once anything is labelled (before that, the project is simply made anew). Without
``--recursive``, a tags row naming an image that is in a sub-folder says so.

Export: ``--tiff`` adds ``masks_tiff/``; ``--instances`` makes ``coco.json`` hold one annotation per
object (connected component) of each class instead of one per class per image; ``--link-images``
hard-links the source images into ``images/`` instead of copying them, ``--no-images`` leaves ``images/``
out (``DatasetWriter``'s ``images`` mode).

Reruns with other options: the settings that decide a proposal (``options.PROPOSAL_SETTINGS``: model,
shots, threshold, decision rule, snap, support refinement) are recorded per image in
``OUT/.wfss-project/proposal-settings.json`` (``options.ProposalRecord``, saved with the index files).
A rerun keeps the proposals already made; when some unreviewed ones (status proposed) were made with
other settings it warns, naming them. ``--redo`` proposes those images again, and also those whose
settings are not recorded (a run killed before saving the record, a proposal made elsewhere: only its
model is known); edited and accepted masks are never touched.

Tags: ``TAGS.csv`` has ``image,class`` rows (see :meth:`Session.import_tags_csv`); ``image,-`` or
``image,none`` is a negative tag (the image holds none of the classes: never proposed, a negative of every
class, exported all background as accepted "no class present"). Every row must apply: unknown or
ambiguous images, malformed rows and a negative and a class tag on one image stop the run before any
work, listing the rows. Until an image is labelled the file may change between runs (classes no longer tagged leave
the class table); once any image is labelled a rerun must give the same tags as before (else the old
proposals would silently mix two tag sets): change tags with a new ``--out``. The summary counts the
images with a negative tag and the labelled images the model found no class in (``--min-score``,
:func:`napari_wfss.engine.decide_no_class`).

Exit status: 0 when every image is labelled or nothing is left to do; 0 also when some images could
not be read (they are skipped with a warning, listed in the summary, and retried by a rerun) as long
as at least one image was labelled; 1 when there were images to label and none could be; 2 for
bad input (missing or empty folder, unreadable tags, unknown images, no usable model, a full disk) with
a message saying what to do; 130 when interrupted (rerun to resume). Lists in messages and in the summary
(rows, failed images, skipped files) show their first ``session_errors.MAX_LISTED`` lines and a count.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from hhn.errors import UserError

from .atomic import remove_stale_temps
from .engine import Engine, QueryRunner, default_queries, plan_run
from .export import IMAGE_MODES, IMAGES_DIR, MASKS_DIR, RECORDS_DIR, TIFF_DIR, DatasetWriter
from .images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageFolderError, is_image_file, list_images, natural_key, scan_folder
from .options import ProposalOptions, ProposalRecord, settings_differences
from .project_store import PROJECT_BACKUP, PROJECT_FILE, earlier_project_files, restore_hint
from .session import ACCEPTED, EDITED, PROPOSED, Session, SessionError
from .session_errors import capped
from .shards import in_shard, mark_shard, merge_exports, parse_shard, pending_shards, shard_dir

PROJECT_DIRNAME = ".wfss-project"
LOCK_NAME = ".wfss-label.lock"  #: held by the run writing OUT (released by the OS if the run is killed)
RECORD_NAME = "proposal-settings.json"  #: in the project folder: the options each proposal was made with
INDEX_MIN_INTERVAL_S = 2.0  # rebuild the index files at most this often during a run ...
INDEX_MAX_SHARE = 0.1  # ... and so that rebuilding takes at most about this share of the run
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # errors that say: free some space
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}  # errors that say: write somewhere else


class BatchError(UserError):
    """Bad input for ``wfss label``; the message says what to fix."""


@dataclass
class LabelSummary:
    """What a ``wfss label`` run did.

    ``labelled``: images proposed and exported by this run; ``no_class_found``: those of them the model
    found none of the classes in (exported all background); ``negative``: images with a negative tag in
    TAGS.csv (never proposed; exported all background, accepted as "no class present"); ``already_done``:
    images finished by an earlier run (skipped); ``failed``: ``(image, reason)`` for images that could not be labelled;
    ``skipped_files``: files of the folder that are not images (relative paths); ``unsearched``: its
    sub-folders holding images, left out because the run does not search sub-folders;
    ``compute_seconds``: model time summed over the labelled images; ``total_seconds``: the whole
    run including model loading, supports and export; ``tiff`` and ``images``: what the export holds
    besides ``masks/`` (``masks_tiff/``; ``images/`` unless ``images`` is ``"none"``).
    """

    out_dir: Path
    model: str
    untrained: bool
    tiff: bool = False
    images: str = "copy"
    labelled: list[str] = field(default_factory=list)
    no_class_found: list[str] = field(default_factory=list)
    negative: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    unsearched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compute_seconds: float = 0.0
    total_seconds: float = 0.0
    merged: str = ""

    @property
    def exit_code(self) -> int:
        """0, or 1 when there were images to label and none could be (see the module doc)."""
        return 1 if self.failed and not self.labelled else 0

    def text(self) -> str:
        """The end-of-run report."""
        n = len(self.labelled)
        lines = [f"labelled {n} image(s), {self.already_done} already done, {len(self.failed)} failed"]
        if self.no_class_found:
            lines.append(f"{len(self.no_class_found)} image(s) with no class found (their masks are all background): "
                         + ", ".join(capped(self.no_class_found)))
        if self.negative:
            lines.append(f"{self.negative} image(s) with a negative tag exported as all background (accepted: no "
                         "class present)")
        if n:
            lines.append(f"time: {self.total_seconds / n:.2f} s/image overall, {self.compute_seconds / n:.2f} s/image "
                         f"model compute ({self.total_seconds:.1f} s in all, including model loading and supports)")
        lines += capped([f"failed: {image}: {reason}" for image, reason in self.failed])
        if self.skipped_files:
            lines.append(f"skipped {len(self.skipped_files)} file(s) that are not images "
                         f"({' '.join(IMAGE_EXTENSIONS)}): " + ", ".join(capped(self.skipped_files)))
        if self.unsearched:
            lines.append(f"not searched: {len(self.unsearched)} sub-folder(s) holding images ("
                         + ", ".join(capped([f"{d}/" for d in self.unsearched]))
                         + "); add --recursive to label them too")
        lines += capped([f"warning: {w}" for w in self.warnings])
        if self.untrained:
            lines.append(f"NOTE: model {self.model} has UNTRAINED heads; its proposals are not meaningful "
                         "(use --model default or a trained checkpoint)")
        folders = [MASKS_DIR] + [TIFF_DIR] * self.tiff + [IMAGES_DIR] * (self.images != "none")
        lines.append(f"output: {self.out_dir} ({', '.join(f'{d}/' for d in folders)}, coco.json, classes.txt, "
                     "classes.json, manifest.json)")
        if self.merged:
            lines.append(self.merged)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The summary for scripts (``wfss label --json``): what :meth:`text` says, as one JSON object."""
        return {"labelled": self.labelled, "no_class_found": self.no_class_found, "negative": self.negative,
                "already_done": self.already_done,
                "failed": [{"image": image, "reason": reason} for image, reason in self.failed],
                "skipped_files": self.skipped_files, "unsearched": self.unsearched, "warnings": self.warnings,
                "out": str(self.out_dir), "merged": self.merged,
                "model": self.model, "untrained": self.untrained, "exit_code": self.exit_code,
                "seconds": round(self.total_seconds, 3), "compute_seconds": round(self.compute_seconds, 3)}


def _open_project(folder: Path, out: Path, recursive: bool) -> Session:
    """The session kept in ``OUT/.wfss-project`` for ``folder`` (created on the first run; refused when
    ``OUT`` holds an export whose project was lost). A project searching sub-folders (``recursive``)
    otherwise than asked now is made anew while nothing is labelled yet (it holds only the tags, which
    every run applies again), and refused after that."""
    project = out / PROJECT_DIRNAME
    if not (project / PROJECT_FILE).exists():
        exported = len(list((out / RECORDS_DIR).glob("*.json")))
        if exported:
            raise BatchError(f"project file missing but {out} holds an export of {exported} image(s): "
                             f"{project / PROJECT_FILE}; labelling again would overwrite the exported masks (they "
                             f"may hold accepted edits): {restore_hint(project)}, or give a new --out")
        return Session.create(folder, project, recursive=recursive)
    try:
        session = Session.open(project)
    except SessionError:  # the image folder moved: take the one given now
        session = Session.open(project, image_folder=folder)
    if session.image_folder != folder:
        session.close()
        raise BatchError(f"{out} already holds the labels of another folder ({session.image_folder}); "
                         f"use a new --out for {folder}")
    if session.recursive == recursive:
        return session
    session.close()
    if any(p.name != PROJECT_BACKUP for p in earlier_project_files(project)):  # label maps: something was labelled
        was = "with" if session.recursive else "without"
        raise BatchError(f"{out} was labelled {was} --recursive; give the same as before to resume, or a new "
                         "--out to label the folder the other way")
    for name in (PROJECT_FILE, PROJECT_BACKUP):  # nothing labelled: the project holds only the tags
        (project / name).unlink(missing_ok=True)
    return Session.create(folder, project, recursive=recursive)


def _tag_snapshot(session: Session) -> dict[str, tuple[frozenset[str], bool]]:
    """Per image: its class tags and whether it has a negative tag."""
    return {rel: (frozenset(session.tags_of(rel)), session.info(rel).no_class) for rel in session.images}


def _apply_tags(session: Session, tags_csv: Path) -> None:
    """Make the session's tags exactly those of ``tags_csv`` (checks in the module doc), then save."""
    before = _tag_snapshot(session)
    started = any(session.mask_file(rel) is not None for rel in session.images)  # a proposal or a user mask
    session.autosave = False  # nothing reaches disk unless every check passes
    for rel in session.images:
        session.set_tags(rel, [])
        session.set_no_class(rel, False)
    report = session.import_tags_csv(tags_csv)
    if not report.ok:
        raise BatchError(f"{len(report.problems)} row(s) of {tags_csv} cannot be applied; fix them and rerun "
                         "(nothing was labelled):\n  " + "\n  ".join(capped(report.problems))
                         + _subfolder_hint(session, [name for _, name in report.unknown_images]))
    after = _tag_snapshot(session)
    if not any(tags for tags, _ in after.values()):
        raise BatchError(f"{tags_csv} tags no image with a class; give 'image,class' rows (e.g. 'cat_01.jpg,cat')")
    if started and after != before:
        changed = sorted(rel for rel in after if after[rel] != before.get(rel, (frozenset(), False)))
        raise BatchError(f"{tags_csv} gives other tags than the run already in {session.project_dir.parent} "
                         f"(changed: {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); "
                         "use a new --out to label with the new tags")
    session.autosave = True
    session.save()
    if not started:  # classes of an earlier, corrected tags file (e.g. a typo) leave the class table
        used = set().union(*(tags for tags, _ in after.values()))
        for name in [c.name for c in session.classes if c.name not in used]:
            session.remove_class(name)


def _subfolder_hint(session: Session, unknown: list[str]) -> str:
    """A closing sentence when images that ``TAGS.csv`` names but the session does not know are in
    sub-folders of a session that does not search them (else ``""``)."""
    if session.recursive or not unknown:
        return ""
    nested = [p.relative_to(session.image_folder).as_posix()
              for p in list_images(session.image_folder, recursive=True)]

    def found(name: str) -> str | None:
        name = name.strip().replace("\\", "/").removeprefix("./").casefold()
        return next((rel for rel in nested if name in (rel.casefold(), PurePosixPath(rel).name.casefold(),
                                                       PurePosixPath(rel).stem.casefold())), None)

    hits = [rel for rel in map(found, unknown) if rel is not None]
    if not hits:
        return ""
    return (f"\n{len(hits)} of these image(s) are in sub-folders ({', '.join(hits[:3])}{', ...' * (len(hits) > 3)}), "
            "which are not searched without --recursive: add --recursive to label the sub-folders too")


def _folders_with_images(folder: Path, out: Path) -> list[str]:
    """The direct sub-folders of ``folder`` (not hidden, not ``out`` or inside it) with an image file at any
    depth (each searched only until its first image; symlinked folders are not followed)."""
    found = []
    for sub in sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: natural_key(p.name)):
        if sub.resolve() == out or out.is_relative_to(sub.resolve()):
            continue
        for _, dirnames, filenames in os.walk(sub):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(is_image_file(f) for f in filenames if not f.startswith(".")):
                found.append(sub.name)
                break
    return found


def _check_inputs(folder: Path, tags_csv: Path, out: Path, recursive: bool) -> list[str]:
    """Refuse bad input before any work; return the files of ``folder`` that are not images (relative)."""
    if not folder.is_dir():
        raise BatchError(f"image folder not found: {folder}")
    scan = scan_folder(folder, recursive=recursive)
    skipped = [p.relative_to(folder).as_posix() for p in scan.skipped]
    if not scan.images:
        other = f"; its {len(skipped)} file(s) are of other types: {', '.join(capped(skipped))}" if skipped else ""
        where = "" if recursive else " (sub-folders are not searched without --recursive)"
        raise ImageFolderError(f"no images in {folder}{where}{other}; give a folder of image files "
                               f"({' '.join(IMAGE_EXTENSIONS)})")
    if not tags_csv.is_file():
        raise BatchError(f"tags file not found: {tags_csv}; give a CSV with 'image,class' rows")
    if out == folder:
        raise BatchError("--out must not be the image folder itself; give a new or an earlier output folder")
    if recursive and out.is_relative_to(folder):
        raise BatchError(f"with --recursive, --out must not be inside the image folder (its images/ and masks/ "
                         f"would be read as images to label): {out}; give a folder outside {folder}")
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out is a file, not a folder: {out}; give a new or an earlier output folder")
    return skipped


class _IndexPacer:
    """Rebuilds the export's index files (and saves the proposal record) often enough to follow the run,
    seldom enough to stay cheap."""

    def __init__(self, *writes: Callable[[], None]) -> None:
        self.writes = writes
        self.last_end = time.perf_counter()
        self.last_cost = 0.0

    def maybe(self) -> None:
        now = time.perf_counter()
        if now - self.last_end >= max(INDEX_MIN_INTERVAL_S, self.last_cost / INDEX_MAX_SHARE):
            self.now()

    def now(self) -> None:
        start = time.perf_counter()
        for write in self.writes:
            write()
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - start


@dataclass(frozen=True)
class _Flags:
    """The ``wfss label`` flags that shape the export and the queries (see :func:`label_folder`)."""

    tiff: bool
    images: str
    redo: bool
    shard: tuple[int, int] | None = None
    instances: bool = False


def label_folder(
    folder: str | os.PathLike[str],
    tags_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    engine: Engine,
    *,
    tiff: bool = False,
    images: str = "copy",
    instances: bool = False,
    recursive: bool = False,
    redo: bool = False,
    log: TextIO | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
    shard: tuple[int, int] | None = None,
    runner: QueryRunner | None = None,
) -> LabelSummary:
    """Label every untagged image of ``folder`` from the tags in ``tags_csv`` into ``out`` (module doc).

    ``engine`` proposes; ``tiff`` adds ``masks_tiff/``; ``images``: ``"copy"`` the sources into
    ``images/``, ``"link"`` them (hard links where possible) or ``"none"`` (no ``images/``);
    ``instances``: one COCO annotation per connected component of each class (``DatasetWriter``);
    ``recursive`` searches the sub-folders of ``folder`` too; ``redo`` proposes again the images whose
    proposal is still unreviewed and was made with other options (or unrecorded ones; module doc);
    ``log`` receives the status lines and the progress bar (default stderr);
    images of more than ``max_pixels`` pixels are refused before decoding (reported as failed);
    ``shard`` ``(K, N)`` labels shard K of N into ``OUT/shards/K-of-N`` and merges the shards into ``OUT``
    once all are complete (:mod:`napari_wfss.shards`); ``runner`` computes the queries elsewhere (e.g.
    :class:`napari_wfss.dask_runner.DaskRunner`; default: this process).
    Raises a :class:`~hhn.errors.UserError` subclass for bad input, before labelling anything,
    :class:`BatchError` when another run is writing ``out`` (a lock file there; the operating system
    releases it when a run ends, also when it is killed), and :class:`BatchError` when the disk is full.
    """
    from filelock import FileLock, Timeout

    if images not in IMAGE_MODES:
        raise BatchError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    started = time.perf_counter()
    log = log or sys.stderr
    folder = Path(folder).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    tags_csv = Path(tags_csv).expanduser()
    skipped = _check_inputs(folder, tags_csv, out, recursive)
    top = out
    if shard is not None:
        if (out / PROJECT_DIRNAME / PROJECT_FILE).exists():
            raise BatchError(f"{out} holds an unsharded run: give the sharded runs a new --out")
        out = shard_dir(out, *shard)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot create the output folder ({exc.strerror}): {out}; give a folder you can write "
                         "to") from exc
    try:
        lock = FileLock(out / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise BatchError(f"another `wfss label` run is writing {out} (it holds {out / LOCK_NAME}); wait for "
                             "it to finish, or give another --out") from None
        try:
            with _open_project(folder, out, recursive) as session:
                session.max_pixels = max_pixels
                if shard is not None:
                    mark_shard(out, folder, *shard, complete=False)
                flags = _Flags(tiff, images, redo, shard, instances)
                summary = _label_locked(session, tags_csv, out, engine, flags, log, progress, started, runner)
                if shard is not None:
                    mark_shard(out, folder, *shard, complete=True)
        finally:
            lock.release()
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise BatchError(f"cannot write the output ({exc.strerror}: read-only, or not yours): "
                             f"{exc.filename or out}; give an --out you can write to (the results already "
                             "there are kept)") from exc
        if exc.errno not in _DISK_FULL:
            raise
        raise BatchError(f"disk full ({exc.strerror}) while writing {exc.filename or out}; free some space, then "
                         "rerun the same command to resume (the images labelled so far are kept)") from exc
    summary.skipped_files = skipped
    summary.unsearched = [] if recursive else _folders_with_images(folder, top)
    if shard is not None:
        waiting = pending_shards(top)
        if waiting:
            summary.warnings.append(f"shard {shard[0]} of {shard[1]} done; waiting for shard(s) "
                                    f"{', '.join(map(str, waiting))}: the last one to finish merges them into {top}")
        else:
            summary.merged = merge_exports(top).text()
    return summary


def _show(value: Any) -> str:
    """A setting's value in a message (None: the model's own)."""
    return "model's" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)


def _other_settings(session: Session, record: ProposalRecord, settings: dict[str, Any]) -> tuple[list[str], str]:
    """``(images, warning)``: the untagged images whose unreviewed proposal was made with other settings
    than ``settings`` or with unrecorded ones (only the model is known of those: ``proposal_model``), in
    session order; and a warning naming the settings that differ (``""`` when none is known to)."""
    redo: list[str] = []
    earlier: dict[str, set[str]] = {}
    changed = 0
    for rel in session.images_with_status(PROPOSED):
        info = session.info(rel)
        if info.tags:
            continue
        known = record.settings_of(rel, info.proposal_time)
        differences = settings_differences(known or {"model": info.proposal_model}, settings)
        if differences or known is None:
            redo.append(rel)
        changed += bool(differences)
        for name, (then, _) in differences.items():
            earlier.setdefault(name, set()).add(_show(then))
    if not changed:
        return redo, ""
    names = "; ".join(f"{name} {' or '.join(sorted(then))} then, {_show(settings[name])} now"
                      for name, then in earlier.items())
    return redo, (f"{changed} image(s) were proposed with other options ({names}); their proposals are kept: rerun "
                  "with --redo to propose them again with the options given now (accepted and edited masks are "
                  "never touched)")


def _label_locked(session: Session, tags_csv: Path, out: Path, engine: Engine, flags: _Flags, log: TextIO,
                  progress: bool, started: float, runner: QueryRunner | None) -> LabelSummary:
    """:func:`label_folder` while this process holds ``OUT``'s lock and its project ``session``."""
    from tqdm import tqdm

    folders = [out / sub for sub in ("", IMAGES_DIR, MASKS_DIR, TIFF_DIR, RECORDS_DIR)]
    project = out / PROJECT_DIRNAME  # the project's own files and its label-map folders
    folders += [project, *(p for p in project.iterdir() if p.is_dir())] if project.is_dir() else []
    for folder in folders:
        if folder.is_dir():  # only a killed run can have left temporary files: no writer is alive
            remove_stale_temps(folder, older_than=0)
    _apply_tags(session, tags_csv)
    summary = LabelSummary(out, engine.model_name, engine.untrained, tiff=flags.tiff, images=flags.images)
    if engine.untrained:
        print(f"wfss label: model {engine.model_name}: the heads are UNTRAINED (random); proposals only "
              "exercise the pipeline", file=log)
    writer = DatasetWriter(session, out, tiff=flags.tiff, images=flags.images, instances=flags.instances)
    finished = session.images_with_status(PROPOSED, EDITED, ACCEPTED)
    for rel in finished:  # a run killed after saving a proposal but before exporting it
        writer.write_image(rel)
    record = ProposalRecord.load(project / RECORD_NAME)
    settings = json.loads(json.dumps(engine.settings()))  # as the record reads them back
    redo, warning = _other_settings(session, record, settings)
    redo = redo if flags.redo else []
    queries = set(default_queries(session)) | set(redo)
    if flags.shard is not None:
        queries = {rel for rel in queries if in_shard(rel, *flags.shard)}
    plan = plan_run(session, [rel for rel in session.images if rel in queries], shots=engine.shots)
    summary.negative = len(session.images_no_class())
    summary.already_done = len(finished) - summary.negative - len(redo)
    tagged = len(session.images_tagged())
    again = f" ({len(redo)} of them proposed again: --redo)" if redo else ""
    print(f"wfss label: {len(session)} images: {tagged} tagged, {summary.negative} tagged as holding no class, "
          f"{summary.already_done} already done, "
          f"{len(plan.queries)} to label{again}; classes: {', '.join(c.name for c in plan.classes)}", file=log)
    if warning and not flags.redo:
        print(f"wfss label: warning: {warning}", file=log)
        summary.warnings.append(warning)
    if plan.queries:
        engine.load()  # a missing or broken model fails here, before the progress bar
    pacer = _IndexPacer(writer.write_indexes, record.save)
    try:
        with tqdm(total=len(plan.queries), file=log, unit="image", desc="labelling",
                  disable=not (progress and plan.queries)) as bar:
            for result in engine.propose(session, plan=plan, runner=runner):
                if result.error is None:  # stored (store_proposals names why a result was not)
                    writer.write_image(result.image)
                    record.note(result.image, settings, session.info(result.image).proposal_time or "")
                    summary.labelled.append(result.image)
                    if result.no_class:
                        summary.no_class_found.append(result.image)
                    summary.compute_seconds += result.seconds
                else:
                    summary.failed.append((result.image, result.error))
                bar.update(1)
                pacer.maybe()
    finally:  # also on Ctrl-C or an error: the index files describe everything exported so far
        pacer.now()
    summary.warnings += engine.warnings
    summary.total_seconds = time.perf_counter() - started
    return summary


def run_label_cli(args) -> int:
    """``wfss label``: build the engine from the flags, label, print the summary (``--json``: the text on
    stderr, one JSON object on stdout); returns the exit status."""
    if not (math.isfinite(args.max_megapixels) and args.max_megapixels > 0):
        raise BatchError(f"--max-megapixels must be a number above 0, got {args.max_megapixels}")
    engine = Engine.from_options(ProposalOptions.from_args(args))
    shard = parse_shard(args.shard) if args.shard is not None else None
    with contextlib.ExitStack() as stack:
        runner = None
        if args.dask is not None:
            from .dask_runner import DaskRunner

            runner = stack.enter_context(DaskRunner(args.dask))
        summary = label_folder(args.folder, args.tags, args.out, engine, tiff=args.tiff, images=args.images,
                               instances=args.instances, recursive=args.recursive, redo=args.redo,
                               max_pixels=round(args.max_megapixels * 1e6), shard=shard, runner=runner)
    if args.json:
        print(summary.text(), file=sys.stderr)
        print(json.dumps(summary.as_json()))
    else:
        print(summary.text())
    return summary.exit_code
