"""Does ``coseg-objects`` keep the MSRC-v2 folds, stuff classes included? The tag prior alone, ``coseg-ratio``
against ``coseg-objects``, on each fold's held-out classes, with an objectness head refitted *without* that
fold's classes (the shipped head was fitted without fold 0's, so on folds 1-3 it would have seen the
classes it is measured on). Folds 1-3 hold stuff classes (road; building; tree, water, sky), where the
prior must fall back to the plain steps.

    python benchmarks/objectness_folds.py [--folds 1,2,3] [--episodes 1000] [--priors coseg-ratio,coseg-objects]

For each fold: ``python -m hhn.priors.objectness --exclude <fold's classes>`` (things and stuff: the
library's MSRC lists plus fold 0's animals as things, minus the fold's classes) into ``--work``, then
``wfss eval --method prior`` with each prior (the protocol of the model card's row a-ratio: 1-shot, seed
0, context negatives). One JSON line per run is appended to ``--record``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def head_for_fold(fold: int, data: str, work: Path) -> Path:
    """Fit (once) the objectness head that never saw ``fold``'s classes (``hhn.data``'s MSRC folds); returns
    its file."""
    from hhn.data import msrc_folds
    from hhn.priors.objectness import MSRC_STUFF, MSRC_THINGS

    out = work / f"objectness-fold{fold}.safetensors"
    if not out.is_file():
        folds = msrc_folds()["folds"]
        held_out = folds[fold]
        things = [c for c in (*MSRC_THINGS, *folds[0]) if c not in held_out]
        stuff = [c for c in MSRC_STUFF if c not in held_out]
        subprocess.run([sys.executable, "-m", "hhn.priors.objectness", "--data", data, "--out", str(out),
                        "--things", ",".join(things), "--stuff", ",".join(stuff), "--exclude", ",".join(held_out)],
                       check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msrc_v2"))
    p.add_argument("--folds", default="1,2,3")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--priors", default="coseg-ratio,coseg-objects",
                   help="the priors to run, comma-separated (coseg-objects reads the fold's head)")
    p.add_argument("--work", default=str(ROOT.parent / "cache" / "objectness-folds"))
    p.add_argument("--cache-dir", default=str(ROOT.parent / "cache" / "msrc"), help="wfss eval's tap cache")
    p.add_argument("--record", default=str(ROOT / "benchmarks" / "results" / "objectness-folds.jsonl"))
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for fold in (int(f) for f in args.folds.split(",")):
        head = head_for_fold(fold, args.data, work)
        for prior in args.priors.split(","):
            command = ["wfss", "eval", "--data", args.data, "--fold", str(fold), "--method", "prior", "--shots", "1",
                       "--episodes", str(args.episodes), "--seed", "0", "--json", "--prior", prior, "--support",
                       "tags", "--cache-dir", args.cache_dir, "--threads", "1"]
            if prior == "coseg-objects":
                command += ["--objectness", str(head)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            line = {"fold": fold, "prior": prior, "command": " ".join(command), "result": result}
            if prior == "coseg-objects":
                line["objectness_head"] = _head_info(head)
            with open(args.record, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            per_class = ", ".join(f"{c} {v:.1f}" for c, v in result["per_class"].items())
            print(f"fold {fold} {prior}: {result['miou']:.2f} / {result['fbiou']:.2f} ({per_class})", flush=True)
    return 0


def _head_info(path: Path) -> dict:
    from hhn.priors.objectness import ObjectnessHead

    return ObjectnessHead.load(path).info


if __name__ == "__main__":
    sys.exit(main())
