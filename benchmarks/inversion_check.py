"""The inversion guard (``hhn.priors.orientation``, a decision rule's ``flip_border``): how often do proposals
come out inverted with and without it, and what does it cost where the class is absent?

Usage::

    python benchmarks/inversion_check.py [--data ../shared/data/msrc_v2] [--episodes 6] [--folds 0,1,2,3]
        [--flip 0.1] [--record benchmarks/results/inversion-check.jsonl]

The product's own path (``hhn.pipeline.FewShotPipeline.fit`` with the default model, as the engine of
``wfss label`` and the widget calls it) learns a class from two images tagged with it and two tagged
with another class (the engine's negatives), then proposes one more image of the class and one image of
the other class (where every marked pixel is wrong). Each episode runs twice: the model's rule without the
guard and with ``flip_border`` = ``--flip``. An episode is *inverted* when the proposal overlaps the class's
background more than the class (IoU with the background > IoU with the class, void ignored). Two sets:

- **the sample**: the README's sample folder, classes coin and cat with two tagged images each (the
  route a new user takes); no masks ship with the sample, so per class the share of each query marked
  (its own class's images, and the other images) is printed, and whether the guard flipped the class;
- **MSRC-v2 folds**: each fold's novel classes, ``--episodes`` seeded episodes per class, the other
  class of the episode drawn from the same fold.

Prints per set and guard setting: episodes, inverted, mean IoU, mean share of the absent-class image
marked; appends one JSON line to ``--record``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def msrc_episodes(data: Path, folds: list[int], episodes: int):
    """``(fold, class, positives, negatives, query, fg, valid, absent)`` per episode, seeded (``absent``: one
    more image of the other class without the episode class, None when there is none)."""
    from hhn.data.generic import GenericDataset

    ds = GenericDataset(data)
    table = json.loads((ROOT / "src_model" / "hhn" / "data" / "msrc_folds.json").read_text())
    for fold in folds:
        classes = table["folds"][fold]
        for ci, c in enumerate(classes):
            rng = np.random.default_rng([fold, ci])
            members = list(ds.images_with(c))
            others = [o for o in classes if o != c]
            for _ in range(episodes):
                pos_and_query = [members[i] for i in rng.permutation(len(members))[:3]]
                other = others[int(rng.integers(len(others)))]
                negatives = [n for n in ds.images_with(other) if n not in members]
                negs = [negatives[i] for i in rng.permutation(len(negatives))[:3]]
                label = ds.load_label(pos_and_query[2])
                yield (fold, c, [ds.load_image(n) for n in pos_and_query[:2]], [ds.load_image(n) for n in negs[:2]],
                       ds.load_image(pos_and_query[2]), label == ds.class_id(c), label != 255,
                       ds.load_image(negs[2]) if len(negs) > 2 else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msrc_v2")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--flip", type=float, default=0.1, help="the guard's flip_border (default: 0.1)")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)

    from hhn.factory import create_model
    from hhn.pipeline import FewShotPipeline
    from hhn.priors.base import TaggedImage
    from napari_wfss.sample import sample_images

    model = create_model("default", device="cpu")
    own = model.config.decision
    settings = {"off": dataclasses.replace(own, flip_border=None),
                "on": dataclasses.replace(own, flip_border=args.flip)}
    pipelines = {k: FewShotPipeline.from_model(model, device="cpu", decision=r) for k, r in settings.items()}
    t0 = time.perf_counter()

    # the sample: coin and cat, two tagged images each, each the other's negatives
    images = sample_images()
    tagged = {"coin": ["coin_00", "coin_01"], "cat": ["cat_00", "cat_01"]}  # sample images by file stem
    sample: dict = {}
    for key, pipeline in pipelines.items():
        for c, names in tagged.items():
            negs = [images[n] for other, ns in tagged.items() if other != c for n in ns]
            seg = pipeline.fit(c, [TaggedImage(images[n]) for n in names], negs)
            shares = {q: round(float(seg.predict(images[q]).mask.mean()), 3) for q in images
                      if q not in names and not any(q in ns for ns in tagged.values())}
            own_images = [v for q, v in shares.items() if q.startswith(c)]
            others = [v for q, v in shares.items() if not q.startswith(c)]
            sample.setdefault(c, {})[key] = {
                "flipped": bool(seg.orientation is not None and seg.orientation.flipped),
                "border_excess": None if seg.orientation is None else round(seg.orientation.border_excess, 3),
                "share_marked_own_images": round(float(np.mean(own_images)), 3),
                "share_marked_other_images": round(float(np.mean(others)), 3), "shares": shares}
            pipeline.forget_images()
    print("sample:", json.dumps({c: {k: {n: v for n, v in r.items() if n != "shares"} for k, r in d.items()}
                                 for c, d in sample.items()}))

    rows = []
    for fold, c, pos, negs, query, fg, valid, absent in msrc_episodes(
            args.data, [int(f) for f in args.folds.split(",")], args.episodes):
        row: dict = {"fold": fold, "class": c}
        for key, pipeline in pipelines.items():
            seg = pipeline.fit(c, [TaggedImage(p) for p in pos], negs)
            mask = seg.predict(query).mask
            row[key] = {"iou": _iou(mask & valid, fg & valid),
                        "inverted": _iou(mask & valid, ~fg & valid) > _iou(mask & valid, fg & valid),
                        "absent_marked": None if absent is None else float(seg.predict(absent).mask.mean()),
                        "flipped": bool(seg.orientation is not None and seg.orientation.flipped)}
            pipeline.forget_images()
        rows.append(row)
    msrc = {}
    for key in settings:
        msrc[key] = {"episodes": len(rows), "inverted": sum(r[key]["inverted"] for r in rows),
                     "flipped": sum(r[key]["flipped"] for r in rows),
                     "mean_iou": round(100 * float(np.mean([r[key]["iou"] for r in rows])), 2),
                     "absent_marked": round(float(np.mean([r[key]["absent_marked"] for r in rows
                                                            if r[key]["absent_marked"] is not None])), 3),
                     "absent_images": sum(r[key]["absent_marked"] is not None for r in rows)}
    changed = [r for r in rows if r["on"]["flipped"]]
    msrc["flipped_episodes"] = [[r["fold"], r["class"], round(r["off"]["iou"], 3), round(r["on"]["iou"], 3),
                                 r["off"]["absent_marked"], r["on"]["absent_marked"]]
                                for r in changed]
    for key in settings:
        print(f"msrc guard {key:3s}: " + json.dumps(msrc[key]))
    print("flipped episodes [fold, class, IoU off, IoU on, absent marked off, on]:", msrc["flipped_episodes"])
    row = {"benchmark": "inversion-guard", "flip_border": args.flip, "episodes_per_class": args.episodes,
           "folds": args.folds, "sample": sample, "msrc": msrc, "seconds": round(time.perf_counter() - t0, 1)}
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
