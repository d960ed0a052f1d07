"""COCO per-object instances (issue 25): with ``instances`` every connected component of a class is its own
annotation (``export_session(instances=True)``, ``wfss label --instances``); without, one per class per image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from skimage.measure import label
from test_batch import fake_engine, make_folder
from test_engine import H, W, _write

from napari_wfss.cli import main
from napari_wfss.export import coco_segments, export_session
from napari_wfss.images import read_label_png
from napari_wfss.session import Session


def _two_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``(H, W)`` map with two separate blobs of class 1 (and one of class 2), and the two blobs' masks."""
    label_map = np.zeros((H, W), np.uint8)
    first, second = np.zeros((H, W), bool), np.zeros((H, W), bool)
    first[2:6, 2:9] = True
    second[12:20, 15:30] = True
    second[19, 14] = True  # touches the blob diagonally only: still the same object (8-connected)
    label_map[first | second] = 1
    label_map[8:10, 0:4] = 2
    label_map[0, W - 1] = 255  # ignore: never an object
    return label_map, first, second


def _decode(segmentation: dict) -> np.ndarray:
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


def test_coco_segments_per_class_or_per_connected_component():
    label_map, first, second = _two_blobs()
    per_class = coco_segments(label_map)
    assert [s["class_id"] for s in per_class] == [1, 2]
    np.testing.assert_array_equal(_decode(per_class[0]["segmentation"]), first | second)
    per_object = coco_segments(label_map, instances=True)
    assert [s["class_id"] for s in per_object] == [1, 1, 2]
    np.testing.assert_array_equal(_decode(per_object[0]["segmentation"]), first)
    np.testing.assert_array_equal(_decode(per_object[1]["segmentation"]), second)
    assert [s["area"] for s in per_object[:2]] == [int(first.sum()), int(second.sum())]
    assert per_object[1]["bbox"] == [14.0, 12.0, 16.0, 8.0]


@pytest.fixture
def session(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write(folder, "x.png", (10, 20, 30))
    s = Session.create(folder, tmp_path / "project")
    s.add_class("cow")
    s.add_class("sheep")
    return s


def test_export_instances_gives_one_annotation_per_blob_that_decodes_back(session, tmp_path):
    label_map, first, second = _two_blobs()
    session.accept("x.png", label_map)
    out = tmp_path / "export"
    export_session(session, out, instances=True)
    coco = COCO(str(out / "coco.json"))
    cows = coco.loadAnns(coco.getAnnIds(catIds=[1]))
    assert len(cows) == 2 and len(coco.getAnnIds(catIds=[2])) == 1
    np.testing.assert_array_equal(coco.annToMask(cows[0]).astype(bool), first)
    np.testing.assert_array_equal(coco.annToMask(cows[1]).astype(bool), second)
    assert "connected component" in coco.dataset["info"]["description"]

    export_session(session, out)  # the option changed: the image is exported again, one annotation per class
    coco = json.loads((out / "coco.json").read_text())
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]
    assert "class per image" in coco["info"]["description"]


def test_wfss_label_instances_writes_one_annotation_per_component(tmp_path, capsys, monkeypatch):
    import napari_wfss.batch as batch

    monkeypatch.setattr(batch.Engine, "from_options", lambda options: fake_engine())
    folder, tags = make_folder(tmp_path, n_untagged=3)
    blobs = np.zeros((20, 28, 3), np.uint8)  # the fake model labels red pixels: two red blobs, two objects
    blobs[2:6, 2:8, 0] = blobs[12:18, 15:25, 0] = 250
    Image.fromarray(blobs).save(folder / "u00.png")
    out = tmp_path / "out"
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--instances"]) == 0
    coco = COCO(str(out / "coco.json"))
    objects = 0
    for image in coco.dataset["images"]:
        mask = read_label_png(out / "masks" / image["file_name"])
        expected = sum(int(label(mask == c, connectivity=2).max()) for c in (1, 2))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == expected
        for ann in anns:
            assert label(coco.annToMask(ann), connectivity=2).max() == 1  # each annotation is one object
        objects += expected
    assert objects > len(coco.dataset["images"])  # some image holds several objects of a class
