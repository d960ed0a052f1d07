"""Does fine-tuning on accepted masks beat using them as supports? The annotator simulated on MSRC-v2.

Usage::

    python benchmarks/retrain_gain.py [--data ../shared/data/msrc_v2] [--classes cow,sheep,cat,dog,bird]
        [--n 5,10,20] [--model default] [--steps 200] [--threads 2] [--max-queries 0] [--seed 0]
        [--work DIR] [--record benchmarks/results/retrain-gain.jsonl]

For each N, every number from the product's own path:

1. **The annotator's project**: a folder of the MSRC-v2 photos showing one of ``--classes`` (fold 0's novel
   classes by default: the default model never saw them); per class, N photos (seeded choice) are tagged
   and *accepted* with their ground-truth masks (restricted to those classes: everything else is
   background, void stays 255), through :class:`napari_wfss.session.Session` as the widget does. The
   other photos are the queries ("the remaining images of those classes").
2. **Supports only**: the untouched ``--model`` proposes every query with :class:`napari_wfss.engine.Engine`
   (the engine of ``wfss label`` and the widget; accepted masks are its pixel supports, up to its
   ``shots`` = 5 per class).
3. **Fine-tuned**: the accepted images are exported (:func:`napari_wfss.export.export_session`, accepted
   and edited only) and ``wfss train --init MODEL --data EXPORT --out DIR`` runs as a command (the
   product's fine-tuning, its default recipe and early stopping unless ``--steps`` is given); the same
   engine with ``--model DIR`` proposes the same queries.
4. **Scores** over the queries: per-class IoU (intersection and union summed over the queries, void
   pixels ignored, a query's other MSRC classes count as background), mIoU = their mean, FB-IoU = the
   mean of the foreground (any of the classes) and background IoUs.

Prints a table (mIoU / FB-IoU for both, the gain, fine-tuning seconds and steps) and appends one JSON line
per N to ``--record``.
"""

from __future__ import annotations

import argparse
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


def build_project(data, classes: list[str], n: int, seed: int, work: Path, max_queries: int):
    """The simulated annotator's project: (session, queries, ground truth by image name)."""
    from napari_wfss.session import Session

    rng = np.random.default_rng(seed)
    accepted: dict[str, str] = {}
    queries: list[str] = []
    for c in classes:
        members = [m for m in data.images_with(c) if m not in accepted]
        order = [members[int(i)] for i in rng.permutation(len(members))]
        take = min(n, len(order) - 1)  # at least one query per class remains
        accepted.update((m, c) for m in order[:take])
        queries += order[take:]
    queries = sorted(set(queries) - set(accepted))
    if max_queries:
        queries = [queries[int(i)] for i in sorted(rng.permutation(len(queries))[:max_queries])]
    folder = work / "images"
    folder.mkdir(parents=True)
    for name in [*accepted, *queries]:
        src = data.image_path(name)
        os.symlink(src.resolve(), folder / src.name)
    session = Session.create(folder, project_dir=work / "project")
    ids = {c: session.add_class(c).id for c in classes}
    with session.deferred_save():
        for name in accepted:
            rel = data.image_path(name).name
            present = [c for c in classes if c in data.tags(name)]
            session.set_tags(rel, present)
            session.accept(rel, user_mask(data, name, ids))
    session.save()
    return session, [data.image_path(q).name for q in queries], accepted


def user_mask(data, name: str, ids: dict[str, int]) -> np.ndarray:
    """What the annotator accepts: the ground truth of the project's classes (uint8 class ids), void kept."""
    label = data.load_label(name)
    out = np.zeros(label.shape, np.uint8)
    for c, sid in ids.items():
        out[label == data.class_id(c)] = sid
    out[label == 255] = 255
    return out


def propose_and_score(session, queries: list[str], model: str, threads: int, data, classes: list[str]) -> dict:
    """Propose the queries with the product's engine and score them (module docstring, step 4)."""
    from napari_wfss.engine import Engine

    engine = Engine(model=model, threads=threads)
    ids = {c.name: c.id for c in session.classes}
    inter = dict.fromkeys(classes, 0)
    union = dict.fromkeys(classes, 0)
    fb = np.zeros((2, 2))  # [bg, fg] x [intersection, union]
    t0 = time.perf_counter()
    done = 0
    for result in engine.propose(session, images=queries, store=False):
        if result.error is not None:
            raise RuntimeError(f"{result.image}: {result.error}")
        name = Path(result.image).stem
        label = data.load_label(name)
        valid = label != 255
        pred_fg = np.zeros(label.shape, bool)
        gt_fg = np.zeros(label.shape, bool)
        for c in classes:
            pred, gt = result.label_map == ids[c], label == data.class_id(c)
            inter[c] += int((pred & gt & valid).sum())
            union[c] += int(((pred | gt) & valid).sum())
            pred_fg |= pred
            gt_fg |= gt
        for k, (p, g) in enumerate(((~pred_fg, ~gt_fg), (pred_fg, gt_fg))):
            fb[k] += [int((p & g & valid).sum()), int(((p | g) & valid).sum())]
        done += 1
    per_class = {c: inter[c] / union[c] if union[c] else float("nan") for c in classes}
    return {"miou": 100 * float(np.nanmean(list(per_class.values()))),
            "fbiou": 100 * float(np.mean(fb[:, 0] / np.maximum(fb[:, 1], 1))),
            "per_class_iou": {c: round(100 * v, 2) for c, v in per_class.items()},
            "queries": done, "seconds": round(time.perf_counter() - t0, 1)}


def finetune_cli(init: str, export: Path, out: Path, steps: int | None, threads: int, seed: int) -> dict:
    """``wfss train --init`` as a command; returns its JSON summary plus wall seconds."""
    cmd = [sys.executable, "-m", "napari_wfss.cli", "train", "--init", init, "--data", str(export),
           "--out", str(out), "--threads", str(threads), "--seed", str(seed)]
    if steps:
        cmd += ["--steps", str(steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"wfss train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["log_tail"] = proc.stderr.strip().splitlines()[-4:]
    return summary


def main(argv: list[str] | None = None) -> int:
    from hhn.data import open_dataset
    from hhn.device import set_cpu_threads
    from napari_wfss.export import export_session
    from napari_wfss.statuses import ACCEPTED, EDITED

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msrc_v2"))
    p.add_argument("--classes", default="cow,sheep,cat,dog,bird")
    p.add_argument("--n", default="5,10,20", help="accepted images per class, comma-separated")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: wfss train --init's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-queries", type=int, default=0, help="score at most this many queries (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="keep the projects, exports and models here")
    p.add_argument("--record", default=None, help="append one JSON line per N to this file")
    args = p.parse_args(argv)

    set_cpu_threads(args.threads)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    data = open_dataset(args.data)
    base = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wfss-retrain-gain-"))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for n in [int(x) for x in args.n.split(",")]:
        work = base / f"n{n}"
        session, queries, accepted = build_project(data, classes, n, args.seed, work, args.max_queries)
        before = propose_and_score(session, queries, args.model, args.threads, data, classes)
        export = work / "export"
        export_session(session, export, statuses=(ACCEPTED, EDITED), images="link")
        tuned = finetune_cli(args.model, export, work / "model", args.steps, args.threads, args.seed)
        after = propose_and_score(session, queries, str(work / "model"), args.threads, data, classes)
        session.close()
        row = {"n": n, "accepted": len(accepted), "queries": len(queries), "supports_only": before,
               "finetuned": after, "gain_miou": round(after["miou"] - before["miou"], 2),
               "gain_fbiou": round(after["fbiou"] - before["fbiou"], 2), "finetune": tuned,
               "classes": classes, "model": args.model, "seed": args.seed, "commit": commit,
               "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": platform.python_version()},
               "command": " ".join(sys.argv)}
        rows.append(row)
        print(f"N={n}: supports only {before['miou']:.1f} / {before['fbiou']:.1f}, fine-tuned "
              f"{after['miou']:.1f} / {after['fbiou']:.1f} (gain {row['gain_miou']:+.1f} / {row['gain_fbiou']:+.1f}); "
              f"fine-tuning {tuned['wall_seconds']:.0f} s, best step {tuned['best_step']} of {tuned['steps_run']}",
              flush=True)
        if args.record:
            with open(args.record, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| N accepted / class | queries | supports only mIoU / FB-IoU | fine-tuned mIoU / FB-IoU | gain | "
          "fine-tune s (best step / run) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        b, a, t = r["supports_only"], r["finetuned"], r["finetune"]
        print(f"| {r['n']} | {r['queries']} | {b['miou']:.1f} / {b['fbiou']:.1f} | "
              f"{a['miou']:.1f} / {a['fbiou']:.1f} | "
              f"{r['gain_miou']:+.1f} / {r['gain_fbiou']:+.1f} | {t['wall_seconds']:.0f} ({t['best_step']} / "
              f"{t['steps_run']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
