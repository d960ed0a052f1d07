"""``create_model``: one entry point for every way of naming a model (after open_clip's factory).

``name_or_path`` is resolved by :func:`hhn.model_names.resolve_model_name`: a registered model name
(:mod:`hhn.model_registry`, e.g. ``"default"``, the model used when none is named), a preset name
(``hhn.config.list_presets()``, e.g. ``"tlg-resnet50-pascal"``, ``"wfss-lite0"``: random heads,
ImageNet backbone, for training), a checkpoint path (see :mod:`hhn.checkpoints`), or ``"local-dir:/folder"``
(or a folder path).

``pretrained=False`` leaves the backbone randomly initialised where it would come from its ImageNet
file (tests; nothing is read or downloaded). Backbone files are looked for as described in
:mod:`hhn.weights.files`, with ``cache_dir`` searched first.
"""

from __future__ import annotations

import os

import torch

from hhn.checkpoints import load_checkpoint
from hhn.model_names import resolve_model_name


def _from_preset(name: str, pretrained: bool, device: str | torch.device,
                 cache_dir: str | os.PathLike | None) -> torch.nn.Module:
    from hhn.config import load_preset
    from hhn.device import select_device
    from hhn.network import HHN
    from hhn.weights.files import load_backbone_weights

    config = load_preset(name)
    model = HHN(config, pretrained_backbone=False)
    if pretrained:
        load_backbone_weights(config.backbone, model.backbone, cache_dir=cache_dir)
    return model.to(select_device(device)).eval()


def create_model(name_or_path: str | os.PathLike, pretrained: bool = True, device: str | torch.device = "auto",
                 cache_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """Build an :class:`hhn.network.HHN` from a name, a checkpoint or a folder (see the module docstring).

    Args:
        name_or_path: a registered name (``"default"``), a preset name, a checkpoint path, or
            ``"local-dir:/folder"``.
        pretrained: load ImageNet backbone weights where the backbone is not in the checkpoint.
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch.device.
        cache_dir: folder searched first for backbone weight files (and the download target).

    Returns:
        The model in eval mode on ``device``.

    Raises:
        WeightsNotFoundError: "default" is not registered in this installation, or a backbone file is absent.
        CheckpointError: a checkpoint is missing, corrupt or does not match its config.
        UserError: the name is none of the above.
    """
    target = resolve_model_name(name_or_path)
    if isinstance(target, str):
        return _from_preset(target, pretrained=pretrained, device=device, cache_dir=cache_dir)
    return load_checkpoint(target, pretrained=pretrained, device=device, cache_dir=cache_dir)
