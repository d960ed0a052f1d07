"""Would a border check of the tag supports' maps flag the classes whose proposals come out inverted?

Usage::

    python benchmarks/inversion_check.py [--data ../shared/data/msrc_v2] [--episodes 8] [--folds 0,1,2,3]
        [--threshold 0.25] [--record benchmarks/results/inversion-check.jsonl]

The product's own path (``hhn.pipeline.FewShotPipeline.fit`` with the default model, as the engine of
``wfss label`` and the widget calls it) learns a class from two images tagged with it and two tagged
with another class (the engine's negatives), then proposes one more image of the class. An episode is
*inverted* when the proposal overlaps the class's background more than the class (IoU with the
background > IoU with the class, void ignored); it is *flagged* when the median :func:`border_excess` of
the two supports' prior maps (the maps the network is told are the class) is above ``--threshold``. The
check is an experiment (not in the product): this script holds it. Two sets:

- **the sample**: the README's sample folder, classes coin and cat with two tagged images each (the
  route a new user takes); every other image of those classes is a query, scored by eye in the issue
  (no masks ship with the sample), so here only the flag and the proposals' border excess are printed;
- **MSRC-v2 folds**: each fold's novel classes, ``--episodes`` seeded episodes per class, the other
  class of the episode drawn from the same fold.

Prints per set: episodes, inverted, flagged, flagged among inverted (recall), inverted among flagged
(precision), and the border excess of inverted vs other episodes; appends one JSON line to ``--record``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def border_excess(support_map: np.ndarray, band: float = 0.1) -> float:
    """How much more a map covers the image's border band (``band`` x the shorter side) than its interior:
    mean over the band minus mean inside, in [-1, 1]. A photographed object sits inside the frame (about 0
    or below); a map of what surrounds it covers the border."""
    h, w = support_map.shape
    b = max(1, round(band * min(h, w)))
    inside = np.zeros((h, w), bool)
    inside[b:h - b, b:w - b] = True
    if not inside.any() or inside.all():
        return 0.0
    return float(support_map[~inside].mean() - support_map[inside].mean())


def supports_excess(segmenter, supports) -> float:
    """Median :func:`border_excess` of the supports' prior maps under the learnt class's fitted prior."""
    return float(np.median([border_excess(np.asarray(segmenter.prior(s), np.float32)) for s in supports]))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def msrc_episodes(data: Path, folds: list[int], episodes: int):
    """``(fold, class, positives, negatives, query, fg, valid)`` per episode, seeded."""
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
                negs = [negatives[i] for i in rng.permutation(len(negatives))[:2]]
                label = ds.load_label(pos_and_query[2])
                yield (fold, c, [ds.load_image(n) for n in pos_and_query[:2]], [ds.load_image(n) for n in negs],
                       ds.load_image(pos_and_query[2]), label == ds.class_id(c), label != 255)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msrc_v2")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)

    from hhn.pipeline import FewShotPipeline
    from hhn.priors.base import TaggedImage
    from napari_wfss.sample import sample_images

    pipeline = FewShotPipeline.from_model("default", device="cpu")
    t0 = time.perf_counter()

    # the sample: coin and cat, two tagged images each, each the other's negatives
    images = sample_images()
    tagged = {"coin": ["coin_00", "coin_01"], "cat": ["cat_00", "cat_01"]}  # sample images by file stem
    sample = {}
    for c, names in tagged.items():
        negs = [images[n] for other, ns in tagged.items() if other != c for n in ns]
        supports = [TaggedImage(images[n]) for n in names]
        seg = pipeline.fit(c, supports, negs)
        excess = supports_excess(seg, supports)
        queries = [n for n in images if n.startswith(c) and n not in names]
        preds = [seg.predict(images[q]).mask for q in queries]
        sample[c] = {"support_border_excess": round(excess, 3), "flagged": excess > args.threshold,
                     "proposal_border_excess": round(statistics.median(border_excess(p.astype(np.float32))
                                                                       for p in preds), 3)}
        pipeline.forget_images()
    print("sample:", json.dumps(sample))

    rows = []
    for fold, c, pos, negs, query, fg, valid in msrc_episodes(args.data, [int(f) for f in args.folds.split(",")],
                                                              args.episodes):
        supports = [TaggedImage(p) for p in pos]
        seg = pipeline.fit(c, supports, negs)
        excess = supports_excess(seg, supports)
        mask = seg.predict(query).mask
        inverted = _iou(mask & valid, ~fg & valid) > _iou(mask & valid, fg & valid)
        rows.append({"fold": fold, "class": c, "excess": excess, "inverted": bool(inverted),
                     "flagged": excess > args.threshold})
        pipeline.forget_images()
    n = len(rows)
    inv = [r for r in rows if r["inverted"]]
    flagged = [r for r in rows if r["flagged"]]
    both = [r for r in rows if r["inverted"] and r["flagged"]]
    by_class = {}
    for r in rows:
        k = f"{r['fold']}:{r['class']}"
        by_class.setdefault(k, [0, 0, 0])
        by_class[k][0] += 1
        by_class[k][1] += r["inverted"]
        by_class[k][2] += r["flagged"]
    msrc = {"episodes": n, "inverted": len(inv), "flagged": len(flagged), "flagged_and_inverted": len(both),
            "recall": round(len(both) / len(inv), 3) if inv else None,
            "precision": round(len(both) / len(flagged), 3) if flagged else None,
            "median_excess_inverted": round(statistics.median(r["excess"] for r in inv), 3) if inv else None,
            "median_excess_other": round(statistics.median(r["excess"] for r in rows if not r["inverted"]), 3),
            "by_class_episodes_inverted_flagged": by_class}
    print("msrc:", json.dumps(msrc))
    for t in (-0.1, 0.0, 0.1, 0.2, 0.3):
        hit = [r for r in rows if r["excess"] > t]
        tp = sum(r["inverted"] for r in hit)
        print(f"threshold {t:+.1f}: flagged {len(hit)}, of them inverted {tp} (precision "
              f"{tp / max(1, len(hit)):.2f}, recall {tp / max(1, len(inv)):.2f}; inverted base rate "
              f"{len(inv) / n:.2f})")
    row = {"benchmark": "inversion-check", "threshold": args.threshold, "episodes_per_class": args.episodes,
           "sample": sample, "msrc": msrc, "seconds": round(time.perf_counter() - t0, 1),
           "excess_values": [[r["fold"], r["class"], round(r["excess"], 3), r["inverted"]] for r in rows]}
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
