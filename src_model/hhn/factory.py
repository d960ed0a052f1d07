"""``create_model``: one entry point for every way of naming a model (after open_clip's factory).

``name_or_path`` may be:

- ``"default"``: the checkpoint shipped inside the napari-wfss package, ``napari_wfss/models/default/``
  (looked up with ``importlib.resources``; works offline: its backbone is EfficientNet-Lite0, whose
  ImageNet file comes with a pip package);
- a preset name (``hhn.config.list_presets()``, e.g. ``"tlg-resnet50-pascal"``, ``"wfss-lite0"``):
  random heads, ImageNet backbone (for training);
- a checkpoint path: ``name.safetensors`` (with ``name.json`` beside it), ``name.json``, ``name``, or a
  single-file ``name.pt`` (see :mod:`hhn.checkpoints`);
- ``"local-dir:/folder"`` (or a folder path): the one checkpoint in that folder (``model.json`` wins
  when there are several).

``pretrained=False`` leaves the backbone randomly initialised where it would come from its ImageNet
file (tests; nothing is read or downloaded). Backbone files are looked for as described in
:mod:`hhn.weights`, with ``cache_dir`` searched first.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from hhn.checkpoints import FORMAT, TORCH_SUFFIXES, load_checkpoint
from hhn.errors import CheckpointError, UserError, WeightsNotFoundError

DEFAULT_NAME = "default"
#: Package and folder of the shipped default checkpoint.
DEFAULT_PACKAGE = "napari_wfss"
DEFAULT_FOLDER = ("models", "default")
LOCAL_DIR_PREFIX = "local-dir:"
PREFERRED_CHECKPOINT = "model.json"
_CHECKPOINT_SUFFIXES = (".safetensors", ".json", *TORCH_SUFFIXES)


def default_model_dir() -> Path | None:
    """The folder of the shipped default checkpoint, or None when this installation has none."""
    try:
        folder = resources.files(DEFAULT_PACKAGE).joinpath(*DEFAULT_FOLDER)
    except ModuleNotFoundError:
        return None
    return Path(str(folder)) if folder.is_dir() else None


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
        what = "no napari-wfss checkpoint" if not found else f"{len(found)} checkpoints ({', '.join(p.name for p in found)})"
        raise CheckpointError(f"{folder} holds {what}; a model folder holds one <name>.safetensors + "
                              f"<name>.json pair (or name it {PREFERRED_CHECKPOINT})")
    return found[0]


def _presets() -> list[str]:
    from hhn.config import list_presets

    return list_presets()


def _from_preset(name: str, pretrained: bool, device: str | torch.device,
                 cache_dir: str | os.PathLike | None) -> torch.nn.Module:
    from hhn.config import load_preset
    from hhn.device import select_device
    from hhn.network import HHN
    from hhn.weights import load_backbone_weights

    config = load_preset(name)
    model = HHN(config, pretrained_backbone=False)
    if pretrained:
        load_backbone_weights(config.backbone, model.backbone, cache_dir=cache_dir)
    return model.to(select_device(device)).eval()


def create_model(name_or_path: str | os.PathLike, pretrained: bool = True, device: str | torch.device = "auto",
                 cache_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """Build an :class:`hhn.network.HHN` from a name, a checkpoint or a folder (see the module docstring).

    Args:
        name_or_path: ``"default"``, a preset name, a checkpoint path, or ``"local-dir:/folder"``.
        pretrained: load ImageNet backbone weights where the backbone is not in the checkpoint.
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch.device.
        cache_dir: folder searched first for backbone weight files (and the download target).

    Returns:
        The model in eval mode on ``device``.

    Raises:
        WeightsNotFoundError: "default" is not shipped in this installation, or a backbone file is absent.
        CheckpointError: a checkpoint is missing, corrupt or does not match its config.
        UserError: the name is none of the above.
    """
    name = os.fspath(name_or_path)
    kwargs = {"pretrained": pretrained, "device": device, "cache_dir": cache_dir}
    if name == DEFAULT_NAME:
        folder = default_model_dir()
        if folder is None:
            raise WeightsNotFoundError(
                f"The default model is not part of this installation ({DEFAULT_PACKAGE}/"
                f"{'/'.join(DEFAULT_FOLDER)}/ with a <name>.safetensors + <name>.json checkpoint is missing). "
                "Reinstall napari-wfss, or pass a checkpoint path, local-dir:/folder, or a preset name "
                f"({', '.join(_presets())})."
            )
        return load_checkpoint(find_checkpoint_in_dir(folder), **kwargs)
    if name.startswith(LOCAL_DIR_PREFIX):
        return load_checkpoint(find_checkpoint_in_dir(name[len(LOCAL_DIR_PREFIX):]), **kwargs)
    if name in _presets():
        return _from_preset(name, **kwargs)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_checkpoint(find_checkpoint_in_dir(path), **kwargs)
    if path.exists() or path.suffix in _CHECKPOINT_SUFFIXES or path.with_name(path.name + ".json").is_file():
        return load_checkpoint(path, **kwargs)
    raise UserError(f"unknown model {name!r}: use 'default', a preset ({', '.join(_presets())}), a checkpoint "
                    "path (<name>.safetensors with <name>.json beside it), or local-dir:/folder")
