"""Does the "no class present" decision empty the images that show none of the classes, without costing the
images that do? Measured on MSRC-v2 photos through the product's engine.

Usage::

    python benchmarks/empty_decision.py [--data ../shared/data/msrc_v2] [--classes cow,sheep] [--tagged 3]
        [--class-queries 40] [--neither 40] [--negatives 0] [--seeds 0,1] [--threads 2]
        [--min-scores 0,0.75,0.8,0.82,0.85,0.88] [--record benchmarks/results/empty-decision.jsonl]

Per seed:

1. **The project**: a folder of MSRC-v2 photos; per class, ``--tagged`` photos showing it (seeded choice)
   are tagged with it through :class:`napari_wfss.session.Session`, as ``wfss label`` does from a tags CSV.
   ``--negatives`` photos showing none of the classes get a negative tag (``image,-``). The queries:
   ``--class-queries`` other photos showing a class, and ``--neither`` photos showing none (all seeded; MSRC's
   void pixels, 255, are ignored).
2. **One run**: :class:`napari_wfss.engine.Engine` (``"default"``, CPU, ``--threads``) proposes every query
   with the decision off (``min_score=0``).
3. **The decision at each minimum score**: the product's :func:`napari_wfss.engine.decide_no_class` on a
   copy of every result. Reported: the share of neither-photos found with no class (an empty mask), and the
   mIoU over the classes on the photos that show a class (intersection and union summed over those photos;
   a photo's other MSRC classes count as background), against the decision off.

Prints a table per seed and appends one JSON line per seed to ``--record``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_project(data, classes: list[str], args, seed: int, work: Path):
    """The project of step 1: (session, query image names, photos showing a class among them)."""
    from napari_wfss.session import Session

    rng = np.random.default_rng(seed)
    tagged: dict[str, str] = {}
    for c in classes:
        members = [m for m in data.images_with(c) if m not in tagged]
        tagged.update((members[int(i)], c) for i in rng.permutation(len(members))[:args.tagged])
    showing = sorted({m for c in classes for m in data.images_with(c)} - set(tagged))
    showing = sorted(showing[int(i)] for i in rng.permutation(len(showing))[:args.class_queries])
    neither = sorted(n for n in data.names if not data.touches(n) & set(classes))
    picked = [neither[int(i)] for i in rng.permutation(len(neither))[:args.neither + args.negatives]]
    queries, negatives = sorted(picked[:args.neither]) + showing, picked[args.neither:]
    folder = work / "images"
    folder.mkdir(parents=True)
    for name in [*tagged, *negatives, *queries]:
        os.symlink(data.image_path(name).resolve(), folder / data.image_path(name).name)
    session = Session.create(folder, project_dir=work / "project")
    with session.deferred_save():
        for name, c in tagged.items():
            session.tag(data.image_path(name).name, c, add_class=True)
        for name in negatives:
            session.set_no_class(data.image_path(name).name)
    return session, queries, set(showing), tagged, negatives


def score(results, data, classes: list[str], ids: dict[str, int], showing: set[str]) -> dict:
    """mIoU (0-100) over ``classes`` on the photos in ``showing``, and the share (0-100) of the others whose
    result has no class."""
    inter = dict.fromkeys(classes, 0)
    union = dict.fromkeys(classes, 0)
    empty = others = 0
    for result in results:
        name = Path(result.image).stem
        if name not in showing:
            others += 1
            empty += result.no_class
            continue
        label = data.load_label(name)
        valid = label != 255
        for c in classes:
            pred, gt = result.label_map == ids[c], label == data.class_id(c)
            inter[c] += int((pred & gt & valid).sum())
            union[c] += int(((pred | gt) & valid).sum())
    per_class = {c: 100 * inter[c] / union[c] for c in classes if union[c]}
    return {"miou": round(float(np.mean(list(per_class.values()))), 2),
            "per_class_iou": {c: round(v, 2) for c, v in per_class.items()},
            "neither_empty_pct": round(100 * empty / max(others, 1), 1)}


def measure(data, classes: list[str], args, seed: int, work: Path) -> dict:
    """Steps 1-3 for one seed; the row of the record."""
    from napari_wfss.engine import Engine, decide_no_class, plan_run

    session, queries, showing, tagged, negatives = build_project(data, classes, args, seed, work)
    plan = plan_run(session, [data.image_path(q).name for q in queries], shots=5)
    engine = Engine("default", device="cpu", threads=args.threads, min_score=0.0)
    t0 = time.perf_counter()
    results = []
    for result in engine.propose(session, plan=plan, store=False):
        if result.error is not None:
            raise RuntimeError(f"{result.image}: {result.error}")
        results.append(result)
    seconds = time.perf_counter() - t0
    session.close()
    ids = {c.name: c.id for c in plan.classes}
    rows = []
    for min_score in [float(v) for v in args.min_scores.split(",")]:
        decided = [copy.deepcopy(r) for r in results]
        for r in decided:
            decide_no_class(r, min_score, plan.classes)
        rows.append({"min_score": min_score, **score(decided, data, classes, ids, showing)})
    off = rows[0]["miou"]
    for row in rows:
        row["miou_change"] = round(row["miou"] - off, 2)
    return {"seed": seed, "classes": classes, "tagged": tagged, "negatives": negatives,
            "class_queries": len(showing), "neither_queries": len(queries) - len(showing), "rules": rows,
            "propose_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    from hhn.data import open_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msrc_v2"))
    p.add_argument("--classes", default="cow,sheep")
    p.add_argument("--tagged", type=int, default=3, help="photos tagged per class (default: 3)")
    p.add_argument("--class-queries", type=int, default=40, help="query photos showing a class (default: 40)")
    p.add_argument("--neither", type=int, default=40, help="query photos showing none of the classes (default: 40)")
    p.add_argument("--negatives", type=int, default=0, help="photos with a negative tag (default: 0)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-scores", default="0,0.75,0.8,0.82,0.85,0.88",
                   help="minimum class scores to try; the first is the reference (default: 0, the decision off)")
    p.add_argument("--record", default=None, help="append one JSON line per seed to this file")
    args = p.parse_args(argv)

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    data = open_dataset(args.data)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="wfss-empty-decision-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            row = measure(data, classes, args, seed, Path(tmp) / f"seed{seed}")
            row.update(commit=commit, command=" ".join(sys.argv), machine={
                "cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": platform.python_version()})
            print(f"seed {seed}: {row['class_queries']} photos showing {'/'.join(classes)}, {row['neither_queries']} "
                  f"showing neither, {len(row['negatives'])} negative tags; proposed in {row['propose_seconds']} s")
            print("| min score | neither-photos empty | mIoU on class photos | change |\n|---|---|---|---|")
            for r in row["rules"]:
                print(f"| {r['min_score']:g} | {r['neither_empty_pct']:.0f} % | {r['miou']:.1f} | "
                      f"{r['miou_change']:+.1f} |")
            if args.record:
                with open(args.record, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
