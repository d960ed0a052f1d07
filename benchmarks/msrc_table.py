"""The model card's MSRC-v2 table: every (fold, shots, support, method) cell is one ``wfss eval --json`` run.

Usage::

    python benchmarks/msrc_table.py --data ../shared/data/msrc_v2 --results runs/msrc-table.jsonl \\
        [--model 0=default --model 1=runs/lite0-f1/model.safetensors ...] [--episodes 1000] \\
        [--only hhn] [--supports tags] [--shots 1 5] [--folds 0 1 2 3] [--cache-dir runs/features]

Each finished cell is appended to ``--results`` (JSON lines: the exact command and its JSON output), so
an interrupted run resumes where it stopped; ``--render`` prints the markdown table (mIoU / FB-IoU, and
per-class IoU of the model rows) from that file without running anything. The model rows (``hhn``,
``hhn-argmax``, ``prior-trim`` ...) run the model with different ``--decision`` rules (see ``METHODS``).
The folds are the packaged ``hhn/data/msrc_folds.json``. A fold's model row runs only when
``--model FOLD=NAME`` names a model trained without that fold's classes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

#: (row, supports it is defined for); all-fg ignores the support, so it runs once per fold and shots.
#: The model rows differ in the decision rule only (``wfss eval --decision``): ``hhn`` uses the wfss-lite0
#: preset's rule (network softmax blended with the query prior, thresholded, trimmed to the query's own
#: appearance, snapped to its edges), ``hhn-sr`` that rule with the tag supports refined the same way
#: before they are encoded (a candidate, not shipped: see the model card), ``hhn-argmax`` the network
#: alone, ``prior-trim-snap`` / ``prior-trim`` the prior alone at 0.5 with the rule's trim and snap / trim
#: only, and ``prior-at-rule`` without either (prior weight 1: the controls that tell what the network adds);
#: ``map-trim-snap`` / ``map-trim`` refine the MAP baseline the same way. ``hhn-v3`` is the rule before
#: the snap, ``hhn-v2`` before the trim, ``hhn-v1`` / ``prior-at-0.8`` the first rule (weight 0.5,
#: threshold 0.8, chosen on fold 0 alone, rejected by folds 1-2), kept so the record of what was tried
#: stays reproducible.
#: Every row runs with the single-scale ``coseg`` prior (the shipped model's until session 12) except the
#: ``-ms`` rows, which use ``coseg-ms`` (three input sizes; chosen on development episodes, not shipped),
#: and the ``-ratio`` rows, which use ``coseg-ratio`` (the shipped model's prior until ``coseg-objects``,
#: whose cells are recorded apart: ``benchmarks/results/acceptance-recheck.jsonl``; see the model card).
#: ``prior-ratio`` is the prior alone at 0.5 scored on the model's pass (prior weight 1, threshold 0.5).
METHODS = (("prior", ("tags",)), ("prior-at-rule", ("tags",)), ("prior-at-0.8", ("tags",)),
           ("prior-trim", ("tags",)), ("prior-trim-snap", ("tags",)), ("prior-ratio", ("tags",)),
           ("prior-trim-snap-ratio", ("tags",)), ("map", ("tags", "masks")),
           ("map-trim", ("tags", "masks")), ("map-trim-snap", ("tags", "masks")),
           ("hhn-ratio", ("tags", "masks")), ("hhn", ("tags", "masks")), ("hhn-sr", ("tags",)),
           ("hhn-v3", ("tags", "masks")),
           ("hhn-v2", ("tags", "masks")), ("hhn-argmax", ("tags", "masks")), ("hhn-v1", ("tags", "masks")),
           ("prior-ms", ("tags",)), ("prior-trim-snap-ms", ("tags",)), ("hhn-ms", ("tags", "masks")),
           ("all-fg", ("none",)))
LABELS = {"prior": "(a) tag prior alone (coseg), threshold 0.5",
          "prior-at-rule": "(a') tag prior alone, at the rule's threshold (0.6)",
          "prior-at-0.8": "(a'') tag prior alone, threshold 0.8",
          "prior-trim": "(a+) tag prior alone, threshold 0.5, trimmed to the query's own appearance",
          "prior-trim-snap": "(a++) tag prior alone, threshold 0.5, trimmed and snapped like the rule",
          "map": "(b) masked average pooling, Lite0",
          "map-trim": "(b+) masked average pooling, trimmed like the rule (1/0.5/0)",
          "map-trim-snap": "(b++) masked average pooling, trimmed and snapped like the rule",
          "prior-ms": "(a-ms) tag prior alone, coseg-ms (320 + 448 + 576 px), threshold 0.5",
          "prior-trim-snap-ms": "(a++ms) tag prior alone, coseg-ms, threshold 0.5, trimmed and snapped like the rule",
          "hhn-ms": "(c-ms) HHN + decision rule, coseg-ms prior (not shipped)",
          "prior-ratio": "(a-ratio) tag prior alone (coseg-ratio), threshold 0.5",
          "prior-trim-snap-ratio": "(a++ratio) tag prior alone (coseg-ratio), threshold 0.5, trimmed and snapped "
                                   "like the rule",
          "hhn-ratio": "(c-ratio) HHN + decision rule, coseg-ratio prior (shipped before coseg-objects)",
          "hhn": "(c) HHN + decision rule (prior weight 0.5, threshold 0.6, trim 1/0.5/0, snap 0.06), coseg prior",
          "hhn-sr": "(c-sr) HHN + decision rule, tag supports refined like the query's mask (candidate, not shipped)",
          "hhn-v3": "(c') HHN + the rule without its snap (weight 0.5, threshold 0.6, trim 1/0.5/0)",
          "hhn-v2": "(c'') HHN + the rule without trim or snap (weight 0.5, threshold 0.6)",
          "hhn-argmax": "(c''') HHN network alone (argmax)",
          "hhn-v1": "(c-v1) HHN + first rule (weight 0.5, threshold 0.8; rejected)",
          "all-fg": "(d) all pixels foreground"}
MODEL_ROWS = ("hhn", "hhn-sr", "hhn-v3", "hhn-v2", "hhn-argmax", "prior-at-rule", "prior-trim", "prior-trim-snap",
              "hhn-v1", "prior-at-0.8", "hhn-ms", "prior-trim-snap-ms", "hhn-ratio", "prior-ratio",
              "prior-trim-snap-ratio")

#: row-name suffix -> the ``wfss eval --prior`` of that row (rows without a suffix: ``coseg``)
PRIOR_SUFFIXES = {"-ms": "coseg-ms", "-ratio": "coseg-ratio"}


def split_row(row: str) -> tuple[str, str]:
    """A row -> (the row it varies, its ``--prior``): every row names its prior, as a model's own
    default may differ."""
    for suffix, prior in PRIOR_SUFFIXES.items():
        if row.endswith(suffix):
            return row.removesuffix(suffix), prior
    return row, "coseg"


def trim_flag(trim) -> str:
    """Trim tap weights as ``wfss eval`` takes them: ``A/B/C``."""
    return "/".join(f"{w:g}" for w in trim)


def rule_flag(weight: float, threshold: float, trim=None, snap=None, refined: bool = False) -> str:
    """A ``--decision`` value: ``W,T`` then ``,trim:A/B/C``, ``,snap:BAND`` and ``,supports:refined`` when given."""
    text = f"{weight:g},{threshold:g}"
    if trim is not None:
        text += f",trim:{trim_flag(trim)}"
    if snap is not None:
        text += f",snap:{snap:g}"
    return f"{text},supports:refined" if refined else text


def shipped_rule():
    """The decision rule of the wfss-lite0 preset (the shipped model's), which the rows vary."""
    from hhn.config import load_preset

    return load_preset("wfss-lite0").decision


def decision_args(row: str) -> list[str]:
    """The ``--decision`` flag of a model row (variations of :func:`shipped_rule`)."""
    rule = shipped_rule()
    row = split_row(row)[0]
    return ["--decision", {"hhn": rule_flag(rule.prior_weight, rule.threshold, rule.trim, rule.snap),
                           "prior": rule_flag(1, 0.5),
                           "hhn-sr": rule_flag(rule.prior_weight, rule.threshold, rule.trim, rule.snap, True),
                           "hhn-v3": rule_flag(rule.prior_weight, rule.threshold, rule.trim),
                           "hhn-v2": rule_flag(rule.prior_weight, rule.threshold),
                           "hhn-argmax": "argmax",
                           "prior-at-rule": rule_flag(1, rule.threshold),
                           "prior-trim": rule_flag(1, 0.5, rule.trim),
                           "prior-trim-snap": rule_flag(1, 0.5, rule.trim, rule.snap),
                           "hhn-v1": "0.5,0.8",
                           "prior-at-0.8": "1,0.8"}[row]]


def cell_command(args, fold: int, shots: int, support: str, rows: list[str]) -> list[str] | None:
    """The ``wfss eval`` command of some cells of one column and support: one baseline row, or model rows
    (several decision rules scored on one network pass, one JSON line each); None when the fold has no
    model."""
    runs_model = rows[0] in MODEL_ROWS
    base = split_row(rows[0])[0]
    method = "hhn" if runs_model else {"map-trim": "map", "map-trim-snap": "map"}.get(base, base)
    cmd = ["wfss", "eval", "--data", str(args.data), "--fold", str(fold), "--method",
           method, "--shots", str(shots), "--episodes", str(args.episodes), "--seed", "0", "--json"]
    if rows[0] in ("map-trim", "map-trim-snap"):  # the baseline with the shipped rule's trim (and snap)
        rule = shipped_rule()
        cmd += ["--trim", trim_flag(rule.trim)]
        if rows[0] == "map-trim-snap":
            cmd += ["--snap", f"{rule.snap:g}"]
    if runs_model:
        if fold not in args.models:
            return None
        cmd += ["--model", args.models[fold]]
        for row in rows:
            cmd += decision_args(row)
    if rows[0] != "all-fg":
        cmd += ["--prior", split_row(rows[0])[1]]
    if support != "none":
        cmd += ["--support", support]
    if rows[0] != "all-fg" and args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _key(fold: int, shots: int, support: str, method: str, episodes: int) -> str:
    return f"{fold}/{shots}/{support}/{method}/{episodes}"


def load_results(path: Path) -> dict[str, dict]:
    """Finished cells by key (the last line wins)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def pending_jobs(args, fold: int, shots: int, done: dict) -> list[tuple[list[str], str]]:
    """(rows, support) still to run in one column: each baseline cell alone, the model rows of a support
    together."""
    only = set(args.only or [m for m, _ in METHODS])
    kinds = set(args.supports or ("tags", "masks", "none"))
    todo = [(row, support) for row, supports in METHODS for support in supports
            if row in only and support in kinds and _key(fold, shots, support, row, args.episodes) not in done]
    jobs = [([row], support) for row, support in todo if row not in MODEL_ROWS]
    for support in ("tags", "masks"):
        for prior in ("coseg", *PRIOR_SUFFIXES.values()):  # one network pass per support and prior
            rows = [row for row, sup in todo if row in MODEL_ROWS and sup == support and split_row(row)[1] == prior]
            if rows:
                jobs.append((rows, support))
    return jobs


def run(args) -> None:
    done = load_results(args.results)
    for fold in args.folds:
        for shots in args.shots:
            for rows, support in pending_jobs(args, fold, shots, done):
                cmd = cell_command(args, fold, shots, support, rows)
                if cmd is None:
                    continue
                print("running:", " ".join(cmd), file=sys.stderr, flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
                results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
                with args.results.open("a", encoding="utf-8") as f:
                    for row, result in zip(rows, results, strict=True):
                        f.write(json.dumps({"key": _key(fold, shots, support, row, args.episodes), "fold": fold,
                                            "shots": shots, "support": support, "method": row,
                                            "command": " ".join(cmd), "result": result}) + "\n")
                        print(f"  {row}: mIoU {result['miou']:.1f}  FB-IoU {result['fbiou']:.1f}", file=sys.stderr,
                              flush=True)


def render(results: dict[str, dict]) -> str:
    """Markdown: one row per (method, support) that has results, one column per (fold, shots, episodes)
    that has results (1-shot columns first; the episodes are named when not 1000); cells are
    mIoU / FB-IoU, "n/a" where that cell was not run."""
    rows = list(results.values())
    cols = sorted({(r["fold"], r["shots"], r["result"]["episodes"]) for r in rows}, key=lambda c: (c[1], -c[2], c[0]))
    cell = {(r["fold"], r["shots"], r["result"]["episodes"], r["support"], r["method"]): r["result"] for r in rows}
    lines = ["| method | support | " + " | ".join(f"fold {f} {s}-shot" + ("" if e == 1000 else f" ({e} ep.)")
                                                 for f, s, e in cols) + " |",
             "|" + "---|" * (len(cols) + 2)]
    for method, supports in METHODS:
        for support in supports:
            found = [cell.get((f, s, e, support, method)) for f, s, e in cols]
            if any(found):
                text = ["n/a" if r is None else f"{r['miou']:.1f} / {r['fbiou']:.1f}" for r in found]
                lines.append(f"| {LABELS[method]} | {support} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}"


def render_per_class(results: dict[str, dict], rows: tuple[str, ...] = ("hhn-ratio", "hhn")) -> str:
    """Per-class IoU (percent), precision and recall (fractions in the JSON, percent here) of the model rows."""
    lines = ["| row | fold | shots | episodes | support | class | IoU | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["method"], r["fold"], r["shots"], -r["result"]["episodes"],
                                                     r["support"])):
        if r["method"] not in rows:
            continue
        res = r["result"]
        for cls, iou in res["per_class"].items():
            p, rc = res.get("precision", {}).get(cls), res.get("recall", {}).get(cls)
            lines.append(f"| {r['method']} | {r['fold']} | {r['shots']} | {res['episodes']} | {r['support']} | {cls} "
                         f"| {iou:.1f} | {_percent(p)} | {_percent(rc)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/msrc_v2"))
    parser.add_argument("--results", type=Path, required=True, help="JSON lines file of finished cells")
    parser.add_argument("--model", action="append", default=[], metavar="FOLD=NAME",
                        help="the model trained without FOLD's classes (repeatable)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--only", nargs="+", choices=[m for m, _ in METHODS], help="run only these methods")
    parser.add_argument("--supports", nargs="+", choices=("tags", "masks", "none"),
                        help="run only cells with these supports")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="print the tables from --results and stop")
    args = parser.parse_args(argv)
    args.models = {}
    for item in args.model:
        fold, _, name = item.partition("=")
        if not fold.isdigit() or not name:
            parser.error(f"--model {item!r}: use FOLD=NAME, e.g. 0=default")
        args.models[int(fold)] = name
    if not args.render:
        run(args)
    results = load_results(args.results)
    print(render(results))
    print()
    print(render_per_class(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
