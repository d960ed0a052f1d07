"""Scaling ``wfss label`` out: the 100-photo folder on 1 vs 2 Dask workers, and as 2 shards, wall time and speed-up.

Usage::

    python benchmarks/scale_out.py [--data ../shared/data/msrc_v2] [--images 100] [--model default]
        [--workers 2] [--record benchmarks/results/scale-out.jsonl]

The folder is the one of ``label_speed.py`` (MSRC-v2 photos of cow, sheep and car, two tagged per class).
Every run is the real ``wfss label`` in a child process with a fresh ``--out`` (``label_speed.label_run``):

- ``threads 1``: one process computing one image at a time (the baseline of the speed-ups);
- ``threads N``: one process computing N images side by side (the default on an N-core machine);
- ``dask local:1`` and ``dask local:N``: ``--dask local:K``, a ``distributed.LocalCluster`` of K
  single-threaded worker processes (its start-up, shipping the learnt classes and the model to the
  workers included in the wall time);
- ``N shards``: N ``wfss label --shard K/N`` processes started together (as a Slurm array would), wall
  time until the last one has finished and merged.

The masks of every run are compared with the baseline's: they must be the same bit for bit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_speed  # noqa: E402  (the benchmark next to this one: folder building and child runs)


def masks_of(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


def same_masks(a: Path, b: Path) -> bool:
    ma, mb = masks_of(a), masks_of(b)
    return ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)


def sharded_run(images: Path, tags: Path, out: Path, model: str, shards: int, env: dict[str, str]) -> float:
    """Wall seconds of ``shards`` ``wfss label --shard K/N`` processes started together, until all ended."""
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-m", "napari_wfss.cli", "label", str(images), "--tags", str(tags),
                                  "--out", str(out), "--model", model, "--threads", "1", "--shard", f"{k}/{shards}"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for k in range(1, shards + 1)]
    for child in children:
        stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a shard failed (exit {child.returncode}):\n{stderr[-3000:]}")
    wall = time.perf_counter() - start
    if not (out / "coco.json").is_file():  # two shards finishing together: each may see the other running
        subprocess.run([sys.executable, "-m", "napari_wfss.cli", "merge-exports", str(out)], env=env, check=True)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=label_speed.DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--model", default="default")
    parser.add_argument("--workers", type=int, default=2, help="workers / threads / shards to compare with one")
    parser.add_argument("--work", type=Path, default=None, help="folder for the photos and outputs (default: temp)")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="wfss-scale-"))
    images, tags, queries = label_speed.build_folder(args.data, work / "folder", ["cow", "sheep", "car"],
                                                     args.images, 2)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    n = args.workers
    runs = {
        "threads 1": ["--threads", "1"],
        f"threads {n}": ["--threads", str(n)],
        "dask local:1": ["--dask", "local:1"],
        f"dask local:{n}": ["--dask", f"local:{n}"],
    }
    walls: dict[str, float] = {}
    for name, extra in runs.items():
        out = work / name.replace(" ", "-").replace(":", "")
        walls[name] = label_speed.label_run(images, tags, out, queries, args.model, extra, env)["wall_s"]
        identical = same_masks(work / "threads-1", out)
        print(f"{name:>14}: {walls[name]:7.1f} s  ({queries / walls[name]:.2f} images/s, masks identical to "
              f"threads 1: {identical})", flush=True)
        if not identical:
            raise SystemExit(f"{name} gave other masks than one process")
    out = work / f"{n}-shards"
    walls[f"{n} shards"] = sharded_run(images, tags, out, args.model, n, env)
    identical = same_masks(work / "threads-1", out)
    print(f"{n:>7} shards: {walls[f'{n} shards']:7.1f} s  (masks identical to threads 1: {identical})")
    speedups = {name: round(walls["threads 1"] / wall, 2) for name, wall in walls.items()}
    speedups[f"dask local:{n} over local:1"] = round(walls["dask local:1"] / walls[f"dask local:{n}"], 2)
    print("speed-up over one process, one image at a time: "
          + ", ".join(f"{name} x{s}" for name, s in speedups.items()))
    row = {"benchmark": "scale-out", "queries": queries, "model": args.model, "wall_s": walls, "speedup": speedups,
           **label_speed._context()}
    label_speed._record(args.record, row)  # prints the row too
    return 0


if __name__ == "__main__":
    sys.exit(main())
