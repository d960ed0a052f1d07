"""Shared fixtures, and the order rule that keeps the GUI tests safe to run with the rest.

Order rule: GUI tests run last. With triton installed, loading triton (via torchvision or open_clip)
after napari has made its OpenGL context under Mesa segfaults the process, so every library test
that imports torch must run before the first viewer exists. The GUI tests themselves never import
torch (the engine runs in a child process; ``test_gui_torch_isolation`` checks that).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hhn.priors.base import ClassPrior

TESTS_DIR = Path(__file__).resolve().parent

_TINY_MODEL = """
import dataclasses, sys
from hhn.checkpoints import save_checkpoint
from hhn.config import load_preset
from hhn.network import HHN
config = dataclasses.replace(load_preset("wfss-lite0"), name="test-lite0-64", image_size=(64, 64))
save_checkpoint(HHN(config, pretrained_backbone=False), sys.argv[1], include_backbone=True)
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move ``gui`` tests after all others (stable: each group keeps its order); see the module doc."""
    items.sort(key=lambda item: item.get_closest_marker("gui") is not None)


@pytest.fixture
def sample_images(tmp_path) -> Path:
    """A fresh copy of the sample image folder (18 images; its tags.csv is one level up)."""
    from napari_wfss.sample import make_sample_folder

    return make_sample_folder(tmp_path / "sample") / "images"


def keep_only(folder: Path, names: set[str]) -> Path:
    """Delete the images of ``folder`` not in ``names`` (fewer proposals keep real-engine tests short)."""
    for p in folder.iterdir():
        if p.name not in names:
            p.unlink()
    return folder


class FnPrior(ClassPrior):
    """A fitted class prior whose map of an image is ``fn(pixels)``."""

    def __init__(self, class_name, fn):
        super().__init__(class_name)
        self.fn = fn

    def _map(self, pixels):
        return self.fn(pixels)


@pytest.fixture
def child_sees_tests(monkeypatch) -> None:
    """Let engine child processes import fake engines defined in test modules (``module:function``)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a random-weight wfss-lite0 checkpoint at 64x64 (backbone included, nothing downloaded).

    Written by a child interpreter, so torch is not imported into the test process by this fixture.
    """
    path = tmp_path_factory.mktemp("tiny_model") / "model"
    subprocess.run([sys.executable, "-c", _TINY_MODEL, str(path)], check=True, timeout=300)
    return str(path.with_suffix(".json"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small CPU forwards are faster single-threaded on the shared 2-core machines (no spin-waits).
    torch is imported here, not at module level: GUI tests check which process imports it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
