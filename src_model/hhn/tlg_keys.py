"""Key mapping from the authors' TLG checkpoints (``best_model.pt``) to :class:`hhn.network.HHN`.

The released ``train.py`` saves the state dict of ``nn.DataParallel(tlg(...))``: every key starts
with ``module.`` (spec section 5). The mapping, after removing that prefix:

================================================  ===================================================
authors' key prefix                               our key prefix
================================================  ===================================================
``backbone.``                                     ``backbone.`` (torchvision names, 1:1)
``hpn_learner.encoder_layer4.{0,3,6}.conv1.``     ``correlation_encoder.squeeze_deep.{0,1,2}.conv.first.``
``hpn_learner.encoder_layer4.{0,3,6}.conv2.``     ``correlation_encoder.squeeze_deep.{0,1,2}.conv.second.``
``hpn_learner.encoder_layer4.{1,4,7}.``           ``correlation_encoder.squeeze_deep.{0,1,2}.norm.``
  (same for ``encoder_layer3`` -> ``squeeze_middle``, ``encoder_layer2`` -> ``squeeze_shallow``,
  ``encoder_layer4to3`` -> ``mix_deep_middle``, ``encoder_layer3to2`` -> ``mix_middle_shallow``)
``conv_512_128.`` / ``conv_1024_128.`` /          ``aggregation.project.from512.`` / ``from1024.`` /
``conv_2048_128.``                                ``from2048.``
``final_cat.``                                    ``aggregation.fuse.``
``merge.0.``                                      ``aggregation.cross_merge.``
``SelfAttention.q.`` / ``.kv.`` / ``.proj.``      ``transport.self_attention.query.`` / ``key_value.`` / ``out.``
``CrossAttention.q_fc.`` / ``k_fc.`` / ``v_fc.``  ``transport.cross_attention.query.`` / ``key.`` /
/ ``proj.``                                       ``value.`` / ``out.``
``proj.``                                         ``transport.expand.``
``bn.``                                           ``transport.norm.``
``linear_512_625.``                               ``text.to_map.``
``conv_2_1.``                                     ``text.merge_fg_bg.``
``decoder1.`` / ``decoder2.`` / ``res.``          ``decoder.coarse.`` / ``decoder.fine.`` / ``decoder.prior_fusion.``
================================================  ===================================================

Dropped (defined but never used by the released forward): ``conv1024_512.``, ``voc_conv_bach.``,
``coco_conv_batch.``, the backbone's ``backbone.fc.`` (ResNet) / ``backbone.classifier.`` (VGG), and
for VGG-16 also ``conv_1024_128.`` and ``conv_2048_128.``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from hhn.errors import CheckpointError

#: Prefix added by ``nn.DataParallel``.
DATA_PARALLEL_PREFIX = "module."

_ENCODER_BLOCKS = {
    "encoder_layer4": "squeeze_deep",
    "encoder_layer3": "squeeze_middle",
    "encoder_layer2": "squeeze_shallow",
    "encoder_layer4to3": "mix_deep_middle",
    "encoder_layer3to2": "mix_middle_shallow",
}
#: Authors' Sequential index inside an encoder block -> (our unit index, sub-module).
_ENCODER_LAYERS = {
    "0.conv1": "0.conv.first", "0.conv2": "0.conv.second", "1": "0.norm",
    "3.conv1": "1.conv.first", "3.conv2": "1.conv.second", "4": "1.norm",
    "6.conv1": "2.conv.first", "6.conv2": "2.conv.second", "7": "2.norm",
}
_ENCODER_KEY = re.compile(r"hpn_learner\.(encoder_layer\w+?)\.(\d(?:\.conv[12])?)\.(weight|bias)$")

#: Prefix renames of the non-encoder layers (authors' -> ours); the first matching entry wins.
PREFIX_MAP = (
    ("backbone.", "backbone."),
    ("conv_512_128.", "aggregation.project.from512."),
    ("conv_1024_128.", "aggregation.project.from1024."),
    ("conv_2048_128.", "aggregation.project.from2048."),
    ("final_cat.", "aggregation.fuse."),
    ("merge.0.", "aggregation.cross_merge."),
    ("SelfAttention.q.", "transport.self_attention.query."),
    ("SelfAttention.kv.", "transport.self_attention.key_value."),
    ("SelfAttention.proj.", "transport.self_attention.out."),
    ("CrossAttention.q_fc.", "transport.cross_attention.query."),
    ("CrossAttention.k_fc.", "transport.cross_attention.key."),
    ("CrossAttention.v_fc.", "transport.cross_attention.value."),
    ("CrossAttention.proj.", "transport.cross_attention.out."),
    ("proj.", "transport.expand."),
    ("bn.", "transport.norm."),
    ("linear_512_625.", "text.to_map."),
    ("conv_2_1.", "text.merge_fg_bg."),
    ("decoder1.", "decoder.coarse."),
    ("decoder2.", "decoder.fine."),
    ("res.", "decoder.prior_fusion."),
)

_LEGACY_COMMON = ("conv1024_512.", "voc_conv_bach.", "coco_conv_batch.")
#: Unused layers of the released model, per backbone (key prefixes after ``module.``).
LEGACY_PREFIXES = {
    "resnet50": (*_LEGACY_COMMON, "backbone.fc."),
    "vgg16": (*_LEGACY_COMMON, "backbone.classifier.", "conv_1024_128.", "conv_2048_128."),
}


def map_tlg_key(key: str) -> str | None:
    """Our name for one authors' key (without ``module.``), or None if no rule matches."""
    match = _ENCODER_KEY.match(key)
    if match:
        block, layer, leaf = match.groups()
        if block in _ENCODER_BLOCKS and layer in _ENCODER_LAYERS:
            return f"correlation_encoder.{_ENCODER_BLOCKS[block]}.{_ENCODER_LAYERS[layer]}.{leaf}"
        return None
    for old, new in PREFIX_MAP:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def detect_backbone(keys: list[str]) -> str:
    """'resnet50' or 'vgg16' from the backbone keys (prefix-free); CheckpointError otherwise."""
    if any(k.startswith("backbone.layer4.") for k in keys):
        return "resnet50"
    if any(k.startswith("backbone.features.28.") for k in keys):
        return "vgg16"
    raise CheckpointError("cannot tell the backbone of this TLG checkpoint (no ResNet-50 layer4 or VGG-16 "
                          "features keys); pass --backbone resnet50|vgg16")


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    prefixed = [k.startswith(DATA_PARALLEL_PREFIX) for k in keys]
    if all(prefixed):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    if any(prefixed):
        raise CheckpointError("TLG checkpoint mixes 'module.'-prefixed and plain keys; it is not a "
                              "state dict saved by the released train.py")
    return dict(state_dict)


def _expected_state(backbone: str) -> dict[str, torch.Size]:
    """Key -> shape of our model for the authors' configuration (built on the meta device)."""
    from hhn.config import load_preset
    from hhn.network import HHN

    with torch.device("meta"):
        model = HHN(load_preset(f"tlg-{backbone}-pascal"))
    return {k: v.shape for k, v in model.state_dict().items()}


def _listing(title: str, keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{title} ({len(keys)}): {shown}"


def convert_tlg_state_dict(state_dict: Mapping[str, torch.Tensor], backbone: str | None = None
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert an authors' state dict to ours.

    state_dict: as loaded from ``best_model.pt`` (``module.`` prefixes, or none). backbone:
    'resnet50' / 'vgg16', detected from the keys when None. Returns (our state dict with the same
    tensor objects, sorted list of the dropped legacy keys as they were named in the input).
    Raises :class:`~hhn.errors.CheckpointError` listing every missing key, unexpected key and shape
    mismatch.
    """
    had_prefix = bool(state_dict) and next(iter(state_dict)).startswith(DATA_PARALLEL_PREFIX)
    plain = _strip_prefix(state_dict)
    backbone = backbone or detect_backbone(list(plain))
    if backbone not in LEGACY_PREFIXES:
        raise CheckpointError(f"TLG checkpoints exist for resnet50 and vgg16 only, not {backbone!r}")
    prefix = DATA_PARALLEL_PREFIX if had_prefix else ""
    converted, source, dropped, unexpected = {}, {}, [], []
    for key, value in plain.items():
        if key.startswith(LEGACY_PREFIXES[backbone]):
            dropped.append(prefix + key)
            continue
        new_key = map_tlg_key(key)
        if new_key is None or new_key in converted:
            unexpected.append(prefix + key)
        else:
            converted[new_key], source[new_key] = value, prefix + key
    expected = _expected_state(backbone)
    unexpected += [source[k] for k in converted if k not in expected]
    missing = sorted(k for k in expected if k not in converted)
    wrong_shape = sorted(f"{k} {tuple(converted[k].shape)} != {tuple(s)}"
                         for k, s in expected.items() if k in converted and converted[k].shape != s)
    problems = [_listing(title, keys) for title, keys in
                (("missing", missing), ("unexpected", sorted(unexpected)), ("wrong shape", wrong_shape)) if keys]
    if problems:
        raise CheckpointError(f"not a TLG {backbone} checkpoint of the released code: " + "; ".join(problems))
    return converted, sorted(dropped)
