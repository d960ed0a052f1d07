"""Our checkpoint format (round trip, backbone omission, corrupt files) and the TLG converter."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from hhn import checkpoints
from hhn.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from hhn.config import load_preset
from hhn.errors import CheckpointError
from hhn.network import HHN
from hhn.tlg_keys import PREFIX_MAP, map_tlg_key
from napari_wfss.cli import main as wfss_main

SIZE = 128


def small_lite0(seed: int = 0, pretrained: bool = False) -> HHN:
    """wfss-lite0 at 128x128 (fast on CPU), random heads from ``seed``."""
    torch.manual_seed(seed)
    config = dataclasses.replace(load_preset("wfss-lite0"), name="test-lite0-128", image_size=(SIZE, SIZE))
    return HHN(config, pretrained_backbone=pretrained).eval()


def outputs(model: HHN) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    q, s = torch.randn(2, 1, 3, SIZE, SIZE, generator=g)
    qp, sp = torch.rand(2, 1, SIZE, SIZE, generator=g)
    with torch.no_grad():
        return model(q, s, qp, sp)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_round_trip_with_backbone_gives_identical_outputs(tmp_path):
    model = small_lite0()
    written = save_checkpoint(model, tmp_path / "run" / "last.safetensors", metadata={"step": 7})
    assert written == tmp_path / "run" / "last.safetensors"
    header = json.loads((tmp_path / "run" / "last.json").read_text())
    assert header["backbone_weights"] == {"source": "checkpoint"}  # random backbone != ImageNet file
    assert header["metadata"] == {"step": 7} and header["config"]["image_size"] == [SIZE, SIZE]
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temporaries

    loaded = load_checkpoint(tmp_path / "run" / "last", device="cpu", pretrained=False)
    assert loaded.config == model.config and not loaded.training
    for a, b in zip(outputs(model), outputs(loaded)):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_untouched_pretrained_backbone_is_left_out_and_reloaded(tmp_path):
    model = small_lite0(pretrained=True)  # EfficientNet-Lite0 file from its pip package
    save_checkpoint(model, tmp_path / "heads.safetensors")
    header = json.loads((tmp_path / "heads.json").read_text())
    assert header["backbone_weights"] == {"source": "pretrained", "file": "efficientnet-lite0-57934424.pth"}
    stored = checkpoints.load_state_dict_file(tmp_path / "heads.safetensors")
    assert stored and not any(k.startswith("backbone.") for k in stored)
    full = save_checkpoint(model, tmp_path / "full", include_backbone=True)
    print(f"lite0@{SIZE} checkpoint: heads only {(tmp_path / 'heads.safetensors').stat().st_size / 1e6:.1f} MB, "
          f"with backbone {full.stat().st_size / 1e6:.1f} MB")

    loaded = load_checkpoint(tmp_path / "heads.json")
    for a, b in zip(outputs(model), outputs(loaded)):
        assert torch.equal(a, b)


def test_torch_file_variant_round_trip(tmp_path):
    model = small_lite0(seed=3)
    save_checkpoint(model, tmp_path / "model.pt", include_backbone=True)
    loaded = load_checkpoint(tmp_path / "model.pt", pretrained=False)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_and_corrupt_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nothing.safetensors")
    save_checkpoint(small_lite0(), tmp_path / "m", include_backbone=True)
    weights, meta = checkpoints.checkpoint_files(tmp_path / "m")

    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # flip tensor bytes: safetensors still parses, the recorded SHA-256 catches it
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(meta)
    weights.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(meta)
    weights.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(meta)

    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        read_checkpoint(meta)
    meta.write_text(json.dumps({"format": checkpoints.FORMAT, "format_version": 99}))
    with pytest.raises(CheckpointError, match="upgrade"):
        read_checkpoint(meta)
    meta.write_text(json.dumps({"format": checkpoints.FORMAT, "format_version": 1, "config": {"name": "x"}}))
    with pytest.raises(CheckpointError, match="config"):
        read_checkpoint(meta)

    (tmp_path / "pickled.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="only tensors and plain values are loaded"):
        read_checkpoint(tmp_path / "pickled.pt")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model = small_lite0()
    save_checkpoint(model, tmp_path / "m", include_backbone=True)
    header_path = tmp_path / "m.json"
    header = json.loads(header_path.read_text())
    header["config"]["image_size"] = [160, 160]  # the transport Linear depends on the grid size
    header_path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(header_path, pretrained=False)


# ----------------------------------------------------------------------------------------------
# TLG converter
# ----------------------------------------------------------------------------------------------
# Inverse of the key mapping, written from the spec (section 5) rather than from tlg_keys' tables.
_OUR_ENCODER_BLOCKS = {"squeeze_deep": "encoder_layer4", "squeeze_middle": "encoder_layer3",
                       "squeeze_shallow": "encoder_layer2", "mix_deep_middle": "encoder_layer4to3",
                       "mix_middle_shallow": "encoder_layer3to2"}
_SUB = {"conv.first": "conv1", "conv.second": "conv2"}


def authors_key(ours: str) -> str:
    if ours.startswith("correlation_encoder."):
        _, block, unit, rest = ours.split(".", 3)
        sub, leaf = rest.rsplit(".", 1)
        index = 3 * int(unit) + (1 if sub == "norm" else 0)  # Sequential: conv at 0/3/6, GroupNorm at 1/4/7
        inner = f"{index}.{_SUB[sub]}" if sub in _SUB else f"{index}"
        return f"hpn_learner.{_OUR_ENCODER_BLOCKS[block]}.{inner}.{leaf}"
    old, new = next((o, n) for o, n in PREFIX_MAP if ours.startswith(n))
    return old + ours[len(new):]


LEGACY = {"conv1024_512.weight": (512, 1024, 1, 1), "conv1024_512.bias": (512,),
          "voc_conv_bach.weight": (8, 25, 1, 1), "voc_conv_bach.bias": (8,),
          "coco_conv_batch.weight": (8, 23, 1, 1), "coco_conv_batch.bias": (8,),
          "backbone.fc.weight": (1000, 2048), "backbone.fc.bias": (1000,)}


@pytest.fixture(scope="module")
def tlg_file(tmp_path_factory):
    """An authors'-style best_model.pt for ResNet-50: DataParallel keys + legacy layers; and our state."""
    torch.manual_seed(5)
    ours = HHN(load_preset("tlg-resnet50-pascal")).state_dict()
    theirs = {}
    for key, value in ours.items():
        mapped = authors_key(key)
        assert map_tlg_key(mapped) == key  # the test's inverse agrees with the converter's mapping
        theirs["module." + mapped] = value
    theirs.update({"module." + k: torch.randn(shape) for k, shape in LEGACY.items()})
    path = tmp_path_factory.mktemp("tlg") / "best_model.pt"
    torch.save(theirs, path)
    return path, ours


def test_convert_cli_reports_and_writes_a_loadable_checkpoint(tlg_file, tmp_path, capsys):
    src, ours = tlg_file
    args = argparse.Namespace(src=str(src), dst=str(tmp_path / "tlg_voc"), backbone=None, benchmark="pascal")
    assert checkpoints.run_convert_cli(args) == 0
    out = capsys.readouterr().out
    print(out)
    assert "backbone: resnet50 (detected" in out
    assert "0 missing, 0 unexpected keys" in out
    for layer in ("module.conv1024_512", "module.voc_conv_bach", "module.coco_conv_batch", "module.backbone.fc"):
        assert f"  {layer} (bias, weight)" in out
    header = json.loads((tmp_path / "tlg_voc.json").read_text())
    assert header["config"]["name"] == "tlg-resnet50-pascal"
    assert header["backbone_weights"] == {"source": "checkpoint"}
    assert sorted(header["metadata"]["dropped_keys"]) == sorted("module." + k for k in LEGACY)

    stored = read_checkpoint(tmp_path / "tlg_voc.safetensors").state_dict
    assert stored.keys() == ours.keys() and all(torch.equal(stored[k], v) for k, v in ours.items())


def test_convert_through_wfss_main_and_its_errors(tlg_file, tmp_path, capsys):
    src, ours = tlg_file
    assert wfss_main(["convert-tlg", str(src), str(tmp_path / "c.safetensors"), "--benchmark", "coco"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["config"]["name"] == "tlg-resnet50-coco"

    assert wfss_main(["convert-tlg", str(tmp_path / "absent.pt"), str(tmp_path / "x")]) == 2
    assert "absent.pt not found" in capsys.readouterr().err

    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoints.convert_tlg_checkpoint(tmp_path / "list.pt", tmp_path / "x", log=lambda s: None)

    torch.save(torch.nn.Linear(1, 1), tmp_path / "module.pt")  # a pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match="refused: .*only tensors and plain values are loaded"):
        checkpoints.convert_tlg_checkpoint(tmp_path / "module.pt", tmp_path / "x", log=lambda s: None)

    broken = torch.load(src, weights_only=True)
    broken.pop("module.decoder1.0.weight")
    broken["module.extra_layer.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        checkpoints.convert_tlg_checkpoint(tmp_path / "broken.pt", tmp_path / "x", log=lambda s: None)
    assert "decoder.coarse.0.weight" in str(err.value) and "module.extra_layer.weight" in str(err.value)
    assert not (tmp_path / "x.json").exists()
