"""Fine-tuning on accepted masks (``hhn.training.finetune``, ``wfss train --init``, ``napari_wfss.retrain``):
the model written and its lineage, the held-out split, and every bad input refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hhn.data.base import DatasetError
from hhn.errors import UserError

COINS = [f"coin_0{i}.png" for i in range(4)]
CATS = [f"cat_0{i}.png" for i in range(3)]


def _box_map(session, rel: str, class_name: str) -> np.ndarray:
    h, w = session.read_image(rel).shape[:2]
    label_map = np.zeros((h, w), np.uint8)
    label_map[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = session.classes.get(class_name).id
    return label_map


@pytest.fixture
def project(sample_images, tmp_path):
    """A session of the sample with 4 coin and 3 cat images accepted (box masks) and one proposed image."""
    from napari_wfss.session import Session

    session = Session.create(sample_images, project_dir=tmp_path / "project")
    session.add_class("coin")
    session.add_class("cat")
    for rel, cls in [*((r, "coin") for r in COINS), *((r, "cat") for r in CATS)]:
        session.set_tags(rel, [cls])
        session.accept(rel, _box_map(session, rel, cls))
    session.set_proposal("cup_00.png", _box_map(session, "cup_00.png", "coin"), model="default")
    yield session
    session.close()


@pytest.fixture
def export(project, tmp_path) -> Path:
    from napari_wfss.export import export_session

    out = tmp_path / "export"
    export_session(project, out)  # accepted, edited and proposed: fine-tuning picks the reviewed ones itself
    return out


FAST = {"steps": 4, "eval_every": 2, "patience": 2, "device": "cpu"}


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_finetune_writes_a_model_that_records_its_lineage(export, tiny_model, tmp_path, one_torch_thread):
    import torch

    from hhn.checkpoints import load_state_dict_file
    from hhn.factory import create_model
    from hhn.training.finetune import FinetuneSettings, finetune

    lines: list[str] = []
    stages: set[str] = set()
    out = tmp_path / "tuned"
    result = finetune(tiny_model, export, out, FinetuneSettings(**FAST), log=lines.append,
                      progress=lambda stage, done, total: stages.add(stage))
    assert result.model == out / "model.safetensors" and result.model.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "model.json", "model.safetensors"]
    assert stages == {"features", "priors", "training"}
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert meta["parent"] == tiny_model and meta["parent_weights_sha256"]
    assert meta["data"] == str(export) and meta["classes"] == ["coin", "cat"]
    used = sorted(meta["train_images"] + meta["held_out_images"])
    assert used == sorted(Path(r).stem for r in COINS + CATS)  # the proposed cup_00 is not learnt from
    assert len(meta["held_out_images"]) == 1 and meta["steps_run"] == 4 and meta["recipe"] == "finetune"
    assert set(meta["held_out_scores"]) == {"0", "2", "4"}
    assert any(line.startswith("held-out before fine-tuning") for line in lines)

    # the best step's weights were written: the parent's when no step beat it, else changed heads
    tuned = load_state_dict_file(out / "model.safetensors")
    parent = load_state_dict_file(Path(tiny_model).with_suffix(".safetensors"))
    heads_equal = all(torch.equal(tuned[k], parent[k]) for k in tuned if not k.startswith("backbone."))
    assert heads_equal == (meta["best_step"] == 0)
    model = create_model(str(out), device="cpu")  # usable as --model DIR
    assert model.config.name == "test-lite0-64"


def test_one_class_export_trains_with_a_note(project, tiny_model, tmp_path, one_torch_thread):
    from hhn.training.finetune import FinetuneSettings, finetune
    from napari_wfss.export import export_session
    from napari_wfss.statuses import ACCEPTED

    for rel in CATS:
        project.reject(rel, force=True)
    assert project.images_with_status(ACCEPTED) == COINS
    export_session(project, tmp_path / "coins")
    result = finetune(tiny_model, tmp_path / "coins", tmp_path / "tuned", FinetuneSettings(**FAST), log=lambda s: None)
    assert result.model is not None
    assert any(n.startswith("one class (coin)") for n in result.notes)
    assert any("without negative images" in n for n in result.notes)


def test_classes_new_to_the_parent_are_named(export, tiny_model, tmp_path, one_torch_thread):
    from hhn.training.finetune import FinetuneSettings, finetune

    meta = Path(tiny_model)
    header = json.loads(meta.read_text())
    header["metadata"]["train_classes"] = ["coin", "grass"]
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "model.json").write_text(json.dumps(header))
    (parent / "model.safetensors").write_bytes(meta.with_suffix(".safetensors").read_bytes())
    result = finetune(str(parent), export, tmp_path / "tuned", FinetuneSettings(**FAST), log=lambda s: None)
    assert [n for n in result.notes if n.startswith("new to the parent model")] == [
        ("new to the parent model (not among its training classes): cat; its heads are class-agnostic and learn "
         "them from these masks")]


def test_no_accepted_mask_is_refused_before_writing(sample_images, tiny_model, tmp_path):
    from hhn.training.finetune import finetune
    from napari_wfss.export import export_session
    from napari_wfss.session import Session

    with Session.create(sample_images, project_dir=tmp_path / "p") as session:
        session.add_class("coin")
        session.set_proposal("coin_00.png", _box_map(session, "coin_00.png", "coin"), model="default")
        export_session(session, tmp_path / "export")
    out = tmp_path / "tuned"
    with pytest.raises(UserError, match=r"has no accepted or edited mask to learn from \(its manifest lists 1 "
                                        r"proposed\); accept or edit some proposals and export again"):
        finetune(tiny_model, tmp_path / "export", out)
    assert _nothing_written(out)


def test_a_class_with_one_image_is_left_out_and_none_left_is_refused(project, tiny_model, tmp_path):
    from hhn.training.finetune import FinetuneSettings, prepare_data
    from napari_wfss.export import export_session

    for rel in COINS[1:] + CATS[1:]:
        project.reject(rel, force=True)
    export_session(project, tmp_path / "single")
    with pytest.raises(UserError, match="no class of .* has 2 accepted images"):
        prepare_data(tmp_path / "single", FinetuneSettings())


def test_corrupt_or_mismatched_mask_is_named_before_writing(export, tiny_model, tmp_path):
    from hhn.training.finetune import finetune

    out = tmp_path / "tuned"
    bad = export / "masks" / "coin_01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"label map.*coin_01\.png"):
        finetune(tiny_model, export, out)
    assert _nothing_written(out)

    from PIL import Image

    Image.fromarray(np.zeros((5, 7), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=r"coin_01\.png is 7x5 but its image is"):
        finetune(tiny_model, export, out)
    Image.fromarray(np.full((5, 7), 9, np.uint8)).resize(Image.open(export / "images" / "coin_01.png").size).save(bad)
    with pytest.raises(DatasetError, match=r"coin_01\.png holds class id\(s\) \[9\] that classes.txt does not list"):
        finetune(tiny_model, export, out)
    assert _nothing_written(out)


def test_text_models_and_used_outputs_are_refused(export, tiny_model, tmp_path):
    from hhn.training.finetune import finetune

    with pytest.raises(UserError, match="uses CLIP text embeddings"):
        finetune("tlg-resnet50-pascal", export, tmp_path / "a")
    assert _nothing_written(tmp_path / "a")
    used = tmp_path / "used"
    used.mkdir()
    (used / "model.json").write_text("{}")
    with pytest.raises(UserError, match="already exists and is not empty"):
        finetune(tiny_model, export, used)
    with pytest.raises(DatasetError, match="does not exist"):
        finetune(tiny_model, tmp_path / "nowhere", tmp_path / "b")


def test_a_cancelled_run_leaves_nothing(export, tiny_model, tmp_path, one_torch_thread):
    from hhn.training.finetune import FinetuneSettings, finetune

    seen: list[str] = []
    out = tmp_path / "tuned"
    result = finetune(tiny_model, export, out, FinetuneSettings(**FAST), log=lambda s: None,
                      progress=lambda stage, done, total: seen.append(stage), should_stop=lambda: "training" in seen)
    assert result.cancelled and result.model is None
    assert _nothing_written(out)


def test_held_out_split_keeps_every_class_trainable(export):
    from hhn.data.generic import GenericDataset
    from hhn.training.finetune import split_held_out

    ds = GenericDataset(export, only=[Path(r).stem for r in COINS + CATS])
    train, held = split_held_out(ds, 0.5, seed=0)
    assert len(held) >= 1 and not set(train) & set(held)
    train_ds = GenericDataset(export, only=train)
    assert all(len(train_ds.images_with(c)) >= 2 for c in ("coin", "cat"))
    assert split_held_out(ds, 0.0, seed=0) == (sorted(ds.names), [])


def test_wfss_train_init_cli(export, tiny_model, tmp_path, capsys, one_torch_thread):
    from napari_wfss.cli import main

    out = tmp_path / "tuned"
    assert main(["train", "--init", tiny_model, "--data", str(export), "--out", str(out), "--steps", "2",
                 "--eval-every", "1", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == str(out / "model.safetensors") and summary["steps_run"] <= 2
    assert main(["train", "--init", tiny_model, "--data", str(export), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_retrain_session_keeps_data_and_model_in_the_project(project, tiny_model, one_torch_thread):
    from napari_wfss.retrain import MODELS_DIR, retrain_session

    result = retrain_session(project, tiny_model, steps=2, log=lambda s: None)
    models = project.project_dir / MODELS_DIR
    model_dir = result.model.parent
    assert model_dir.parent == models and (models / f"{model_dir.name}-data" / "manifest.json").is_file()
    meta = json.loads((model_dir / "model.json").read_text())["metadata"]
    assert meta["data"] == str(models / f"{model_dir.name}-data")


def test_retrain_session_without_accepted_masks_writes_nothing(sample_images, tmp_path):
    from napari_wfss.retrain import MODELS_DIR, retrain_session
    from napari_wfss.session import Session

    with Session.create(sample_images, project_dir=tmp_path / "p") as session:
        with pytest.raises(UserError, match="nothing to retrain on"):
            retrain_session(session)
        assert not (session.project_dir / MODELS_DIR).exists()


def test_default_queries_redo_other_models_proposals_only(project):
    from napari_wfss.engine import default_queries

    assert "cup_00.png" not in default_queries(project)
    assert "cup_00.png" not in default_queries(project, redo_model="default")  # made by this model
    redo = default_queries(project, redo_model="/models/new")
    assert "cup_00.png" in redo and not set(redo) & set(COINS + CATS)  # accepted masks are never redone
