"""Multi-process training under ``torchrun``: the process group from the environment, rank queries and the
few collectives the training loop needs beyond DistributedDataParallel's gradient averaging.

``torchrun --nproc_per_node N -m napari_wfss.cli train ...`` starts N copies of ``wfss train`` with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_from_env`
joins the process group ("nccl" when training on CUDA, one GPU per local rank; "gloo" on the CPU); without
torchrun (or with one process) every function here is the single-process no-op, so the same code runs in
both cases.

Besides the default group, two gloo groups are made:

- a *preparation* group with a long timeout (:data:`PREPARE_TIMEOUT`), on which the other ranks wait
  while rank 0 computes the one-off banks (backbone features, tag priors: hours on a big dataset, far
  beyond the default 30-minute collective timeout that still guards the training steps);
- a *batch-norm* group carrying the batch statistics of the synchronised BatchNorm on the CPU
  (:func:`sync_batch_norm`), kept apart from DDP's gradient buckets.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hhn.errors import UserError

#: How long the other ranks wait for rank 0's one-off preparation (features, priors) before giving up.
PREPARE_TIMEOUT = timedelta(hours=48)

_groups: dict[str, Any] = {}


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched() -> bool:
    """Whether this process is one of several started by torchrun (before or after :func:`init_from_env`)."""
    return env_world_size() > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun with more than one process; returns this rank's
    device (``cuda:LOCAL_RANK`` for CUDA, ``device`` otherwise). Without torchrun: returns ``device``."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed: run wfss train without torchrun")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started local rank {local} but only {torch.cuda.device_count()} CUDA "
                            "device(s) are visible: use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"multi-process training runs on cuda (NCCL) or cpu (gloo), not {device.type!r}: "
                        "pass --device cuda or --device cpu, or run without torchrun")
    dist.init_process_group(backend)
    _groups["prepare"] = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    _groups["batch_norm"] = dist.new_group(backend=backend)
    return device


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    """Number of training processes (1 without torchrun)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes checkpoints, logs and caches."""
    return rank() == 0


def cleanup() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _groups.clear()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (which wait meanwhile, for up to
    :data:`PREPARE_TIMEOUT`): rank 0 writes a cache, the others read it."""
    if not active():
        yield
        return
    if not is_main():
        dist.barrier(group=_groups.get("prepare"))
    yield
    if is_main():
        dist.barrier(group=_groups.get("prepare"))


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; waits up to :data:`PREPARE_TIMEOUT`)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_groups.get("prepare"))
    return box[0]


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``value`` over the ranks (a new tensor; no gradient)."""
    value = value.detach().clone()
    if active():
        dist.all_reduce(value)
    return value


class _SumOverRanks(torch.autograd.Function):
    """Differentiable sum over the ranks: forward and backward are both an all-reduce (the gradient of
    rank r's input is the sum of every rank's output gradient), as in ``torch.distributed.nn``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batch slices of every rank, for the CPU (gloo), where
    ``torch.nn.SyncBatchNorm`` refuses to run. Mean and variance come from two differentiable all-reduces
    (``_SumOverRanks``; SyncBatchNorm's backward also all-reduces), so forward, backward and the running
    statistics equal those of plain BatchNorm2d on the whole batch in one process, up to float rounding.
    In eval mode it is plain BatchNorm2d."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module's argument name)
        if not (self.training and active()):
            return super().forward(input)
        group = _groups.get("batch_norm") or dist.group.WORLD
        x = input.float()
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        total = _SumOverRanks.apply(torch.cat([x.sum(dims), count[None]]), group)
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum(dims), group) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * var.detach() * (n / (n - 1).clamp(min=1)))
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(input.dtype)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace the BatchNorm2d layers of ``module`` by synchronised ones when several ranks train
    (``torch.nn.SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm` elsewhere); same parameters and buffers,
    so the state dict (and checkpoints) keep their keys. Returns the module (converted in place unless
    ``module`` itself is a BatchNorm)."""
    if not active():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=_groups.get("batch_norm"))
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, device=device)
        with torch.no_grad():  # the same parameter and buffer objects (as SyncBatchNorm.convert_sync_batchnorm)
            for name in ("weight", "bias"):
                setattr(synced, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, name, getattr(module, name))
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        converted = sync_batch_norm(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module

