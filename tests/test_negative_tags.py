"""Negative tags (issue 25): ``image,-`` / ``image,none`` says an image holds none of the classes.

Such an image is never a query, is a negative of every class when classes are learnt, is accepted as
"no class present" (exported all background, ``no_class`` in the manifest), and round-trips through the
tags CSV and project.json. A negative tag and a class tag on one image are a bad row.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from test_batch import TAGS, fake_engine, make_folder
from test_engine import FakePredictor, H, MapPrior, W, _write, red

from napari_wfss.batch import PROJECT_DIRNAME, label_folder
from napari_wfss.cli import main
from napari_wfss.engine import Engine, plan_run
from napari_wfss.export import export_session
from napari_wfss.images import read_label_png
from napari_wfss.session import ACCEPTED, EDITED, REJECTED, UNTAGGED, Session, SessionError


@pytest.fixture
def session(tmp_path):
    """a0 tagged 'a', b0 tagged 'b'; n0, n1, q0, q1 untagged."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["a0", "b0", "n0", "n1", "q0", "q1"]):
        _write(folder, f"{name}.png", (40 * i, 200 - 30 * i, 90))
    s = Session.create(folder, tmp_path / "project")
    s.tag("a0.png", "a", add_class=True)
    s.tag("b0.png", "b", add_class=True)
    return s


def _csv(tmp_path, text, name="tags.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ CSV


def test_dash_and_none_in_any_case_are_negative_tags_and_round_trip(session, tmp_path):
    report = session.import_tags_csv(_csv(tmp_path, "image,class\nn0.png,-\nn1,NoNe\n"))
    assert report.ok and report.images_no_class == ["n0.png", "n1.png"] and report.new_classes == []
    assert "2 image(s) with a negative tag" in report.summary()
    assert "none" not in session.classes and "-" not in session.classes
    for rel in ("n0.png", "n1.png"):
        info = session.info(rel)
        assert info.no_class and info.tags == () and info.status == ACCEPTED
    session.export_tags_csv(tmp_path / "out.csv")
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows == ["image,class", "a0.png,a", "b0.png,b", "n0.png,-", "n1.png,-"]

    other = Session.create(session.image_folder, tmp_path / "other")
    assert other.import_tags_csv(tmp_path / "out.csv").ok
    assert other.images_no_class() == ["n0.png", "n1.png"] and other.tags_of("a0.png") == ["a"]


@pytest.mark.parametrize("rows, line, reason", [
    ("q0.png,a\nq0.png,-\n", 2, "negative tag '-' for q0.png, which is tagged a"),
    ("q0.png,none\nq0.png,b\n", 2, "class 'b' for q0.png, which has a negative tag"),
    ("a0.png,none\n", 1, "negative tag 'none' for a0.png, which is tagged a"),
])
def test_a_negative_and_a_class_tag_on_one_image_is_a_bad_row(session, tmp_path, rows, line, reason):
    path = _csv(tmp_path, rows)
    report = session.import_tags_csv(path)
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{path}:{line}: {reason}")
    assert report.problems[0].endswith("keep one of the rows")
    info = session.info("q0.png" if "q0" in rows else "a0.png")
    assert not (info.no_class and info.tags)  # the first row holds, the contradicting one is not applied


# -------------------------------------------------------------------------------------- session


def test_a_negative_tag_excludes_class_tags_and_painted_classes(session):
    assert session.set_no_class("n0.png") and not session.set_no_class("n0.png")
    with pytest.raises(SessionError, match="n0.png has a negative tag .* cannot be tagged 'a'"):
        session.tag("n0.png", "a")
    with pytest.raises(SessionError, match="n0.png has a negative tag"):
        session.set_tags("n0.png", ["b"])
    with pytest.raises(SessionError, match="a0.png is tagged with a class"):
        session.set_no_class("a0.png")
    painted = np.zeros((H, W), np.uint8)
    painted[:4] = session.classes.get("a").id
    session.mark_edited("q0.png", painted)
    with pytest.raises(SessionError, match="q0.png has a user mask painting a class"):
        session.set_no_class("q0.png")
    with pytest.raises(SessionError, match="n0.png is accepted"):
        session.reject("n0.png")
    session.mark_edited("n0.png", painted)  # painting a class drops the negative tag
    assert not session.info("n0.png").no_class and session.status("n0.png") == EDITED
    session.set_no_class("n1.png")
    session.reject("n1.png", force=True)
    assert not session.info("n1.png").no_class and session.status("n1.png") == REJECTED
    assert session.set_no_class("n1.png") and session.set_no_class("n1.png", False)
    assert session.status("n1.png") == UNTAGGED


def test_a_negative_image_is_accepted_all_background_and_takes_no_proposal(session):
    session.set_no_class("n0.png")
    assert session.status("n0.png") == ACCEPTED and session.mask_file("n0.png") is None
    np.testing.assert_array_equal(session.current_label_map("n0.png"), np.zeros((H, W), np.uint8))
    assert not session.set_proposal("n0.png", np.ones((H, W), np.uint8), model="m")
    session.accept("n0.png")  # accepted already: nothing to do
    assert session.status("n0.png") == ACCEPTED


def test_a_negative_tag_accepts_an_edited_mask_without_classes(session):
    background = np.zeros((H, W), np.uint8)
    background[:2] = 255  # ignore pixels stay as the user painted them
    session.mark_edited("q1.png", background)
    session.set_no_class("q1.png")
    assert session.status("q1.png") == ACCEPTED
    np.testing.assert_array_equal(session.current_label_map("q1.png"), background)


def test_a_negative_tag_hides_an_earlier_proposal_until_it_is_removed(session):
    session.set_proposal("q0.png", np.ones((H, W), np.uint8), model="m")
    session.set_no_class("q0.png")
    info = session.info("q0.png")
    assert info.status == ACCEPTED and info.classes_present == () and info.proposal_model is None
    assert session.current_label_map("q0.png").max() == 0
    session.set_no_class("q0.png", False)
    assert session.info("q0.png").classes_present == ("a",)


def test_negative_tags_persist_and_old_project_files_still_load(session):
    session.set_no_class("n0.png")
    project = session.project_dir
    session.close()
    with Session.open(project) as again:
        assert again.images_no_class() == ["n0.png"] and again.status("n0.png") == ACCEPTED
    data = json.loads((project / "project.json").read_text())
    for rec in data["images"]:  # a project.json written before negative tags existed
        del rec["no_class"]
    (project / "project.json").write_text(json.dumps(data))
    with Session.open(project) as old:
        assert old.images_no_class() == [] and old.status("n0.png") == UNTAGGED and not old.warnings
        assert old.tags_of("a0.png") == ["a"]


# --------------------------------------------------------------------------------------- engine


def test_negative_images_are_never_queries_and_are_negatives_of_every_class(session):
    session.set_no_class("n0.png")
    session.set_no_class("n1.png")
    plan = plan_run(session)
    assert plan.queries == ("q0.png", "q1.png")
    for c in plan.classes:
        assert {"n0.png", "n1.png"} <= set(c.negatives) and "n0.png" not in c.positives
    assert plan_run(session, images=["n0.png", "q1.png"]).queries == ("q1.png",)

    prior = MapPrior({"a": red, "b": red})
    results = list(Engine(FakePredictor(), prior=prior).propose(session, store=False))
    assert [r.image for r in results] == ["q0.png", "q1.png"]
    for name in ("a", "b"):
        negatives = prior.fitted[name][1]
        assert len(negatives) == 3  # the other class's image and both negative-tagged images
        assert any(np.array_equal(n, session.read_image("n1.png")) for n in negatives)


def test_negative_tags_alone_are_not_enough_to_propose(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write(folder, "x.png", (1, 2, 3))
    s = Session.create(folder, tmp_path / "p")
    s.set_no_class("x.png")
    with pytest.raises(Exception, match="tag at least one image"):
        plan_run(s)


# --------------------------------------------------------------------------------------- export


def test_export_writes_negative_images_all_background_and_says_so(session, tmp_path):
    session.set_no_class("n0.png")
    session.set_proposal("q0.png", np.full((H, W), session.classes.get("a").id, np.uint8), model="m")
    out = tmp_path / "export"
    summary = export_session(session, out)
    assert sorted(summary.written) == ["n0", "q0"]
    np.testing.assert_array_equal(read_label_png(out / "masks" / "n0.png"), np.zeros((H, W), np.uint8))
    rows = {r["key"]: r for r in json.loads((out / "manifest.json").read_text())["images"]}
    assert rows["n0"]["no_class"] is True and rows["n0"]["status"] == ACCEPTED and rows["n0"]["tags"] == []
    assert rows["q0"]["no_class"] is False
    assert "n0,n0.png" in (out / "manifest.csv").read_text()
    coco = COCO(str(out / "coco.json"))
    n0 = next(im["id"] for im in coco.dataset["images"] if im["file_name"] == "n0.png")
    assert coco.getAnnIds(imgIds=[n0]) == []
    assert export_session(session, out).unchanged == ["n0", "q0"]  # nothing to redo on a second export


# ------------------------------------------------------------------------------------ wfss label


def test_wfss_label_never_proposes_negative_images_and_exports_them_empty(tmp_path, capsys, monkeypatch):
    import napari_wfss.batch as batch

    monkeypatch.setattr(batch.Engine, "from_options", lambda options: fake_engine())
    folder, tags = make_folder(tmp_path, n_untagged=4)
    tags.write_text(TAGS + "u00.png,-\nu01,None\n")
    out = tmp_path / "out"
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["labelled"] == ["u02.png", "u03.png"] and summary["negative"] == 2
    assert "2 tagged as holding no class" in captured.err
    assert "2 image(s) with a negative tag exported as all background" in captured.err
    for key in ("u00", "u01"):
        assert read_label_png(out / "masks" / f"{key}.png").max() == 0
    rows = {r["key"]: r for r in json.loads((out / "manifest.json").read_text())["images"]}
    assert rows["u00"]["no_class"] and rows["u00"]["status"] == ACCEPTED
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["labelled"] == [] and again["already_done"] == 2 and again["negative"] == 2


def test_a_rerun_may_still_change_negative_tags_before_anything_is_labelled(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    tags.write_text(TAGS + "u00.png,-\n")
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    with Session.open(out / PROJECT_DIRNAME) as s:
        assert s.images_no_class() == ["u00.png"]
    tags.write_text(TAGS + "u00.png,-\nu01.png,-\n")  # changed after labelling: refused
    with pytest.raises(Exception, match="gives other tags"):
        label_folder(folder, tags, out, fake_engine(), progress=False)
    # a fresh OUT whose first run stopped before labelling (no proposal yet) accepts corrected tags
    out2 = tmp_path / "out2"
    (tmp_path / "imgs2").mkdir()
    Image.open(folder / "t_cat0.png").save(tmp_path / "imgs2" / "t_cat0.png")
    Image.open(folder / "u00.png").save(tmp_path / "imgs2" / "u00.png")
    tags2 = _csv(tmp_path, "t_cat0.png,cat\nu00.png,-\n", "tags2.csv")
    summary = label_folder(tmp_path / "imgs2", tags2, out2, fake_engine(), progress=False)
    assert summary.labelled == [] and summary.negative == 1
    tags2.write_text("t_cat0.png,cat\n")
    summary = label_folder(tmp_path / "imgs2", tags2, out2, fake_engine(), progress=False)
    assert summary.labelled == ["u00.png"] and summary.negative == 0
