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

Randomness of a step: the augmentation of its B episodes (flips, support weight) is drawn from
``np.random.default_rng([seed, step])`` in episode order, and the dropout masks of episode i from
``np.random.default_rng([seed, step, call, i])`` (``EpisodeDropout``; ``call`` counts the dropout layers
run in the step's forward pass), so an episode's randomness does not depend on which other episodes share
its batch.

Several processes (``torchrun``, see ``hhn.training.distributed``): with W ranks, rank r trains on the r-th
of W equal slices of the step's B episodes (B must be divisible by W) with the randomness the single
process would draw for them; the heads are wrapped in DistributedDataParallel (gradients averaged over the
ranks), their BatchNorm layers synchronised (batch statistics over the whole batch), and each rank's loss
divides its pixel sum by the mean pixel count per rank, so the averaged gradient and the logged
(all-reduced) loss are those of the whole batch in one process. Rank 0 alone writes checkpoints and
``log.jsonl``; every rank resumes from the same checkpoint.
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
from torch import nn

from hhn.data.base import IGNORE
from hhn.data.episodes import Episode
from hhn.errors import UserError
from hhn.training import distributed
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


Draw = tuple[bool, bool, bool]
"""One episode's augmentation: (flip the query, flip the support, weight the support by its true mask)."""


def draw_augmentation(n: int, recipe: Recipe, rng: np.random.Generator) -> list[Draw]:
    """The augmentation of ``n`` episodes, drawn from ``rng`` in episode order (per episode: the two flips
    when ``recipe.hflip``, then the support-mask choice)."""
    draws = []
    for _ in range(n):
        flip_query = recipe.hflip and rng.random() < 0.5
        flip_support = recipe.hflip and rng.random() < 0.5
        draws.append((flip_query, flip_support, rng.random() < recipe.support_mask_prob))
    return draws


def assemble_batch(episodes: Sequence[Episode], draws: Sequence[Draw], features: FeatureBank, targets: TargetBank,
                   priors: EpisodePriors) -> Batch:
    """Stack ``episodes`` (first support of each) with their augmentation ``draws`` into a batch."""
    cols: dict[str, list] = {k: [] for k in ("qf", "sf", "qp", "sp", "sw", "qt", "st")}
    for ep, (flip_query, flip_support, use_mask) in zip(episodes, draws, strict=True):
        q, s, c = ep.query, ep.supports[0], ep.class_name
        query_prior, support_prior = priors(ep)
        qf, qp, qt = _maybe_flip(features.features(q), query_prior, targets.target(q, c), flip_query)
        sf, sp, st = _maybe_flip(features.features(s), support_prior, targets.target(s, c), flip_support)
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


def make_batch(episodes: Sequence[Episode], features: FeatureBank, targets: TargetBank, priors: EpisodePriors,
               recipe: Recipe, rng: np.random.Generator) -> Batch:
    """Assemble one batch (first support of each episode; training is 1-shot as in the paper), its
    augmentation drawn from ``rng`` (``draw_augmentation``)."""
    return assemble_batch(episodes, draw_augmentation(len(episodes), recipe, rng), features, targets, priors)


def resize_like(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a binary ``(h, w)`` mask to ``shape`` (soft weights in [0, 1])."""
    t = torch.from_numpy(mask)[None, None]
    return F.adaptive_avg_pool2d(t, shape)[0, 0].numpy()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_void: bool,
                      pixels: float | None = None) -> torch.Tensor:
    """2-class pixel cross-entropy. logits (B, 2, h', w') are upsampled (bilinear, align_corners=True)
    to the target size (B, h, w). ``ignore_void``: 255 ignored; otherwise 255 counts as background
    (the released code's behaviour). The mean over the counted pixels, or with ``pixels`` their sum
    divided by ``pixels`` (a batch split over ranks: the mean count per rank, see ``counted_pixels``)."""
    logits = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=True)
    if not ignore_void:
        target = torch.where(target == IGNORE, torch.zeros_like(target), target)
    if pixels is None:
        return F.cross_entropy(logits, target, ignore_index=IGNORE)
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / pixels


def counted_pixels(target: torch.Tensor, ignore_void: bool) -> torch.Tensor:
    """How many pixels of ``target`` ``segmentation_loss`` averages over (float64 scalar)."""
    if not ignore_void:
        return torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device)
    return (target != IGNORE).sum().to(torch.float64)


class _DropoutKey:
    """Where the dropout masks of the running step come from: ``(seed, step, index of the batch's first
    episode in the step)`` while a training forward pass runs, None otherwise; ``calls`` counts the dropout
    layers run so far in the pass."""

    def __init__(self) -> None:
        self.key: tuple[int, int, int] | None = None
        self.calls = 0

    def begin(self, seed: int, step: int, first: int) -> None:
        self.key, self.calls = (seed, step, first), 0

    def end(self) -> None:
        self.key = None


class EpisodeDropout(nn.Dropout):
    """``nn.Dropout`` whose mask for batch row i (episode ``first + i`` of the step) is drawn from
    ``np.random.default_rng([seed, step, call, first + i])`` during a ``Trainer`` step: the same masks
    whether the step's episodes run in one batch or in slices on several ranks. Outside a step (or with
    ``p`` 0 or 1) it is ``nn.Dropout``. Has no parameters: state dicts are unchanged."""

    def __init__(self, p: float, source: _DropoutKey) -> None:
        super().__init__(p)
        self.source = source

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module's argument name)
        key = self.source.key
        if not self.training or key is None or not 0.0 < self.p < 1.0:
            return super().forward(input)
        seed, step, first = key
        call, self.source.calls = self.source.calls, self.source.calls + 1
        shape = tuple(input.shape[1:])
        keep = np.stack([np.random.default_rng([seed, step, call, first + i]).random(shape, dtype=np.float32)
                         >= self.p for i in range(input.shape[0])])
        scale = torch.from_numpy(keep).to(input.device, input.dtype) / (1.0 - self.p)
        return input * scale


class _StepLoss(nn.Module):
    """The loss of a batch as a module's forward, for DistributedDataParallel (which hooks ``forward``; the
    heads run through ``HHN.forward_features``). ``model`` is registered so DDP finds the parameters."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.compute = loss

    def forward(self, batch: Batch, pixels: tuple[float, float]) -> torch.Tensor:
        return self.compute(batch, pixels)


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

    The dropout layers of ``model`` become ``EpisodeDropout`` (per-episode masks). Under torchrun (a process
    group from ``hhn.training.distributed.init_from_env``) the trainer is distributed: build it on every
    rank at the same time with the same arguments; ``sample(step)`` returns the whole step's episodes on
    every rank, of which each rank trains on its slice; ``should_stop`` must answer alike on every rank.
    ``log.jsonl`` gets a line every ``log_every`` steps (the mean loss of those steps) and at the end.
    """

    log_every = 10

    def __init__(self, model, recipe: Recipe, out: str | Path, features: FeatureBank, targets: TargetBank,
                 priors: EpisodePriors, sample: Callable[[int], Sequence[Episode]], steps: int, seed: int = 0,
                 log: Callable[[str], object] = print, checkpoint_every: int = 100,
                 metadata: dict | None = None, amp: bool = False) -> None:
        self.model, self.recipe, self.out = model, recipe, Path(out)
        self.features, self.targets, self.priors, self.sample = features, targets, priors, sample
        self.steps, self.seed, self.log, self.checkpoint_every = steps, seed, log, checkpoint_every
        self.metadata = dict(metadata or {})
        self.device = next(model.parameters()).device
        self.world, self.rank, self.main = distributed.world(), distributed.rank(), distributed.is_main()
        self._dropout = _DropoutKey()
        _use_episode_dropout(model, self._dropout)
        if self.world > 1:  # batch statistics over every rank's slice (the backbone is frozen and never run)
            for name, child in list(model.named_children()):
                if name != "backbone":
                    setattr(model, name, distributed.sync_batch_norm(child, self.device))
        self.params = trainable_parameters(model)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self._ddp: nn.Module | None = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: some recipes leave heads without gradient (e.g. ``paper``: HC under
            # no_grad).
            self._ddp = DistributedDataParallel(
                _StepLoss(model, self.loss), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
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
        from hhn.checkpoints import BACKBONE_PREFIX, load_state_dict_file, load_weights_strictly

        if not (self.state_path.is_file() and self.model_path.is_file()):
            return False
        saved = load_state_dict_file(self.model_path)  # without the backbone when training left it unchanged
        load_weights_strictly(self.model, saved, self.model_path,
                              with_backbone=any(k.startswith(BACKBONE_PREFIX) for k in saved))
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.main:
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

    def loss(self, batch: Batch, pixels: tuple[float, float] | None = None) -> torch.Tensor:
        """The recipe's loss of one batch (float32; forward under autocast when ``amp``). ``pixels``: the
        (query, support) pixel counts to divide the summed cross-entropies by (see ``segmentation_loss``)."""
        r = self.recipe
        q_pixels, s_pixels = pixels if pixels is not None else (None, None)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            q_logits, s_logits = self.model.forward_features(
                batch.query_feats, batch.support_feats, batch.query_prior, batch.support_prior, None,
                support_weight=batch.support_weight, with_support=r.support_loss_weight > 0)
        loss = r.query_loss_weight * segmentation_loss(q_logits.float(), batch.query_target, r.ignore_void,
                                                       q_pixels)
        if s_logits is not None:
            loss = loss + r.support_loss_weight * segmentation_loss(s_logits.float(), batch.support_target,
                                                                    r.ignore_void, s_pixels)
        if r.norm_penalty:
            loss = loss + r.norm_penalty * sum(p.norm() for p in self.params)
        return loss

    def _slice(self, n: int) -> tuple[int, int]:
        """This rank's episodes ``[lo, hi)`` of a step's ``n``."""
        if n % self.world:
            raise UserError(f"the batch of {n} episodes per step cannot be split evenly over {self.world} "
                            f"processes: use a process count that divides {n}")
        share = n // self.world
        return self.rank * share, (self.rank + 1) * share

    def _step_loss(self, batch: Batch) -> torch.Tensor:
        """This rank's loss of its slice: the batch loss in one process; with W ranks the pixel sums divided
        by the mean pixel count per rank, so DDP's average of the ranks' gradients is the whole batch's."""
        if self._ddp is None:
            return self.loss(batch)
        ignore = self.recipe.ignore_void
        counts = torch.stack([counted_pixels(batch.query_target, ignore), counted_pixels(batch.support_target, ignore)])
        per_rank = (distributed.sum_over_ranks(counts) / self.world).tolist()
        return self._ddp(batch, (per_rank[0], per_rank[1]))

    def run(self, until: int | None = None, should_stop: Callable[[], bool] | None = None) -> list[float]:
        """Train from ``self.step`` to ``until`` (default: ``self.steps``; the schedule always spans
        ``self.steps``); returns the per-step losses of this call (of the whole batch, on every rank).
        ``should_stop()`` is asked before every step: True ends the call early (``self.step`` tells how far
        it got; nothing is checkpointed)."""
        until = self.steps if until is None else min(until, self.steps)
        self.model.train()
        losses, t0 = [], time.perf_counter()
        logf = (self.out / "log.jsonl").open("a", encoding="utf-8") if self.main else None
        try:
            while self.step < until and not (should_stop is not None and should_stop()):
                # Every step's randomness (augmentation, then dropout) depends only on (seed, step): a resumed
                # run repeats the same steps whatever else consumed random numbers before (lazy priors do).
                rng = np.random.default_rng([self.seed, self.step])
                episodes = list(self.sample(self.step))
                draws = draw_augmentation(len(episodes), self.recipe, rng)
                torch.manual_seed(int(rng.integers(2**62)))
                lo, hi = self._slice(len(episodes))
                batch = assemble_batch(episodes[lo:hi], draws[lo:hi], self.features, self.targets,
                                       self.priors).to(self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(self.recipe, self.step, self.steps)
                self._dropout.begin(self.seed, self.step, lo)
                try:
                    loss = self._step_loss(batch)
                finally:
                    self._dropout.end()
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                if self.world > 1:
                    losses.append(float(distributed.sum_over_ranks(loss) / self.world))
                else:
                    losses.append(float(loss.detach()))
                if self.main and (self.step % self.log_every == 0 or self.step == self.steps):
                    spent = time.perf_counter() - t0
                    per_step = spent / len(losses)
                    recent = float(np.mean(losses[-self.log_every:]))
                    self.log(f"step {self.step}/{self.steps}  loss {recent:.4f}  {per_step:.2f} s/step  "
                             f"eta {per_step * (self.steps - self.step) / 60:.1f} min")
                    assert logf is not None
                    logf.write(json.dumps({"step": self.step, "loss": recent, "s_per_step": per_step}) + "\n")
                    logf.flush()
                if self.main and (self.step % self.checkpoint_every == 0 or self.step == until):
                    self.save()
        finally:
            if logf is not None:
                logf.close()
            self.model.eval()
        return losses


def _use_episode_dropout(model: nn.Module, source: _DropoutKey) -> None:
    """Replace the ``nn.Dropout`` layers of ``model`` by ``EpisodeDropout`` layers reading ``source``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, EpisodeDropout):
                child.source = source
            elif type(child) is nn.Dropout:
                setattr(module, name, EpisodeDropout(child.p, source))
