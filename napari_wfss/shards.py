"""Sharded folder labelling: ``wfss label ... --shard K/N`` on N processes or machines, then one export.

Each shard labels its part of the untagged images into its own folder, ``OUT/shards/K-of-N/`` (a whole
``wfss label`` output: project, lock, export), so shards never write the same file; a killed shard is
resumed by rerunning its command. An image belongs to shard ``K`` when the SHA-1 of its relative path,
read as a number, is ``K - 1`` modulo ``N``: the partition is the same on every machine and does not
move when images are added. Every shard learns the classes from the same tags (each computes the
supports itself).

A shard that finishes marks its folder complete (``shard.json``) and then tries the merge; the last one
to finish builds ``OUT`` itself: ``masks/``, ``images/``, ``masks_tiff/`` and the per-image records
linked (hard links where possible) from the shards, and ``coco.json``, ``classes.txt|json`` and
``manifest.json|csv`` written over all of them (:func:`napari_wfss.export.write_index_files`). ``wfss
merge-exports OUT`` does the same by hand. The merge is idempotent (rerunning it after a shard is
rerun refreshes ``OUT``) and refuses shards labelled with other classes or images from another folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hhn.errors import UserError

from .atomic import atomic_link_or_copy, atomic_write_json
from .classes import ClassTable
from .export import RECORDS_DIR, read_records, write_index_files
from .images import natural_key

SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"  #: in a shard's folder: which shard it is, of which folder, and whether it is complete
MERGE_LOCK = ".wfss-merge.lock"
_SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


class ShardError(UserError):
    """A bad ``--shard`` value, or shards that cannot be merged (yet); the message says what to do."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ShardError(f"--shard takes K/N with 1 <= K <= N (e.g. 2/8 for the second of eight shards), got "
                         f"{text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_dir(out: Path, k: int, n: int) -> Path:
    """The folder shard ``k`` of ``n`` writes: ``OUT/shards/K-of-N``."""
    return out / SHARDS_DIR / f"{k}-of-{n}"


def in_shard(rel: str, k: int, n: int) -> bool:
    """True when image ``rel`` (a relative POSIX path) belongs to shard ``k`` of ``n`` (module doc)."""
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") % n == k - 1


def mark_shard(folder: Path, image_folder: Path, k: int, n: int, complete: bool) -> None:
    """Write ``shard.json`` of a shard's folder (``complete`` once its run ended with nothing left to do)."""
    atomic_write_json(folder / SHARD_FILE, {"shard": k, "of": n, "image_folder": str(image_folder),
                                            "complete": bool(complete)})


@dataclass
class MergeSummary:
    """What a merge did: ``images`` in the merged export, from ``shards`` shards, into ``out``."""

    out: Path
    shards: int
    images: int

    def text(self) -> str:
        return (f"merged {self.shards} shard(s) into {self.out}: {self.images} image(s) (masks/, images/, coco.json, "
                "classes.txt, classes.json, manifest.json)")


def _shard_states(out: Path) -> tuple[int, dict[int, dict]]:
    """``(N, {K: shard.json})`` of the shards under ``OUT/shards`` (ShardError when there are none, or
    folders of different N)."""
    root = out / SHARDS_DIR
    names = [m for p in sorted(root.iterdir()) if p.is_dir() and (m := _SHARD_NAME.match(p.name))] \
        if root.is_dir() else []
    if not names:
        raise ShardError(f"no shards to merge in {root}; label with `wfss label ... --out {out} --shard K/N` first")
    counts = {int(m.group(2)) for m in names}
    if len(counts) > 1:
        raise ShardError(f"{root} holds shards of different counts ({', '.join(map(str, sorted(counts)))}): keep "
                         "the folders of one --shard K/N series only")
    n = counts.pop()
    states: dict[int, dict] = {}
    for m in names:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((root / m.group(0) / SHARD_FILE).read_text(encoding="utf-8"))
            if isinstance(state, dict):
                states[int(m.group(1))] = state
    return n, states


def pending_shards(out: Path) -> list[int]:
    """The shards of ``OUT`` not complete yet (never started, running, or killed)."""
    n, states = _shard_states(out)
    return [k for k in range(1, n + 1) if not states.get(k, {}).get("complete")]


def merge_exports(out: str | Path) -> MergeSummary:
    """Build the export of ``OUT`` from its complete shards (module doc); ShardError when a shard is not
    complete, or the shards disagree on classes, image folder or an image's record."""
    from filelock import FileLock

    out = Path(out).expanduser().resolve()
    with FileLock(out / MERGE_LOCK):
        n, states = _shard_states(out)
        waiting = [k for k in range(1, n + 1) if not states.get(k, {}).get("complete")]
        if waiting:
            raise ShardError(f"shard(s) {', '.join(map(str, waiting))} of {n} not complete yet in {out / SHARDS_DIR}: "
                             "run (or rerun) them with the same command and --shard K/N; the last one to finish "
                             "merges, or run `wfss merge-exports` again")
        folders = {states[k]["image_folder"] for k in states}
        if len(folders) > 1:
            raise ShardError(f"the shards in {out / SHARDS_DIR} labelled different image folders "
                             f"({', '.join(sorted(folders))}): merge shards of one folder only")
        classes, records = _union(out, n)
        old = read_records(out)
        for key in set(old) - set(records):  # left by an earlier merge: that image is no longer labelled
            for rel in [*(f for f in old[key]["files"].values() if f), f"{RECORDS_DIR}/{key}.json"]:
                with contextlib.suppress(FileNotFoundError):
                    (out / rel).unlink()
        for key, (rec, shard) in records.items():
            for rel in rec["files"].values():
                if rel:
                    atomic_link_or_copy(shard / rel, out / rel)
            atomic_write_json(out / RECORDS_DIR / f"{key}.json", rec)
        ordered = sorted((rec for rec, _ in records.values()), key=lambda r: natural_key(r["meta"]["source"]))
        write_index_files(out, ordered, classes, Path(folders.pop()))
    return MergeSummary(out, n, len(records))


def _union(out: Path, n: int) -> tuple[ClassTable, dict[str, tuple[dict, Path]]]:
    """The shards' common class table and their records by key (with the shard folder holding each)."""
    classes: ClassTable | None = None
    records: dict[str, tuple[dict, Path]] = {}
    for k in range(1, n + 1):
        shard = shard_dir(out, k, n)
        try:
            table = ClassTable.from_records(json.loads((shard / "classes.json").read_text(encoding="utf-8"))["classes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"cannot read the classes of shard {k} ({exc}): {shard / 'classes.json'}; rerun that "
                             "shard") from exc
        if classes is None:
            classes = table
        elif table != classes:
            raise ShardError(f"shard {k} was labelled with other classes than shard 1 ({', '.join(table.names)} vs "
                             f"{', '.join(classes.names)}): give every shard the same tags file")
        for key, rec in read_records(shard).items():
            if key in records and records[key][0]["meta"]["mask_sha1"] != rec["meta"]["mask_sha1"]:
                raise ShardError(f"image {rec['meta']['source']} has different masks in shards {records[key][1].name} "
                                 f"and {shard.name}; rerun one of them, or remove its mask there")
            records.setdefault(key, (rec, shard))
    assert classes is not None  # n >= 1
    return classes, records


def run_merge_cli(args) -> int:
    """``wfss merge-exports OUT``."""
    print(merge_exports(args.out).text())
    return 0
