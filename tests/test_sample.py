"""The sample folder (`wfss sample OUT`): images from scikit-image's bundled photos plus tags.csv."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from hhn.errors import UserError
from napari_wfss.cli import main
from napari_wfss.images import list_images, read_image
from napari_wfss.sample import SAMPLE_CLASSES, make_sample_folder


def _tags(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sample_folder_has_readable_images_and_tags_for_every_class(tmp_path):
    out = make_sample_folder(tmp_path / "s")
    images = list_images(out / "images")
    assert len(images) == 18
    for p in images:
        img = read_image(p)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert 160 <= img.shape[0] <= 240 and 160 <= img.shape[1] <= 240
        assert img.std() > 10  # a photo, not a blank tile
    rows = _tags(out / "tags.csv")
    names = {p.name for p in images}
    assert all(r["image"] in names for r in rows)
    per_class = Counter(r["class"] for r in rows)
    assert set(per_class) == set(SAMPLE_CLASSES) and min(per_class.values()) >= 2
    tagged = {r["image"] for r in rows}
    assert len(names - tagged) >= 10  # most images are left for the model
    assert Counter(r["image"] for r in rows)["mix_00.png"] == 2  # one image carries two classes


def test_sample_is_deterministic_and_rerunnable(tmp_path):
    a = make_sample_folder(tmp_path / "a")
    b = make_sample_folder(tmp_path / "b")
    make_sample_folder(a)  # rerun over an earlier sample folder
    for pa in sorted((a / "images").iterdir()):
        assert pa.read_bytes() == (b / "images" / pa.name).read_bytes()
    assert (a / "tags.csv").read_text() == (b / "tags.csv").read_text()


def test_sample_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier sample folder"):
        make_sample_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_wfss_sample_cli(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "wrote 18 images" in out and "wfss label" in out
    assert (tmp_path / "demo" / "tags.csv").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    assert main(["sample", str(tmp_path / "other")]) == 2
    assert "not an earlier sample folder" in capsys.readouterr().err
