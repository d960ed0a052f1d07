"""The model library must not pull in napari or Qt (ARCHITECTURE.md: no napari/Qt under src_model/hhn)."""

import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, sys
import hhn, hhn.network, hhn.predictor, hhn.config, hhn.bench, hhn.tlg_keys, hhn.kshot, hhn.device
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.slow
def test_model_library_does_not_import_napari_or_qt():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0].lower() in {"napari", "qtpy", "pyqt5", "pyqt6",
                                                                "pyside2", "pyside6", "magicgui"}]
    assert "hhn.network" in modules and "hhn.predictor" in modules
    assert heavy == []


def test_import_hhn_alone_does_not_import_torch():
    code = "import sys, hhn, hhn.config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_default_model_runs_without_torchvision():
    """torchvision costs 164 MB of resident memory; only the ResNet / VGG backbones need it."""
    code = ("import sys; from napari_wfss.engine import Engine; "
            "Engine('default', device='cpu').load(); print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip().splitlines()[-1] == "False"
