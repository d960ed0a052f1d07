"""Authors' TLG state dict -> ours, on a synthetic checkpoint built from the spec's names and shapes
(spec sections 4 and 5), independently of the mapping table under test."""

import pytest
import torch
import torchvision

from hhn.config import load_preset
from hhn.errors import CheckpointError
from hhn.network import HHN
from hhn.tlg_keys import convert_tlg_state_dict, detect_backbone

ENCODER_BLOCKS = {  # authors' block -> (kernels, output channels)
    "encoder_layer4": ((3, 3, 3), (16, 64, 128)),
    "encoder_layer3": ((5, 3, 3), (16, 64, 128)),
    "encoder_layer2": ((5, 5, 3), (16, 64, 128)),
    "encoder_layer4to3": ((3, 3, 3), (128, 128, 128)),
    "encoder_layer3to2": ((3, 3, 3), (128, 128, 128)),
}


def _conv(shapes, name, cout, cin, k=1, bias=True):
    shapes[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
        shapes[f"{name}.bias"] = (cout,)


def authors_shapes(backbone: str) -> dict[str, tuple]:
    """Key -> shape of `nn.DataParallel(tlg(backbone, ...)).state_dict()` per the spec."""
    with torch.device("meta"):
        net = torchvision.models.resnet50() if backbone == "resnet50" else torchvision.models.vgg16()
    shapes = {f"backbone.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    groups_in = {"resnet50": (3, 6, 4), "vgg16": (1, 3, 3)}[backbone]
    for (block, (kernels, outs)), first_in in zip(ENCODER_BLOCKS.items(), (*groups_in, 128, 128)):
        cin = first_in
        for unit, (k, cout) in enumerate(zip(kernels, outs)):
            _conv(shapes, f"hpn_learner.{block}.{3 * unit}.conv1", cout, cin, k)
            _conv(shapes, f"hpn_learner.{block}.{3 * unit}.conv2", cout, cin, k)
            shapes[f"hpn_learner.{block}.{3 * unit + 1}.weight"] = (cout,)
            shapes[f"hpn_learner.{block}.{3 * unit + 1}.bias"] = (cout,)
            cin = cout
    _conv(shapes, "decoder1.0", 128, 128, 3)
    _conv(shapes, "decoder1.2", 64, 128, 3)
    _conv(shapes, "decoder2.0", 64, 64, 3)
    _conv(shapes, "decoder2.2", 2, 64, 3)
    _conv(shapes, "res.0", 10, 3)
    _conv(shapes, "res.2", 2, 10)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"bn.{leaf}"] = (128,)
    shapes["bn.num_batches_tracked"] = ()
    shapes["linear_512_625.weight"], shapes["linear_512_625.bias"] = (625, 512), (625,)
    for c in (512, 1024, 2048):
        _conv(shapes, f"conv_{c}_128", 128, c)
    _conv(shapes, "conv_2_1", 1, 2)
    _conv(shapes, "final_cat", 128, 384)
    _conv(shapes, "merge.0", 128, 256, bias=False)
    for name in ("q", "kv", "proj"):
        shapes[f"SelfAttention.{name}.weight"] = (128, 128)
    shapes["SelfAttention.proj.bias"] = (128,)
    for name in ("q_fc", "k_fc", "v_fc", "proj"):
        shapes[f"CrossAttention.{name}.weight"] = (128, 128)
    shapes["proj.weight"] = (2500, 50)
    if backbone == "resnet50":  # created in the ResNet branch of the constructor only
        _conv(shapes, "conv1024_512", 512, 1024)
    _conv(shapes, "voc_conv_bach", 8, 25)
    _conv(shapes, "coco_conv_batch", 8, 23)
    return {f"module.{k}": v for k, v in shapes.items()}


def _numel(shape):
    return int(torch.Size(shape).numel())


def synthetic_checkpoint(backbone: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: (torch.randint(0, 10, s, generator=gen) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=gen)) for k, s in authors_shapes(backbone).items()}


@pytest.mark.parametrize(("backbone", "n_keys", "non_backbone_params"),
                         [("resnet50", 455, 4_200_940), ("vgg16", 32 + 133, 3_672_364)])
def test_synthetic_checkpoint_matches_the_spec(backbone, n_keys, non_backbone_params):
    shapes = authors_shapes(backbone)
    assert len(shapes) == n_keys
    params = sum(_numel(s) for k, s in shapes.items()
                 if not k.startswith("module.backbone.") and not k.startswith("module.bn.running")
                 and not k.endswith("num_batches_tracked"))
    assert params == non_backbone_params


@pytest.mark.parametrize(("backbone", "legacy"), [
    ("resnet50", ["backbone.fc.bias", "backbone.fc.weight", "coco_conv_batch.bias", "coco_conv_batch.weight",
                  "conv1024_512.bias", "conv1024_512.weight", "voc_conv_bach.bias", "voc_conv_bach.weight"]),
    ("vgg16", ["backbone.classifier.0.bias", "backbone.classifier.0.weight", "backbone.classifier.3.bias",
               "backbone.classifier.3.weight", "backbone.classifier.6.bias", "backbone.classifier.6.weight",
               "coco_conv_batch.bias", "coco_conv_batch.weight", "conv_1024_128.bias", "conv_1024_128.weight",
               "conv_2048_128.bias", "conv_2048_128.weight", "voc_conv_bach.bias", "voc_conv_bach.weight"]),
])
def test_round_trip_loads_strictly_and_keeps_values(backbone, legacy):
    authors = synthetic_checkpoint(backbone)
    converted, dropped = convert_tlg_state_dict(authors)
    assert dropped == sorted(f"module.{k}" for k in legacy)
    assert len(converted) + len(dropped) == len(authors)
    with torch.device("meta"):
        model = HHN(load_preset(f"tlg-{backbone}-pascal"))
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours = model.state_dict()
    pairs = {
        "module.hpn_learner.encoder_layer3.3.conv2.weight": "correlation_encoder.squeeze_middle.1.conv.second.weight",
        "module.hpn_learner.encoder_layer3to2.7.bias": "correlation_encoder.mix_middle_shallow.2.norm.bias",
        "module.hpn_learner.encoder_layer4.0.conv1.bias": "correlation_encoder.squeeze_deep.0.conv.first.bias",
        "module.conv_512_128.weight": "aggregation.project.from512.weight",
        "module.merge.0.weight": "aggregation.cross_merge.weight",
        "module.SelfAttention.kv.weight": "transport.self_attention.key_value.weight",
        "module.CrossAttention.proj.weight": "transport.cross_attention.out.weight",
        "module.proj.weight": "transport.expand.weight",
        "module.bn.running_var": "transport.norm.running_var",
        "module.linear_512_625.bias": "text.to_map.bias",
        "module.res.2.weight": "decoder.prior_fusion.2.weight",
        "module.backbone.features.28.weight" if backbone == "vgg16" else "module.backbone.layer4.2.bn3.running_mean":
            "backbone.features.28.weight" if backbone == "vgg16" else "backbone.layer4.2.bn3.running_mean",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], authors[theirs]), (theirs, mine)
    # every tensor is carried over unchanged (values are all distinct random draws)
    kept = {k: v for k, v in authors.items() if k not in dropped}
    assert sorted(v.data_ptr() for v in kept.values()) == sorted(v.data_ptr() for v in converted.values())


def test_plain_keys_without_module_prefix_are_accepted():
    authors = {k.removeprefix("module."): v for k, v in synthetic_checkpoint("vgg16").items()}
    converted, dropped = convert_tlg_state_dict(authors, backbone="vgg16")
    assert "conv_1024_128.weight" in dropped and "aggregation.fuse.weight" in converted


def test_missing_unexpected_and_misshaped_keys_are_all_listed():
    authors = synthetic_checkpoint("resnet50")
    del authors["module.decoder2.2.bias"]
    authors["module.extra_head.weight"] = torch.zeros(3)
    authors["module.final_cat.weight"] = torch.zeros(128, 383, 1, 1)
    with pytest.raises(CheckpointError) as info:
        convert_tlg_state_dict(authors)
    message = str(info.value)
    assert "missing (1): decoder.fine.2.bias" in message
    assert "unexpected (1): module.extra_head.weight" in message
    assert "wrong shape (1): aggregation.fuse.weight (128, 383, 1, 1) != (128, 384, 1, 1)" in message


def test_backbone_detection_and_mixed_prefixes():
    assert detect_backbone(["backbone.layer4.0.conv1.weight"]) == "resnet50"
    assert detect_backbone(["backbone.features.28.bias"]) == "vgg16"
    with pytest.raises(CheckpointError, match="--backbone"):
        detect_backbone(["decoder1.0.weight"])
    with pytest.raises(CheckpointError, match="mixes"):
        convert_tlg_state_dict({"module.bn.weight": torch.zeros(128), "bn.bias": torch.zeros(128)})
