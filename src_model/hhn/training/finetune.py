"""Fine-tune a trained model's heads on a user's accepted masks (``wfss train --init MODEL --data EXPORT``).

The data is an export folder (``napari_wfss.export``: ``images/``, ``masks/``, ``classes.txt`` and a
``manifest.json`` whose rows carry each image's review ``status``); only the images whose status is in
``statuses`` (default accepted and edited: what a person checked) are used. A plain generic dataset
folder without a manifest is used whole.

The run, sized for a laptop CPU (minutes):

1. Check everything before writing anything: each used image and mask readable, of one size, with class
   ids the class table knows; at least one class with :data:`MIN_IMAGES_PER_CLASS` images (a class with
   fewer is left out, named in the notes); the parent model trainable (no CLIP text).
2. Hold out a seeded part of the images (``val_fraction``, none below :data:`MIN_IMAGES_FOR_HOLD_OUT`
   images; never an image whose removal would leave one of its classes untrainable). Validation episodes
   ask each held-out image for each of its classes with a training image as the support, its pixel mask
   as the support weight (as the engine uses accepted masks).
3. Encode every image once with the frozen backbone (``FeatureBank``), compute the tag priors (the
   parent's own ``tag_prior``) once per (image, class) from the training images with their masks
   (``PriorBank(masked=True)``, as the engine fits priors on accepted masks).
4. Train the heads on seeded 1-shot episodes of the training images with the ``finetune`` recipe,
   scoring the held-out episodes (query loss and foreground IoU of the network alone) before the first
   step and every ``eval_every`` steps; stop after ``patience`` scores without a better loss and keep the
   best weights (the parent's own when no step beat them: said in the result).

Everything is written in ``OUT.partial/`` and renamed to ``OUT`` at the end, so ``OUT`` exists only
complete; a cancelled or failed run leaves no ``OUT`` (and removes its partial folder). ``OUT`` holds
``model.safetensors`` + ``model.json`` (metadata: parent model and its weights' SHA-256, data folder,
classes, the training and held-out images, steps run, best step, held-out scores) and ``log.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hhn.data.base import IGNORE, DatasetError
from hhn.data.episodes import Episode, EpisodeSampler
from hhn.data.generic import GenericDataset
from hhn.errors import UserError

EXPORT_STATUSES = ("accepted", "edited")
MIN_IMAGES_PER_CLASS = 2  #: a query and a support
MIN_IMAGES_FOR_HOLD_OUT = 5
VAL_SUPPORTS = 2  #: support images per held-out (image, class) pair
PARTIAL_SUFFIX = ".partial"

Progress = Callable[[str, int, int], object]
"""``(stage, done, total)``; stages ``features``, ``priors``, ``training``."""


@dataclass(frozen=True)
class FinetuneSettings:
    """The knobs of a fine-tuning run (CLI flags of ``wfss train --init``)."""

    steps: int = 200
    eval_every: int = 20
    patience: int = 3
    val_fraction: float = 0.2
    statuses: tuple[str, ...] = EXPORT_STATUSES
    prior_positives: int = 3
    prior_negatives: int = 3
    seed: int = 0
    device: str = "auto"
    amp: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.patience < 1:
            raise UserError(f"steps, eval-every and patience must be at least 1 (got {self.steps}, "
                            f"{self.eval_every}, {self.patience})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class FinetuneData:
    """What a run trains and validates on (all images of ``root``; names are file stems)."""

    root: Path
    dataset: GenericDataset  #: the training images only
    classes: tuple[str, ...]  #: classes trained (each with >= MIN_IMAGES_PER_CLASS training images)
    held_out: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def train(self) -> tuple[str, ...]:
        return self.dataset.names


@dataclass
class FinetuneResult:
    """The outcome: ``model`` is the checkpoint written (None when cancelled)."""

    model: Path | None
    steps_run: int
    best_step: int
    scores: dict[int, dict[str, float]]  #: step -> {"loss", "iou"} on the held-out episodes
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ data
def export_statuses(root: Path) -> dict[str, str] | None:
    """``key -> status`` from ``root/manifest.json``; None when there is no manifest (a plain dataset)."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        rows = json.loads(manifest.read_text(encoding="utf-8"))["images"]
        return {str(r["key"]): str(r["status"]) for r in rows}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{manifest} cannot be read as an export manifest ({type(exc).__name__}: {exc}); "
                           "export the project again") from None


def select_images(root: Path, statuses: Sequence[str]) -> tuple[list[str], list[str]]:
    """The image names of the export to train on, and notes for the user."""
    found = export_statuses(root)
    if found is None:
        return [], [f"{root} has no manifest.json: every image with a mask is used"]
    used = sorted(k for k, s in found.items() if s in statuses)
    if not used:
        counts = {s: sum(v == s for v in found.values()) for s in sorted(set(found.values()))}
        listed = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no image"
        raise UserError(f"{root} has no {' or '.join(statuses)} mask to learn from (its manifest lists {listed}); "
                        "accept or edit some proposals and export again")
    return used, []


def check_files(dataset: GenericDataset) -> None:
    """Read every image and mask once: readable, same size, only known class ids (else DatasetError)."""
    known = set(dataset.class_names) | {0, IGNORE}
    for name in dataset.names:
        label = dataset.load_label(name)
        image = dataset.load_image(name)
        if label.shape != image.shape[:2]:
            raise DatasetError(f"{dataset.label_path(name)} is {label.shape[1]}x{label.shape[0]} but its image "
                               f"is {image.shape[1]}x{image.shape[0]}; re-export the mask")
        unknown = sorted(set(np.unique(label).tolist()) - known)
        if unknown:
            raise DatasetError(f"{dataset.label_path(name)} holds class id(s) {unknown[:5]} that classes.txt does "
                               "not list; re-export it or add the classes")


def split_held_out(dataset: GenericDataset, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, held-out) split of ``dataset.names``; an image is held out only while each of its
    classes keeps ``MIN_IMAGES_PER_CLASS`` training images."""
    names = list(dataset.names)
    if len(names) < MIN_IMAGES_FOR_HOLD_OUT or fraction <= 0:
        return names, []
    want = max(1, round(fraction * len(names)))
    count = {c: len(dataset.images_with(c)) for c in dataset.episode_classes}
    held: list[str] = []
    for i in np.random.default_rng([seed, 7]).permutation(len(names)):
        name = names[int(i)]
        if len(held) == want:
            break
        if all(count[c] > MIN_IMAGES_PER_CLASS for c in dataset.tags(name)):
            held.append(name)
            for c in dataset.tags(name):
                count[c] -= 1
    return [n for n in names if n not in held], sorted(held)


def prepare_data(root: str | Path, settings: FinetuneSettings) -> FinetuneData:
    """Select, check and split the images of an export (see the module docstring; nothing is written)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"export folder {root} does not exist")
    used, notes = select_images(root, settings.statuses)
    everything = GenericDataset(root, only=used or None)
    if used and len(everything.names) < len(used):
        missing = sorted(set(used) - set(everything.names))
        raise DatasetError(f"{len(missing)} image(s) of the manifest have no image or mask in {root} "
                           f"({', '.join(missing[:5])}); export the project again")
    check_files(everything)
    train, held = split_held_out(everything, settings.val_fraction, settings.seed)
    dataset = GenericDataset(root, only=train)
    classes = tuple(c for c in dataset.episode_classes if len(dataset.images_with(c)) >= MIN_IMAGES_PER_CLASS)
    few = [c for c in dataset.episode_classes if c not in classes and dataset.images_with(c)]
    if few:
        notes.append(f"left out {', '.join(few)}: fewer than {MIN_IMAGES_PER_CLASS} accepted images each")
    if not classes:
        raise UserError(f"no class of {root} has {MIN_IMAGES_PER_CLASS} accepted images (a query and a support); "
                        "accept masks of at least two images of a class")
    if not held:
        notes.append(f"no held-out images (fewer than {MIN_IMAGES_FOR_HOLD_OUT} images, or every one is needed "
                     "for training): no early stopping, every step is kept")
    if len(classes) == 1:
        notes.append(f"one class ({classes[0]}): the heads learn it alone, with no other class to tell it from")
    return FinetuneData(root, dataset, classes, tuple(held), notes)


def validation_episodes(data: FinetuneData, seed: int) -> list[Episode]:
    """Each held-out image asked for each of its trained classes, with up to ``VAL_SUPPORTS`` training
    images of the class as supports (one episode per support)."""
    episodes: list[Episode] = []
    for name in data.held_out:
        for c in sorted(_tags_of(data, name) & set(data.classes)):
            members = data.dataset.images_with(c)
            rng = np.random.default_rng([seed, len(episodes), 11])
            for j in rng.permutation(len(members))[:VAL_SUPPORTS]:
                episodes.append(Episode(len(episodes), c, name, (members[int(j)],), (), ()))
    return episodes


def _tags_of(data: FinetuneData, name: str) -> frozenset[str]:
    """Classes present in a held-out image (read from its mask; the training view does not list it)."""
    label = data.dataset.load_label(name)
    ids = set(np.unique(label).tolist())
    return frozenset(n for i, n in data.dataset.class_names.items() if i in ids)


# ------------------------------------------------------------------------------------------ run
def parent_identity(init: str) -> tuple[dict, tuple[str, ...]]:
    """What model.json records about the parent (the name given, its checkpoint file and weights' hash),
    and the classes the parent was trained on (empty when its checkpoint does not say)."""
    from hhn.model_names import checkpoint_files, resolve_model_name

    target = resolve_model_name(init)
    info: dict = {"parent": init}
    trained: tuple[str, ...] = ()
    if isinstance(target, Path):
        info["parent_file"] = str(target)
        meta = checkpoint_files(target)[1]
        if meta.is_file():
            header = json.loads(meta.read_text(encoding="utf-8"))
            info["parent_weights_sha256"] = header.get("weights_sha256")
            trained = tuple(header.get("metadata", {}).get("train_classes", ()))
    return info, trained


def _refuse_text(init: str, config) -> None:
    """UserError for a parent that needs CLIP text embeddings (``config`` None: not known yet)."""
    if config is not None and config.use_text:
        raise UserError(f"model {init!r} ({config.name}) uses CLIP text embeddings of its training classes, which "
                        "fine-tuning cannot compute for new classes; fine-tune a model without text (e.g. default)")


def finetune(init: str, data_root: str | Path, out: str | Path, settings: FinetuneSettings | None = None,
             log: Callable[[str], object] = print, progress: Progress | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> FinetuneResult:
    """Fine-tune the heads of model ``init`` (a name, folder or checkpoint) on the export ``data_root``
    and write the best model to ``out`` (see the module docstring). Raises ``UserError`` (before writing
    anything) for bad input; returns a result with ``cancelled`` set when ``should_stop()`` turned True."""
    from hhn.factory import create_model
    from hhn.model_names import declared_config

    settings = settings or FinetuneSettings()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new --out for the fine-tuned model")
    data = prepare_data(data_root, settings)
    parent, trained = parent_identity(init)
    _refuse_text(init, declared_config(init))
    model = create_model(init, device=settings.device)
    _refuse_text(init, model.config)
    new = [c for c in data.classes if trained and c not in trained]
    if new:
        data.notes.append(f"new to the parent model (not among its training classes): {', '.join(new)}; "
                          "its heads are class-agnostic and learn them from these masks")
    for note in data.notes:
        log(note)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        result = _train(model, data, partial, settings, parent, log, progress or (lambda *a: None), should_stop)
        if result.cancelled:
            shutil.rmtree(partial, ignore_errors=True)
            return result
        for leftover in ("last.safetensors", "last.json", "last.state.pt", "features.safetensors", "priors.npz"):
            (partial / leftover).unlink(missing_ok=True)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result.model = out / "model.safetensors"
    result.notes = data.notes
    return result


def _train(model, data: FinetuneData, work: Path, settings: FinetuneSettings, parent: dict,
           log: Callable[[str], object], progress: Progress, should_stop: Callable[[], bool]) -> FinetuneResult:
    """Banks, training with held-out scores and early stopping, then the best model saved in ``work``."""
    import torch

    from hhn.checkpoints import save_checkpoint
    from hhn.priors.catalog import build_tag_prior
    from hhn.training.banks import FeatureBank, TargetBank
    from hhn.training.loop import Trainer
    from hhn.training.priors import PriorBank
    from hhn.training.recipes import get_recipe

    torch.manual_seed(settings.seed)
    config, ds = model.config, data.dataset
    recipe = replace(get_recipe("finetune"), steps=settings.steps)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    features = FeatureBank(model, ds, {*data.train, *data.held_out}, cache_file=work / "features.safetensors",
                           progress=lambda i, n: progress("features", i, n))
    log(f"features of {len(data.train) + len(data.held_out)} images in {time.perf_counter() - t0:.0f} s")
    targets = TargetBank(ds, config.image_size)
    negatives = settings.prior_negatives if all(ds.images_without(c) for c in data.classes) else 0
    if settings.prior_negatives and not negatives:
        data.notes.append("a class is in every training image: the tag priors are fitted without negative images")
    # the parent's own tag prior (the one the engine pairs it with), on the model's device
    prior = build_tag_prior(config.tag_prior or "coseg", device=next(model.parameters()).device)
    priors = PriorBank(ds, prior, config.geometry.head_size,
                       positives=settings.prior_positives, negatives=negatives, seed=settings.seed, masked=True)
    val = validation_episodes(data, settings.seed)
    pairs = [(n, c) for c in data.classes for n in ds.images_with(c)] + [(e.query, e.class_name) for e in val]
    t0 = time.perf_counter()
    for i, (name, c) in enumerate(pairs):
        if should_stop():
            return FinetuneResult(None, 0, 0, {}, cancelled=True)
        priors.prior(name, c)
        progress("priors", i + 1, len(pairs))
    log(f"tag priors of {len(pairs)} (image, class) pairs in {time.perf_counter() - t0:.0f} s")

    sampler = EpisodeSampler(ds, classes=data.classes, shots=1, seed=settings.seed)
    meta = {**parent, "data": str(data.root), "classes": list(data.classes), "train_images": list(data.train),
            "held_out_images": list(data.held_out), "seed": settings.seed}
    trainer = Trainer(model, recipe, work, features, targets, priors,
                      lambda step: [sampler.episode(step * recipe.batch_size + i) for i in range(recipe.batch_size)],
                      recipe.steps, seed=settings.seed, log=log, checkpoint_every=10**9, metadata=meta,
                      amp=settings.amp)
    val_recipe = replace(recipe, hflip=False, support_mask_prob=1.0)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the parent's, until beaten
    scores: dict[int, dict[str, float]] = {}
    best_step, stale = 0, 0
    if val:
        scores[0] = held_out_scores(model, val, features, targets, priors, val_recipe)
        log(f"held-out before fine-tuning: loss {scores[0]['loss']:.4f}  IoU {scores[0]['iou']:.3f} "
            f"({len(val)} episodes on {len(data.held_out)} images)")
    while trainer.step < recipe.steps:
        trainer.run(until=trainer.step + settings.eval_every, should_stop=should_stop)
        progress("training", trainer.step, recipe.steps)
        if should_stop():
            return FinetuneResult(None, trainer.step, best_step, scores, cancelled=True)
        if not val:
            continue
        s = scores[trainer.step] = held_out_scores(model, val, features, targets, priors, val_recipe)
        if s["loss"] < scores[best_step]["loss"]:
            best_step, stale = trainer.step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        log(f"held-out at step {trainer.step}: loss {s['loss']:.4f}  IoU {s['iou']:.3f}  (best: step {best_step})")
        if stale >= settings.patience:
            log(f"early stop: no better held-out loss in the last {stale * settings.eval_every} steps")
            break
    if val:
        model.load_state_dict(best_state)
        if best_step == 0:
            log("no fine-tuning step beat the parent model on the held-out images: the model written keeps "
                "the parent's weights")
    else:
        best_step = trainer.step
    meta.update(steps_run=trainer.step, best_step=best_step, recipe=recipe.name,
                held_out_scores={str(k): v for k, v in scores.items()})
    save_checkpoint(model, work / "model", metadata=meta)
    return FinetuneResult(work / "model.safetensors", trainer.step, best_step, scores)


def held_out_scores(model, episodes: Sequence[Episode], features, targets, priors, recipe,
                    batch_size: int = 8) -> dict[str, float]:
    """Mean query loss and mean foreground IoU (network alone, argmax) of the held-out episodes, with
    each support's pixel mask as its weight."""
    import torch

    from hhn.training.loop import make_batch, segmentation_loss

    device = next(model.parameters()).device
    rng = np.random.default_rng(0)
    losses, ious = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start:start + batch_size]
            b = make_batch(chunk, features, targets, priors, recipe, rng).to(device)
            logits, _ = model.forward_features(b.query_feats, b.support_feats, b.query_prior, b.support_prior, None,
                                               support_weight=b.support_weight, with_support=False)
            for i in range(len(chunk)):
                target = b.query_target[i:i + 1]
                losses.append(float(segmentation_loss(logits[i:i + 1].float(), target, True)))
                up = torch.nn.functional.interpolate(logits[i:i + 1].float(), target.shape[-2:], mode="bilinear",
                                                     align_corners=True)
                pred, valid = up.argmax(1) == 1, target != IGNORE
                gt = target == 1
                union = int(((pred | gt) & valid).sum())
                ious.append(1.0 if union == 0 else int((pred & gt & valid).sum()) / union)
    return {"loss": float(np.mean(losses)), "iou": float(np.mean(ious))}
