"""``wfss label``: export layout, resume, kill -9 and rerun, bad input, unreadable images, untrained label.

Most runs use the engine with a fake predictor (``fg_prob`` = the red-channel prior, from
test_engine) so they take milliseconds; ``test_wfss_label_end_to_end`` runs the real command line
with a small random-weight checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from test_engine import FakePredictor, red_prior

from hhn.errors import UserError
from napari_wfss.batch import PROJECT_DIRNAME, BatchError, label_folder
from napari_wfss.cli import main
from napari_wfss.engine import Engine
from napari_wfss.images import ImageFolderError, read_label_png
from napari_wfss.session import PROPOSED, Session

H, W = 20, 28
TAGS = "image,class\nt_cat0.png,cat\nt_cat1.png,cat\nt_dog0.png,dog\nt_both.png,cat\nt_both.png,dog\n"


def _image(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2, 0] = 40 + (47 * i) % 210  # varies per image: the fake prior labels the left half or not
    img[:, W // 2 :, 0] = 250
    img[:, :, 1] = 7 * i
    return img


def make_folder(root, n_untagged: int = 6):
    """A folder with 4 tagged images and ``n_untagged`` untagged ones (u00.png, ...), and tags.csv beside it."""
    folder = root / "imgs"
    folder.mkdir(parents=True)
    names = ["t_cat0.png", "t_cat1.png", "t_dog0.png", "t_both.png"] + [f"u{i:02d}.png" for i in range(n_untagged)]
    for i, name in enumerate(names):
        Image.fromarray(_image(i)).save(folder / name)
    (root / "tags.csv").write_text(TAGS)
    return folder, root / "tags.csv"


class SlowFakePredictor(FakePredictor):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def predict_batch(self, queries, support, priors):
        time.sleep(self.delay)
        return super().predict_batch(queries, support, priors)


def fake_engine(delay: float = 0.0, **kwargs) -> Engine:
    predictor = SlowFakePredictor(delay) if delay else FakePredictor()
    return Engine(predictor, prior=red_prior(), model_name="fake-model", **kwargs)


def child_label(argv: list[str]) -> int:
    """Entry of the killed child: label slowly, one image per batch."""
    folder, tags, out = argv
    label_folder(folder, tags, out, fake_engine(delay=0.15, batch_size=1), progress=False)
    return 0


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _check_export(out, expected_images):
    """masks/ palette PNGs, coco.json (pycocotools), classes files and manifest for exactly ``expected_images``."""
    stems = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert stems == sorted(p.removesuffix(".png") for p in expected_images)
    for p in (out / "masks").glob("*.png"):
        with Image.open(p) as im:
            assert im.mode == "P"
    coco = COCO(str(out / "coco.json"))
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == sorted(expected_images)
    assert {c["name"] for c in coco.dataset["categories"]} == {"cat", "dog"}
    for ann in coco.dataset["annotations"]:
        assert coco.annToMask(ann).sum() == ann["area"] > 0
    assert (out / "classes.txt").read_text().splitlines()[1:] == ["1 cat", "2 dog"]
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())["classes"]] == ["cat", "dog"]
    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert sorted(r["source"] for r in manifest) == sorted(expected_images)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(expected_images)
    return manifest


# ------------------------------------------------------------------------------------------- runs


def test_label_folder_writes_the_export_layout_and_never_touches_the_folder(tmp_path):
    folder, tags = make_folder(tmp_path)
    before = _listing(folder)
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(batch_size=4), tiff=True, progress=False)
    untagged = [f"u{i:02d}.png" for i in range(6)]
    assert summary.labelled == untagged and summary.already_done == 0 and not summary.failed
    assert summary.exit_code == 0
    manifest = _check_export(tmp_path / "out", untagged)
    assert {r["model"] for r in manifest} == {"fake-model"} and {r["status"] for r in manifest} == {PROPOSED}
    assert sorted(p.name for p in (tmp_path / "out" / "masks_tiff").iterdir()) == [f"{s[:-4]}.tif" for s in untagged]
    # the label maps are the fake model's: red >= 0.5 is 'cat' (first class wins the tie with 'dog')
    for rel in untagged:
        i = 4 + int(rel[1:3])
        expected = np.where(_image(i)[:, :, 0] / 255.0 >= 0.5, 1, 0)
        np.testing.assert_array_equal(read_label_png(tmp_path / "out" / "masks" / rel), expected)
    assert _listing(folder) == before
    assert (tmp_path / "out" / PROJECT_DIRNAME / "project.json").is_file()


def test_rerun_resumes_instead_of_redoing(tmp_path, capsys):
    folder, tags = make_folder(tmp_path)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    times = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    (folder / "u99.png").write_bytes((folder / "u00.png").read_bytes())  # a new image appears
    summary = label_folder(folder, tags, out, fake_engine(), progress=False)
    assert summary.already_done == 6 and summary.labelled == ["u99.png"]
    assert "6 already done, 1 to label" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir() if p.name != "u99.png"} == times
    _check_export(out, [f"u{i:02d}.png" for i in range(6)] + ["u99.png"])


@pytest.mark.slow
def test_kill_9_midway_then_rerun_loses_nothing(tmp_path, child_sees_tests):
    folder, tags = make_folder(tmp_path, n_untagged=12)
    out = tmp_path / "out"
    code = "import sys, test_batch; sys.exit(test_batch.child_label(sys.argv[1:]))"
    child = subprocess.Popen([sys.executable, "-c", code, str(folder), str(tags), str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / "masks").glob("*.png"))) < 3:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child exported nothing in 120 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    done_before = set(Session.open(out / PROJECT_DIRNAME).images_with_status(PROPOSED))
    untagged = [f"u{i:02d}.png" for i in range(12)]
    assert 3 <= len(done_before) < 12  # killed midway

    summary = label_folder(folder, tags, out, fake_engine(), progress=False)
    assert summary.already_done == len(done_before)
    assert set(summary.labelled).isdisjoint(done_before)  # nothing done twice
    assert sorted(set(summary.labelled) | done_before) == untagged  # nothing lost
    _check_export(out, untagged)
    assert not list(out.rglob("*.wfss-tmp"))  # no leftover temporary file is part of the export


def test_a_second_run_on_the_same_out_stops_before_writing(tmp_path):
    from filelock import FileLock

    from napari_wfss.atomic import TEMP_SUFFIX
    from napari_wfss.batch import LOCK_NAME

    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".old{TEMP_SUFFIX}"
    stale.write_bytes(b"half a file")
    with FileLock(out / LOCK_NAME):  # stands for a run in another process
        with pytest.raises(BatchError, match="another `wfss label` run is writing"):
            label_folder(folder, tags, out, fake_engine(), progress=False)
        assert stale.exists() and not (out / PROJECT_DIRNAME).exists()  # nothing touched
    summary = label_folder(folder, tags, out, fake_engine(), progress=False)  # the lock was released
    assert summary.labelled == ["u00.png", "u01.png"] and not stale.exists()


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=3)
    (folder / "u01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    assert summary.labelled == ["u00.png", "u02.png"]
    assert [image for image, _ in summary.failed] == ["u01.png"]
    assert "not an image, or its header is corrupt" in summary.failed[0][1]
    assert summary.exit_code == 0 and "failed: u01.png" in summary.text()
    _check_export(tmp_path / "out", ["u00.png", "u02.png"])
    again = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)  # retried, fails again
    assert again.already_done == 2 and [image for image, _ in again.failed] == ["u01.png"]


def test_nothing_labelled_gives_exit_code_1(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    for name in ["u00.png", "u01.png"]:
        (folder / name).write_bytes(b"garbage")
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    assert not summary.labelled and len(summary.failed) == 2 and summary.exit_code == 1


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "image folder not found"),
        ("empty folder", "no images in"),
        ("missing tags", "tags file not found"),
        ("unknown image", "unknown image 'nope.png'"),
        ("no tag rows", "tags no image"),
        ("bad row", "expected 'image,class'"),
        ("out is folder", "must not be the image folder"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(tmp_path, case, message):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    if case == "missing folder":
        folder = tmp_path / "absent"
    elif case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    elif case == "missing tags":
        tags = tmp_path / "absent.csv"
    elif case == "unknown image":
        tags.write_text(TAGS + "nope.png,cat\nu00.png,dog\n")
    elif case == "no tag rows":
        tags.write_text("image,class\n# nothing yet\n")
    elif case == "bad row":
        tags.write_text(TAGS + "u00.png\n")
    elif case == "out is folder":
        out = folder
    with pytest.raises((BatchError, ImageFolderError), match=message):
        label_folder(folder, tags, out, fake_engine(), progress=False)
    assert not (out / "masks").exists()


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    tags.write_text(TAGS + "ghost.jpg,cat\nghost2.jpg,dog\n")
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "wfss label: error: 2 row(s)" in err and "'ghost.jpg'" in err and "'ghost2.jpg'" in err


def test_changed_tags_after_a_run_are_refused(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    tags.write_text(TAGS + "u00.png,dog\n")
    with pytest.raises(BatchError, match=r"other tags .*changed: u00.png.*new --out"):
        label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    # the refused run changed nothing: the old tags still apply and a rerun with them resumes
    tags.write_text(TAGS)
    assert label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False).already_done == 2


def test_tags_may_be_fixed_before_anything_is_labelled(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    tags.write_text(TAGS + "nope.png,cat\n")
    with pytest.raises(BatchError):
        label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    tags.write_text(TAGS)
    result = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    assert result.labelled == ["u00.png", "u01.png"]


def test_a_corrected_class_name_leaves_no_trace(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    tags.write_text(TAGS.replace("t_dog0.png,dog", "t_dog0.png,dgo"))
    with pytest.raises(UserError, match="unknown model"):  # tags saved, then the model cannot load
        label_folder(folder, tags, tmp_path / "out", Engine("no-such-model", prior=red_prior()), progress=False)
    tags.write_text(TAGS)
    label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    classes_txt = (tmp_path / "out" / "classes.txt").read_text()
    assert [line.split()[1] for line in classes_txt.splitlines()[1:]] == ["cat", "dog"]
    assert Session.open(tmp_path / "out" / PROJECT_DIRNAME).classes.names == ["cat", "dog"]


def test_out_of_another_folder_is_refused(tmp_path):
    folder, tags = make_folder(tmp_path / "a", n_untagged=1)
    other, _ = make_folder(tmp_path / "b", n_untagged=1)
    label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    with pytest.raises(BatchError, match="another folder"):
        label_folder(other, tags, tmp_path / "out", fake_engine(), progress=False)


# ------------------------------------------------------------------------------ real model, CLI


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from hhn.config import load_preset
    from hhn.network import HHN

    torch.manual_seed(0)
    return HHN(dataclasses.replace(load_preset("wfss-lite0"), image_size=(64, 64)), pretrained_backbone=False)


@pytest.mark.slow
def test_wfss_label_end_to_end(tmp_path, tiny_model, monkeypatch, capsys):
    from hhn.checkpoints import save_checkpoint

    save_checkpoint(tiny_model, tmp_path / "tiny", include_backbone=True)
    monkeypatch.setattr("hhn.pipeline.default_tag_prior", lambda *args: red_prior())
    folder, tags = make_folder(tmp_path, n_untagged=3)
    argv = ["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out"),
            "--model", str(tmp_path / "tiny.safetensors"), "--shots", "1", "--device", "cpu", "--threshold", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "labelled 3 image(s), 0 already done, 0 failed" in captured.out and "s/image" in captured.out
    assert "labelling" in captured.err  # the progress bar is on stderr
    manifest = _check_export(tmp_path / "out", ["u00.png", "u01.png", "u02.png"])
    assert {r["model"] for r in manifest} == {str(tmp_path / "tiny.safetensors")}
    assert main(argv) == 0
    assert "labelled 0 image(s), 3 already done" in capsys.readouterr().out


def test_untrained_preset_is_labelled_in_output_and_manifest(tmp_path, tiny_model, monkeypatch, capsys):
    import hhn.factory

    names = []
    monkeypatch.setattr(hhn.factory, "create_model", lambda name, **kw: names.append(name) or tiny_model)
    monkeypatch.setattr("hhn.pipeline.default_tag_prior", lambda *args: red_prior())
    folder, tags = make_folder(tmp_path, n_untagged=1)
    argv = ["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out"),
            "--model", "preset:wfss-lite0", "--shots", "1", "--device", "cpu"]
    assert main(argv) == 0
    assert names == ["wfss-lite0"]
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err and "UNTRAINED heads" in captured.out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]
    assert [r["model"] for r in manifest] == ["preset:wfss-lite0 (untrained heads)"]


def test_progress_bar_can_be_silenced_and_goes_to_the_log(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        label_folder(folder, tags, tmp_path / "out", fake_engine(), log=fh)
    text = log.read_text()
    assert "2 to label" in text and "labelling" in text and "2/2" in text


def test_cli_decision_override_is_checked_before_labelling(tmp_path, capsys):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    out = tmp_path / "out"
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--decision", "0.5,0.6,snap:x"]) == 2
    assert "decision rule must be" in capsys.readouterr().err
    assert not out.exists()


def test_cli_snap_and_refine_flags_reach_the_engine(tmp_path, monkeypatch):
    import napari_wfss.batch as batch

    class Built(Exception):
        pass

    def from_options(options):
        raise Built(options)

    monkeypatch.setattr(batch.Engine, "from_options", from_options)
    folder, tags = make_folder(tmp_path, n_untagged=1)
    args = ["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out")]
    with pytest.raises(Built) as built:
        main([*args, "--no-snap", "--refine-supports"])
    assert built.value.args[0].snap is False and built.value.args[0].refine_supports is True
    with pytest.raises(Built) as built:
        main(args)
    assert built.value.args[0].snap is True and built.value.args[0].refine_supports is None
