"""Compute-device selection: ``select_device("auto"|"cpu"|"cuda"|"mps") -> torch.device``; CPU thread count;
inference precision (``inference_dtype``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from hhn.device_names import DEVICE_NAMES, PRECISIONS
from hhn.errors import UserError


def available_devices() -> list[str]:
    """Device types usable in this process, in the order ``auto`` prefers them (cpu always last)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(name: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``name``.

    ``"auto"`` picks cuda, then mps, then cpu. Asking for a device type that is not available raises
    :class:`~hhn.errors.UserError` naming the ones that are. A ``torch.device`` (or a string such as
    ``"cuda:1"``) is accepted and checked the same way.
    """
    if isinstance(name, torch.device):
        kind = name.type
    else:
        text = str(name).strip().lower()
        kind = text.split(":", 1)[0]
        if kind not in DEVICE_NAMES:
            raise UserError(f"unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)}")
        if kind == "auto":
            return torch.device(available_devices()[0])
        name = text
    available = available_devices()
    if kind not in available:
        raise UserError(f"device {kind!r} is not available here; available: {', '.join(available)} "
                        f"(use --device auto to pick the best one)")
    return torch.device(name)


def set_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads (None: leave torch's default); below 1 raises UserError."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of inference at ``precision`` (one of :data:`PRECISIONS`) on ``device``, or None
    for plain float32. ``auto``: float16 on CUDA (tensor cores, half the memory), float32 elsewhere (on a
    CPU without native half arithmetic the low-precision kernels are slower, not faster)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return None if precision == "float32" else getattr(torch, precision)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: as they are), then restore the count.
    The count is process-wide: the block should be the only torch work of the process meanwhile."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    set_cpu_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
