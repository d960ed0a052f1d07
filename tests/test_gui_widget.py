"""The dock widget end to end under Xvfb: open, tag, propose, edit, accept, export, resume, cancel.

``fake_engine`` runs in the engine's child process (this module is imported there by name), so the
module's top-level imports stay light (no Qt, no napari).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import keep_only

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("child_sees_tests")]


def fake_engine(project: str, **options: object):
    """Stand-in for the model: a centred box of one tagged class per image, ``WFSS_FAKE_DELAY`` s each."""
    from napari_wfss.engine import ProposalResult, default_queries
    from napari_wfss.session import Session

    delay = float(os.environ.get("WFSS_FAKE_DELAY", "0"))
    session = Session.open(project, read_only=True)  # the widget's session holds the project for writing
    ids = session.classes.ids
    for i, rel in enumerate(default_queries(session)):
        time.sleep(delay)
        h, w = session.read_image(rel).shape[:2]
        label_map = np.zeros((h, w), np.uint8)
        label_map[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = ids[i % len(ids)]
        yield ProposalResult(rel, session.key(rel), label_map, model="fake")


@pytest.fixture
def widget(make_napari_viewer_proxy, qtbot):
    from napari_wfss._qt.widget import WfssWidget

    viewer = make_napari_viewer_proxy()
    w = WfssWidget(viewer)
    viewer.window.add_dock_widget(w, name="Few-shot labelling")
    w.engine_spec = f"{__name__}:fake_engine"
    yield w
    if w.running:
        w.cancel()
        qtbot.waitUntil(lambda: not w.running, timeout=30_000)


def _labels(widget):
    return widget._layer("labels")


def _wait_run(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def _tag_two_images(widget):
    widget.add_class("coin")
    widget.add_class("cat")
    widget.show_image("coin_00.png")
    widget.toggle_tag_index(0)  # key 1
    widget.show_image("cat_00.png")
    tick = widget.class_table.item(1, 0)  # one click on the "cat" tick box
    from qtpy.QtCore import Qt

    tick.setCheckState(Qt.CheckState.Checked)


def _other_label(layer, point):
    """A class id (1 or 2) different from the layer's value at ``point``: painting it changes the data."""
    return 1 if layer.data[point] != 1 else 2


def test_open_tag_propose_edit_accept_export_resume(widget, sample_images, tiny_model, qtbot, tmp_path):
    """The whole loop with the real engine (a small random-weight model, in the child process)."""
    from napari_wfss._engine_process import DEFAULT_ENGINE
    from napari_wfss.session import ACCEPTED, EDITED, PROPOSED, TAGGED, UNTAGGED

    widget.engine_spec = DEFAULT_ENGINE
    widget.model_edit.setText(tiny_model)
    widget.device_combo.setCurrentText("cpu")
    widget.shots_spin.setValue(1)
    keep_only(sample_images, {"cat_00.png", "cup_00.png", "texture_brick.png"} | {f"coin_0{i}.png" for i in range(5)})
    widget.open_folder(sample_images)
    s = widget.session
    assert widget.image_table.rowCount() == 8 and widget._layer("image") is not None
    _tag_two_images(widget)
    assert s.tags_of("coin_00.png") == ["coin"] and s.tags_of("cat_00.png") == ["cat"]
    assert s.status("cat_00.png") == TAGGED

    widget.show_image("coin_02.png")
    widget.propose()
    assert widget.running
    _wait_run(qtbot, widget, timeout=600_000)
    assert s.counts()[PROPOSED] == 6 and s.counts()[UNTAGGED] == 0
    assert "finished" in widget.run_label.text()
    assert s.info("coin_02.png").proposal_model == tiny_model

    # the proposal of the image on screen appeared in its layer; edit it with napari's own tools,
    # undo works on it, and accepting stores the edit
    layer = _labels(widget)
    proposal = s.proposal("coin_02.png")
    assert set(np.unique(proposal)) <= {0, 1, 2}
    np.testing.assert_array_equal(layer.data, proposal)
    assert layer.colormap.map(np.array([1]))[0, :3].tolist() == pytest.approx(
        [c / 255 for c in s.classes.get("coin").color])
    layer.brush_size = 1
    label = _other_label(layer, (5, 5))
    layer.paint((5, 5), label)
    assert layer.data[5, 5] == label
    layer.undo()
    np.testing.assert_array_equal(layer.data, proposal)
    layer.paint((5, 5), label)
    edited = np.asarray(layer.data).copy()
    widget.accept()
    assert s.status("coin_02.png") == ACCEPTED
    np.testing.assert_array_equal(s.mask("coin_02.png"), edited)
    assert widget.current == "coin_03.png"  # accept moves on

    # an edit is captured when the user moves on without accepting
    _labels(widget).paint((3, 3), _other_label(_labels(widget), (3, 3)))
    widget.next_image()
    assert s.status("coin_03.png") == EDITED
    widget.show_image("coin_04.png")
    widget.reject()
    assert s.status("coin_04.png") == "rejected"

    out = tmp_path / "export"
    widget.export_unreviewed_check.setChecked(True)
    widget.export(out)
    qtbot.waitUntil(lambda: widget.last_export is not None, timeout=30_000)
    assert widget.last_export.count == 5  # 3 proposed + 1 accepted + 1 edited; the rejected one is out
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == widget.last_export.count
    assert (out / "masks" / f"{s.key('coin_02.png')}.png").is_file()

    # close and resume: statuses, tags and the accepted edit come back
    widget.close_session()
    assert widget.session is None and widget._layer("image") is None
    widget.open_folder(sample_images)
    r = widget.session
    assert r.status("coin_02.png") == ACCEPTED and r.status("coin_03.png") == EDITED
    assert r.tags_of("cat_00.png") == ["cat"]
    np.testing.assert_array_equal(r.mask("coin_02.png"), edited)
    assert widget.current == r.images[0]


def test_two_class_sample_route_is_not_inverted(widget, sample_images, qtbot, monkeypatch):
    """Issue 24's route: coin and cat, two tagged images each, the default model. With ``coseg-ratio`` both
    classes' tag priors marked the surroundings and the inversion guard refitted them (and the widget said
    so); the default ``coseg-objects`` prior learns both as things from object cells, so nothing needs
    flipping, no flip warning is shown, and the cats are labelled."""
    import napari.utils.notifications as notifications

    from napari_wfss._engine_process import DEFAULT_ENGINE

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda message: shown.append(message))
    widget.engine_spec = DEFAULT_ENGINE
    widget.model_edit.setText("default")
    widget.device_combo.setCurrentText("cpu")
    keep_only(sample_images, {f"coin_0{i}.png" for i in range(4)} | {f"cat_0{i}.png" for i in range(4)})
    widget.open_folder(sample_images)
    widget.add_class("coin")
    widget.add_class("cat")
    for rel, index in (("coin_00.png", 0), ("coin_01.png", 0), ("cat_00.png", 1), ("cat_01.png", 1)):
        widget.show_image(rel)
        widget.toggle_tag_index(index)
    widget.propose()
    _wait_run(qtbot, widget, timeout=600_000)
    assert not [m for m in shown if "the tag prior marked the edges" in m]
    s = widget.session
    cat = s.classes.get("cat").id
    for rel in ("cat_02.png", "cat_03.png"):
        label_map = s.proposal(rel)
        h, w = label_map.shape
        assert label_map[h // 2, w // 2] == cat  # the cat's face fills the middle of these crops
        assert (label_map == cat).mean() > 0.4


def test_cancel_midway_keeps_finished_proposals(widget, sample_images, qtbot, monkeypatch):
    from napari_wfss.session import PROPOSED, UNTAGGED

    monkeypatch.setenv("WFSS_FAKE_DELAY", "0.3")
    widget.open_folder(sample_images)
    _tag_two_images(widget)
    widget.propose()
    qtbot.waitUntil(lambda: widget.session.counts()[PROPOSED] >= 2, timeout=60_000)
    widget.cancel()
    _wait_run(qtbot, widget, timeout=30_000)
    counts = widget.session.counts()
    assert 2 <= counts[PROPOSED] < 16 and counts[UNTAGGED] == 16 - counts[PROPOSED]
    assert "cancelled" in widget.run_label.text()
    assert widget.propose_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_during_a_run_releases_the_project_after_it(widget, sample_images, qtbot, monkeypatch):
    from napari_wfss.session import PROPOSED, ProjectInUseError, Session

    monkeypatch.setenv("WFSS_FAKE_DELAY", "0.3")
    widget.open_folder(sample_images)
    _tag_two_images(widget)
    run_session = widget.session
    widget.propose()
    qtbot.waitUntil(lambda: run_session.counts()[PROPOSED] >= 1, timeout=60_000)
    widget.close_session()  # cancels; proposals still in flight are stored, not lost
    assert widget.session is None
    with pytest.raises(ProjectInUseError):
        Session.open(sample_images)  # still held while the run winds down
    _wait_run(qtbot, widget, timeout=30_000)
    assert not run_session.writable  # released when the run ended
    with Session.open(sample_images) as reopened:
        assert reopened.counts()[PROPOSED] == run_session.counts()[PROPOSED] >= 1


def test_keys_tag_and_navigate_on_the_canvas(make_napari_viewer, sample_images, qtbot):
    from qtpy.QtCore import Qt

    from napari_wfss._qt.widget import WfssWidget

    viewer = make_napari_viewer()
    widget = WfssWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_folder(sample_images)
    widget.add_class("coin")
    widget.add_class("cat")
    canvas = viewer.window._qt_viewer.canvas.native
    first = widget.current
    assert viewer.layers.selection.active is widget._layer("image")
    qtbot.keyClick(canvas, Qt.Key.Key_2)
    assert widget.session.tags_of(first) == ["cat"]
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert widget.current == widget.session.images[1]
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert widget.current == first
    viewer.layers.selection.active = widget._layer("labels")
    qtbot.keyClick(canvas, Qt.Key.Key_2)  # on the Labels layer 2 stays napari's paint brush
    assert widget._layer("labels").mode == "paint" and widget.session.tags_of(first) == ["cat"]
    qtbot.keyClick(canvas, Qt.Key.Key_1, Qt.KeyboardModifier.AltModifier)  # Alt+1 tags on any layer
    assert widget.session.tags_of(first) == ["coin", "cat"] and widget._layer("labels").mode == "paint"
    qtbot.keyClick(canvas, Qt.Key.Key_1, Qt.KeyboardModifier.AltModifier)
    assert widget.session.tags_of(first) == ["cat"]
    qtbot.keyClick(canvas, Qt.Key.Key_C)  # accept, on the Labels layer too
    assert widget.session.status(first) == "accepted" and widget.current == widget.session.images[1]


def test_the_widget_holds_its_project_against_other_writers(widget, sample_images):
    from napari_wfss.session import ProjectInUseError, Session

    widget.open_folder(sample_images)
    with pytest.raises(ProjectInUseError, match="open in another napari-wfss window"):
        Session.open(sample_images)  # e.g. a second napari window on the same folder
    widget.open_folder(sample_images)  # reopening its own folder is fine
    assert widget.session.writable
    widget.close_session()  # releases it
    with Session.open(sample_images) as other:
        assert other.writable


def test_run_settings_reach_the_engine_options(widget, sample_images, tmp_path):
    import json

    from hhn.model_names import default_model_dir
    from napari_wfss.cli import build_parser
    from napari_wfss.options import ProposalOptions

    def cli_options(*flags):
        args = build_parser().parse_args(["label", "f", "--tags", "t", "--out", "o", "--shots", "5", *flags])
        return ProposalOptions.from_args(args)

    widget.open_folder(sample_images)
    options = widget.proposal_options()
    assert options == cli_options()  # the model's own rule: no threshold, snap as the rule says
    shipped = json.loads((default_model_dir() / "model.json").read_text())["config"]["decision"]["threshold"]
    assert widget.threshold_spin.text() == f"model's ({shipped:.2f})"  # read before any run
    widget.model_edit.setText("preset:tlg-resnet50-pascal")  # the released rule: argmax, 0.5
    widget.model_edit.editingFinished.emit()
    assert widget.threshold_spin.text() == "model's (0.50)"
    widget.model_edit.setText(str(tmp_path / "absent.safetensors"))  # the run will say what is wrong
    widget.model_edit.editingFinished.emit()
    assert widget.threshold_spin.text() == "model's"
    widget.threshold_spin.setValue(0.7)
    widget.snap_check.setChecked(False)
    widget.refine_check.setChecked(True)
    widget.prior_combo.setCurrentText("coseg-ratio")
    options = widget.proposal_options()
    assert options.tag_prior == "coseg-ratio"
    assert options == cli_options("--model", str(tmp_path / "absent.safetensors"), "--threshold", "0.7",
                                  "--no-snap", "--refine-supports", "--tag-prior", "coseg-ratio")
    widget.threshold_spin.setValue(0.0)  # 0 means what `wfss label --threshold 0` means: no background
    assert widget.proposal_options().threshold == 0.0
    assert widget.proposal_options() == cli_options("--model", str(tmp_path / "absent.safetensors"),
                                                    "--threshold", "0", "--no-snap", "--refine-supports",
                                                    "--tag-prior", "coseg-ratio")


@pytest.mark.slow
def test_an_unreadable_image_is_reported_by_the_cli_and_the_widget(widget, sample_images, tiny_model, qtbot,
                                                                    tmp_path):
    """The same broken file through ``wfss label`` (a subprocess: torch stays out of this process) and the
    widget's real engine: both name it with the same reason; the readable image is proposed by both."""
    import subprocess
    import sys

    from napari_wfss._engine_process import DEFAULT_ENGINE

    keep_only(sample_images, {"coin_00.png", "cat_00.png", "coin_01.png"})
    (sample_images / "broken.png").write_bytes(b"this is not a png")
    tags = tmp_path / "tags.csv"
    tags.write_text("image,class\ncoin_00.png,coin\ncat_00.png,cat\n")
    cli = subprocess.run([sys.executable, "-m", "napari_wfss.cli", "label", str(sample_images), "--tags", str(tags),
                          "--out", str(tmp_path / "out"), "--model", tiny_model, "--shots", "1", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr
    assert "labelled 1 image(s), 0 already done, 1 failed" in cli.stdout
    failed = [line for line in cli.stdout.splitlines() if line.startswith("failed: broken.png: ")]
    assert len(failed) == 1
    reason = failed[0].removeprefix("failed: broken.png: ")

    widget.engine_spec = DEFAULT_ENGINE
    widget.model_edit.setText(tiny_model)
    widget.device_combo.setCurrentText("cpu")
    widget.shots_spin.setValue(1)
    widget.open_folder(sample_images)
    _tag_two_images(widget)
    widget.propose()
    _wait_run(qtbot, widget, timeout=600_000)
    assert widget.skipped == [("broken.png", reason)]
    assert widget.skipped_list.isVisible() or not widget.isVisible()
    assert widget.skipped_list.count() == 1 and widget.skipped_list.item(0).text() == f"{reason}: broken.png"
    assert "1 proposed, 1 skipped" in widget.run_label.text()
    assert widget.session.proposal("coin_01.png") is not None


def test_reader_opens_a_folder_in_the_widget(make_napari_viewer_proxy, sample_images):
    viewer = make_napari_viewer_proxy()
    assert viewer.open(str(sample_images), plugin="napari-wfss") == []
    _, widget = viewer.window.add_plugin_dock_widget("napari-wfss", "Few-shot labelling")
    assert widget.session is not None and widget.session.image_folder == sample_images.resolve()
    assert [lyr.metadata.get("wfss_role") for lyr in viewer.layers] == ["image", "labels"]


def test_sample_data_opens_the_tagged_sample(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-wfss", "wfss_sample")
    _, widget = viewer.window.add_plugin_dock_widget("napari-wfss", "Few-shot labelling")
    qtbot.waitUntil(lambda: widget.session is not None and bool(widget.session.images_tagged()), timeout=10_000)
    assert widget.session.classes.names == ["coin", "cat", "cup"]
    assert len(widget.session.images_tagged()) == 7
    assert [lyr.metadata.get("wfss_role") for lyr in viewer.layers] == ["image", "labels"]  # the sample layer adopted


def failing_engine(project: str, **options: object):
    """One proposal, then a user-fixable error."""
    from hhn.errors import UserError
    from napari_wfss.engine import ProposalResult
    from napari_wfss.session import UNTAGGED, Session

    session = Session.open(project, read_only=True)
    rel = session.images_with_status(UNTAGGED)[0]
    h, w = session.read_image(rel).shape[:2]
    yield ProposalResult(rel, session.key(rel), np.zeros((h, w), np.uint8), model="fake")
    raise UserError("the model file is missing; run `wfss weights` to see where to put it")


def test_engine_errors_become_notifications_and_the_ui_stays_usable(widget, sample_images, qtbot):
    from napari.utils.notifications import notification_manager

    widget.engine_spec = f"{__name__}:failing_engine"
    widget.open_folder(sample_images)
    widget.propose()  # nothing tagged yet: refused with a message, no run
    assert not widget.running
    _tag_two_images(widget)
    before = len(notification_manager.records)
    widget.propose()
    _wait_run(qtbot, widget)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("run `wfss weights`" in m for m in messages), messages
    assert widget.session.counts()["proposed"] == 1
    assert widget.propose_button.isEnabled()
    widget.next_image()  # still responsive
    assert widget.current == widget.session.images[widget.session.images.index("cat_00.png") + 1]


def test_undo_never_reaches_into_the_previous_image(widget, sample_images):
    widget.open_folder(sample_images)
    widget.add_class("coin")
    first = widget.current
    layer = _labels(widget)
    layer.paint((5, 5), 1)
    widget.next_image()
    assert widget.session.status(first) == "edited"
    assert _labels(widget) is layer  # the layer is reused ...
    before = np.asarray(layer.data).copy()
    layer.undo()  # ... with a fresh history
    np.testing.assert_array_equal(layer.data, before)
    layer.paint((7, 7), 1)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_class_table_rename_recolour_and_csv_round_trip(widget, sample_images, tmp_path):
    widget.open_folder(sample_images)
    widget.add_class("coin")
    widget.add_class("cat")
    widget.add_class("coin")  # duplicate: refused with a notification, table unchanged
    assert widget.class_table.rowCount() == 2

    name_item = widget.class_table.item(1, 1)
    name_item.setText("kitten")  # what a double-click edit does
    assert widget.session.classes.names == ["coin", "kitten"]
    assert widget.class_table.item(1, 1).text() == "kitten"

    widget.set_class_color("coin", "#ff0000")
    assert _labels(widget).colormap.map(np.array([1]))[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0])

    csv_path = tmp_path / "classes.csv"
    widget.export_classes_csv(csv_path)
    kitten_color = widget.session.classes.get("kitten").hex_color
    assert csv_path.read_text().splitlines() == ["id,name,color", "1,coin,#ff0000", f"2,kitten,{kitten_color}"]
    extra = tmp_path / "more.csv"
    extra.write_text("id,name,color\n3,dog,#00ff00\n")
    widget.import_classes_csv(extra)
    assert widget.session.classes.names == ["coin", "kitten", "dog"] and widget.class_table.rowCount() == 3


def test_retrain_on_accepted_masks_then_propose_with_the_new_model(widget, sample_images, tiny_model, qtbot):
    """Retrain (a real fine-tuning in the child process, 2 steps), the new model is offered in the Model
    field, and the next Propose replaces the previous model's unreviewed proposals with the new model's."""
    from napari_wfss._engine_process import DEFAULT_ENGINE
    from napari_wfss.retrain import MODELS_DIR
    from napari_wfss.session import ACCEPTED, PROPOSED

    widget.engine_spec = DEFAULT_ENGINE
    widget.model_edit.setText(tiny_model)
    widget.device_combo.setCurrentText("cpu")
    widget.shots_spin.setValue(1)
    keep_only(sample_images, {f"coin_0{i}.png" for i in range(4)} | {f"cat_0{i}.png" for i in range(3)})
    widget.open_folder(sample_images)
    s = widget.session
    _tag_two_images(widget)
    assert widget.retrain_button.isEnabled()
    widget.retrain()  # nothing accepted yet: refused with a message, no run started
    assert not widget.running

    widget.propose()
    _wait_run(qtbot, widget, timeout=600_000)
    assert s.info("coin_03.png").proposal_model == tiny_model
    for rel, cls in [("coin_00.png", "coin"), ("coin_01.png", "coin"), ("coin_02.png", "coin"),
                     ("cat_00.png", "cat"), ("cat_01.png", "cat")]:
        h, w = s.read_image(rel).shape[:2]
        box = np.zeros((h, w), np.uint8)
        box[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = s.classes.get(cls).id
        s.accept(rel, box)
    assert s.status("coin_03.png") == PROPOSED and len(s.images_with_status(ACCEPTED)) == 5

    widget.retrain_steps_spin.setValue(2)
    widget.retrain_button.click()
    assert widget.running and not widget.propose_button.isEnabled()
    _wait_run(qtbot, widget, timeout=600_000)
    new_model = widget.new_model
    assert new_model is not None and widget.model_edit.text() == new_model
    assert Path(new_model).parent == s.project_dir / MODELS_DIR and (Path(new_model) / "model.json").is_file()
    assert widget.redo_check.isChecked() and "retrained" in widget.run_label.text()

    widget.propose()
    _wait_run(qtbot, widget, timeout=600_000)
    assert s.info("coin_03.png").proposal_model == new_model  # redone by the new model
    assert s.info("cat_02.png").proposal_model == new_model
    assert s.status("coin_00.png") == ACCEPTED  # accepted masks untouched


def test_cancelling_a_retraining_keeps_nothing_and_the_ui_stays_usable(widget, sample_images, tiny_model, qtbot):
    from napari_wfss.retrain import MODELS_DIR

    widget.model_edit.setText(tiny_model)
    widget.device_combo.setCurrentText("cpu")
    keep_only(sample_images, {f"coin_0{i}.png" for i in range(3)} | {f"cat_0{i}.png" for i in range(2)})
    widget.open_folder(sample_images)
    s = widget.session
    s.add_class("coin")
    s.add_class("cat")
    for rel in s.images:
        h, w = s.read_image(rel).shape[:2]
        box = np.zeros((h, w), np.uint8)
        box[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = s.classes.get(rel.split("_")[0]).id
        s.accept(rel, box)
    widget.retrain_steps_spin.setValue(5000)
    widget.retrain()
    qtbot.waitUntil(lambda: widget.run_label.text() == "retraining: training", timeout=300_000)
    widget.show_image("cat_01.png")  # the UI answers while the child trains
    assert widget.current == "cat_01.png"
    widget.cancel_button.click()
    _wait_run(qtbot, widget, timeout=30_000)
    # the child stopped itself and cleaned up: a killed child would leave its partial folders behind
    assert widget.run_label.text() == "retraining cancelled: nothing kept" and widget.new_model is None
    assert widget.model_edit.text() == tiny_model
    assert list((s.project_dir / MODELS_DIR).iterdir()) == []
    assert widget.propose_button.isEnabled() and widget.retrain_button.isEnabled()


def test_every_file_of_the_bad_input_corpus_opens_or_is_named_in_a_notification(widget, tmp_path):
    """The image cases of tests/test_bad_input_corpus.py in one folder, opened in the widget and clicked one by
    one: readable ones are shown upright at their size, unreadable ones give one notification naming the
    file (no traceback) and leave the image shown before."""
    from napari.utils.notifications import notification_manager
    from test_bad_input_corpus import IMAGE_FILES

    folder = tmp_path / "corpus"
    folder.mkdir()
    readable = {}
    for add, shape in IMAGE_FILES:
        name = add(folder)
        if shape is not None:
            readable[name] = shape
    widget.open_folder(folder)
    listed = widget.session.images
    assert "anim.gif" not in listed and set(readable) < set(listed)
    shown = None
    for rel in listed:
        before = len(notification_manager.records)
        widget.show_image(rel)
        messages = [str(n.message) for n in notification_manager.records[before:]]
        if rel in readable:
            assert widget.current == rel and not messages, messages
            assert widget._layer("image").data.shape[:2] == readable[rel]
            assert _labels(widget).data.shape == readable[rel]
            shown = rel
        else:
            assert widget.current == shown, rel
            assert len(messages) == 1 and rel in messages[0] and "Traceback" not in messages[0], messages
    for row, rel in enumerate(listed):  # unreadable ones marked in the list with their reason (on open, or
        status = widget.image_table.item(row, 1)  # once clicked for a file whose header reads but data does not)
        assert (status.text() == "unreadable") == (rel not in readable), rel
        assert (rel in status.toolTip()) == (rel not in readable)
    assert widget.counts_label.text().endswith(f"; {len(listed) - len(readable)} unreadable")


@pytest.mark.parametrize("answer", ["Yes", "No"])
def test_a_damaged_project_is_offered_its_backup(widget, sample_images, monkeypatch, answer):
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QMessageBox

    widget.open_folder(sample_images)
    widget.add_class("coin")
    widget.session.tag("coin_00.png", "coin")
    widget.session.tag("coin_01.png", "coin")  # the backup holds coin_00's tag at least
    project = widget.session.project_dir
    widget.close_session()
    text = (project / "project.json").read_text()
    (project / "project.json").write_text(text[: len(text) // 2])
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or getattr(QMessageBox, answer))
    before = len(notification_manager.records)
    widget.open_folder(sample_images)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert len(asked) == 1 and "project.json.bak" in asked[0]
    damaged = list(project.glob("project.json.damaged-*"))
    if answer == "Yes":
        assert widget.session is not None and "coin_00.png" in widget.session.images_tagged()
        assert len(damaged) == 1 and damaged[0].read_text() == text[: len(text) // 2]
        assert any("restored" in m for m in messages), messages
    else:
        assert widget.session is None and not damaged
        assert (project / "project.json").read_text() == text[: len(text) // 2]
        assert any("project.json.bak" in m for m in messages), messages


def stuck_engine(project: str, should_stop, **options: object):
    """A model that never checks ``should_stop`` while it computes one image (e.g. a long first load)."""
    time.sleep(60)
    yield from ()


def test_cancel_stops_a_stuck_proposal_child_at_once(widget, sample_images, qtbot):
    widget.engine_spec = f"{__name__}:stuck_engine"
    widget.open_folder(sample_images)
    _tag_two_images(widget)
    widget.propose()
    assert widget.running
    qtbot.wait(500)  # the child is inside its 60 s image
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)  # killed after its 1 s grace, not 60 s
    assert widget.propose_button.isEnabled() and "cancel" in widget.run_label.text()


def test_the_view_fits_each_image_after_a_change_of_size(widget, tmp_path):
    from PIL import Image

    folder = tmp_path / "sizes"
    folder.mkdir()
    Image.new("RGB", (400, 100), (90, 10, 10)).save(folder / "a_wide.png")
    Image.new("RGB", (60, 300), (10, 90, 10)).save(folder / "b_tall.png")
    widget.open_folder(folder)
    for rel, (h, w) in (("a_wide.png", (100, 400)), ("b_tall.png", (300, 60)), ("a_wide.png", (100, 400))):
        widget.show_image(rel)
        assert _labels(widget).data.shape == (h, w)
        center = widget.viewer.scene.camera.center[-2:]
        assert abs(center[0] - (h - 1) / 2) < 1 and abs(center[1] - (w - 1) / 2) < 1, (rel, center)


@pytest.mark.parametrize("unreviewed", [False, True])
def test_export_takes_reviewed_masks_unless_asked_and_coco_says_which(widget, sample_images, tmp_path, qtbot,
                                                                      unreviewed):
    keep_only(sample_images, {"coin_00.png", "coin_01.png", "coin_02.png", "cat_00.png"})
    widget.open_folder(sample_images)
    _tag_two_images(widget)
    widget.propose()
    _wait_run(qtbot, widget)
    s = widget.session
    proposed = s.images_with_status("proposed")
    assert len(proposed) >= 2
    s.accept(proposed[0], s.current_label_map(proposed[0]))
    widget.export_unreviewed_check.setChecked(unreviewed)
    widget.export(tmp_path / "export")
    qtbot.waitUntil(lambda: widget.export_button.isEnabled(), timeout=30_000)
    coco = json.loads((tmp_path / "export" / "coco.json").read_text())
    status = {Path(im["file_name"]).stem: (im["wfss_status"], im["wfss_reviewed"]) for im in coco["images"]}
    expected = {s.key(proposed[0]): ("accepted", True)}
    if unreviewed:
        expected.update({s.key(rel): ("proposed", False) for rel in proposed[1:]})
    assert status == expected


def test_deep_images_are_shown_at_their_own_depth(widget, tmp_path):
    """16-bit grey and float colour images keep their values on screen (the model reads its 8-bit copy);
    switching back to an 8-bit photo gives an RGB layer again, under the Labels layer."""
    import tifffile
    from PIL import Image

    folder = tmp_path / "deep"
    folder.mkdir()
    grey16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 31).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "a_grey16.png")
    rgbf = np.random.default_rng(0).random((30, 20, 3), dtype=np.float32)
    tifffile.imwrite(folder / "b_float.tif", rgbf, photometric="rgb")
    Image.new("RGB", (20, 10), (200, 20, 20)).save(folder / "c_photo.png")
    widget.open_folder(folder)
    widget.show_image("a_grey16.png")
    layer = widget._layer("image")
    assert layer.dtype == np.uint16 and not layer.rgb and np.array_equal(layer.data, grey16)
    assert grey16.min() <= layer.contrast_limits[0] < layer.contrast_limits[1] <= grey16.max()
    widget.show_image("b_float.tif")
    layer = widget._layer("image")
    assert layer.rgb and layer.dtype == np.float32 and np.array_equal(layer.data, rgbf)
    assert _labels(widget).data.shape == (30, 20)
    widget.show_image("c_photo.png")
    layer = widget._layer("image")
    assert layer.rgb and layer.dtype == np.uint8 and tuple(layer.contrast_limits) == (0, 255)
    assert widget.viewer.layers.index(layer) < widget.viewer.layers.index(_labels(widget))
    assert widget.session.read_image("a_grey16.png").dtype == np.uint8  # what the model reads


def test_none_of_these_classes_is_a_negative_tag_from_the_widget(widget, sample_images, qtbot):
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import Qt

    from napari_wfss.engine import default_queries

    widget.open_folder(sample_images)
    _tag_two_images(widget)
    widget.show_image("texture_gravel.png")
    widget.no_class_check.click()
    s = widget.session
    assert s.info("texture_gravel.png").no_class and s.status("texture_gravel.png") == "accepted"
    assert not _labels(widget).data.any()
    row = s.images.index("texture_gravel.png")
    assert widget.image_table.item(row, 2).text() == "none (negative tag)"
    assert "texture_gravel.png" not in default_queries(s)
    canvas = widget.viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_0)  # the same toggle from the keyboard
    assert not s.info("texture_gravel.png").no_class and not widget.no_class_check.isChecked()
    widget.show_image("coin_00.png")  # tagged coin: a negative tag would contradict it
    before = len(notification_manager.records)
    widget.no_class_check.click()
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert not s.info("coin_00.png").no_class and not widget.no_class_check.isChecked()
    assert any("negative tag" in m or "none of the classes" in m for m in messages), messages
