"""The episode training loop: batches from the banks, the recipe's loss, checkpoints and resume.

A training run lives in one folder ``out``:

- ``last.safetensors`` + ``last.json``: the model (our checkpoint format, ``hhn.checkpoints``);
- ``last.state.pt``: optimiser state, step and (with AMP on CUDA) the loss scaler's state (loadable with
  ``weights_only=True``; the random numbers of a step are derived from (seed, step), so no RNG state is
  needed);
- ``log.jsonl``: one JSON line per logged step (step, loss, seconds per step).

Writes are atomic (temporary file + rename), so a run killed at any moment resumes from its last
checkpoint with ``resume=True``.

Batches are assembled on the CPU (the banks live there) and moved to the model's device per step.
Mixed precision (``amp=True``): the forward pass and loss run under ``torch.autocast``, float16 with a
dynamic loss scaler on CUDA, bfloat16 elsewhere (no scaler needed); the Sinkhorn step and the fused
GroupNorm keep float32/float64 arithmetic (see ``hhn.transport`` and ``hhn.encoder4d``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from hhn.data.base import IGNORE
from hhn.data.episodes import Episode
from hhn.training.banks import FeatureBank, TargetBank
from hhn.training.recipes import Recipe

if TYPE_CHECKING:
    from hhn.network import HHN


@dataclass
class Batch:
    """A stacked training batch of B 1-shot episodes.

    query_feats / support_feats: per tap ``float32 (B, C, h_t, w_t)``; query_prior / support_prior /
    support_weight: ``float32 (B, hp, wp)`` in [0, 1]; query_target / support_target: ``int64 (B, h, w)``
    with 0 / 1 and ``IGNORE`` (255) at the network input size.
    """

    query_feats: list[torch.Tensor]
    support_feats: list[torch.Tensor]
    query_prior: torch.Tensor
    support_prior: torch.Tensor
    support_weight: torch.Tensor
    query_target: torch.Tensor
    support_target: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device``."""
        return Batch([t.to(device) for t in self.query_feats], [t.to(device) for t in self.support_feats],
                     *(t.to(device) for t in (self.query_prior, self.support_prior, self.support_weight,
                                              self.query_target, self.support_target)))


def _maybe_flip(feats: list[torch.Tensor], prior: np.ndarray, target: np.ndarray, flip: bool):
    if not flip:
        return feats, prior, target
    return [f.flip(-1) for f in feats], prior[:, ::-1], target[:, ::-1]


EpisodePriors = Callable[[Episode], tuple[np.ndarray, np.ndarray]]
"""``episode -> (query_prior, support_prior)``, float32 maps in [0, 1] (any size; resized by the network)."""


def make_batch(episodes: Sequence[Episode], features: FeatureBank, targets: TargetBank, priors: EpisodePriors,
               recipe: Recipe, rng: np.random.Generator) -> Batch:
    """Assemble one batch (first support of each episode; training is 1-shot as in the paper)."""
    cols: dict[str, list] = {k: [] for k in ("qf", "sf", "qp", "sp", "sw", "qt", "st")}
    for ep in episodes:
        q, s, c = ep.query, ep.supports[0], ep.class_name
        query_prior, support_prior = priors(ep)
        qf, qp, qt = _maybe_flip(features.features(q), query_prior, targets.target(q, c),
                                 recipe.hflip and rng.random() < 0.5)
        sf, sp, st = _maybe_flip(features.features(s), support_prior, targets.target(s, c),
                                 recipe.hflip and rng.random() < 0.5)
        use_mask = rng.random() < recipe.support_mask_prob
        true_mask = (st == 1).astype(np.float32)
        sw = resize_like(true_mask, sp.shape) if use_mask else sp
        for key, value in zip(("qf", "sf", "qp", "sp", "sw", "qt", "st"), (qf, sf, qp, sp, sw, qt, st)):
            cols[key].append(value)

    def stack_taps(rows):
        return [torch.stack([r[i] for r in rows]).float() for i in range(len(rows[0]))]

    def stack_maps(rows, dtype):
        return torch.from_numpy(np.stack([np.ascontiguousarray(r) for r in rows])).to(dtype)

    return Batch(stack_taps(cols["qf"]), stack_taps(cols["sf"]), stack_maps(cols["qp"], torch.float32),
                 stack_maps(cols["sp"], torch.float32), stack_maps(cols["sw"], torch.float32),
                 stack_maps(cols["qt"], torch.int64), stack_maps(cols["st"], torch.int64))


def resize_like(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a binary ``(h, w)`` mask to ``shape`` (soft weights in [0, 1])."""
    t = torch.from_numpy(mask)[None, None]
    return F.adaptive_avg_pool2d(t, shape)[0, 0].numpy()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_void: bool) -> torch.Tensor:
    """2-class pixel cross-entropy. logits (B, 2, h', w') are upsampled (bilinear, align_corners=True)
    to the target size (B, h, w). ``ignore_void``: 255 ignored; otherwise 255 counts as background
    (the released code's behaviour)."""
    logits = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=True)
    if not ignore_void:
        target = torch.where(target == IGNORE, torch.zeros_like(target), target)
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def trainable_parameters(model: HHN) -> list[torch.nn.Parameter]:
    """Every head parameter (the backbone is frozen: its features are cached)."""
    backbone = {id(p) for p in model.backbone.parameters()}
    return [p for p in model.parameters() if id(p) not in backbone]


def learning_rate(recipe: Recipe, step: int, total: int) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: constant, or cosine from lr to 5% of lr."""
    if recipe.schedule == "constant":
        return recipe.lr
    frac = min(step / max(total, 1), 1.0)
    return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


class Trainer:
    """Trains the heads of ``model`` on episodes drawn by ``sample(step) -> list[Episode]``.

    Args:
        model: an ``HHN`` whose config already carries the recipe's switches.
        recipe: the optimisation recipe.
        out: run folder (see the module docstring).
        features / targets: the banks covering every image the episodes use.
        priors: ``episode -> (query_prior, support_prior)`` (see ``EpisodePriors``).
        sample: ``step -> episodes`` (deterministic in the step, so a resumed run sees the same batches).
        steps: total optimisation steps.
        seed: seed of the augmentation RNG.
        log: ``str -> None`` for progress lines.
        amp: mixed precision (see the module docstring).
    """

    def __init__(self, model, recipe: Recipe, out: str | Path, features: FeatureBank, targets: TargetBank,
                 priors: EpisodePriors, sample: Callable[[int], Sequence[Episode]], steps: int, seed: int = 0,
                 log: Callable[[str], object] = print, checkpoint_every: int = 100,
                 metadata: dict | None = None, amp: bool = False) -> None:
        self.model, self.recipe, self.out = model, recipe, Path(out)
        self.features, self.targets, self.priors, self.sample = features, targets, priors, sample
        self.steps, self.seed, self.log, self.checkpoint_every = steps, seed, log, checkpoint_every
        self.metadata = dict(metadata or {})
        self.params = trainable_parameters(model)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.device = next(model.parameters()).device
        self.amp = amp
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.device.type == "cuda")
        self.step = 0
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.out / "last.state.pt"

    @property
    def model_path(self) -> Path:
        return self.out / "last.safetensors"

    def resume(self) -> bool:
        """Load the last checkpoint of ``out`` if there is one; returns whether it did."""
        from hhn.checkpoints import load_state_dict_file

        if not (self.state_path.is_file() and self.model_path.is_file()):
            return False
        self.model.load_state_dict(load_state_dict_file(self.model_path), strict=False)
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.log(f"resumed from {self.out} at step {self.step}/{self.steps}")
        return True

    def save(self) -> None:
        from hhn.checkpoints import save_checkpoint

        meta = dict(self.metadata, step=self.step, steps=self.steps, recipe=self.recipe.name)
        save_checkpoint(self.model, self.model_path, metadata=meta)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step,
                    "scaler": self.scaler.state_dict()}, tmp)
        os.replace(tmp, self.state_path)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The recipe's loss of one batch (float32; forward under autocast when ``amp``)."""
        r = self.recipe
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            q_logits, s_logits = self.model.forward_features(
                batch.query_feats, batch.support_feats, batch.query_prior, batch.support_prior, None,
                support_weight=batch.support_weight, with_support=r.support_loss_weight > 0)
        loss = r.query_loss_weight * segmentation_loss(q_logits.float(), batch.query_target, r.ignore_void)
        if s_logits is not None:
            loss = loss + r.support_loss_weight * segmentation_loss(s_logits.float(), batch.support_target,
                                                                    r.ignore_void)
        if r.norm_penalty:
            loss = loss + r.norm_penalty * sum(p.norm() for p in self.params)
        return loss

    def run(self, until: int | None = None, should_stop: Callable[[], bool] | None = None) -> list[float]:
        """Train from ``self.step`` to ``until`` (default: ``self.steps``; the schedule always spans
        ``self.steps``); returns the per-step losses of this call. ``should_stop()`` is asked before every
        step: True ends the call early (``self.step`` tells how far it got; nothing is checkpointed)."""
        until = self.steps if until is None else min(until, self.steps)
        self.model.train()
        losses, t0, logf = [], time.perf_counter(), (self.out / "log.jsonl").open("a", encoding="utf-8")
        try:
            while self.step < until and not (should_stop is not None and should_stop()):
                # Every step's randomness (augmentation, then dropout) depends only on (seed, step): a resumed
                # run repeats the same steps whatever else consumed random numbers before (lazy priors do).
                rng = np.random.default_rng([self.seed, self.step])
                batch = make_batch(self.sample(self.step), self.features, self.targets, self.priors, self.recipe,
                                   rng).to(self.device)
                torch.manual_seed(int(rng.integers(2**62)))
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(self.recipe, self.step, self.steps)
                loss = self.loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                losses.append(float(loss.detach()))
                if self.step % 10 == 0 or self.step == self.steps:
                    spent = time.perf_counter() - t0
                    per_step = spent / len(losses)
                    recent = float(np.mean(losses[-10:]))
                    self.log(f"step {self.step}/{self.steps}  loss {recent:.4f}  {per_step:.2f} s/step  "
                             f"eta {per_step * (self.steps - self.step) / 60:.1f} min")
                    logf.write(json.dumps({"step": self.step, "loss": recent, "s_per_step": per_step}) + "\n")
                    logf.flush()
                if self.step % self.checkpoint_every == 0 or self.step == until:
                    self.save()
        finally:
            logf.close()
            self.model.eval()
        return losses
