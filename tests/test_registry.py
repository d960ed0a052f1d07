"""The library's registries: the names tables of ``hhn.registry`` and the named models of
``hhn.model_registry`` (entry-point group ``hhn.models``, ``register_model``)."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from hhn import model_registry
from hhn.errors import WeightsNotFoundError
from hhn.registry import BACKBONE_ROUNDING, TAG_PRIORS


def test_names_tables_match_what_builds_them():
    from hhn.backbones import BACKBONES
    from hhn.priors.catalog import COSEG_PRIORS

    assert tuple(BACKBONES) == tuple(BACKBONE_ROUNDING)
    assert (*COSEG_PRIORS, "gradcam") == TAG_PRIORS


@pytest.fixture
def published(monkeypatch, tmp_path):
    """A fake installed package ``wfss_fake_models`` publishing ``fake`` (a folder) and ``broken``."""
    pkg = tmp_path / "wfss_fake_models"
    pkg.mkdir()
    (pkg / "fake").mkdir()
    (pkg / "__init__.py").write_text("from pathlib import Path\nFAKE = Path(__file__).with_name('fake')\n"
                                     "GONE = Path(__file__).with_name('gone')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wfss_fake_models", raising=False)
    group = model_registry.ENTRY_POINT_GROUP
    eps = [EntryPoint("fake", "wfss_fake_models:FAKE", group), EntryPoint("gone", "wfss_fake_models:GONE", group),
           EntryPoint("broken", "wfss_no_such_package:X", group)]
    monkeypatch.setattr(model_registry, "entry_points", lambda group: [e for e in eps if e.group == group])
    monkeypatch.setattr(model_registry, "_REGISTERED", {})
    return pkg


def test_published_entry_points_name_checkpoint_folders(published, tmp_path):
    assert model_registry.registered_names() == ["broken", "fake", "gone"]
    assert model_registry.registered_model("fake") == published / "fake"
    assert model_registry.registered_model("unknown") is None
    with pytest.raises(WeightsNotFoundError, match=r"'gone'.*does not exist"):
        model_registry.registered_model("gone")
    with pytest.raises(WeightsNotFoundError, match=r"'broken'.*wfss_no_such_package:X.*cannot be loaded"):
        model_registry.registered_model("broken")
    model_registry.register_model("fake", tmp_path)  # in-process names win
    assert model_registry.registered_model("fake") == tmp_path


def test_the_plugin_publishes_its_default_model_without_torch():
    import subprocess

    code = ("import sys; from hhn.model_registry import registered_model; "
            "print(registered_model('default'), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    folder, torch_loaded = done.stdout.split()
    assert folder.replace("\\", "/").endswith("napari_wfss/models/default") and torch_loaded == "False"
