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

Tags: ``TAGS.csv`` has ``image,class`` rows (see :meth:`Session.import_tags_csv`). Every row must
apply: unknown or ambiguous images and malformed rows stop the run before any work, listing the
rows. Until an image is labelled the file may change between runs (classes no longer tagged leave
the class table); once any image is labelled a rerun must give the same tags as before (else the old
proposals would silently mix two tag sets): change tags with a new ``--out``.

Exit status: 0 when every image is labelled or nothing is left to do; 0 also when some images could
not be read (they are skipped with a warning, listed in the summary, and retried by a rerun) as long
as at least one image was labelled; 1 when there were images to label and none could be; 2 for
bad input (missing or empty folder, unreadable tags, unknown images, no usable model, a full disk) with
a message saying what to do; 130 when interrupted (rerun to resume). Lists in messages and in the summary
(rows, failed images, skipped files) show their first ``session_errors.MAX_LISTED`` lines and a count.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hhn.errors import UserError

from .atomic import remove_stale_temps
from .engine import Engine, plan_run
from .export import IMAGES_DIR, MASKS_DIR, RECORDS_DIR, TIFF_DIR, DatasetWriter
from .images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageFolderError, scan_folder
from .options import ProposalOptions
from .project_store import PROJECT_FILE, restore_hint
from .session import ACCEPTED, EDITED, PROPOSED, Session, SessionError
from .session_errors import capped

PROJECT_DIRNAME = ".wfss-project"
LOCK_NAME = ".wfss-label.lock"  #: held by the run writing OUT (released by the OS if the run is killed)
INDEX_MIN_INTERVAL_S = 2.0  # rebuild the index files at most this often during a run ...
INDEX_MAX_SHARE = 0.1  # ... and so that rebuilding takes at most about this share of the run
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # errors that say: free some space


class BatchError(UserError):
    """Bad input for ``wfss label``; the message says what to fix."""


@dataclass
class LabelSummary:
    """What a ``wfss label`` run did.

    ``labelled``: images proposed and exported by this run; ``already_done``: images finished by an
    earlier run (skipped); ``failed``: ``(image, reason)`` for images that could not be labelled;
    ``skipped_files``: files of the folder that are not images (relative paths);
    ``compute_seconds``: model time summed over the labelled images; ``total_seconds``: the whole
    run including model loading, supports and export.
    """

    out_dir: Path
    model: str
    untrained: bool
    labelled: list[str] = field(default_factory=list)
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compute_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0, or 1 when there were images to label and none could be (see the module doc)."""
        return 1 if self.failed and not self.labelled else 0

    def text(self) -> str:
        """The end-of-run report."""
        n = len(self.labelled)
        lines = [f"labelled {n} image(s), {self.already_done} already done, {len(self.failed)} failed"]
        if n:
            lines.append(f"time: {self.total_seconds / n:.2f} s/image overall, {self.compute_seconds / n:.2f} s/image "
                         f"model compute ({self.total_seconds:.1f} s in all, including model loading and supports)")
        lines += capped([f"failed: {image}: {reason}" for image, reason in self.failed])
        if self.skipped_files:
            lines.append(f"skipped {len(self.skipped_files)} file(s) that are not images "
                         f"({' '.join(IMAGE_EXTENSIONS)}): " + ", ".join(capped(self.skipped_files)))
        lines += capped([f"warning: {w}" for w in self.warnings])
        if self.untrained:
            lines.append(f"NOTE: model {self.model} has UNTRAINED heads; its proposals are not meaningful "
                         "(use --model default or a trained checkpoint)")
        lines.append(f"output: {self.out_dir} (masks/, images/, coco.json, classes.txt, classes.json, manifest.json)")
        return "\n".join(lines)


def _open_project(folder: Path, out: Path) -> Session:
    """The session kept in ``OUT/.wfss-project`` for ``folder`` (created on the first run; refused when
    ``OUT`` holds an export whose project was lost)."""
    project = out / PROJECT_DIRNAME
    if not (project / PROJECT_FILE).exists():
        exported = len(list((out / RECORDS_DIR).glob("*.json")))
        if exported:
            raise BatchError(f"project file missing but {out} holds an export of {exported} image(s): "
                             f"{project / PROJECT_FILE}; labelling again would overwrite the exported masks (they "
                             f"may hold accepted edits): {restore_hint(project)}, or give a new --out")
        return Session.create(folder, project)
    try:
        session = Session.open(project)
    except SessionError:  # the image folder moved: take the one given now
        return Session.open(project, image_folder=folder)
    if session.image_folder != folder:
        session.close()
        raise BatchError(f"{out} already holds the labels of another folder ({session.image_folder}); "
                         f"use a new --out for {folder}")
    return session


def _tag_snapshot(session: Session) -> dict[str, frozenset[str]]:
    return {rel: frozenset(session.tags_of(rel)) for rel in session.images}


def _apply_tags(session: Session, tags_csv: Path) -> None:
    """Make the session's tags exactly those of ``tags_csv`` (checks in the module doc), then save."""
    before = _tag_snapshot(session)
    started = bool(session.images_with_status(PROPOSED, EDITED, ACCEPTED))
    session.autosave = False  # nothing reaches disk unless every check passes
    for rel in session.images:
        session.set_tags(rel, [])
    report = session.import_tags_csv(tags_csv)
    if not report.ok:
        raise BatchError(f"{len(report.problems)} row(s) of {tags_csv} cannot be applied; fix them and rerun "
                         "(nothing was labelled):\n  " + "\n  ".join(capped(report.problems)))
    after = _tag_snapshot(session)
    if not any(after.values()):
        raise BatchError(f"{tags_csv} tags no image; give 'image,class' rows (e.g. 'cat_01.jpg,cat')")
    if started and after != before:
        changed = sorted(rel for rel in after if after[rel] != before.get(rel, frozenset()))
        raise BatchError(f"{tags_csv} gives other tags than the run already in {session.project_dir.parent} "
                         f"(changed: {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); "
                         "use a new --out to label with the new tags")
    session.autosave = True
    session.save()
    if not started:  # classes of an earlier, corrected tags file (e.g. a typo) leave the class table
        used = set().union(*after.values())
        for name in [c.name for c in session.classes if c.name not in used]:
            session.remove_class(name)


def _check_inputs(folder: Path, tags_csv: Path, out: Path) -> list[str]:
    """Refuse bad input before any work; return the files of ``folder`` that are not images (relative)."""
    if not folder.is_dir():
        raise BatchError(f"image folder not found: {folder}")
    scan = scan_folder(folder)
    skipped = [p.relative_to(folder).as_posix() for p in scan.skipped]
    if not scan.images:
        other = f"; its {len(skipped)} file(s) are of other types: {', '.join(capped(skipped))}" if skipped else ""
        raise ImageFolderError(f"no images in {folder} (sub-folders are not searched){other}; give a folder of "
                               f"image files ({' '.join(IMAGE_EXTENSIONS)})")
    if not tags_csv.is_file():
        raise BatchError(f"tags file not found: {tags_csv}; give a CSV with 'image,class' rows")
    if out == folder:
        raise BatchError("--out must not be the image folder itself; give a new or an earlier output folder")
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out is a file, not a folder: {out}; give a new or an earlier output folder")
    return skipped


class _IndexPacer:
    """Rebuilds the export's index files often enough to follow the run, seldom enough to stay cheap."""

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer
        self.last_end = time.perf_counter()
        self.last_cost = 0.0

    def maybe(self) -> None:
        now = time.perf_counter()
        if now - self.last_end >= max(INDEX_MIN_INTERVAL_S, self.last_cost / INDEX_MAX_SHARE):
            self.now()

    def now(self) -> None:
        start = time.perf_counter()
        self.writer.write_indexes()
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - start


def label_folder(
    folder: str | os.PathLike[str],
    tags_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    engine: Engine,
    *,
    tiff: bool = False,
    log: TextIO | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> LabelSummary:
    """Label every untagged image of ``folder`` from the tags in ``tags_csv`` into ``out`` (module doc).

    ``engine`` proposes; ``log`` receives the status lines and the progress bar (default stderr);
    images of more than ``max_pixels`` pixels are refused before decoding (reported as failed).
    Raises a :class:`~hhn.errors.UserError` subclass for bad input, before labelling anything,
    :class:`BatchError` when another run is writing ``out`` (a lock file there; the operating system
    releases it when a run ends, also when it is killed), and :class:`BatchError` when the disk is full.
    """
    from filelock import FileLock, Timeout

    started = time.perf_counter()
    log = log or sys.stderr
    folder = Path(folder).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    tags_csv = Path(tags_csv).expanduser()
    skipped = _check_inputs(folder, tags_csv, out)
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
            with _open_project(folder, out) as session:
                session.max_pixels = max_pixels
                summary = _label_locked(session, tags_csv, out, engine, tiff, log, progress, started)
        finally:
            lock.release()
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise BatchError(f"disk full ({exc.strerror}) while writing {exc.filename or out}; free some space, then "
                         "rerun the same command to resume (the images labelled so far are kept)") from exc
    summary.skipped_files = skipped
    return summary


def _label_locked(session: Session, tags_csv: Path, out: Path, engine: Engine, tiff: bool, log: TextIO,
                  progress: bool, started: float) -> LabelSummary:
    """:func:`label_folder` while this process holds ``OUT``'s lock and its project ``session``."""
    from tqdm import tqdm

    folders = [out / sub for sub in ("", IMAGES_DIR, MASKS_DIR, TIFF_DIR, RECORDS_DIR)]
    project = out / PROJECT_DIRNAME  # the project's own files and its label-map folders
    folders += [project, *(p for p in project.iterdir() if p.is_dir())] if project.is_dir() else []
    for folder in folders:
        if folder.is_dir():  # only a killed run can have left temporary files: no writer is alive
            remove_stale_temps(folder, older_than=0)
    _apply_tags(session, tags_csv)
    summary = LabelSummary(out, engine.model_name, engine.untrained)
    if engine.untrained:
        print(f"wfss label: model {engine.model_name}: the heads are UNTRAINED (random); proposals only "
              "exercise the pipeline", file=log)
    writer = DatasetWriter(session, out, tiff=tiff)
    finished = session.images_with_status(PROPOSED, EDITED, ACCEPTED)
    for rel in finished:  # a run killed after saving a proposal but before exporting it
        writer.write_image(rel)
    summary.already_done = len(finished)
    plan = plan_run(session, shots=engine.shots)
    tagged = len(session.images_tagged())
    print(f"wfss label: {len(session)} images: {tagged} tagged, {summary.already_done} already done, "
          f"{len(plan.queries)} to label; classes: {', '.join(c.name for c in plan.classes)}", file=log)
    if plan.queries:
        engine.load()  # a missing or broken model fails here, before the progress bar
    pacer = _IndexPacer(writer)
    try:
        with tqdm(total=len(plan.queries), file=log, unit="image", desc="labelling",
                  disable=not (progress and plan.queries)) as bar:
            for result in engine.propose(session, plan=plan):
                if result.error is None:  # stored (store_proposals names why a result was not)
                    writer.write_image(result.image)
                    summary.labelled.append(result.image)
                    summary.compute_seconds += result.seconds
                else:
                    summary.failed.append((result.image, result.error))
                bar.update(1)
                pacer.maybe()
    finally:  # also on Ctrl-C or an error: the index files describe everything exported so far
        pacer.now()
    summary.warnings = list(engine.warnings)
    summary.total_seconds = time.perf_counter() - started
    return summary


def run_label_cli(args) -> int:
    """``wfss label``: build the engine from the flags, label, print the summary; returns the exit status."""
    if not (math.isfinite(args.max_megapixels) and args.max_megapixels > 0):
        raise BatchError(f"--max-megapixels must be a number above 0, got {args.max_megapixels}")
    engine = Engine.from_options(ProposalOptions.from_args(args))
    summary = label_folder(args.folder, args.tags, args.out, engine, tiff=args.tiff,
                           max_pixels=round(args.max_megapixels * 1e6))
    print(summary.text())
    return summary.exit_code
