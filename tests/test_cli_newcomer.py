"""The command line as a newcomer meets it (issue 25): ``--version``, ``wfss label --json``, image links,
sub-folders, reruns with other options and ``--redo``, the closing line, ``wfss weights`` for a user of
the default model, checkpoints that do not fit, and scikit-image deprecations as test errors.

Label runs use test_batch's fake engine (milliseconds); one end-to-end run uses the ``tiny_model``
checkpoint on a few sample images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from importlib.metadata import version

import numpy as np
import pytest
from conftest import keep_only
from PIL import Image
from test_batch import TAGS, _image, fake_engine, make_folder
from test_engine import FakePredictor, red_prior

from napari_wfss.batch import PROJECT_DIRNAME, RECORD_NAME, BatchError, LabelSummary, label_folder
from napari_wfss.cli import main
from napari_wfss.engine import Engine
from napari_wfss.images import read_label_png
from napari_wfss.session import ACCEPTED, EDITED, PROPOSED, Session


@pytest.fixture
def fake_cli(monkeypatch):
    """``wfss label`` builds test_batch's fake engine, with the threshold the command line gives."""
    import napari_wfss.batch as batch

    monkeypatch.setattr(batch.Engine, "from_options", lambda options: fake_engine(threshold=options.threshold))


def _label_args(folder, tags, out, *extra):
    return ["label", str(folder), "--tags", str(tags), "--out", str(out), *extra]


# --------------------------------------------------------------------------------------- --version


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"wfss {version('napari-wfss')}"


# ------------------------------------------------------------------------------------------ --json


def test_label_json_prints_one_object_on_stdout_and_the_text_on_stderr(tmp_path, capsys, fake_cli):
    folder, tags = make_folder(tmp_path, n_untagged=3)
    (folder / "u01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(_label_args(folder, tags, out, "--json")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert summary["labelled"] == ["u00.png", "u02.png"] and summary["already_done"] == 0
    assert [f["image"] for f in summary["failed"]] == ["u01.png"] and "u01.png" in summary["failed"][0]["reason"]
    assert summary["skipped_files"] == ["notes.txt"] and summary["out"] == str(out.resolve())
    assert summary["exit_code"] == 0 and summary["seconds"] > 0 and summary["model"] == "fake-model"
    assert isinstance(summary["warnings"], list)
    assert "labelled 2 image(s), 0 already done, 1 failed" in captured.err

    assert main(_label_args(folder, tags, out, "--json")) == 1  # a rerun: only the broken image, failing again
    again = json.loads(capsys.readouterr().out)
    assert again["labelled"] == [] and again["already_done"] == 2 and again["exit_code"] == 1


def test_label_json_prints_nothing_on_stdout_for_bad_input(tmp_path, capsys, fake_cli):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    tags.write_text(TAGS + "ghost.png,cat\n")
    assert main(_label_args(folder, tags, tmp_path / "out", "--json")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "wfss label: error:" in captured.err


# ------------------------------------------------------------------------- --link-images / --no-images


def test_link_images_hard_links_the_sources(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), images="link", progress=False)
    for name in ("u00.png", "u01.png"):
        assert os.path.samefile(folder / name, out / "images" / name)


def test_cli_no_images_then_link_images_rewrite_the_export(tmp_path, capsys, fake_cli):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    assert main(_label_args(folder, tags, out, "--no-images")) == 0
    text = capsys.readouterr().out
    assert not list((out / "images").glob("*")) and (out / "masks" / "u00.png").is_file()
    assert text.splitlines()[-1].endswith("(masks/, coco.json, classes.txt, classes.json, manifest.json)")
    coco = json.loads((out / "coco.json").read_text())
    assert {im["file_name"] for im in coco["images"]} == {""}
    assert main(_label_args(folder, tags, out, "--link-images")) == 0  # the same OUT, now with linked images
    assert os.path.samefile(folder / "u01.png", out / "images" / "u01.png")
    with pytest.raises(SystemExit):  # one or the other
        main(_label_args(folder, tags, out, "--link-images", "--no-images"))


# ------------------------------------------------------------------------------------- --recursive


def _nested_folder(root):
    """make_folder's images, plus sub-folders a/ and b/ each holding an untagged x.png (the same name)."""
    folder, tags = make_folder(root, n_untagged=1)
    for i, sub in enumerate(("a", "b")):
        (folder / sub).mkdir()
        Image.fromarray(_image(10 + i)).save(folder / sub / "x.png")
    return folder, tags


def test_without_recursive_a_tag_in_a_subfolder_says_to_add_recursive(tmp_path):
    folder, tags = _nested_folder(tmp_path)
    tags.write_text(TAGS + "a/x.png,dog\n")
    with pytest.raises(BatchError, match=r"(?s)unknown image 'a/x.png'.*in sub-folders \(a/x.png\).*--recursive"):
        label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    tags.write_text(TAGS + "nowhere.png,dog\n")  # an image that is nowhere: no word about sub-folders
    with pytest.raises(BatchError) as err:
        label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    assert "--recursive" not in str(err.value)


def test_recursive_labels_subfolders_with_unique_keys(tmp_path):
    folder, tags = _nested_folder(tmp_path)
    tags.write_text(TAGS + "a/x.png,dog\n")
    out = tmp_path / "out"
    with pytest.raises(BatchError):  # the first run, without --recursive, stops at the tags ...
        label_folder(folder, tags, out, fake_engine(), progress=False)
    summary = label_folder(folder, tags, out, fake_engine(), recursive=True, progress=False)  # ... same OUT
    assert summary.labelled == ["b/x.png", "u00.png"]  # natural order of the relative paths
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b__x.png", "u00.png"]
    assert Session.open(out / PROJECT_DIRNAME).tags_of("a/x.png") == ["dog"]
    with pytest.raises(BatchError, match="labelled with --recursive"):  # labelled now: the choice is kept
        label_folder(folder, tags, out, fake_engine(), progress=False)


def test_cli_recursive_refuses_an_out_inside_the_folder(tmp_path, capsys, fake_cli):
    folder, tags = _nested_folder(tmp_path)
    assert main(_label_args(folder, tags, folder / "out", "--recursive")) == 2
    assert "must not be inside the image folder" in capsys.readouterr().err
    assert not (folder / "out").exists()


# ------------------------------------------------------------------------- reruns with other options


def _mask_state(out):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "masks").iterdir()}


def test_rerun_with_other_options_warns_and_redo_keeps_reviewed_masks(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=4)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    with Session.open(out / PROJECT_DIRNAME) as s:  # the user reviews two images
        s.accept("u00.png")
        s.mark_edited("u01.png", np.zeros((20, 28), np.uint8))
        reviewed = {rel: s.info(rel).mask_time for rel in ("u00.png", "u01.png")}
    label_folder(folder, tags, out, fake_engine(), progress=False)  # exports the reviewed masks
    before = _mask_state(out)

    summary = label_folder(folder, tags, out, fake_engine(threshold=0.9), progress=False)
    assert summary.labelled == [] and summary.already_done == 4
    assert len(summary.warnings) == 1
    warning = summary.warnings[0]
    assert "2 image(s)" in warning and "threshold model's then, 0.9 now" in warning and "--redo" in warning
    assert _mask_state(out) == before  # nothing changed

    summary = label_folder(folder, tags, out, fake_engine(threshold=0.9), redo=True, progress=False)
    assert summary.labelled == ["u02.png", "u03.png"] and summary.already_done == 2 and not summary.warnings
    after = _mask_state(out)
    assert {k: after[k] for k in ("u00.png", "u01.png")} == {k: before[k] for k in ("u00.png", "u01.png")}
    expected = np.where(_image(4 + 2)[:, :, 0] / 255.0 >= 0.9, 1, 0)  # u02 at the new threshold
    np.testing.assert_array_equal(read_label_png(out / "masks" / "u02.png"), expected)
    with Session.open(out / PROJECT_DIRNAME) as s:
        assert (s.status("u00.png"), s.status("u01.png")) == (ACCEPTED, EDITED)
        assert {rel: s.info(rel).mask_time for rel in reviewed} == reviewed
        assert (s.status("u02.png"), s.status("u03.png")) == (PROPOSED, PROPOSED)
    record = json.loads((out / PROJECT_DIRNAME / RECORD_NAME).read_text())
    assert record["settings"][record["images"]["u02.png"][0]]["threshold"] == 0.9

    again = label_folder(folder, tags, out, fake_engine(threshold=0.9), redo=True, progress=False)
    assert again.labelled == [] and not again.warnings  # the same options: nothing to redo


def test_rerun_names_every_option_that_differs(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    other = Engine(FakePredictor(), prior=red_prior(), model_name="other-model", threshold=0.3, shots=2)
    summary = label_folder(folder, tags, out, other, progress=False)
    warning = summary.warnings[0]
    assert "model fake-model then, other-model now" in warning and "shots 5 then, 2 now" in warning
    assert "threshold model's then, 0.3 now" in warning and "snap" not in warning


def test_redo_also_takes_proposals_whose_options_were_not_recorded(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    (out / PROJECT_DIRNAME / RECORD_NAME).unlink()  # e.g. a project of an earlier version
    kept = label_folder(folder, tags, out, fake_engine(threshold=0.9), progress=False)
    assert kept.labelled == [] and not kept.warnings  # same model; the other options are unknown
    redone = label_folder(folder, tags, out, fake_engine(), redo=True, progress=False)
    assert redone.labelled == ["u00.png", "u01.png"]


def test_cli_rerun_warning_and_redo(tmp_path, capsys, fake_cli):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    out = tmp_path / "out"
    assert main(_label_args(folder, tags, out)) == 0
    assert main(_label_args(folder, tags, out, "--threshold", "0.8")) == 0
    captured = capsys.readouterr()
    assert "wfss label: warning: 1 image(s) were proposed with other options (threshold" in captured.err
    assert "labelled 0 image(s), 1 already done" in captured.out and "warning:" in captured.out
    assert main(_label_args(folder, tags, out, "--threshold", "0.8", "--redo")) == 0
    captured = capsys.readouterr()
    assert "1 to label (1 of them proposed again: --redo)" in captured.err
    assert "labelled 1 image(s), 0 already done" in captured.out


# ---------------------------------------------------------------------------------- closing line


def test_closing_line_lists_the_folders_written(tmp_path):
    def closing(**kwargs):
        return LabelSummary(tmp_path, "m", False, **kwargs).text().splitlines()[-1]

    assert "(masks/, images/, coco.json" in closing()
    assert "(masks/, masks_tiff/, images/, coco.json" in closing(tiff=True)
    assert "(masks/, masks_tiff/, coco.json" in closing(tiff=True, images="none")


# ----------------------------------------------------------------------------------- end to end


def test_wfss_label_end_to_end_with_the_new_flags(tmp_path, sample_images, tiny_model, capsys):
    keep_only(sample_images, {"coin_00.png", "coin_01.png", "coin_02.png", "cat_00.png", "cat_01.png", "cat_02.png"})
    tags = tmp_path / "tags.csv"
    tags.write_text("image,class\ncoin_00.png,coin\ncoin_01.png,coin\ncat_00.png,cat\ncat_01.png,cat\n")
    out = tmp_path / "out"
    args = _label_args(sample_images, tags, out, "--model", tiny_model, "--shots", "1", "--device", "cpu",
                       "--threads", "1", "--tiff", "--link-images", "--json")
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labelled"] == ["cat_02.png", "coin_02.png"] and not summary["failed"]
    assert sorted(p.name for p in (out / "masks_tiff").iterdir()) == ["cat_02.tif", "coin_02.tif"]
    assert os.path.samefile(sample_images / "coin_02.png", out / "images" / "coin_02.png")
    assert main([*args, "--shots", "2"]) == 0  # argparse: the last --shots wins
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["labelled"] == [] and "shots 1 then, 2 now" in rerun["warnings"][0]


# ------------------------------------------------------------------------------------ wfss weights


@pytest.fixture
def downloads_allowed(monkeypatch):
    """Neither offline variable set: the case where `wfss weights` used to say 'Offline: no'."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("WFSS_OFFLINE", raising=False)


def test_weights_tells_a_default_model_user_it_is_ready_offline(capsys, downloads_allowed):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "Offline: no" not in out
    assert out.startswith("Default model (--model default): ready, offline: nothing to download\n")
    assert "heads: shipped inside the package" in out and "CLIP: not used" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "default model" in rows["efficientnet_lite0"] and "default model" not in rows["resnet50"]
    assert "tlg-resnet50-pascal" in rows["resnet50"]
    assert "Downloads: on: a missing file is downloaded the first time something that needs it runs" in out


def test_weights_says_when_the_default_model_is_not_ready(capsys, downloads_allowed, monkeypatch):
    import hhn.weights.cli as weights_cli

    monkeypatch.setattr(weights_cli, "find_weight_file", lambda name: None)  # no backbone file anywhere
    monkeypatch.setenv("WFSS_OFFLINE", "1")
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Default model (--model default): NOT ready")
    assert "backbone efficientnet_lite0: missing, place at" in out
    assert "Downloads: off" in out


# ------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def small_model():
    import torch

    from hhn.config import load_preset
    from hhn.network import HHN

    torch.manual_seed(0)
    config = dataclasses.replace(load_preset("wfss-lite0"), name="test-lite0-64", image_size=(64, 64))
    return HHN(config, pretrained_backbone=False).eval()


def test_a_checkpoint_that_does_not_fit_fails_naming_the_file_and_keys(tmp_path, small_model):
    import torch

    from hhn.checkpoints import CheckpointMismatchError, load_checkpoint, write_checkpoint

    state = dict(small_model.state_dict())
    heads = [k for k in state if not k.startswith("backbone.")]
    dropped = heads[:7]
    for k in dropped:
        del state[k]
    state["decoder.extra.weight"] = torch.zeros(2)
    reshaped = heads[-1]
    state[reshaped] = torch.zeros(*state[reshaped].shape, 2)
    written = write_checkpoint(small_model.config, state, tmp_path / "bad", include_backbone=True)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(written, pretrained=False)
    message = str(err.value)
    assert str(written) in message and "do not fit the 'test-lite0-64' model" in message
    assert f"missing (7): {', '.join(dropped[:5])}, ... (2 more)" in message
    assert "unexpected (1): decoder.extra.weight" in message and f"of another shape (1): {reshaped}" in message


def test_a_mismatch_loads_nothing_and_heads_only_checkpoints_still_load(tmp_path, small_model):
    import torch

    from hhn.checkpoints import (
        CheckpointMismatchError,
        load_checkpoint,
        load_weights_strictly,
        read_checkpoint,
        save_checkpoint,
    )

    written = save_checkpoint(small_model, tmp_path / "heads", include_backbone=False)
    ckpt = read_checkpoint(written)
    assert ckpt.backbone_source == "pretrained" and not any(k.startswith("backbone.") for k in ckpt.state_dict)
    loaded = load_checkpoint(written, pretrained=False)  # backbone random (not from its file): the heads load
    own = small_model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items() if not k.startswith("backbone."))

    target = load_checkpoint(written, pretrained=False)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in ckpt.state_dict.items()}
    bad.pop(next(iter(bad)))  # one missing key: nothing of the rest may be loaded
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_weights_strictly(target, bad, written, with_backbone=False)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match=r"missing \(\d+\): backbone\."):  # the file has no backbone
        load_weights_strictly(target, ckpt.state_dict, written, with_backbone=True)


# ------------------------------------------------------------------------- scikit-image deprecations


def test_scikit_image_deprecations_fail_the_tests():
    """pyproject's filterwarnings turn scikit-image's deprecation warnings into errors (the screenshot test
    used the deprecated ``binary_opening``: it now calls ``opening``)."""
    with pytest.raises(FutureWarning):
        warnings.warn("`binary_opening` is deprecated since version 0.26 and will be removed in version 0.28.",
                      FutureWarning, stacklevel=1)
