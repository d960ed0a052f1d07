"""Export: dataset layout, palette PNGs, TIFF, COCO validity with pycocotools, manifest, incremental = full."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_session import label_map, make_images

from napari_wfss.export import (
    DatasetWriter,
    classes_txt,
    coco_segments,
    copy_is_faithful,
    export_session,
)
from napari_wfss.images import read_image
from napari_wfss.session import ACCEPTED, Session, SessionError

H, W = 12, 16
INDEX_FILES = ["classes.json", "classes.txt", "coco.json", "manifest.csv", "manifest.json"]


@pytest.fixture
def session(tmp_path):
    """Five images in several states; two share the stem ``a``; one is a 16-bit TIFF."""
    folder = make_images(tmp_path / "imgs", ["a.png", "a.jpg", "sub/b.png", "c.png", "d.png"])
    tifffile.imwrite(folder / "t16.tif", np.random.default_rng(3).integers(0, 5000, (H, W), dtype=np.uint16))
    s = Session.create(folder, recursive=True)
    s.add_class("cow")
    s.add_class("sheep")
    s.tag("d.png", "cow")
    s.set_proposal("a.png", label_map(1, 2, 255), model="hhn", scores={"cow": 0.7})
    s.accept("a.jpg", label_map(2, 0, 2))
    s.mark_edited("sub/b.png", label_map(0, 1))
    s.set_proposal("t16.tif", label_map(1), model="hhn")
    s.set_proposal("c.png", label_map(2), model="hhn")
    s.reject("c.png")
    return s


def _tree(root):
    """Relative path -> bytes for every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_a_generic_dataset(tmp_path, session):
    out = tmp_path / "out"
    summary = export_session(session, out)
    keys = {rel: session.key(rel) for rel in ("a.png", "a.jpg", "sub/b.png", "t16.tif")}
    assert sorted(summary.written) == sorted(keys.values()) and summary.count == 4
    for name in INDEX_FILES:
        assert (out / name).is_file()
    masks = sorted(p.stem for p in (out / "masks").iterdir())
    images = sorted(p.stem for p in (out / "images").iterdir())
    assert masks == images == sorted(keys.values())  # one image per mask, same stem
    for rel, key in keys.items():
        img = next((out / "images").glob(f"{key}.*"))
        np.testing.assert_array_equal(  # what a plain reader sees is what the model saw
            np.asarray(Image.open(img).convert("RGB")), read_image(session.image_path(rel)))
        with Image.open(out / "masks" / f"{key}.png") as m:
            assert m.mode == "P" and m.size == (W, H)
            np.testing.assert_array_equal(np.array(m), session.current_label_map(rel))
            assert bytes(m.getpalette()) == session.classes.palette()
    # JPEG/PNG sources are byte copies; the 16-bit TIFF became the PNG of its 8-bit pixels
    assert (out / "images" / f"{keys['a.jpg']}.jpg").read_bytes() == session.image_path("a.jpg").read_bytes()
    assert (out / "images" / f"{keys['t16.tif']}.png").is_file()
    assert not (out / "masks_tiff").exists()


def test_palette_colours_make_ids_visible(tmp_path, session):
    export_session(session, tmp_path / "out")
    with Image.open(tmp_path / "out" / "masks" / f"{session.key('a.png')}.png") as m:
        rgb = np.asarray(m.convert("RGB"))
    assert tuple(rgb[0, 0]) == session.classes.get("cow").color
    assert tuple(rgb[2, 0]) == session.classes.get("sheep").color
    assert rgb[0, 0].max() > 100  # visibly coloured, not a near-black id value


def test_classes_files_follow_the_msrc_format(tmp_path, session):
    export_session(session, tmp_path / "out")
    lines = (tmp_path / "out" / "classes.txt").read_text().splitlines()
    assert lines[0].startswith("#") and "0 = background" in lines[0] and "255 = ignore" in lines[0]
    parsed = {}
    for line in lines[1:]:
        m = re.fullmatch(r"(\d+) (\S.*)", line)
        assert m, line
        parsed[int(m.group(1))] = m.group(2)
    assert parsed == {1: "cow", 2: "sheep"}
    data = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert data["background"] == 0 and data["ignore"] == 255
    assert data["classes"] == session.classes.to_records()


def test_export_loads_as_a_generic_training_dataset(tmp_path, session):
    from hhn.data.generic import GenericDataset

    export_session(session, tmp_path / "out")
    ds = GenericDataset(tmp_path / "out")
    assert dict(ds.class_names) == {1: "cow", 2: "sheep"}
    sources = {session.key(r): r for r in ("a.png", "a.jpg", "sub/b.png", "t16.tif")}
    assert sorted(ds.names) == sorted(sources)
    for name, rel in sources.items():
        np.testing.assert_array_equal(ds.load_image(name), read_image(session.image_path(rel)))
        np.testing.assert_array_equal(ds.load_label(name), session.current_label_map(rel))
    assert ds.images_with("sheep") == tuple(sorted(session.key(r) for r in ("a.png", "a.jpg")))


def test_classes_txt_names_with_spaces():
    from napari_wfss.classes import ClassTable

    t = ClassTable()
    t.add("traffic light", class_id=3)
    t.add("car", class_id=1)
    assert classes_txt(t).splitlines()[1:] == ["1 car", "3 traffic light"]


def test_coco_json_loads_and_round_trips_in_pycocotools(tmp_path, session):
    export_session(session, tmp_path / "out")
    coco = COCO(str(tmp_path / "out" / "coco.json"))
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {"cow": 1, "sheep": 2}
    by_file = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    n_checked = 0
    for rel in ("a.png", "a.jpg", "sub/b.png", "t16.tif"):
        key = session.key(rel)
        image_id = next(i for f, i in by_file.items() if os.path.splitext(f)[0] == key)
        lm = session.current_label_map(rel)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert sorted(a["category_id"] for a in anns) == sorted(set(np.unique(lm)) - {0, 255})
        for a in anns:
            np.testing.assert_array_equal(coco.annToMask(a), (lm == a["category_id"]).astype(np.uint8))
            assert a["area"] == int((lm == a["category_id"]).sum()) and a["iscrowd"] == 0
            assert isinstance(a["segmentation"]["counts"], str)
            n_checked += 1
    assert n_checked == 5


def test_coco_eval_of_the_ground_truth_against_itself_is_perfect(tmp_path, session):
    export_session(session, tmp_path / "out")
    gt = COCO(str(tmp_path / "out" / "coco.json"))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 1.0} for a in gt.dataset["annotations"]]
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    swapped = [{"image_id": a["image_id"], "category_id": 3 - a["category_id"],  # cow <-> sheep
                "segmentation": a["segmentation"], "score": 1.0} for a in gt.dataset["annotations"]]
    ev = COCOeval(gt, gt.loadRes(swapped), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(0.0)  # masks under the wrong class score nothing: the check can fail


def test_coco_segments_skip_background_and_ignore():
    lm = label_map(0, 3, 255, 7)
    segs = coco_segments(lm)
    assert [s["class_id"] for s in segs] == [3, 7]
    assert segs[0]["bbox"] == [0.0, 2.0, 16.0, 2.0]
    assert coco_segments(np.full((4, 4), 255, np.uint8)) == []


def test_manifest(tmp_path, session):
    export_session(session, tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == [r["source"] for r in csv_rows] == ["a.jpg", "a.png", "sub/b.png", "t16.tif"]
    by_src = {r["source"]: r for r in rows}
    assert by_src["a.png"]["status"] == "proposed" and by_src["a.png"]["model"] == "hhn"
    assert by_src["a.png"]["classes"] == ["cow", "sheep"] and by_src["a.png"]["proposal_time"]
    assert by_src["a.jpg"]["status"] == ACCEPTED and by_src["a.jpg"]["accepted_time"]
    assert by_src["sub/b.png"]["status"] == "edited"
    assert by_src["sub/b.png"]["source_path"] == str(session.image_path("sub/b.png"))
    key = session.key("sub/b.png")
    assert by_src["sub/b.png"]["mask"] == f"masks/{key}.png" and by_src["sub/b.png"]["image"] == f"images/{key}.png"
    by_csv = {r["source"]: r for r in csv_rows}
    assert by_csv["a.png"]["classes"] == "cow;sheep" and by_csv["a.png"]["tiff"] == ""


def test_statuses_filter(tmp_path, session):
    export_session(session, tmp_path / "acc", statuses=(ACCEPTED,))
    assert [p.stem for p in (tmp_path / "acc" / "masks").iterdir()] == [session.key("a.jpg")]
    with pytest.raises(SessionError, match="nothing to export"):
        DatasetWriter(session, tmp_path / "x").write_image("d.png")


def test_tiff_option(tmp_path, session):
    export_session(session, tmp_path / "out", tiff=True, tiff_dtype="uint16")
    key = session.key("a.png")
    t = tifffile.imread(tmp_path / "out" / "masks_tiff" / f"{key}.tif")
    assert t.dtype == np.uint16
    np.testing.assert_array_equal(t, session.current_label_map("a.png"))
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]
    assert all(r["tiff"].startswith("masks_tiff/") for r in rows)


def test_incremental_export_equals_full_export(tmp_path, session):
    full = tmp_path / "full"
    export_session(session, full, tiff=True)
    inc = tmp_path / "inc"
    for rel in session.images_with_status("proposed", "edited", "accepted"):
        writer = DatasetWriter(session, inc, tiff=True)  # a new writer each time, as after a restart
        assert writer.write_image(rel) is True
        writer.write_indexes()
    assert _tree(inc) == _tree(full)


def test_reexport_skips_unchanged_and_follows_changes(tmp_path, session):
    out = tmp_path / "out"
    export_session(session, out)
    before = _tree(out)
    again = export_session(session, out)
    assert again.written == [] and len(again.unchanged) == 4 and _tree(out) == before
    session.accept("a.png", label_map(2, 2, 2))
    session.reject("sub/b.png")
    third = export_session(session, out)
    assert third.written == [session.key("a.png")] and third.removed == [session.key("sub/b.png")]
    assert not list(out.glob(f"*/{session.key('sub/b.png')}.*"))
    fresh = tmp_path / "fresh"
    export_session(session, fresh)
    assert _tree(out) == _tree(fresh)  # updating in place = exporting anew


def test_a_deleted_export_file_is_rewritten(tmp_path, session):
    out = tmp_path / "out"
    export_session(session, out)
    (out / "masks" / f"{session.key('a.png')}.png").unlink()
    summary = export_session(session, out)
    assert summary.written == [session.key("a.png")]
    assert (out / "masks" / f"{session.key('a.png')}.png").is_file()


def test_link_and_none_image_modes(tmp_path, session):
    export_session(session, tmp_path / "linked", images="link")
    key = session.key("a.jpg")
    assert os.path.samefile(tmp_path / "linked" / "images" / f"{key}.jpg", session.image_path("a.jpg"))
    export_session(session, tmp_path / "bare", images="none")
    assert not (tmp_path / "bare" / "images").exists()
    export_session(session, tmp_path / "linked", images="none")  # switching modes leaves no stale copies
    assert not any((tmp_path / "linked" / "images").iterdir())
    assert all(img["file_name"] == "" for img in json.loads((tmp_path / "bare" / "coco.json").read_text())["images"])


def test_copy_is_faithful(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.jpg")
    Image.fromarray(rgb).save(tmp_path / "plain.bmp")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "alpha.png")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert copy_is_faithful(tmp_path / "plain.jpg")
    for name in ("plain.bmp", "alpha.png", "deep.png", "rotated.jpg"):
        assert not copy_is_faithful(tmp_path / name), name


def test_failed_index_write_keeps_the_previous_files(tmp_path, session, monkeypatch):
    out = tmp_path / "out"
    export_session(session, out)
    coco_before = (out / "coco.json").read_bytes()
    session.accept("t16.tif", label_map(2, 2))

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        export_session(session, out)
    monkeypatch.undo()
    assert (out / "coco.json").read_bytes() == coco_before
    assert COCO(str(out / "coco.json")).dataset["images"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".wfss-tmp")]
