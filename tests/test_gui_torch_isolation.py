"""napari must survive a proposal run after it made its OpenGL context (the triton/Mesa hazard).

Measured on these machines: with triton installed, ``import torchvision`` (or ``open_clip``) in a
process where napari has already created its GL context under Mesa kills the process with SIGSEGV
(exit code 139 / -11). The widget therefore runs the engine in a child process. This test starts
a fresh interpreter (so no earlier test has imported torch first), makes a viewer with an image on
its canvas, runs a proposal through the widget, and checks that the process lives and that torch
never entered it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import keep_only

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("child_sees_tests")]


def torch_engine(project: str, **options: object):
    """A fake engine that loads the hazardous modules (in the child) and computes with torch."""
    import open_clip  # noqa: F401 - importing it is the point
    import torch
    import torchvision  # noqa: F401

    from napari_wfss.engine import ProposalResult
    from napari_wfss.session import UNTAGGED, Session

    session = Session.open(project, read_only=True)
    class_id = session.classes.ids[0]
    for rel in session.images_with_status(UNTAGGED):
        img = torch.from_numpy(session.read_image(rel)).float().mean(dim=2)
        yield ProposalResult(rel, session.key(rel), ((img > img.mean()).to(torch.uint8) * class_id).numpy(),
                             model="torch-fake")


def napari_process_main(folder: str, engine_spec: str, model: str) -> None:
    """Body of the napari process: viewer with a GL context, then a proposal run; prints a JSON line."""
    import time

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_wfss._qt.widget import WfssWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((64, 64)))
    app = QApplication.instance()
    app.processEvents()  # the canvas is drawn: the GL context exists and is current
    widget = WfssWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.engine_spec = engine_spec
    widget.model_edit.setText(model)
    widget.device_combo.setCurrentText("cpu")
    widget.shots_spin.setValue(1)
    widget.open_folder(folder)
    widget.add_class("coin")
    widget.show_image("coin_00.png")
    widget.toggle_tag("coin", True)
    widget.propose()
    deadline = time.monotonic() + 600
    while widget.running and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    counts = widget.session.counts()
    print(json.dumps({"proposed": counts["proposed"], "untagged": counts["untagged"],
                      "torch_in_napari_process": "torch" in sys.modules}), flush=True)
    viewer.close()


@pytest.mark.parametrize("engine", [
    "napari_wfss._engine_process:propose_project",  # the real engine with a small random-weight model
    "test_gui_torch_isolation:torch_engine",  # a fake that also imports open_clip
])
@pytest.mark.slow
def test_proposal_run_after_gl_context_does_not_crash_napari(sample_images, tiny_model, engine):
    keep_only(sample_images, {"cat_00.png", "coin_00.png", "coin_01.png", "coin_02.png"})
    args = ", ".join(repr(a) for a in (str(sample_images), engine, tiny_model))
    code = f"import test_gui_torch_isolation as t; t.napari_process_main({args})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch_in_napari_process"] is False
    assert result["proposed"] == 3 and result["untagged"] == 0
