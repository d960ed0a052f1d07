"""What a model name points at, and the checkpoint header's rules, without importing torch.

:func:`hhn.factory.create_model` builds a model from a name; this module only resolves the name
(:func:`resolve_model_name`) and reads the config a checkpoint or preset declares
(:func:`declared_config`), so a process that must not load torch (the napari widget) can show what a
model will do before it is built. Names:

- a registered name (:mod:`hhn.model_registry`: a checkpoint an installed package publishes in the
  entry-point group ``hhn.models``, or one named with ``register_model``); ``"default"`` is the model
  used when none is named;
- a preset name (``hhn.config.list_presets()``);
- ``"local-dir:/folder"`` or a folder path: the one checkpoint in that folder (``model.json`` wins);
- a checkpoint path: ``name.safetensors`` (with ``name.json`` beside it), ``name.json``, ``name``, or a
  single-file ``name.pt`` / ``name.pth``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhn.errors import CheckpointError, UserError, WeightsNotFoundError
from hhn.model_registry import ENTRY_POINT_GROUP, registered_model, registered_names
from hhn.registry import LOCAL_DIR_PREFIX

if TYPE_CHECKING:
    from hhn.config import HHNConfig

FORMAT = "napari-wfss-checkpoint"
FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth")
#: the registered name of the model used when none is named
DEFAULT_NAME = "default"
PREFERRED_CHECKPOINT = "model.json"
_CHECKPOINT_SUFFIXES = (".safetensors", ".json", *TORCH_SUFFIXES)


def checkpoint_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(tensor file, json file)`` of a checkpoint given as ``name``, ``name.safetensors`` or ``name.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def parse_header(header: Any, where: Path) -> tuple[HHNConfig, str, dict]:
    """``(config, backbone source, metadata)`` of a checkpoint header (the JSON file's content).

    Raises:
        CheckpointError: not our format, a newer format version, an invalid config or backbone source.
    """
    from hhn.config import HHNConfig

    if not isinstance(header, dict) or header.get("format") != FORMAT:
        hint = ""
        if isinstance(header, dict) and any(str(k).startswith("module.") for k in header):
            hint = " It looks like an authors' TLG best_model.pt: convert it with `wfss convert-tlg SRC DST`."
        raise CheckpointError(f"{where} is not a napari-wfss checkpoint (no '\"format\": \"{FORMAT}\"').{hint}")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has checkpoint format version {version!r}; this napari-wfss reads "
                              f"up to {FORMAT_VERSION}: upgrade napari-wfss")
    try:
        config = HHNConfig.from_dict(header["config"])
    except (KeyError, TypeError, UserError) as exc:
        raise CheckpointError(f"{where}: invalid model config: {exc}") from exc
    source = header.get("backbone_weights", {}).get("source")
    if source not in ("checkpoint", "pretrained"):
        raise CheckpointError(f"{where}: backbone_weights.source must be 'checkpoint' or 'pretrained', not {source!r}")
    return config, source, dict(header.get("metadata") or {})


def read_header(meta: Path) -> dict:
    """The parsed JSON file ``meta`` of a checkpoint pair; :class:`CheckpointError` if absent or not JSON."""
    if not meta.is_file():
        raise CheckpointError(f"checkpoint config {meta} not found (a checkpoint is {meta.stem}.safetensors + "
                              f"{meta.name})")
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta} is not valid JSON ({exc})") from exc


def default_model_dir() -> Path | None:
    """The folder of the checkpoint registered as ``"default"``, or None when no model has that name."""
    path = registered_model(DEFAULT_NAME)
    return path if path is None or path.is_dir() else path.parent


def _is_our_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def find_checkpoint_in_dir(folder: str | os.PathLike) -> Path:
    """The checkpoint (its ``.json``) in ``folder``: ``model.json`` if present, else the only one."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} not found")
    if (folder / PREFERRED_CHECKPOINT).is_file():
        return folder / PREFERRED_CHECKPOINT
    found = sorted(p for p in folder.glob("*.json") if _is_our_json(p))
    if len(found) != 1:
        what = ("no napari-wfss checkpoint" if not found else
                f"{len(found)} checkpoints ({', '.join(p.name for p in found)})")
        raise CheckpointError(f"{folder} holds {what}; a model folder holds one <name>.safetensors + "
                              f"<name>.json pair (or name it {PREFERRED_CHECKPOINT})")
    return found[0]


def _presets() -> list[str]:
    from hhn.config import list_presets

    return list_presets()


def resolve_model_name(name_or_path: str | os.PathLike) -> str | Path:
    """A preset's name (``str``) or a checkpoint file (``Path``) for a model name (module docstring).

    Raises:
        WeightsNotFoundError: ``"default"`` is not registered, or a registered model's files are absent.
        CheckpointError: a model folder is missing or holds no single checkpoint.
        UserError: the name is none of the accepted kinds (the message lists the known names).
    """
    name = os.fspath(name_or_path)
    if name.startswith(LOCAL_DIR_PREFIX):
        return find_checkpoint_in_dir(name[len(LOCAL_DIR_PREFIX):])
    registered = registered_model(name)
    if registered is not None:
        return find_checkpoint_in_dir(registered) if registered.is_dir() else registered
    if name in _presets():
        return name
    if name == DEFAULT_NAME:
        raise WeightsNotFoundError(f"The default model is not part of this installation: no installed package "
                                   f"publishes a model named {DEFAULT_NAME!r} (entry-point group "
                                   f"{ENTRY_POINT_GROUP}). Reinstall the package that ships it, or pass {_known()}")
    path = Path(name).expanduser()
    if path.is_dir():
        return find_checkpoint_in_dir(path)
    if path.exists() or path.suffix in _CHECKPOINT_SUFFIXES or path.with_name(path.name + ".json").is_file():
        return path
    raise UserError(f"unknown model {name!r}: use {_known()}")


def _known() -> str:
    """The kinds of model names, with the known names, for messages."""
    names = ", ".join(registered_names()) or "none installed"
    return (f"a registered model ({names}), a preset ({', '.join(_presets())}), a checkpoint path "
            "(<name>.safetensors with <name>.json beside it), or local-dir:/folder")


def declared_config(name_or_path: str | os.PathLike) -> HHNConfig | None:
    """The config a model name declares, read from its preset or checkpoint JSON without loading weights;
    None for a single-file ``.pt`` checkpoint (reading it needs torch).

    Raises:
        the errors of :func:`resolve_model_name` and :func:`parse_header`, or :class:`CheckpointError`
        when the checkpoint's JSON is absent or invalid.
    """
    from hhn.config import load_preset

    target = resolve_model_name(name_or_path)
    if isinstance(target, str):
        return load_preset(target)
    if target.suffix in TORCH_SUFFIXES:
        return None
    meta = checkpoint_files(target)[1]
    return parse_header(read_header(meta), meta)[0]
