"""Inference-time variants of the tag path, scored on development episodes (none is shipped).

Usage::

    python benchmarks/inference_variants.py --fold 0 --seed 1 --episodes 150 [--model default] \\
        [--refit-prior] [--cache-dir runs/features]

MSRC-v2, 1-shot, ``tags`` supports, the ``wfss eval`` protocol (3 extra positives, 3 context negatives)
and the shipped model's decision rule. Prints one JSON line per row (mIoU, FB-IoU, per-class IoU):

- ``prior`` / ``prior-trim-snap``: the tag prior alone at 0.5, raw and trimmed and snapped like the rule
  (rows a and a++ of the model card), always;
- with ``--model`` (a model trained without the fold's classes): ``hhn`` (the shipped rule, row c),
  ``hhn-support-refined`` (each support's tag prior thresholded, trimmed and snapped like a query's mask
  before it is encoded), ``hhn-flip`` (the network's logits averaged with those of the left-right
  flipped query) and ``hhn-support-refined-flip`` (both);
- with ``--refit-prior`` every row uses a refitted co-segmentation prior instead: fitted once, each
  positive's map thresholded, trimmed and snapped, then fitted again with those masks as the
  positives' masks (which then are their priors), and only ``prior``, ``prior-trim-snap`` and ``hhn``
  are scored.

Results: the model card's "Inference-time variants" section. The refined supports measured here describe
the supports with the prior's own 320-pixel features; the product's option (``--decision ...,supports:refined``,
``hhn.predictor.Predictor.support_map``) uses the network's taps, and is scored on every fold in the card's
section "Refined tag supports on every fold".
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hhn.config import load_preset
from hhn.data import open_dataset, resolve_test_classes
from hhn.data.episodes import EpisodeSampler
from hhn.device import select_device, set_cpu_threads
from hhn.evaluation.methods import HHNMethod, MethodInputs, PriorOnly
from hhn.evaluation.runner import evaluate
from hhn.pipeline import FewShotPipeline
from hhn.priors.base import ClassPrior, TaggedImage, TagPrior, as_tagged
from hhn.priors.catalog import build_tag_prior
from hhn.priors.features import DenseFeatures
from hhn.refine import refine_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc_v2"


class Refiner:
    """A tag prior's map -> float32 {0, 1} mask: thresholded at 0.5, trimmed to the image's own
    appearance (``features`` with the rule's trim tap weights) and snapped to its edges (the rule's band)."""

    def __init__(self, features: DenseFeatures, trim: tuple[float, ...], snap: float) -> None:
        self.features, self.trim, self.snap = features, trim, snap

    def __call__(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        mask, _ = refine_mask(torch.from_numpy(prior > ClassPrior.threshold), image, partial(self.features, image),
                              self.trim, self.snap)
        return mask.numpy().astype(np.float32)


class RefittedClassPrior(ClassPrior):
    """The second fit's prior; a positive of the fit (the same pixel array) maps to its refined mask."""

    def __init__(self, second: ClassPrior, refined: list[tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__(second.class_name)
        self.second, self.refined = second, refined

    def _map(self, pixels: np.ndarray) -> np.ndarray:
        for known, mask in self.refined:
            if known is pixels:
                return mask
        return self.second(pixels)


class RefittedPrior(TagPrior):
    """Fit ``base``, refine each positive without a user mask, fit ``base`` again on those masks (a
    positive whose refined mask is empty stays without one)."""

    name = "coseg-refit"

    def __init__(self, base: TagPrior, refine: Refiner) -> None:
        self.base, self.refine = base, refine

    def fit(self, class_name, positives, negatives=()):
        positives = [as_tagged(p) for p in positives]
        first = self.base.fit(class_name, positives, negatives)
        relabelled, refined = [], []
        for p in positives:
            mask = self.refine(p.pixels, first(p)) if p.mask is None else None
            if mask is not None and mask.any():
                relabelled.append(TaggedImage(p.pixels, mask))
                refined.append((p.pixels, mask))
            else:
                relabelled.append(p)
        return RefittedClassPrior(self.base.fit(class_name, relabelled, negatives), refined)


class Variant(HHNMethod):
    """The shipped rule with refined support priors and/or the flipped query averaged in (at least one),
    through the product's pipeline: refined supports enter ``FewShotPipeline.encode_class`` as given masks."""

    def __init__(self, pipeline: FewShotPipeline, refine: Refiner | None, flip: bool) -> None:
        super().__init__(pipeline)
        self.refine, self.flip = refine, flip
        self.name = "hhn" + ("-support-refined" if refine else "") + ("-flip" if flip else "")

    def predict(self, inputs: MethodInputs) -> np.ndarray:
        self.pipeline.forget_images()
        supports = [TaggedImage(im, self.refine(im, inputs.class_prior(im)) if self.refine else None)
                    for im in inputs.support_images]
        segmenter = self.pipeline.encode_class(inputs.class_name, inputs.class_prior, supports)
        scored, = segmenter.logits([inputs.query_image], [inputs.query_prior])
        if self.flip:
            mirrored, = segmenter.logits([np.ascontiguousarray(inputs.query_image[:, ::-1])],
                                         [np.ascontiguousarray(inputs.query_prior[:, ::-1])])
            scored = scored._replace(logits=0.5 * (scored.logits + mirrored.logits.flip(-1)))
        return segmenter.decide(scored).mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--model", default=None, help="a model trained without the fold's classes")
    parser.add_argument("--refit-prior", action="store_true")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    set_cpu_threads(1)
    device = select_device("cpu")
    dataset = open_dataset(args.data)
    classes = resolve_test_classes(dataset, args.data, None, args.fold)
    sampler = EpisodeSampler(dataset, classes=classes, shots=1, seed=args.seed, prior_positives=3,
                             prior_negatives=3, negatives="context")
    torch.manual_seed(args.seed)
    features = DenseFeatures(device=device, cache_dir=args.cache_dir)
    pipeline = FewShotPipeline.from_model(args.model, device=device) if args.model else None
    rule = pipeline.rule if pipeline is not None else load_preset("wfss-lite0").decision
    refine = Refiner(features, rule.trim, rule.snap)
    prior = build_tag_prior("coseg", device=device, cache_dir=args.cache_dir, vocabulary=dataset.classes,
                            reuse=lambda own: features if own.size == features.size else None)
    if args.refit_prior:
        prior = RefittedPrior(prior, refine)
    methods = [PriorOnly(features), PriorOnly(features, rule.trim, rule.snap)]
    names = ["prior", "prior-trim-snap"]
    if pipeline is not None:
        methods.append(HHNMethod(pipeline))  # row c, exactly as ``wfss eval`` scores it
        if not args.refit_prior:
            methods += [Variant(pipeline, r, f) for r, f in ((refine, False), (None, True), (refine, True))]
        names += [m.name for m in methods[2:]]
    results = evaluate(dataset, sampler, methods, args.episodes, supervision="tags", prior=prior)
    for name, result in zip(names, results):
        print(json.dumps({"row": name, "prior": prior.name, "fold": args.fold, "seed": args.seed,
                          "episodes": args.episodes, "miou": round(result["miou"], 2),
                          "fbiou": round(result["fbiou"], 2),
                          "per_class": {c: round(v, 1) for c, v in result["per_class"].items()},
                          "seconds": result["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
