"""Our checkpoint format, and the converter for the authors' TLG ``best_model.pt``.

A checkpoint ``<name>`` is two files side by side:

- ``<name>.safetensors``: the model's state dict (plain tensors, no pickle);
- ``<name>.json``: ``{"format": "napari-wfss-checkpoint", "format_version": 1, "config": <HHNConfig
  dict>, "backbone_weights": {...}, "weights_sha256": ..., "written_by": ..., "metadata": {...}}``.

``backbone_weights`` says where the backbone comes from:

- ``{"source": "checkpoint"}``: the ``backbone.*`` tensors are in the safetensors file (e.g. the
  authors' models, whose backbone drifted during training);
- ``{"source": "pretrained", "file": "<name of the ImageNet file>"}``: the backbone is left out and
  reloaded from its pretrained file through :mod:`hhn.weights.files` (the shipped default model stores only
  the trained heads: 11.7 MB instead of 23.7 MB for ``wfss-lite0``; 14.7 MB instead of 109 MB for
  ``tlg-resnet50-*``).
  :func:`save_checkpoint` chooses this automatically only when the model's backbone is bit-identical
  to the pretrained file, so no trained weight is ever dropped.

Both files are written atomically (temporary file in the same folder, then ``os.replace``); the JSON
is written last and records the SHA-256 of the tensor file, so a half-written or mismatched pair is
refused. A single-file variant ``<name>.pt`` (``torch.save`` of the same fields plus
``state_dict``) is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hhn.errors import CheckpointError, UserError
from hhn.model_names import (
    FORMAT,
    FORMAT_VERSION,
    TORCH_SUFFIXES,
    checkpoint_files,
    parse_header,
    read_header,
)

if TYPE_CHECKING:
    from hhn.config import HHNConfig
    from hhn.network import HHN

BACKBONE_PREFIX = "backbone."
MAX_KEYS_SHOWN = 5  #: keys named per kind of mismatch in a CheckpointMismatchError


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not fit the model its config describes (missing, unexpected or differently
    shaped keys); nothing is loaded. The message names the file and the first offending keys."""


@dataclass
class Checkpoint:
    """A checkpoint read from disk, before a model is built.

    config: the HHNConfig; state_dict: name -> CPU tensor (without ``backbone.*`` when
    ``backbone_source == "pretrained"``); metadata: free-form training metadata; path: the file read.
    """

    config: HHNConfig
    state_dict: dict[str, torch.Tensor]
    backbone_source: str
    metadata: dict = field(default_factory=dict)
    path: Path | None = None


# ----------------------------------------------------------------------------------------------
# Paths and atomic writes
# ----------------------------------------------------------------------------------------------
def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then rename it onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def backbone_is_pretrained(model: HHN) -> bool:
    """True when ``model.backbone`` equals its ImageNet file bit for bit (the file must be on disk)."""
    from hhn.weights.files import find_weight_file, load_weight_state_dict

    name = model.config.backbone
    if find_weight_file(name) is None:
        return False
    try:
        pretrained = load_weight_state_dict(name)
    except UserError:
        return False
    for key, value in model.backbone.state_dict().items():
        if key not in pretrained:
            if key.endswith("num_batches_tracked"):  # absent from old torchvision files; unused in eval
                continue
            return False
        if not torch.equal(value.detach().cpu(), pretrained[key]):
            return False
    return True


def write_checkpoint(config: HHNConfig, state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     include_backbone: bool, metadata: dict | None = None) -> Path:
    """Write a config + state dict in our format (see :func:`save_checkpoint` for ``path``).

    ``include_backbone`` False drops the ``backbone.*`` tensors and records that the backbone is
    reloaded from its pretrained file. Returns the tensor file written.
    """
    from safetensors.torch import save_file

    import hhn
    from hhn.weights.files import WEIGHT_FILES

    backbone = ({"source": "checkpoint"} if include_backbone else
                {"source": "pretrained", "file": WEIGHT_FILES[config.backbone].filename})
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
              "backbone_weights": backbone, "written_by": f"hhn {hhn.__version__}",
              "metadata": dict(metadata or {})}
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()
             if include_backbone or not k.startswith(BACKBONE_PREFIX)}
    path = Path(path)
    if path.suffix in TORCH_SUFFIXES:
        atomic_write(path, lambda tmp: torch.save({**header, "state_dict": state}, tmp))
        return path
    tensors, meta = checkpoint_files(path)
    atomic_write(tensors, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
    header["weights_sha256"] = _sha256(tensors)
    atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(header, indent=1), encoding="utf-8"))
    return tensors


def save_checkpoint(model: HHN, path: str | os.PathLike, metadata: dict | None = None,
                    include_backbone: bool | None = None) -> Path:
    """Write ``model`` (an :class:`hhn.network.HHN`) in our format.

    Args:
        model: the network; its ``config`` (HHNConfig) is stored beside the weights.
        path: ``name``, ``name.safetensors`` or ``name.json`` (both files are written), or
            ``name.pt`` for the single-file torch variant.
        metadata: JSON-serialisable training metadata (step, dataset, recipe, ...).
        include_backbone: True stores the backbone; False leaves it out (it will be reloaded from
            the pretrained file: only for an untouched backbone); None (default) leaves it out only
            when it is bit-identical to the pretrained file on disk.

    Returns:
        The tensor file written (``.safetensors`` or ``.pt``).
    """
    if include_backbone is None:
        include_backbone = not backbone_is_pretrained(model)
    return write_checkpoint(model.config, model.state_dict(), path, include_backbone, metadata)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (CPU); CheckpointError when absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated "
                              "or corrupt: copy or re-create it") from exc


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (``name[.safetensors|.json]`` pair, or a ``.pt`` file) without building a model.

    Raises:
        CheckpointError: missing file, unreadable or corrupt file, wrong format or newer version.
    """
    path = Path(path)
    if path.suffix in TORCH_SUFFIXES:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found")
        data = _load_pickle_safely(path, "convert it to safetensors where it was made, or use a .safetensors "
                                          "checkpoint")
        config, source, metadata = parse_header(data, path)
        state = data.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
        return Checkpoint(config, state, source, metadata, path)
    tensors, meta = checkpoint_files(path)
    header = read_header(meta)
    config, source, metadata = parse_header(header, meta)
    state = load_state_dict_file(tensors)
    expected = header.get("weights_sha256")
    if expected and _sha256(tensors) != expected:
        raise CheckpointError(f"{tensors} does not match {meta.name} (SHA-256 differs): the pair is "
                              "incomplete or the weights were replaced; copy both files again")
    return Checkpoint(config, state, source, metadata, tensors)


def _listed(title: str, keys: list[str]) -> str:
    """``"title (n): k1, k2, ..."`` naming the first :data:`MAX_KEYS_SHOWN` keys."""
    more = f", ... ({len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else ""
    return f"{title} ({len(keys)}): {', '.join(keys[:MAX_KEYS_SHOWN])}{more}"


def load_weights_strictly(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike | None,
                          with_backbone: bool = True) -> None:
    """Load ``state_dict`` into ``model`` only if it holds exactly the model's tensors, each of the model's
    shape; ``with_backbone`` False: exactly the tensors outside ``backbone.*`` (those keep the model's
    values). Else raise :class:`CheckpointMismatchError` naming ``path`` (the file the tensors were read
    from) and the first offending keys, with ``model`` untouched."""
    own = model.state_dict()
    expected = {k: v for k, v in own.items() if with_backbone or not k.startswith(BACKBONE_PREFIX)}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
                if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or reshaped:
        parts = [_listed(title, keys) for title, keys in (("missing", missing), ("unexpected", unexpected),
                                                           ("of another shape", reshaped)) if keys]
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise CheckpointMismatchError(
            f"checkpoint weights do not fit the {name!r} model ({'; '.join(parts)}): {path}; it was written for "
            "another model or config: load it with the .json written beside it, or train or convert it again")
    kept = {k: v for k, v in own.items() if k not in expected}  # the backbone, when it is not in the file
    model.load_state_dict({**kept, **state_dict}, strict=True)


def build_from_checkpoint(ckpt: Checkpoint, pretrained: bool = True, device: str | torch.device = "cpu",
                          cache_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """Build the HHN of ``ckpt`` and load its weights strictly (:func:`load_weights_strictly`: a
    checkpoint that does not fit raises :class:`CheckpointMismatchError`).

    Args:
        ckpt: from :func:`read_checkpoint`.
        pretrained: for a checkpoint without backbone, load the backbone's ImageNet file (True) or
            leave it randomly initialised (False, for tests).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch.device.
        cache_dir: extra folder searched first for the backbone file (see :mod:`hhn.weights.files`).

    Returns:
        The model in eval mode on ``device``.
    """
    from hhn.device import select_device
    from hhn.network import HHN
    from hhn.weights.files import load_backbone_weights

    model = HHN(ckpt.config, pretrained_backbone=False)
    expect_backbone = ckpt.backbone_source == "checkpoint"
    load_weights_strictly(model, ckpt.state_dict, ckpt.path, with_backbone=expect_backbone)
    if not expect_backbone and pretrained:
        load_backbone_weights(ckpt.config.backbone, model.backbone, cache_dir=cache_dir)
    return model.to(select_device(device)).eval()


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", pretrained: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """Read a checkpoint and return its :class:`hhn.network.HHN` in eval mode on ``device``.

    See :func:`read_checkpoint` (errors) and :func:`build_from_checkpoint` (``pretrained``, ``cache_dir``;
    :class:`CheckpointMismatchError` for tensors that do not fit the config).
    """
    return build_from_checkpoint(read_checkpoint(path), pretrained=pretrained, device=device, cache_dir=cache_dir)


# ----------------------------------------------------------------------------------------------
# `wfss convert-tlg SRC DST`
# ----------------------------------------------------------------------------------------------
def _load_pickle_safely(path: Path, hint: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, nothing of the file runs.
    CheckpointError (reason first, then the path and ``hint``) for anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: not loadable safely
        text = str(exc)
        called = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        refused = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        if called:
            reason = f"refused: unpickling it would call {called.group(1)}"
        elif refused:
            reason = f"refused: it holds more than tensors and plain values ({refused.group(1).strip()})"
        else:
            reason = f"unreadable as tensors ({type(exc).__name__}: {text.splitlines()[0][:160]})"
        raise CheckpointError(f"{reason} (only tensors and plain values are loaded from a pickle, so nothing "
                              f"in it runs): {path}; {hint}") from exc


def read_tlg_state_dict(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the authors' ``best_model.pt`` (a plain state dict) with ``weights_only=True``."""
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src} not found; give the path of the authors' best_model.pt")
    state = _load_pickle_safely(src, "expected the state dict saved by the released train.py")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{src} holds a {type(state).__name__}, not a state dict of tensors "
                              "(expected torch.save(model.state_dict()) of the released train.py)")
    return state


def _layers(keys: list[str]) -> dict[str, list[str]]:
    """Group keys by layer: ``'module.conv1024_512.weight'`` -> ``{'module.conv1024_512': ['weight']}``."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        layer, _, leaf = key.rpartition(".")
        groups.setdefault(layer, []).append(leaf)
    return groups


def convert_tlg_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, backbone: str | None = None,
                           benchmark: str = "pascal", log: Callable[[str], None] = print) -> Path:
    """Convert an authors' ``best_model.pt`` into our format (backbone included: it drifted in training).

    Args:
        src: the authors' file. dst: our checkpoint name (``.safetensors`` / ``.json`` written).
        backbone: ``resnet50`` / ``vgg16``; detected from the keys when None.
        benchmark: ``pascal`` / ``coco``: the phrase tables the model was trained with (the
            ``tlg-<backbone>-<benchmark>`` preset is stored as its config).
        log: receives the report lines.

    Returns:
        The tensor file written. Raises CheckpointError on a missing file, a non-state-dict, or
        missing / unexpected keys or shapes (the message lists them).
    """
    from hhn.config import load_preset
    from hhn.tlg_keys import DATA_PARALLEL_PREFIX, convert_tlg_state_dict, detect_backbone

    state = read_tlg_state_dict(src)
    if backbone is None:
        backbone = detect_backbone([k.removeprefix(DATA_PARALLEL_PREFIX) for k in state])
        log(f"backbone: {backbone} (detected from the keys)")
    converted, dropped = convert_tlg_state_dict(state, backbone=backbone)
    config = load_preset(f"tlg-{backbone}-{benchmark}")
    log(f"mapped {len(converted)} of {len(state)} tensors onto {config.name}: 0 missing, 0 unexpected keys")
    log(f"dropped {len(dropped)} tensors of layers the released forward never uses:")
    for layer, leaves in _layers(dropped).items():
        log(f"  {layer} ({', '.join(leaves)})")

    metadata = {"converted_from": Path(src).name, "source_sha256": _sha256(Path(src)),
                "dropped_keys": dropped, "benchmark": benchmark}
    written = write_checkpoint(config, converted, dst, include_backbone=True, metadata=metadata)
    log(f"wrote {written} and {checkpoint_files(written)[1].name}")
    return written


def run_convert_cli(args) -> int:
    """``wfss convert-tlg SRC DST [--backbone B] [--benchmark pascal|coco]``."""
    convert_tlg_checkpoint(args.src, args.dst, backbone=args.backbone, benchmark=args.benchmark)
    return 0
