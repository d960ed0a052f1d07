"""The ``wfss`` command line: one argparse parser, one subcommand per tool.

Every subcommand is a thin shell over a Python function in the UI-free core (``napari_wfss``) or
in the model library (``hhn``); heavy modules (torch, open_clip) are imported only when the
subcommand runs, so ``wfss --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from hhn.errors import UserError
from hhn.priors.catalog import TAG_PRIORS
from hhn.training.recipes import RECIPES

from .images import MAX_MEGAPIXELS
from .options import ProposalOptions, add_device_argument


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest on a CPU shared with other jobs)")


def _add_fold_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-classes", default=None,
                   help="comma-separated class names held out as novel classes (generic layout)")
    p.add_argument("--fold", type=int, default=None,
                   help="standard fold index for pascal/coco layouts (0-3)")
    p.add_argument("--seed", type=int, default=0, help="episode sampling seed (default: 0)")


def _add_episode_args(p: argparse.ArgumentParser, episodes: int) -> None:
    _add_fold_args(p)
    p.add_argument("--shots", type=int, default=1, help="support images per episode (default: 1)")
    p.add_argument("--episodes", type=int, default=episodes, help=f"number of episodes (default: {episodes})")
    p.add_argument("--support", default="tags", choices=("tags", "masks"),
                   help="support supervision: tags = image-level class names only (priors), masks = pixel masks")


def _add_prior_gallery(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior-positives", type=int, default=3,
                   help="extra images tagged with the class that the prior may learn from (default: 3)")
    p.add_argument("--prior-negatives", type=int, default=3,
                   help="images without the class that the prior may learn from (default: 3)")


def package_version() -> str:
    """The installed napari-wfss version (package metadata), or a note when it is not installed."""
    try:
        return version("napari-wfss")
    except PackageNotFoundError:
        return "unknown (napari-wfss is not installed: pip install -e .)"


def _add_label_output(p: argparse.ArgumentParser) -> None:
    """``wfss label``'s flags for what the run writes and prints, and which images it takes."""
    p.add_argument("--tiff", action="store_true", help="also write TIFF label maps (masks_tiff/)")
    p.add_argument("--instances", action="store_true",
                   help="coco.json gets one annotation per object (connected component, 8-connected) of each class "
                        "instead of one per class per image")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--link-images", dest="images", action="store_const", const="link", default="copy",
                        help="hard-link the source images into OUT/images/ instead of copying them (no extra "
                             "disk space; falls back to a copy across disks; re-encoded files are still written)")
    source.add_argument("--no-images", dest="images", action="store_const", const="none",
                        help="leave out OUT/images/ (masks and index files only; OUT is then not a training "
                             "dataset by itself)")
    p.add_argument("--recursive", action="store_true",
                   help="also label the images in the sub-folders of FOLDER (TAGS.csv then names them by "
                        "relative path, e.g. sub/x.jpg, or by a file name unique in the tree)")
    p.add_argument("--redo", action="store_true",
                   help="propose again the images whose proposal is not reviewed yet (status proposed) and was "
                        "made with other (or unrecorded) options than those given now (accepted and edited masks "
                        "are never touched)")
    p.add_argument("--json", action="store_true",
                   help="print the closing summary as one JSON object on stdout (the text summary goes to stderr)")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``wfss`` parser; each subparser stores its runner as ``args.run``."""
    parser = argparse.ArgumentParser(
        prog="wfss",
        description="Weakly-supervised few-shot segmentation: class names + a few tags -> masks for a whole folder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("label", help="label every untagged image of a folder (batch, resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Propose a label map for every untagged image of FOLDER from the images "
                                   "tagged in TAGS.csv, and write the export layout to OUT.",
                       epilog="OUT receives masks/ (palette PNGs), images/, coco.json, classes.txt, classes.json, "
                              "manifest.json|csv,\nand the run's state in OUT/.wfss-project (FOLDER is never "
                              "written). Rerun the same command to resume.\nA rerun with other proposal "
                              "options keeps the earlier proposals and says so: add --redo to propose them again.\n"
                              "TAGS.csv: 'image,-' or 'image,none' says an image holds none of the classes (never "
                              "proposed, a negative\nof every class, exported all background).\n"
                              "--json: one object on stdout {labelled, no_class_found, negative, already_done, "
                              "failed: [{image, reason}],\nskipped_files, warnings, out, model, untrained, exit_code, "
                              "seconds, compute_seconds}; nothing on stdout for bad input (exit 2).\n"
                              "exit status: 0 done (unreadable images are skipped with a warning); 1 no image "
                              "could be labelled;\n2 bad input (message says what to fix); 130 interrupted.")
    p.add_argument("folder", help="folder of images")
    p.add_argument("--tags", required=True, help="CSV with 'image,class' rows (an image may have several rows; "
                                                 "'image,-' or 'image,none': it holds none of the classes)")
    p.add_argument("--out", required=True, help="output folder (project state + export); rerun to resume")
    ProposalOptions.add_arguments(p)
    _add_label_output(p)
    p.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS,
                   help="refuse larger images before decoding them (memory grows with the pixel count; "
                        f"raise it only with the memory for it) (default: {MAX_MEGAPIXELS:g})")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="label only shard K of N of the untagged images (a fixed partition by path), into "
                        "OUT/shards/K-of-N; the last shard to finish merges them into OUT (see wfss merge-exports)")
    p.add_argument("--dask", default=None, metavar="ADDRESS|local:N",
                   help="compute the images on a Dask cluster: a scheduler address (tcp://host:8786) or local:N "
                        "for N local worker processes (needs pip install 'napari-wfss[dask]')")
    p.set_defaults(run="napari_wfss.batch:run_label_cli")

    p = sub.add_parser("merge-exports", help="merge the shards of a `wfss label --shard K/N` run into one export",
                       description="Build OUT's masks/, images/, coco.json, classes and manifest from its complete "
                                   "shards in OUT/shards/K-of-N (idempotent; refuses incomplete or mismatched "
                                   "shards).")
    p.add_argument("out", help="the --out of the sharded runs")
    p.set_defaults(run="napari_wfss.shards:run_merge_cli")

    p = sub.add_parser("train", help="train HHN heads on episodes, or fine-tune a model on accepted masks",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train an HHN model on a generic folder dataset (images/, masks/, "
                                   "classes.txt), Pascal-5i or COCO-20i;\nwith --init, fine-tune an existing "
                                   "model's heads on the accepted and edited masks of an export folder.",
                       epilog="fine-tuning: wfss train --init default --data EXPORT --out MODEL_DIR\n"
                              "  EXPORT is a folder written by `wfss label` or the widget's Export; MODEL_DIR "
                              "is then a model for\n  `wfss label --model MODEL_DIR` and the widget's Model field. "
                              "Minutes on a laptop CPU: features cached,\n  at most --steps steps, early stop "
                              "on held-out accepted images.")
    p.add_argument("--data", required=True, help="dataset root, or with --init an export folder")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune this model ('default', a model folder or checkpoint) on EXPORT's accepted masks "
                        "instead of training from scratch")
    p.add_argument("--statuses", default="accepted,edited",
                   help="with --init: the review statuses of the export's images to learn from "
                        "(default: accepted,edited)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="with --init: part of the images held out to score steps and stop early (default: 0.2)")
    p.add_argument("--eval-every", type=int, default=20,
                   help="with --init: score the held-out images every this many steps (default: 20)")
    p.add_argument("--patience", type=int, default=3,
                   help="with --init: stop after this many scores without a better held-out loss (default: 3)")
    p.add_argument("--layout", default="auto", choices=("auto", "generic", "pascal", "coco"))
    p.add_argument("--preset", default="wfss-lite0", help="model/recipe preset (see `wfss weights --presets`)")
    p.add_argument("--recipe", default="ours", choices=tuple(RECIPES),
                   help="training recipe (ours-tags: ours with tag-prior supports only; ours-prior-in-decoder: "
                        "ours with the prior also fed to the decoder's first conv)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default: the recipe's; with --init at most 200)")
    p.add_argument("--resume", action="store_true", help="resume from OUT/last.safetensors")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 with loss scaling on CUDA, bfloat16 elsewhere")
    _add_threads(p)
    _add_prior_gallery(p)
    _add_fold_args(p)
    add_device_argument(p)
    p.set_defaults(run="hhn.training.cli:run_train_cli")

    p = sub.add_parser("eval", help="evaluate mIoU / FB-IoU on few-shot episodes",
                       description="Few-shot evaluation (spec section 3): mIoU over test classes and FB-IoU.")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", default="auto", choices=("auto", "generic", "pascal", "coco"))
    p.add_argument("--model", default="default", help="'default', a checkpoint path, or a preset name")
    p.add_argument("--method", default="hhn", choices=("hhn", "prior", "map", "all-fg"),
                   help="hhn = the model; prior = the tag prior alone; map = masked-average-pooling "
                        "prototype; all-fg = predict every pixel as foreground")
    p.add_argument("--decision", action="append", default=None,
                   help="hhn's foreground decision: 'argmax' (the network alone), PRIOR_WEIGHT,THRESHOLD "
                        "(blend with the query prior, then threshold), optionally followed by ,trim:A/B/C "
                        "(trim to the query's own appearance, tap weights A/B/C) and/or ,snap:BAND (snap to the "
                        "image's edges with GrabCut, band as a fraction of the diagonal) and ,supports:refined "
                        "(tag supports refined with those steps before encoding) and ,flip:EXCESS (a class "
                        "learnt from tags whose support maps cover the frames' borders by more than EXCESS is "
                        "flipped), e.g. "
                        "0.5,0.6,trim:1/0.5/0,snap:0.06 (default: the model's rule); repeat it "
                        "to score several rules on one network pass (one JSON line each; rules that encode "
                        "the supports differently take a pass each)")
    p.add_argument("--trim", default=None, metavar="A/B/C",
                   help="prior / map only: trim the mask to the query's own appearance with these tap weights "
                        "(the control for a model rule's trim, e.g. 1/0.5/0)")
    p.add_argument("--snap", default=None, type=float, metavar="BAND",
                   help="prior / map only: then snap the mask to the image's edges (GrabCut) with this band "
                        "(the control for a model rule's snap, e.g. 0.06)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--prior", default=None, choices=TAG_PRIORS,
                   help="tag prior: coseg = CLIP-free co-segmentation of the tagged images at 320 px; "
                        "coseg-ms = the same at 320, 448 and 576 px, maps averaged; "
                        "coseg-ratio = coseg comparing recurrence in positives and negatives as a log ratio; "
                        "coseg-objects = coseg-ratio learning thing classes from object cells only (small "
                        "objects in clutter); "
                        "gradcam = CLIP RN50 Grad-CAM (needs CLIP weights) (default: the model's own "
                        "tag_prior for --method hhn, else coseg)")
    p.add_argument("--objectness", default=None, metavar="FILE",
                   help="coseg-objects only: its objectness head (default: the shipped one; refit one without "
                        "a fold's classes with `python -m hhn.priors.objectness --exclude ...`)")
    _add_prior_gallery(p)
    p.add_argument("--negatives", default="context", choices=("context", "random"),
                   help="prior negatives: context = whose tags overlap the supports' other tags (default)")
    p.add_argument("--min-fraction", type=float, default=0.0,
                   help="a class is present in an image when it covers at least this fraction (default: 0)")
    p.add_argument("--exclude", default=None, help="comma-separated classes never used as episode classes")
    p.add_argument("--cache-dir", default=None, help="folder to keep backbone features between runs")
    _add_threads(p)
    _add_episode_args(p, episodes=1000)
    add_device_argument(p)
    p.set_defaults(run="hhn.evaluation.cli:run_eval_cli")

    p = sub.add_parser("convert-tlg", help="convert the authors' best_model.pt to our checkpoint format",
                       description="Convert a released TLG best_model.pt (DataParallel 'module.' keys) into "
                                   "a safetensors checkpoint with a JSON config; reports dropped legacy layers.")
    p.add_argument("src", help="the authors' best_model.pt")
    p.add_argument("dst", help="output checkpoint (.safetensors; a .json config is written beside it)")
    p.add_argument("--backbone", default=None, choices=("resnet50", "vgg16"),
                   help="backbone of the checkpoint (default: detected from the keys)")
    p.add_argument("--benchmark", default="pascal", choices=("pascal", "coco"),
                   help="which class phrase tables the model was trained with")
    p.set_defaults(run="hhn.checkpoints:run_convert_cli")

    p = sub.add_parser("bench", help="print speed and memory numbers (forward / training-step time, peak RSS)",
                       description="Benchmark the network and the predictor on random inputs; with "
                                   "--train-step, one training step on cached backbone features instead.")
    p.add_argument("--preset", action="append", default=None,
                   help="preset(s) to time (default: tlg-resnet50-pascal and wfss-lite0; "
                        "with --train-step: wfss-lite0)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per preset (median reported)")
    _add_threads(p)
    p.add_argument("--train-step", action="store_true",
                   help="time a training step (forward + loss + backward + AdamW) instead of inference")
    p.add_argument("--batch-size", type=int, default=8, help="episodes per training step (default: 8)")
    p.add_argument("--image-size", default=None,
                   help="override the preset's input size: SIDE or HEIGHTxWIDTH, e.g. 288 (default: preset's)")
    add_device_argument(p)
    p.set_defaults(run="hhn.bench:run_bench_cli")

    p = sub.add_parser("weights", help="show where pretrained weights are looked for, and what is present",
                       description="List model presets and the weight files each needs, with the exact "
                                   "path to place a file when there is no network.")
    p.add_argument("--presets", action="store_true", help="list presets only")
    p.set_defaults(run="hhn.weights.cli:run_weights_cli")

    p = sub.add_parser("sample", help="write the sample image folder and its tags.csv",
                       description="Create a small sample folder (made from scikit-image's bundled images) "
                                   "with a tags.csv, for trying `wfss label`.")
    p.add_argument("out", help="folder to create")
    p.set_defaults(run="napari_wfss.sample:run_sample_cli")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wfss`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    module_name, func_name = args.run.split(":")
    runner = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(runner(args) or 0)
    except KeyboardInterrupt:
        print("wfss: interrupted; finished work is saved, rerun the same command to resume.", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"wfss {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
