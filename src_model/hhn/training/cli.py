"""``wfss train``: train HHN heads on the base classes of a dataset, holding out the test classes.

The run: build the model from a preset with the recipe's switches, encode every training image once
(``FeatureBank``, cached in ``OUT/features.safetensors``), compute the tag priors (``coseg`` of
``hhn.priors.catalog``, whatever the model's inference ``tag_prior``)
once per (image, class) from a seeded gallery of other tagged images (``PriorBank``, the protocol of
``wfss eval``), then train on seeded 1-shot episodes of the training classes. Checkpoints go to
``OUT/last.*`` every 100 steps; ``--resume`` continues a killed run; the final model is
``OUT/model.safetensors`` + ``OUT/model.json``.

Several processes: ``torchrun --nproc_per_node N -m napari_wfss.cli train ...`` (``--device cpu``: gloo;
``--device cuda``: NCCL, one GPU per process) trains with DistributedDataParallel on the same global batch
(the recipe's batch size, which N must divide; see ``hhn.training.loop``), so the loss curve is the single
process's. Rank 0 computes the backbone features (writing the cache) and the tag priors while the other
ranks wait; they then read the feature cache and receive the priors from rank 0, so OUT must be on a file
system every process sees. Rank 0 alone writes checkpoints, logs and the model; ``--resume`` loads the same
checkpoint on every rank.
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
    from hhn.training import distributed

    try:
        return _train(args)
    finally:
        distributed.cleanup()


def _train(args) -> int:
    import torch

    from hhn.config import load_preset
    from hhn.data import open_dataset, resolve_test_classes
    from hhn.data.episodes import EpisodeSampler
    from hhn.device import select_device, set_cpu_threads
    from hhn.network import HHN
    from hhn.priors.catalog import build_tag_prior
    from hhn.training import distributed
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
    processes = distributed.env_world_size()
    if recipe.batch_size % processes:
        raise UserError(f"recipe {recipe.name!r} trains on {recipe.batch_size} episodes per step, which "
                        f"{processes} processes cannot share evenly: use a --nproc_per_node that divides "
                        f"{recipe.batch_size}")
    config = recipe.apply_to(load_preset(args.preset))
    if config.use_text:
        raise UserError(f"preset {config.name!r} uses CLIP text embeddings, which training does not compute yet; "
                        "train a preset without text (e.g. wfss-lite0)")
    device = distributed.init_from_env(select_device(args.device))
    main = distributed.is_main()

    def say(text: str) -> None:
        if main:
            print(text, file=sys.stderr)

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
    say(f"train: {len(train_classes)} classes, {len(names)} images; held out: {', '.join(test) or 'none'}"
        + (f"; {distributed.world()} processes" if distributed.world() > 1 else ""))

    model = HHN(config, pretrained_backbone=True).to(device)
    t0 = time.perf_counter()
    with distributed.main_first():  # rank 0 encodes and writes the cache; the others then read it
        features = FeatureBank(model, dataset, names, cache_file=out / "features.safetensors", write_cache=main)
    say(f"train: features of {len(names)} images in {time.perf_counter() - t0:.0f} s")
    targets = TargetBank(dataset, config.image_size)
    t0 = time.perf_counter()
    priors = PriorBank(dataset, build_tag_prior("coseg", device=device), config.geometry.head_size,
                       positives=args.prior_positives, negatives=args.prior_negatives, seed=args.seed)
    if main:
        priors.load(out / "priors.npz")
        priors.fill(((n, c) for c in train_classes for n in dataset.images_with(c)),
                    progress=lambda i, n: say(f"train: priors {i}/{n}") if i % 200 == 0 else None)
        priors.save(out / "priors.npz")
    priors.share(distributed.broadcast_object)  # the other ranks take rank 0's maps as they are in its memory
    say(f"train: tag priors in {time.perf_counter() - t0:.0f} s")

    batch = recipe.batch_size

    def sample(step: int):
        return [sampler.episode(step * batch + i) for i in range(batch)]

    meta = {"data": str(args.data), "train_classes": list(train_classes), "test_classes": list(test),
            "preset": args.preset, "seed": args.seed}
    trainer = Trainer(model, recipe, out, features, targets, priors, sample, steps, seed=args.seed,
                      log=lambda s: say("train: " + s), metadata=meta, amp=args.amp)
    if args.resume:
        trainer.resume()
    t0 = time.perf_counter()
    trainer.run()
    if not main:
        return 0
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(out / f"last{suffix}", out / f"model{suffix}.tmp")
        (out / f"model{suffix}.tmp").replace(out / f"model{suffix}")
    summary = {"model": str(out / "model.safetensors"), "steps": trainer.step,
               "seconds_this_call": round(time.perf_counter() - t0, 1), **meta}
    if distributed.world() > 1:
        summary["processes"] = distributed.world()
    print(json.dumps(summary, indent=1))
    return 0


def run_finetune_cli(args) -> int:
    """``wfss train --init MODEL --data EXPORT --out OUT``: fine-tune on accepted masks (``hhn.training.finetune``)."""
    from hhn.device import set_cpu_threads
    from hhn.training import distributed
    from hhn.training.finetune import FinetuneSettings, finetune

    if distributed.launched():
        raise UserError("fine-tuning (--init) runs in one process: run it without torchrun")
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
