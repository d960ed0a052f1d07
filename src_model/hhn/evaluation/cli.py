"""``wfss eval``: few-shot mIoU / FB-IoU of a method on seeded episodes (spec section 3).

The held-out classes come from ``--test-classes a,b,c`` or ``--fold`` (pascal/coco: the standard fold;
generic: ``<data>/folds.json`` or the packaged MSRC-v2 folds). Methods: ``hhn`` (``--model``), ``prior``
(the tag prior alone), ``map`` (masked-average-pooling prototypes on the frozen backbone) and ``all-fg``.
The tag prior (``--prior``) learns the class from the supports plus ``--prior-positives`` other images
tagged with it and ``--prior-negatives`` images without it (``--negatives context|random``).
Backbone descriptors of each image are computed once per run (``--cache-dir`` keeps them on disk).
"""

from __future__ import annotations

import dataclasses
import json
import sys

from hhn.config import DecisionRule, parse_decision_rule, parse_trim_weights
from hhn.errors import UserError


def _classes_arg(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"eval: {done}/{total} episodes", file=sys.stderr)


def _prior_name(args, scored) -> str:
    """``--prior``, else the model's own ``tag_prior`` (method hhn), else ``coseg``."""
    if args.prior is not None:
        return args.prior
    pipeline = getattr(scored[0], "pipeline", None)
    return (pipeline.predictor.config.tag_prior if pipeline is not None else None) or "coseg"


def _build_methods(args, features, rules: list[DecisionRule | None], trim: tuple[float, ...] | None,
                   snap: float | None) -> list:
    """The methods to score: one (``prior`` / ``map`` refined by ``trim`` and ``snap`` when given), or for
    ``hhn`` one per decision rule (sharing the network's passes)."""
    from hhn.evaluation import methods

    if args.method == "all-fg":
        return [methods.AllForeground()]
    if args.method == "prior":
        return [methods.PriorOnly(features, trim, snap)]
    if args.method == "map":
        return [methods.MaskedAveragePooling(features, trim, snap)]
    from hhn.pipeline import FewShotPipeline

    pipeline = FewShotPipeline.from_model(args.model, device=args.device_obj)
    shared: dict = {}
    return [methods.HHNMethod(pipeline, decision=rule, shared=shared, support=args.support) for rule in rules]


def run_eval_cli(args) -> int:
    """Run ``wfss eval`` from parsed arguments; prints a table, or one JSON object with ``--json`` (one line
    per ``--decision`` when several are given, in their order)."""
    import torch

    from hhn.data import open_dataset, resolve_test_classes
    from hhn.data.episodes import EpisodeSampler
    from hhn.device import select_device, set_cpu_threads
    from hhn.evaluation.runner import evaluate
    from hhn.priors.catalog import build_tag_prior
    from hhn.priors.features import DenseFeatures

    if args.episodes < 1 or args.shots < 1:
        raise UserError("--episodes and --shots must be at least 1")
    if args.decision and args.method != "hhn":
        raise UserError("--decision applies to --method hhn only")
    for flag, value in (("--trim", args.trim), ("--snap", args.snap)):
        if value is not None and args.method not in ("prior", "map"):
            raise UserError(f"{flag} applies to --method prior and map (for hhn: --decision "
                            f"W,T,trim:A/B/C,snap:BAND)")
    trim = parse_trim_weights(args.trim) if args.trim else None
    snap = DecisionRule(snap=args.snap).snap if args.snap is not None else None
    rules: list[DecisionRule | None] = (
        [parse_decision_rule(text) for text in args.decision] if args.decision else [None])  # None: the model's
    set_cpu_threads(args.threads)
    args.device_obj = select_device(args.device)
    dataset = open_dataset(args.data, args.layout, fold=args.fold, min_fraction=args.min_fraction,
                           exclude=_classes_arg(args.exclude))
    classes = resolve_test_classes(dataset, args.data, args.test_classes, args.fold)
    pairs = dataset.select_pairs(dataset.pairs, classes) if hasattr(dataset, "pairs") else None
    sampler = EpisodeSampler(dataset, classes=classes, pairs=pairs, shots=args.shots, seed=args.seed,
                             order=getattr(dataset, "episode_order", "class-uniform"),
                             prior_positives=args.prior_positives, prior_negatives=args.prior_negatives,
                             negatives=args.negatives)
    torch.manual_seed(args.seed)
    features = DenseFeatures(device=args.device_obj, cache_dir=args.cache_dir)
    scored = _build_methods(args, features, rules, trim, snap)
    uses_prior = any(m.needs_query_prior or (args.support == "tags" and m.needs_support_masks) for m in scored)
    prior_name = _prior_name(args, scored) if uses_prior else None
    prior = build_tag_prior(prior_name, device=args.device_obj, cache_dir=args.cache_dir, vocabulary=dataset.classes,
                            reuse=lambda own: features if own.size == features.size else None,
                            objectness=args.objectness) if prior_name else None
    results = evaluate(dataset, sampler, scored, args.episodes, supervision=args.support, prior=prior,
                       progress=None if args.json else _progress)
    for method, result in zip(scored, results):
        result.update(classes=list(sampler.classes), prior=prior_name,
                      prior_positives=args.prior_positives, prior_negatives=args.prior_negatives,
                      negatives=args.negatives)
        if isinstance(getattr(method, "decision", None), DecisionRule):
            result["decision"] = dataclasses.asdict(method.decision)
        if getattr(method, "trim", None) is not None:
            result["trim"] = list(method.trim)
        if getattr(method, "snap", None) is not None:
            result["snap"] = method.snap
        print(json.dumps(result) if args.json else format_table(result))
    return 0


def format_table(result: dict) -> str:
    """Human-readable summary: headline numbers, then IoU / precision / recall per class."""
    head = (f"{result['method']} ({result['support']} supports, {result['shots']}-shot, {result['episodes']} "
            f"episodes, seed {result['seed']}): mIoU {result['miou']:.1f}  FB-IoU {result['fbiou']:.1f}  "
            f"({result['seconds']:.0f} s)")
    lines = [head, f"{'class':<16}{'IoU':>7}{'prec':>7}{'recall':>8}{'episodes':>10}"]
    for c, iou in result["per_class"].items():
        lines.append(f"{c:<16}{iou:>7.1f}{result['precision'][c]:>7.2f}{result['recall'][c]:>8.2f}"
                     f"{result['episodes_per_class'][c]:>10d}")
    return "\n".join(lines)
