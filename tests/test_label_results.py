"""What a run hands back (issue 25): the image-level "no class present" decision, the first stored result
after one image, and tagged images' accepted masks in the dataset.

Runs use test_batch's fake engine (``fg_prob`` = the red channel), so a class's score in an image is its
mean red value over the pixels it was given.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from test_batch import fake_engine, make_folder

import napari_wfss.engine as engine_module
import napari_wfss.session as session_module
from napari_wfss.batch import PROJECT_DIRNAME, label_folder
from napari_wfss.cli import main
from napari_wfss.engine import ClassPlan, ProposalResult, decide_no_class
from napari_wfss.export import export_session
from napari_wfss.images import read_label_png
from napari_wfss.options import DEFAULT_MIN_SCORE, ProposalOptions
from napari_wfss.session import ACCEPTED, PROPOSED, Session

# ------------------------------------------------------------------------------------ no class present


def _plans() -> tuple[ClassPlan, ...]:
    return tuple(ClassPlan(name, cid, (), (), (), frozenset()) for name, cid in (("cow", 1), ("sheep", 2)))


def test_decide_no_class_drops_the_classes_scoring_below_the_minimum():
    label_map = np.array([[1, 1, 2, 0]], np.uint8)
    result = ProposalResult("x.png", "x", label_map.copy(), scores={"cow": 0.9, "sheep": 0.65},
                            fractions={"cow": 0.5, "sheep": 0.25})
    decide_no_class(result, 0.7, _plans())
    np.testing.assert_array_equal(result.label_map, [[1, 1, 0, 0]])
    assert result.scores == {"cow": 0.9} and result.fractions == {"cow": 0.5, "sheep": 0.0}
    assert not result.no_class
    decide_no_class(result, 0.95, _plans())
    assert result.label_map.max() == 0 and result.scores == {} and result.no_class

    empty = ProposalResult("y.png", "y", np.zeros((1, 4), np.uint8), fractions={"cow": 0.0, "sheep": 0.0})
    decide_no_class(empty, 0.0, _plans())  # nothing above the per-pixel threshold: no class found either
    assert empty.no_class
    unreadable = ProposalResult("z.png", "z", None, error="cannot read")
    decide_no_class(unreadable, 0.7, _plans())
    assert not unreadable.no_class and unreadable.label_map is None


def _flat(red: int) -> np.ndarray:
    img = np.zeros((20, 28, 3), np.uint8)
    img[..., 0] = red
    return img


def test_wfss_label_min_score_empties_images_of_no_class_and_counts_them(tmp_path, capsys, monkeypatch):
    import napari_wfss.batch as batch

    monkeypatch.setattr(batch.Engine, "from_options", lambda options: fake_engine(min_score=options.min_score))
    folder, tags = make_folder(tmp_path, n_untagged=2)
    Image.fromarray(_flat(150)).save(folder / "u00.png")  # labelled cat (0.59 >= 0.5), scoring 0.59
    Image.fromarray(_flat(250)).save(folder / "u01.png")  # labelled cat, scoring 0.98
    out = tmp_path / "out"
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--min-score", "0.7", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["labelled"] == ["u00.png", "u01.png"] and summary["no_class_found"] == ["u00.png"]
    assert "1 image(s) with no class found (their masks are all background): u00.png" in captured.err
    assert read_label_png(out / "masks" / "u00.png").max() == 0 and read_label_png(out / "masks" / "u01.png").min() == 1
    with Session.open(out / PROJECT_DIRNAME) as s:
        assert s.status("u00.png") == PROPOSED and s.info("u00.png").classes_present == ()


def test_the_minimum_score_is_a_proposal_setting_checked_up_front():
    assert ProposalOptions().min_score == DEFAULT_MIN_SCORE
    assert ProposalOptions.from_json(ProposalOptions(min_score=0.8).to_json()).min_score == 0.8
    assert fake_engine(min_score=0.8).settings()["min_score"] == 0.8
    with pytest.raises(Exception, match="minimum class score must be in"):
        ProposalOptions(min_score=1.5)


# ------------------------------------------------------------------------------ first result stored alone


def test_the_first_result_is_stored_alone_then_batches_keep_their_size(tmp_path, monkeypatch):
    folder, tags = make_folder(tmp_path, n_untagged=6)
    session = Session.create(folder, tmp_path / "project")
    assert session.import_tags_csv(tags).ok
    writes = []
    real_write = session_module.write_project
    monkeypatch.setattr(session_module, "write_project", lambda *a: writes.append(1) or real_write(*a))
    stored_sizes = []
    real_store = engine_module.store_proposals
    monkeypatch.setattr(engine_module, "store_proposals",
                        lambda s, results: stored_sizes.append(len(results)) or real_store(s, results))

    run = fake_engine(batch_size=4).propose(session)
    first = next(run)
    assert first.stored and session.images_with_status(PROPOSED) == [first.image]  # after one image, not four
    rest = list(run)
    assert len(rest) == 5 and stored_sizes == [1, 4, 1]
    assert len(writes) == 1 + math.ceil(5 / 4)  # one write per stored batch: the first alone, then batches of 4


# --------------------------------------------------------------------- tagged images' accepted masks


def test_a_tagged_images_accepted_mask_is_in_the_dataset(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    assert not (out / "masks" / "t_cat0.png").exists()  # tags alone give no mask
    with Session.open(out / PROJECT_DIRNAME) as s:  # the widget on the run's project: paint and accept
        painted = np.zeros((20, 28), np.uint8)
        painted[3:9, 4:12] = s.classes.get("cat").id
        s.accept("t_cat0.png", painted)
    summary = label_folder(folder, tags, out, fake_engine(), progress=False)
    assert summary.labelled == []
    np.testing.assert_array_equal(read_label_png(out / "masks" / "t_cat0.png"), painted)
    rows = {r["key"]: r for r in json.loads((out / "manifest.json").read_text())["images"]}
    assert rows["t_cat0"]["status"] == ACCEPTED and rows["t_cat0"]["tags"] == ["cat"]
    coco = COCO(str(out / "coco.json"))
    image = next(im for im in coco.dataset["images"] if im["file_name"] == "t_cat0.png")
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    np.testing.assert_array_equal(coco.annToMask(ann), painted > 0)

    with Session.open(out / PROJECT_DIRNAME) as s:  # and in an export of the session itself
        export_session(s, tmp_path / "export", images="none")
    np.testing.assert_array_equal(read_label_png(tmp_path / "export" / "masks" / "t_cat0.png"), painted)
