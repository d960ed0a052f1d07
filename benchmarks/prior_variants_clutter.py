"""Why does the co-segmentation tag prior fail on the clutter scenes (``benchmarks/clutter_scenes.py``), and
which variant of it (constructor arguments, or a small subclass here: no product change) helps without
losing on MSRC?

Usage (one thread; outputs under ``--out``, default /tmp/prior-variants)::

    python benchmarks/prior_variants_clutter.py diagnose [--seed 0] [--queries 4]
    python benchmarks/prior_variants_clutter.py screen --variants shipped,abs-cut,... [--seed 0] [--queries 30]
    python benchmarks/prior_variants_clutter.py engine --variants shipped,best [--seed 0] [--queries 60]
    python benchmarks/prior_variants_clutter.py msrc --variants best [--episodes 150]
    python benchmarks/prior_variants_clutter.py record   # appends the collected rows to the jsonl record

``screen`` fits each class's prior on exactly the positives and negatives ``napari_wfss.engine.plan_run``
gives (the tagged composites) and labels the queries with the engine's ``resolve_label_map`` at 0.5 on the
raw prior maps: what ``Engine(prior=..., decision=DecisionRule(prior_weight=1.0, threshold=0.5))`` does
(5 identical shots vote to the same mask), without the network pass. ``engine`` runs the real engine.
``msrc`` runs ``wfss eval --method prior --support tags`` (fold 0, 1 shot, seed 1) with the variant swapped
in for ``hhn.priors.catalog.build_tag_prior`` (same sampler, same episodes, same scoring).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import clutter_scenes as cs  # noqa: E402

OUT = Path("/tmp/prior-variants")
MSRC = ROOT.parent / "shared" / "data" / "msrc_v2"
MSRC_CACHE = Path("/work/cache/msrc")

# name -> settings. size: DenseFeatures input side (list: MeanPrior over sizes); cut: the first pass's cut
# ("otsu": shipped; "zero": log-ratio > 0; "max": max(otsu, 0)); the rest: CosegPrior arguments.
BASE = {"size": 320, "tap_weights": (1.0, 1.0, 2.0), "bank_pool": 4, "top_k": 5, "refine": True, "self_support": True,
            "temperature": 0.03, "contrast": "ratio", "cut": "otsu"}
VARIANTS: dict[str, dict] = {
    "shipped": {},
    "taps111": {"tap_weights": (1.0, 1.0, 1.0)},
    "taps11h": {"tap_weights": (1.0, 1.0, 0.5)},
    "taps110": {"tap_weights": (1.0, 1.0, 0.0)},
    "taps121": {"tap_weights": (1.0, 2.0, 1.0)},
    "pool2": {"bank_pool": 2},
    "pool1": {"bank_pool": 1},
    "cut0": {"cut": "zero"},
    "cutmax": {"cut": "max"},
    "top10": {"cut": "top10"},
    "top20": {"cut": "top20"},
    "noself": {"self_support": False},
    "topk1": {"top_k": 1},
    "topk10": {"top_k": 10},
    "s448": {"size": 448},
    "s576": {"size": 576},
    "ms": {"size": (320, 448, 576)},
    "norefine": {"refine": False},
    "norefine-cutmax": {"refine": False, "cut": "max"},
}


def settings(name: str) -> dict:
    """A variant's full settings; composite names join variants with '+' (e.g. 'pool2+cutmax')."""
    out = dict(BASE)
    for part in name.split("+"):
        out.update(VARIANTS[part])
    return out


def build_prior(name: str, cache_dir: Path | None = None):
    """The ``TagPrior`` of a variant (``cache_dir``: DenseFeatures' disk cache)."""
    import torch

    from hhn.priors.coseg import CosegClassPrior, CosegPrior, otsu
    from hhn.priors.ensemble import MeanPrior
    from hhn.priors.features import DenseFeatures

    s = settings(name)

    def first_cut(scores: torch.Tensor) -> float:
        if s["cut"] == "otsu":
            return otsu(scores)
        if s["cut"] == "zero":
            return 0.0
        if s["cut"].startswith("top"):  # keep the top N % of the cells
            return float(torch.quantile(scores.float(), 1 - int(s["cut"][3:]) / 100))
        return max(otsu(scores), 0.0)

    class VariantClassPrior(CosegClassPrior):
        """The shipped class prior with another first-pass cut (banks, and the query when not refined)."""

        def _bank_split(self):
            if self._banks is None:
                fg, bg = [], [(n.key, n.cells) for n in self.negatives]
                for p in self.positives:
                    if p.fg is not None:
                        inside = p.fg > 0.5
                    else:
                        sc = self._first_pass(p.cells, p.key)
                        inside = sc > first_cut(sc)
                    fg.append((p.key, p.cells[inside]))
                    bg.append((p.key, p.cells[~inside]))
                self._banks = (fg, bg)
            return self._banks

        def scores(self, pixels):
            from hhn.priors.features import image_key

            desc = self.owner.descriptors(pixels)
            grid = (desc.shape[-2], desc.shape[-1])
            cells = desc.flatten(1).T.contiguous()
            key = image_key(pixels)
            sc = self._second_pass(cells, key) if self.owner.refine else None
            cut = 0.0
            if sc is None:
                sc = self._first_pass(cells, key)
                cut = first_cut(sc)
            if self.owner.self_support:
                own = self._self_support(cells, sc > cut)
                if own is not None:
                    sc, cut = own, 0.0
            return sc.view(grid), cut

    class VariantPrior(CosegPrior):
        def fit(self, class_name, positives, negatives=()):
            from hhn.priors.base import as_tagged

            pos = [self._example(as_tagged(p)) for p in positives]
            neg = [self._example(as_tagged(n)) for n in negatives]
            return VariantClassPrior(class_name, self, pos, neg)

    sizes = s["size"] if isinstance(s["size"], (list, tuple)) else [s["size"]]
    members = []
    for size in sizes:
        cache = cache_dir if (cache_dir is not None and size == 320) else (OUT / "taps" if size != 320 else None)
        feats = DenseFeatures(size=size, device="cpu", cache_dir=cache)
        kw = {k: s[k] for k in ("tap_weights", "bank_pool", "top_k", "refine", "self_support", "temperature",
                                "contrast")}
        members.append((CosegPrior if s["cut"] == "otsu" else VariantPrior)(features=feats, **kw))
    return members[0] if len(members) == 1 else MeanPrior(members)


# ============================================================================================ clutter


def load(seed: int):
    from hhn.data import open_dataset

    data = open_dataset(MSRC)
    scenes, folder, _ = cs.scenes_for(data, MSRC, cs.SceneOptions(), seed, ROOT.parent / "cache" / "clutter-scenes")
    return scenes, folder


def session_plan(scenes, folder: Path, tmp: Path, queries: int):
    from napari_wfss.engine import plan_run

    session = cs.make_session(scenes, folder / "images", tmp / "tags", "tags")
    names = sorted(s.file for s in scenes if s.split == cs.QUERY)[:queries]
    return session, plan_run(session, names, shots=5)


def score_maps(maps: dict[str, np.ndarray], scenes) -> dict:
    truth = {s.file: s.label for s in scenes if s.split == cs.QUERY}
    board = cs.Scoreboard(cs.CLASSES)
    for name, label in maps.items():
        board.update(label, truth[name])
    out = board.summary()
    out["all_fg"] = {k: board.all_foreground()[k] for k in ("miou", "fbiou")}
    out["mean_precision"] = round(float(np.mean([v or 0.0 for v in out["precision"].values()])), 4)
    return out


def frame_labelled(maps: dict[str, np.ndarray]) -> float:
    return round(float(np.mean([np.mean(m > 0) for m in maps.values()])), 4)


def run_direct(name: str, scenes, session, plan) -> tuple[dict[str, np.ndarray], float]:
    """Query -> label map from the prior alone (what the engine does at prior_weight 1, threshold 0.5)."""
    from hhn.priors.base import TaggedImage
    from napari_wfss.engine import resolve_label_map

    t0 = time.perf_counter()
    prior = build_prior(name)
    pixels = {rel: session.read_image(rel) for c in plan.classes for rel in (*c.positives, *c.negatives)}
    fitted = [prior.fit(c.name, [TaggedImage(pixels[r]) for r in c.positives], [pixels[r] for r in c.negatives])
              for c in plan.classes]
    out = {}
    for rel in plan.queries:
        image = session.read_image(rel)
        label, _ = resolve_label_map([f(image) for f in fitted], [c.id for c in plan.classes], 0.5)
        out[Path(rel).name] = cs._to_indices(label, plan)
    return out, time.perf_counter() - t0


def run_engine(name: str, scenes, session, plan) -> tuple[dict[str, np.ndarray], float]:
    from hhn.config import DecisionRule
    from napari_wfss.engine import Engine

    engine = Engine("default", device="cpu", threads=1, shots=5, prior=build_prior(name),
                    decision=DecisionRule(prior_weight=1.0, threshold=0.5))
    t0 = time.perf_counter()
    maps = cs.propose_engine(engine, session, plan)
    return maps, time.perf_counter() - t0


def cmd_screen(args, engine: bool) -> None:
    scenes, folder = load(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="prior-variants-") as tmp:
        session, plan = session_plan(scenes, folder, Path(tmp), args.queries)
        try:
            for name in args.variants.split(","):
                maps, seconds = (run_engine if engine else run_direct)(name, scenes, session, plan)
                r = score_maps(maps, scenes)
                row = {"kind": "clutter-engine" if engine else "clutter-direct", "variant": name,
                       "settings": settings(name), "seed": args.seed, "queries": len(maps),
                       "miou": r["miou"], "fbiou": r["fbiou"], "mean_precision": r["mean_precision"],
                       "frame_labelled": frame_labelled(maps), "iou": r["iou"], "precision": r["precision"],
                       "predicted_fraction": r["predicted_fraction"], "all_fg": r["all_fg"],
                       "seconds": round(seconds, 1)}
                results.append(row)
                print(f"{name:28s} mIoU {row['miou']:5.2f} FB {row['fbiou']:5.2f} prec {row['mean_precision']:.3f} "
                      f"labelled {row['frame_labelled']:.3f}  (all-fg {r['all_fg']['miou']:.2f}/"
                      f"{r['all_fg']['fbiou']:.2f})  {seconds:.0f}s", flush=True)
                with open(OUT / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
        finally:
            session.close()


# ============================================================================================ diagnosis


def cmd_diagnose(args) -> None:
    """Per class: bank purity on the tagged composites; per query: share of the frame each stage marks and
    how much of it is the class; PNGs of image / truth / first-pass / second-pass / final maps."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from hhn.priors.base import TaggedImage
    from hhn.priors.coseg import otsu
    from hhn.priors.features import image_key

    scenes, folder = load(args.seed)
    by_file = {s.file: s for s in scenes}
    colours = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
                       np.uint8)
    report: dict = {"variants": {}}
    with tempfile.TemporaryDirectory(prefix="prior-variants-") as tmp:
        session, plan = session_plan(scenes, folder, Path(tmp), 60)
        try:
            for name in args.variants.split(","):
                prior = build_prior(name)
                pixels = {r: session.read_image(r) for c in plan.classes for r in (*c.positives, *c.negatives)}
                rep = {"banks": {}, "queries": {}}
                fitted = {}
                for c in plan.classes:
                    ci = cs.CLASSES.index(c.name) + 1
                    fp = prior.fit(c.name, [TaggedImage(pixels[r]) for r in c.positives],
                                   [pixels[r] for r in c.negatives])
                    fitted[c.name] = fp
                    fg_bank, _ = fp._bank_split()
                    # bank purity: class share of each positive's bank cells (label pooled to the bank grid)
                    purity, share_img, n_fg, n_pure, obj_frac, fp1 = [], [], 0, 0, [], []
                    for rel, _bank in zip(c.positives, fg_bank):
                        lab = by_file[Path(rel).name].label
                        g = int(round(np.sqrt(fp.positives[c.positives.index(rel)].cells.shape[0])))
                        t = torch.from_numpy((lab == ci).astype(np.float32))[None, None]
                        pooled = F.adaptive_avg_pool2d(t, (g, g))[0, 0].flatten()
                        p = fp.positives[c.positives.index(rel)]
                        s1 = fp._first_pass(p.cells, p.key)
                        cut_name = settings(name)["cut"]
                        inside = s1 > ({"otsu": otsu(s1), "zero": 0.0, "max": max(otsu(s1), 0.0)}[cut_name]
                                       if not cut_name.startswith("top") else
                                       float(torch.quantile(s1, 1 - int(cut_name[3:]) / 100)))
                        n_fg += int(inside.sum())
                        n_pure += int((pooled[inside] > 0.5).sum())
                        purity.append(float(pooled[inside].mean()) if inside.any() else float("nan"))
                        share_img.append(float(inside.float().mean()))
                        obj_frac.append(float((lab == ci).mean()))
                        fp1.append(float((s1 > 0).float().mean()))
                    rep["banks"][c.name] = {
                        "positives": len(c.positives), "negatives": len(c.negatives),
                        "fg_bank_share_of_positive": round(float(np.mean(share_img)), 3),
                        "class_share_of_positive": round(float(np.mean(obj_frac)), 3),
                        "mean_class_share_in_fg_bank_cells": round(float(np.nanmean(purity)), 3),
                        "fg_bank_cells": n_fg, "fg_bank_cells_mostly_class": n_pure,
                        "first_pass_logratio_gt0_share": round(float(np.mean(fp1)), 3)}
                for rel in plan.queries[:args.queries]:
                    sc = by_file[Path(rel).name]
                    image = session.read_image(rel)
                    desc = prior.descriptors(image)
                    g = desc.shape[-1]
                    cells = desc.flatten(1).T.contiguous()
                    key = image_key(image)
                    qrep = {}
                    panels = [image, colours[sc.label]]
                    for c in plan.classes:
                        ci = cs.CLASSES.index(c.name) + 1
                        fp = fitted[c.name]
                        s1 = fp._first_pass(cells, key)
                        o = otsu(s1)
                        s2 = fp._second_pass(cells, key)
                        fin = fp(image)
                        t = torch.from_numpy((sc.label == ci).astype(np.float32))[None, None]
                        pooled = F.adaptive_avg_pool2d(t, (g, g))[0, 0].flatten()
                        truth_share = float((sc.label == ci).mean())

                        def stats(mask, pooled=pooled):
                            m = mask.flatten()
                            return {"share": round(float(m.float().mean()), 3),
                                    "recall": round(float((pooled * m).sum() / max(pooled.sum(), 1e-6)), 3),
                                    "precision": round(float((pooled * m).sum() / max(m.sum(), 1)), 3)}

                        qrep[c.name] = {"present": c.name in sc.classes, "truth_share": round(truth_share, 4),
                                        "first_otsu": stats(s1 > o), "first_gt0": stats(s1 > 0),
                                        "otsu_cut": round(o, 3),
                                        "second_gt0": stats(s2 > 0) if s2 is not None else None,
                                        "final_share": round(float((fin > 0.5).mean()), 3)}
                        if c.name in sc.classes:
                            def up(m, g=g, size=image.shape[1::-1]):
                                picture = Image.fromarray((m.view(g, g).numpy() * 255).astype(np.uint8))
                                return np.asarray(picture.resize(size, Image.NEAREST))
                            s1n = (s1 - s1.min()) / max(float(s1.max() - s1.min()), 1e-6)
                            row = [np.stack([up(s1n)] * 3, -1), np.stack([up((s1 > o).float())] * 3, -1),
                                   np.stack([up((s2 > 0).float())] * 3, -1) if s2 is not None else image * 0,
                                   np.stack([(fin * 255).astype(np.uint8)] * 3, -1)]
                            panels += row
                    rep["queries"][Path(rel).name] = qrep
                    # one PNG: image, truth, then per present class: s1 heat, s1>otsu, s2>0, final map
                    h, w = image.shape[:2]
                    tiles = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in panels]
                    top = np.concatenate(tiles[:2] + [np.zeros_like(image)] * 2, axis=1)
                    rows = [top] + [np.concatenate(tiles[2 + 4 * k:6 + 4 * k], axis=1)
                                    for k in range((len(tiles) - 2) // 4)]
                    Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(
                        OUT / f"diag_{name}_{Path(rel).stem}_{'-'.join(sc.classes)}.png")
                report["variants"][name] = rep
                print(json.dumps({name: rep["banks"]}, indent=1))
                q = rep["queries"]
                for stage in ("first_otsu", "first_gt0", "second_gt0"):
                    for present in (True, False):
                        vals = [v[stage] for qq in q.values() for v in qq.values()
                                if v["present"] == present and v[stage] is not None]
                        print(f"  {stage:10s} present={present!s:5s} share {np.mean([v['share'] for v in vals]):.3f}"
                              f" precision {np.mean([v['precision'] for v in vals]):.3f}"
                              f" recall {np.mean([v['recall'] for v in vals]):.3f}")
                for present in (True, False):
                    vals = [v for qq in q.values() for v in qq.values() if v["present"] == present]
                    print(f"  final      present={present!s:5s} share {np.mean([v['final_share'] for v in vals]):.3f}"
                          f"  truth {np.mean([v['truth_share'] for v in vals]):.3f}")
        finally:
            session.close()
    (OUT / f"diagnosis_seed{args.seed}.json").write_text(json.dumps(report, indent=1))


# ============================================================================================ MSRC


def cmd_msrc(args) -> None:
    import hhn.priors.catalog as catalog
    from napari_wfss.cli import build_parser

    for name in args.variants.split(","):
        argv = ["eval", "--data", str(MSRC), "--fold", "0", "--method", "prior", "--shots", "1", "--episodes",
                str(args.episodes), "--seed", "1", "--json", "--support", "tags", "--threads", "1",
                "--cache-dir", str(MSRC_CACHE)]
        ns = build_parser().parse_args(argv)
        original = catalog.build_tag_prior
        catalog.build_tag_prior = lambda *a, _n=name, **k: build_prior(_n, cache_dir=MSRC_CACHE)
        import contextlib
        import io

        from hhn.evaluation.cli import run_eval_cli

        buf = io.StringIO()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(buf):
                run_eval_cli(ns)
        finally:
            catalog.build_tag_prior = original
        res = json.loads(buf.getvalue().strip().splitlines()[-1])
        row = {"kind": "msrc-fold0", "variant": name, "settings": settings(name), "episodes": args.episodes,
               "miou": round(res["miou"], 2), "fbiou": round(res["fbiou"], 2), "per_class": res["per_class"],
               "seconds": round(time.perf_counter() - t0, 1), "command": "wfss eval " + " ".join(argv[1:])}
        print(f"{name:28s} MSRC fold0 mIoU {row['miou']:.2f} FB {row['fbiou']:.2f}  {row['seconds']:.0f}s", flush=True)
        with open(OUT / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def cmd_record(args) -> None:
    import subprocess

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = [json.loads(line) for line in (OUT / "rows.jsonl").read_text().splitlines() if line.strip()]
    with open(ROOT / "benchmarks" / "results" / "prior-variants-clutter.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "commit": commit, "script": "benchmarks/prior_variants_clutter.py"}) + "\n")
    print(f"{len(rows)} rows recorded")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("diagnose", "screen", "engine", "msrc", "record"))
    p.add_argument("--variants", default="shipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    from hhn.device import set_cpu_threads

    set_cpu_threads(args.threads)
    {"diagnose": cmd_diagnose, "screen": lambda a: cmd_screen(a, False), "engine": lambda a: cmd_screen(a, True),
     "msrc": cmd_msrc, "record": cmd_record}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
