"""Export a session as a dataset folder that ``wfss train`` / ``wfss eval`` read as it is.

Layout of ``OUT`` (the generic folder layout of ``../shared/data/msrc_v2``)::

    images/<key>.<ext>      the source image: a byte copy (or hard link) of JPEG/PNG files that any
                            reader decodes as we do; every other file (TIFF, 16-bit, alpha, EXIF
                            rotation, BMP, WebP, ...) as the PNG of the RGB pixels the model saw
    masks/<key>.png         palette PNG label map: pixel = class id, 0 = background, 255 = ignore;
                            the palette shows the class colours in any viewer
    masks_tiff/<key>.tif    (``tiff=True``) the same ids as a TIFF (uint8 or uint16)
    classes.txt             ``id name`` per class (header comment says 0 = background, 255 = ignore)
    classes.json            {"background": 0, "ignore": 255, "classes": [{"id", "name", "color"}]}
    coco.json               COCO with one RLE annotation per class per image, or with ``instances`` one
                            per connected component (8-connected) of each class (``iscrowd`` 0,
                            compressed RLE counts as strings; image ``file_name`` relative to images/;
                            each image's ``wfss_status`` and ``wfss_reviewed``: accepted or edited)
    manifest.json / .csv    per image: source, status, tags, classes, model, times, files, no_class
    .wfss-export/<key>.json per-image records the index files are built from (incremental export)

``<key>`` is the session's image key, so an image and its mask share a stem. Ignore (255) pixels are
not part of any COCO annotation.

An image with a negative tag (``image,-`` or ``image,none`` in the tags CSV: it holds none of the classes)
is exported as accepted "no class present": its mask all background (or the user's mask without classes),
no COCO annotation, and ``no_class`` true in the manifest (empty ``tags``). An image the model found no
class in (``ProposalResult.no_class``) is a proposal like any other: status proposed, mask all background.

The records decide which files an export later replaces or deletes, so a record is trusted only if it
names this layout's files: its key is a safe image key (``project_store.check_key``), it is stored as
``<key>.json``, and each of its files is ``""`` or ``<folder>/<key>.<ext>`` in that file's folder above.
An export folder whose record breaks this, or whose ``images/``, ``masks/``, ``masks_tiff/`` or
``.wfss-export/`` is a symbolic link leading elsewhere, is refused (:class:`ExportError`) before
anything is written or deleted.

Incremental use (the streaming batch CLI): :class:`DatasetWriter` writes one image at a time with
:meth:`DatasetWriter.write_image` and rebuilds the index files from all records with
:meth:`DatasetWriter.write_indexes`; the files are the same as those of a full
:func:`export_session`. Unchanged images are skipped. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from hhn.errors import UserError

from .atomic import (
    atomic_copy,
    atomic_link_or_copy,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    subfolders_leading_out,
)
from .classes import BACKGROUND_ID, IGNORE_ID, ClassTable
from .images import natural_key, read_image, write_label_png, write_label_tiff
from .project_store import check_key
from .session import ACCEPTED, EDITED, PROPOSED, SessionError

if TYPE_CHECKING:
    from .session import Session

DEFAULT_EXPORT_STATUSES = (ACCEPTED, EDITED, PROPOSED)
IMAGE_MODES = ("copy", "link", "none")
IMAGES_DIR, MASKS_DIR, TIFF_DIR, RECORDS_DIR = "images", "masks", "masks_tiff", ".wfss-export"
INSTANCES = "instances"  #: in a record's options: its COCO segments are per connected component
RECORD_VERSION = 1
_FILE_FOLDERS = {"mask": MASKS_DIR, "image": IMAGES_DIR, "tiff": TIFF_DIR}  # a record's files: where each lives
_COPY_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_FIELDS = (
    "key", "source", "source_path", "status", "tags", "classes", "model", "proposal_time", "mask_time",
    "accepted_time", "width", "height", "image", "mask", "tiff", "no_class",
)


def copy_is_faithful(path: str | os.PathLike[str]) -> bool:
    """True if a plain reader (``Image.open(p).convert("RGB")``) sees the same pixels as
    :func:`~napari_wfss.images.read_image`: an 8-bit RGB/grey/opaque-palette JPEG or PNG without EXIF
    rotation. Such files are exported as byte copies; others are re-encoded as PNG."""
    p = Path(path)
    if p.suffix.lower() not in _COPY_SUFFIXES:
        return False
    try:
        with Image.open(p) as im:
            opaque_palette = im.mode == "P" and "transparency" not in im.info
            return (im.mode in ("RGB", "L") or opaque_palette) and im.getexif().get(274, 1) == 1
    except (OSError, ValueError):
        return False


def _instance_masks(label_map: np.ndarray, ids: list[int], instances: bool) -> tuple[list[int], list[np.ndarray]]:
    """Class ids and their ``bool (H, W)`` masks, as two lists: one per class of ``ids``, or with ``instances``
    one per connected component (8-connected, ``skimage.measure.label``) of each class, in label order."""
    if not instances:
        return ids, [label_map == i for i in ids]
    from skimage.measure import label

    out_ids, masks = [], []
    for cid in ids:
        components = label(label_map == cid, connectivity=2)
        for n in range(1, int(components.max()) + 1):
            out_ids.append(cid)
            masks.append(components == n)
    return out_ids, masks


def coco_segments(label_map: np.ndarray, instances: bool = False) -> list[dict]:
    """One COCO RLE segment per class id present in ``label_map`` (``(H, W)`` ids; 0 and 255 skipped), or with
    ``instances`` one per connected component of each class (8-connected: each object its own annotation).

    Returns ``[{"class_id", "segmentation": {"size": [H, W], "counts": str}, "area": int,
    "bbox": [x, y, w, h]}]`` sorted by class id (a class's components in raster order of their first pixel).
    """
    ids = [int(v) for v in np.unique(label_map) if v not in (BACKGROUND_ID, IGNORE_ID)]
    if not ids:
        return []
    ids, masks = _instance_masks(label_map, ids, instances)
    stack = np.asfortranarray(np.stack(masks, axis=-1).astype(np.uint8))
    rles = mask_utils.encode(stack)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    return [
        {
            "class_id": cid,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(area),
            "bbox": [float(v) for v in box],
        }
        for cid, rle, area, box in zip(ids, rles, areas, boxes)
    ]


def classes_txt(classes: ClassTable) -> str:
    """``classes.txt`` text: a comment header, then ``id name`` per class in id order."""
    header = (f"# id name   (napari-wfss export) mask value {BACKGROUND_ID} = background, "
              f"{IGNORE_ID} = ignore (unlabelled)")
    lines = [header]
    lines += [f"{c.id} {c.name}" for c in sorted(classes, key=lambda c: c.id)]
    return "\n".join(lines) + "\n"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class ExportError(UserError):
    """An export folder that cannot be trusted: a record naming files outside the layout, or a folder of the
    layout that is a link leading elsewhere. The message names the file and what to do."""


def _check_record(rec: dict, file: Path) -> None:
    """Raise :class:`ExportError` unless the record ``rec``, read from ``file``, names only this layout's
    files (module doc)."""
    try:
        key = check_key(rec.get("key"))
        if file.name != f"{key}.json":
            raise ValueError(f"key {key!r} does not match the record's file name")
        files = rec.get("files")
        if not isinstance(files, dict) or set(files) != set(_FILE_FOLDERS):
            raise ValueError(f"'files' must name exactly {', '.join(_FILE_FOLDERS)}")
        for kind, rel in files.items():
            pattern = rf"{re.escape(_FILE_FOLDERS[kind])}/{re.escape(key)}\.[A-Za-z0-9]+"
            if rel != "" and not (isinstance(rel, str) and re.fullmatch(pattern, rel)):
                raise ValueError(f"its {kind} file {rel!r} is not {_FILE_FOLDERS[kind]}/{key}.<ext>")
    except ValueError as exc:
        raise ExportError(f"export record names files outside the export's layout ({exc}): {file}; delete "
                          "that record file (the image is exported again), and check what else the folder holds"
                          ) from exc


@dataclass
class ExportSummary:
    """What an export did: keys written, skipped as unchanged, and removed as no longer exported."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Images in the export."""
        return len(self.written) + len(self.unchanged)


class DatasetWriter:
    """Writes a session's images into an export folder one at a time, then the index files.

    ``tiff`` adds ``masks_tiff/<key>.tif`` of ``tiff_dtype`` (``"uint8"`` or ``"uint16"``). ``images``
    is ``"copy"`` (default), ``"link"`` (hard links where possible, for faithful files) or ``"none"``
    (no ``images/``: the folder is then not a training dataset by itself). ``instances``: one COCO
    annotation per connected component of each class instead of one per class (:func:`coco_segments`).
    Records already in ``out_dir`` are loaded, so a writer resumes an earlier export.
    """

    def __init__(
        self,
        session: Session,
        out_dir: str | os.PathLike[str],
        *,
        tiff: bool = False,
        tiff_dtype: str = "uint8",
        images: str = "copy",
        instances: bool = False,
    ) -> None:
        if images not in IMAGE_MODES:
            raise ValueError(f"images must be one of {IMAGE_MODES}, not {images!r}")
        if tiff_dtype not in ("uint8", "uint16"):
            raise ValueError(f"tiff_dtype must be 'uint8' or 'uint16', not {tiff_dtype!r}")
        self.session = session
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.tiff, self.tiff_dtype, self.images, self.instances = tiff, tiff_dtype, images, instances
        self._records: dict[str, dict] = {}
        leading_out = subfolders_leading_out(self.out_dir, (IMAGES_DIR, MASKS_DIR, TIFF_DIR, RECORDS_DIR))
        if leading_out:
            raise ExportError(f"export folder is a link to {leading_out[0].resolve()}, outside the export: "
                              f"{leading_out[0]}; replace the link by a real folder, or export elsewhere")
        self._records = read_records(self.out_dir)

    @property
    def keys(self) -> list[str]:
        """Keys of the images currently in the export."""
        return list(self._records)

    def _meta(self, image: str) -> dict:
        """Everything an image's exported files depend on; equal meta = nothing to redo."""
        s = self.session
        info = s.info(image)
        mask_file = s.mask_file(image)
        if mask_file is None and not info.no_class:
            raise SessionError(f"nothing to export for {info.path}: it has no proposal or mask")
        st = s.image_path(image).stat()
        return {**({"no_class": True} if info.no_class else {}),  # only then: earlier records stay equal
            "source": info.path,
            "status": info.status,
            "tags": list(info.tags),
            "classes": list(info.classes_present),
            "model": info.proposal_model,
            "proposal_time": info.proposal_time,
            "mask_time": info.mask_time,
            "accepted_time": info.accepted_time,
            "mask_sha1": _sha1(mask_file.read_bytes()) if mask_file else None,
            "source_stat": [st.st_size, st.st_mtime_ns],
            "palette_sha1": _sha1(s.classes.palette()),
            "options": [self.tiff, self.tiff_dtype, self.images] + [INSTANCES] * self.instances,
        }

    def _files_exist(self, rec: dict) -> bool:
        return all((self.out_dir / rel).is_file() for rel in rec["files"].values() if rel)

    def write_image(self, image: str) -> bool:
        """Export one image of the session (its mask if any, else its proposal).

        Returns ``False`` without writing if the image and its label map are unchanged since the last
        export here, else ``True``. Raises :class:`~napari_wfss.session.SessionError` if the image has
        neither a mask nor a proposal.
        """
        s = self.session
        with s.lock:  # a consistent view even if another thread edits the session meanwhile
            key = s.key(image)
            meta = self._meta(image)
            old = self._records.get(key)
            if old is not None and old["meta"] == meta and self._files_exist(old):
                return False
            label_map = s.current_label_map(image)
            if label_map is None:  # already refused by _meta
                raise SessionError(f"nothing to export for {image}: it has no proposal or mask")
            palette = s.classes.palette()
            source = s.image_path(image)
        files = {"mask": f"{MASKS_DIR}/{key}.png", "image": "", "tiff": ""}
        write_label_png(self.out_dir / files["mask"], label_map, palette)
        if self.tiff:
            files["tiff"] = f"{TIFF_DIR}/{key}.tif"
            write_label_tiff(self.out_dir / files["tiff"], label_map, dtype=self.tiff_dtype)
        if self.images != "none":
            files["image"] = self._write_source(source, key)
        self._remove_stale_images(key, keep=files["image"])
        rec = {
            "version": RECORD_VERSION,
            "key": key,
            "meta": meta,
            "files": files,
            "height": int(label_map.shape[0]),
            "width": int(label_map.shape[1]),
            "segments": coco_segments(label_map, self.instances),
        }
        atomic_write_json(self.out_dir / RECORDS_DIR / f"{key}.json", rec)
        self._records[key] = rec
        return True

    def _write_source(self, src: Path, key: str) -> str:
        if copy_is_faithful(src):
            rel = f"{IMAGES_DIR}/{key}{src.suffix.lower()}"
            if self.images == "link":
                atomic_link_or_copy(src, self.out_dir / rel)
            else:
                atomic_copy(src, self.out_dir / rel)
        else:
            rel = f"{IMAGES_DIR}/{key}.png"
            with atomic_open(self.out_dir / rel, "wb") as fh:
                Image.fromarray(read_image(src, self.session.max_pixels)).save(fh, format="PNG")
        return rel

    def _remove_stale_images(self, key: str, keep: str) -> None:
        """Delete ``images/<key>.*`` other than ``keep`` (left by an earlier export in another format/mode)."""
        for other in (self.out_dir / IMAGES_DIR).glob(f"{glob.escape(key)}.*"):
            if other.stem == key and f"{IMAGES_DIR}/{other.name}" != keep:
                other.unlink()

    def remove(self, key: str) -> None:
        """Take an image out of the export (its files and its record)."""
        rec = self._records.pop(key, None)
        if rec is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.out_dir / RECORDS_DIR / f"{key}.json").unlink()
        for rel in rec["files"].values():
            if rel:
                with contextlib.suppress(FileNotFoundError):
                    (self.out_dir / rel).unlink()

    def _ordered(self) -> list[dict]:
        return sorted(self._records.values(), key=lambda r: natural_key(r["meta"]["source"]))

    def write_indexes(self) -> None:
        """Rewrite ``classes.txt``, ``classes.json``, ``coco.json`` and ``manifest.json|csv`` from the records."""
        write_index_files(self.out_dir, self._ordered(), self.session.classes, self.session.image_folder)


def read_records(out_dir: Path) -> dict[str, dict]:
    """The per-image records of an export folder by key (each checked: ``_check_record``); records cut
    short by a killed writer are left out (their image is exported again)."""
    found: dict[str, dict] = {}
    records = out_dir / RECORDS_DIR
    if records.is_dir():
        for f in records.glob("*.json"):
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("version") == RECORD_VERSION:
                _check_record(rec, f)
                found[rec["key"]] = rec
    return found


def write_index_files(out_dir: Path, records: list[dict], classes: ClassTable, image_folder: Path) -> None:
    """Write ``classes.txt``, ``classes.json``, ``coco.json`` and ``manifest.json|csv`` of ``out_dir`` from
    ``records`` (in that order), the class table and the folder the sources are in."""
    atomic_write_text(out_dir / "classes.txt", classes_txt(classes))
    atomic_write_json(out_dir / "classes.json", {
        "background": BACKGROUND_ID, "ignore": IGNORE_ID, "classes": classes.to_records(),
    })
    atomic_write_json(out_dir / "coco.json", _coco(records, classes))
    rows = [_manifest_row(r, image_folder) for r in records]
    atomic_write_json(out_dir / "manifest.json", {"format": "napari-wfss-export", "version": 1, "images": rows})
    with atomic_open(out_dir / "manifest.csv", "w") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: ";".join(v) if isinstance(v, list) else ("" if v is None else v) for k, v in row.items()})


def _manifest_row(rec: dict, image_folder: Path) -> dict:
    m, f = rec["meta"], rec["files"]
    row = {k: m[k] for k in ("source", "status", "tags", "classes", "model", "proposal_time",
                             "mask_time", "accepted_time")}
    row.update(key=rec["key"], source_path=str(image_folder / m["source"]), width=rec["width"],
               height=rec["height"], image=f["image"], mask=f["mask"], tiff=f["tiff"],
               no_class=m.get("no_class", False))
    return {k: row[k] for k in MANIFEST_FIELDS}


def _coco(records: list[dict], classes: ClassTable) -> dict:
    known = set(classes.ids)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, rec in enumerate(records, 1):
        images.append({
            "id": image_id,
            "file_name": Path(rec["files"]["image"]).name if rec["files"]["image"] else "",
            "height": rec["height"],
            "width": rec["width"],
            "wfss_status": rec["meta"]["status"],  # accepted / edited: reviewed by a person; proposed: not
            "wfss_reviewed": rec["meta"]["status"] in (ACCEPTED, EDITED),
        })
        for seg in rec["segments"]:
            if seg["class_id"] not in known:  # class removed after this image was exported
                continue
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": seg["class_id"],
                "segmentation": seg["segmentation"],
                "area": seg["area"],
                "bbox": seg["bbox"],
                "iscrowd": 0,
            })
    categories = [{"id": c.id, "name": c.name, "supercategory": "object"}
                  for c in sorted(classes, key=lambda c: c.id)]
    per_object = any(INSTANCES in rec["meta"]["options"] for rec in records)
    return {
        "info": {"description": "napari-wfss export: one RLE annotation per "
                                + ("connected component of each class" if per_object else "class per image"),
                 "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def export_session(
    session: Session,
    out_dir: str | os.PathLike[str],
    *,
    tiff: bool = False,
    tiff_dtype: str = "uint8",
    statuses: tuple[str, ...] = DEFAULT_EXPORT_STATUSES,
    images: str = "copy",
    instances: bool = False,
) -> ExportSummary:
    """Export every image whose status is in ``statuses`` (default accepted, edited, proposed; accepted
    includes the images with a negative tag, exported all background).

    Images already exported to ``out_dir`` and unchanged are skipped; images exported earlier that are
    no longer selected (e.g. rejected since) are removed from the export. See the module doc for the
    layout and :class:`DatasetWriter` for ``tiff``, ``tiff_dtype``, ``images`` and ``instances``.
    """
    writer = DatasetWriter(session, out_dir, tiff=tiff, tiff_dtype=tiff_dtype, images=images, instances=instances)
    summary = ExportSummary(writer.out_dir)
    selected = set()
    for image in session.images_with_status(*statuses):
        key = session.key(image)
        selected.add(key)
        (summary.written if writer.write_image(image) else summary.unchanged).append(key)
    for key in [k for k in writer.keys if k not in selected]:
        writer.remove(key)
        summary.removed.append(key)
    writer.write_indexes()
    return summary
