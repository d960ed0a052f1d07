"""``wfss train``: train HHN heads on the base classes of a dataset, holding out the test classes.

The run: build the model from a preset with the recipe's switches, encode every training image once
(``FeatureBank``, cached in ``OUT/features.safetensors``), compute the tag priors (``coseg`` of
``hhn.priors.catalog``, whatever the model's inference ``tag_prior``)
once per (image, class) from a seeded gallery of other tagged images (``PriorBank``, the protocol of
``wfss eval``), then train on seeded 1-shot episodes of the training classes. Checkpoints go to
``OUT/last.*`` every 100 steps; ``--resume`` continues a killed run; the final model is
``OUT/model.safetensors`` + ``OUT/model.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from hhn.errors import UserError


def run_train_cli(args) -> int:
    if args.init is not None:
        return run_finetune_cli(args)
    import torch

    from hhn.config import load_preset
    from hhn.data import open_dataset, resolve_test_classes
    from hhn.data.episodes import EpisodeSampler
    from hhn.device import select_device, set_cpu_threads
    from hhn.network import HHN
    from hhn.priors.catalog import build_tag_prior
    from hhn.training.banks import FeatureBank, TargetBank
    from hhn.training.loop import Trainer
    from hhn.training.priors import PriorBank
    from hhn.training.recipes import get_recipe

    set_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if out.exists() and (out / "last.state.pt").exists() and not args.resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    recipe = get_recipe(args.recipe)
    steps = args.steps or recipe.steps
    config = recipe.apply_to(load_preset(args.preset))
    if config.use_text:
        raise UserError(f"preset {config.name!r} uses CLIP text embeddings, which training does not compute yet; "
                        "train a preset without text (e.g. wfss-lite0)")
    device = select_device(args.device)
    dataset = open_dataset(args.data, args.layout, fold=args.fold, split="trn")
    if not (args.test_classes or args.fold is not None):
        raise UserError("name the held-out (novel) classes with --test-classes a,b,c or --fold N; "
                        "they are never trained on")
    test = resolve_test_classes(dataset, args.data, args.test_classes, args.fold)
    train_classes = tuple(c for c in dataset.episode_classes if c not in test)
    if not train_classes:
        raise UserError("no training class is left after holding out the test classes")
    sampler = EpisodeSampler(dataset, classes=train_classes, shots=1, seed=args.seed)
    names = sorted({n for c in train_classes for n in dataset.images_with(c)})
    print(f"train: {len(train_classes)} classes, {len(names)} images; held out: {', '.join(test) or 'none'}",
          file=sys.stderr)

    model = HHN(config, pretrained_backbone=True).to(device)
    t0 = time.perf_counter()
    features = FeatureBank(model, dataset, names, cache_file=out / "features.safetensors")
    print(f"train: features of {len(names)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    targets = TargetBank(dataset, config.image_size)
    t0 = time.perf_counter()
    priors = PriorBank(dataset, build_tag_prior("coseg", device=device), config.geometry.head_size,
                       positives=args.prior_positives, negatives=args.prior_negatives, seed=args.seed)
    priors.load(out / "priors.npz")
    priors.fill(((n, c) for c in train_classes for n in dataset.images_with(c)),
                progress=lambda i, n: i % 200 == 0 and print(f"train: priors {i}/{n}", file=sys.stderr))
    priors.save(out / "priors.npz")
    print(f"train: tag priors in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    batch = recipe.batch_size

    def sample(step: int):
        return [sampler.episode(step * batch + i) for i in range(batch)]

    meta = {"data": str(args.data), "train_classes": list(train_classes), "test_classes": list(test),
            "preset": args.preset, "seed": args.seed}
    trainer = Trainer(model, recipe, out, features, targets, priors, sample, steps, seed=args.seed,
                      log=lambda s: print("train: " + s, file=sys.stderr), metadata=meta, amp=args.amp)
    if args.resume:
        trainer.resume()
    t0 = time.perf_counter()
    trainer.run()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(out / f"last{suffix}", out / f"model{suffix}.tmp")
        (out / f"model{suffix}.tmp").replace(out / f"model{suffix}")
    summary = {"model": str(out / "model.safetensors"), "steps": trainer.step,
               "seconds_this_call": round(time.perf_counter() - t0, 1), **meta}
    print(json.dumps(summary, indent=1))
    return 0


def run_finetune_cli(args) -> int:
    """``wfss train --init MODEL --data EXPORT --out OUT``: fine-tune on accepted masks (``hhn.training.finetune``)."""
    from hhn.device import set_cpu_threads
    from hhn.training.finetune import FinetuneSettings, finetune

    if args.resume:
        raise UserError("a fine-tuning run is short and is not resumed: run it again with a new --out")
    statuses = tuple(s.strip() for s in args.statuses.split(",") if s.strip())
    settings = FinetuneSettings(steps=args.steps or FinetuneSettings.steps, eval_every=args.eval_every,
                                patience=args.patience, val_fraction=args.val_fraction, statuses=statuses,
                                prior_positives=args.prior_positives, prior_negatives=args.prior_negatives,
                                seed=args.seed, device=args.device, amp=args.amp)
    set_cpu_threads(args.threads)
    t0 = time.perf_counter()
    result = finetune(args.init, args.data, args.out, settings, log=lambda s: print("train: " + s, file=sys.stderr))
    if result.cancelled:
        raise KeyboardInterrupt
    best = result.scores.get(result.best_step, {})
    summary = {"model": str(result.model), "parent": args.init, "data": str(args.data), "steps_run": result.steps_run,
               "best_step": result.best_step, "held_out_before": result.scores.get(0), "held_out_best": best or None,
               "seconds": round(time.perf_counter() - t0, 1), "notes": result.notes}
    print(json.dumps(summary, indent=1))
    print(f"train: wrote {result.model}; use it with: wfss label ... --model {Path(args.out)}", file=sys.stderr)
    return 0
