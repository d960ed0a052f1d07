"""Datasets (generic, Pascal-5i, COCO-20i layouts) and the seeded episode sampler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hhn.data import DatasetError, open_dataset, resolve_test_classes
from hhn.data.coco import COCO_CLASSES, CocoDataset, coco_fold_classes
from hhn.data.episodes import EpisodeSampler, load_episode
from hhn.data.generic import GenericDataset, parse_classes
from hhn.data.pascal import PascalDataset, pascal_fold_classes

# class id -> name of the synthetic generic dataset (0 = background, not a class)
SYNTH_CLASSES = {1: "square", 2: "disk", 3: "grass"}


def write_generic_dataset(root: Path, n_images: int = 12, size: int = 48, seed: int = 0) -> Path:
    """A tiny generic-layout dataset: every image has grass (bottom rows) and a square or a disk.

    Images with an even index hold a red square, odd ones a blue disk; every third image has both.
    A 2-pixel border is 255 (ignore). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 background\n1 square\n2 disk\n3 grass  [lawn]\n")
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images):
        image = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        label[size * 3 // 4:] = 3
        image[size * 3 // 4:] = (40, 160, 40)
        if i % 2 == 0 or i % 3 == 0:
            y, x = rng.integers(4, size // 2 - 8, size=2)
            label[y:y + 12, x:x + 12] = 1
            image[y:y + 12, x:x + 12] = (220, 30, 30)
        if i % 2 == 1 or i % 3 == 0:
            cy, cx = rng.integers(size // 2, size - 10, size=2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
            label[disk] = 2
            image[disk] = (30, 30, 220)
        label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(label).save(root / "masks" / f"im{i:02d}.png")
    return root


@pytest.fixture
def generic(tmp_path) -> GenericDataset:
    return GenericDataset(write_generic_dataset(tmp_path / "synth"))


# ---------------------------------------------------------------- generic layout
def test_parse_classes_forms():
    assert parse_classes("# header\n0 building\n3 cow        [cow]\n4 horse [horse] (only 3)\n") == {
        0: "building", 3: "cow", 4: "horse"}
    assert parse_classes("background\ncat\ntraffic light\n") == {1: "cat", 2: "traffic light"}
    assert parse_classes("1 traffic light\n") == {1: "traffic light"}
    with pytest.raises(DatasetError, match="mixes"):
        parse_classes("0 cat\ndog\n")
    with pytest.raises(DatasetError, match="twice"):
        parse_classes("0 cat\n1 cat\n")
    with pytest.raises(DatasetError, match="255"):
        parse_classes("255 cat\n")


def test_generic_dataset_presence_and_masks(generic):
    assert generic.classes == ("square", "disk", "grass")
    assert len(generic.names) == 12
    name = generic.names[0]  # im00: square and disk (0 is even and a multiple of 3)
    assert generic.tags(name) == {"square", "disk", "grass"}
    mask = generic.binary_mask(name, "square")
    label = generic.load_label(name)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 255}
    assert np.array_equal(mask == 1, label == 1) and np.array_equal(mask == 255, label == 255)
    image = generic.load_image(name)
    assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
    assert set(generic.images_with("disk")) == {f"im{i:02d}" for i in range(12) if i % 2 == 1 or i % 3 == 0}
    assert set(generic.images_without("disk")) == set(generic.names) - set(generic.images_with("disk"))


def test_min_fraction_and_exclude(tmp_path):
    root = write_generic_dataset(tmp_path / "synth")
    # the square covers 144 of 2304 pixels (6.25%), the disk 81 (3.5%)
    strict = GenericDataset(root, min_fraction=0.05, exclude=["grass"])
    name = "im00"
    assert strict.tags(name) == {"square", "grass"}
    assert strict.touches(name) == {"square", "disk", "grass"}
    assert "im00" not in strict.images_with("disk") and "im00" not in strict.images_without("disk")
    assert strict.episode_classes == ("square", "disk")
    with pytest.raises(DatasetError, match="unknown class"):
        GenericDataset(root, exclude=["zebra"])


def test_generic_errors(tmp_path):
    with pytest.raises(DatasetError, match="classes.txt"):
        GenericDataset(tmp_path)
    root = write_generic_dataset(tmp_path / "synth")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "masks" / "im00.png")
    with pytest.raises(DatasetError, match="RGB"):
        GenericDataset(root).load_label("im00")


# ---------------------------------------------------------------- episodes
def test_episodes_no_query_among_supports_and_gallery_rules(generic):
    sampler = EpisodeSampler(generic, classes=["square", "disk"], shots=2, seed=3, prior_positives=2,
                             prior_negatives=2, negatives="context")
    for ep in sampler.episodes(40):
        assert ep.query not in ep.supports and ep.query not in ep.positives
        assert len(set(ep.supports)) == 2 and not set(ep.supports) & set(ep.positives)
        for n in (ep.query, *ep.supports, *ep.positives):
            assert ep.class_name in generic.tags(n)
        for n in ep.negatives:
            assert ep.class_name not in generic.touches(n)
    assert {ep.class_name for ep in sampler.episodes(40)} == {"square", "disk"}


def test_episodes_seeded_reproducible_and_independent(generic):
    a = EpisodeSampler(generic, classes=["square", "disk"], shots=1, seed=7, prior_negatives=2)
    b = EpisodeSampler(generic, classes=["square", "disk"], shots=1, seed=7, prior_negatives=2)
    c = EpisodeSampler(generic, classes=["square", "disk"], shots=1, seed=8, prior_negatives=2)
    assert a.episodes(30) == b.episodes(30)
    assert a.episodes(30) != c.episodes(30)
    assert a.episode(17) == a.episodes(30)[17]  # an episode does not depend on the others drawn
    random_neg = EpisodeSampler(generic, classes=["square", "disk"], shots=1, seed=7, prior_negatives=2,
                                negatives="random")
    for x, y in zip(a.episodes(30), random_neg.episodes(30)):  # the negative rule never moves the episode
        assert (x.class_name, x.query, x.supports) == (y.class_name, y.query, y.supports)


def test_context_negatives_prefer_shared_tags(tmp_path):
    root = tmp_path / "ctx"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("cow\ngrass\nroad\n")
    layouts = {"a": [0, 1], "b": [0, 1], "c": [1], "d": [2], "e": [2], "f": [1, 2]}
    for name, ids in layouts.items():
        label = np.array([ids * 8], np.uint8).reshape(1, -1).repeat(4, axis=0)
        Image.fromarray(label).save(root / "masks" / f"{name}.png")
        Image.fromarray(np.zeros((4, label.shape[1], 3), np.uint8)).save(root / "images" / f"{name}.png")
    ds = GenericDataset(root)
    sampler = EpisodeSampler(ds, classes=["cow"], shots=1, prior_negatives=1, negatives="context", context_pool=1)
    for ep in sampler.episodes(10):  # the support's other tag is grass: the only grass-only image is c
        assert ep.negatives == ("c",)


def test_sampler_errors(generic):
    with pytest.raises(DatasetError, match="needs 12"):
        EpisodeSampler(generic, classes=["disk"], shots=11)
    with pytest.raises(DatasetError, match="unknown class"):
        EpisodeSampler(generic, classes=["zebra"])


def test_load_episode_supervision(generic):
    ep = EpisodeSampler(generic, classes=["square"], shots=2, seed=0).episode(0)
    tags = load_episode(generic, ep, "tags")
    masks = load_episode(generic, ep, "masks")
    assert tags.support_masks is None and len(tags.support_images) == 2
    assert len(masks.support_masks) == 2 and masks.support_masks[0].dtype == np.uint8
    assert np.array_equal(masks.query_mask, generic.binary_mask(ep.query, "square"))


# ---------------------------------------------------------------- Pascal-5i / COCO-20i
def _label_png(path: Path, values: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array([values * 4] * 4, np.uint8)).save(path)


def _rgb(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_fold_rules():
    assert pascal_fold_classes(0) == ("aeroplane", "bicycle", "bird", "boat", "bottle")
    assert pascal_fold_classes(3) == ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
    assert coco_fold_classes(1)[:3] == (COCO_CLASSES[1], COCO_CLASSES[5], COCO_CLASSES[9])
    assert len(coco_fold_classes(2)) == 20
    assert len({c for f in range(4) for c in coco_fold_classes(f)}) == 80
    with pytest.raises(DatasetError):
        pascal_fold_classes(4)


def test_pascal_lists_and_derived(tmp_path):
    root = tmp_path / "VOC2012"
    for name, values in {"a": [0, 1], "b": [0, 3, 255], "c": [0, 6], "d": [0, 7]}.items():
        _rgb(root / "JPEGImages" / f"{name}.jpg")
        _label_png(root / "SegmentationClassAug" / f"{name}.png", values)
    (root / "splits" / "pascal" / "val").mkdir(parents=True)
    (root / "splits" / "pascal" / "val" / "fold0.txt").write_text("a__1\nb__3\n")
    ds = open_dataset(root, "auto", fold=0)
    assert isinstance(ds, PascalDataset) and ds.episode_order == "cycle"
    assert ds.pairs == (("a", "aeroplane"), ("b", "bird"))
    assert ds.test_classes == pascal_fold_classes(0)
    assert resolve_test_classes(ds, root, fold=0) == pascal_fold_classes(0)
    # no split lists: pairs come from ImageSets + label maps
    (root / "splits" / "pascal" / "val" / "fold0.txt").unlink()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\nc\n")
    derived = PascalDataset(root, fold=1)
    assert derived.names == ("a", "b", "c") and derived.pairs == (("c", "bus"),)
    with pytest.raises(DatasetError, match="fold"):
        open_dataset(root, "pascal")


def test_pascal_cycle_episodes(tmp_path):
    root = tmp_path / "VOC2012"
    for name in "abcd":
        _rgb(root / "JPEGImages" / f"{name}.jpg")
        _label_png(root / "SegmentationClassAug" / f"{name}.png", [0, 1])
    (root / "splits" / "pascal" / "val").mkdir(parents=True)
    (root / "splits" / "pascal" / "val" / "fold0.txt").write_text("a__1\nb__1\nc__1\nd__1\n")
    ds = PascalDataset(root, fold=0)
    sampler = EpisodeSampler(ds, pairs=ds.pairs, order="cycle", shots=2)
    assert [ep.query for ep in sampler.episodes(6)] == ["a", "b", "c", "d", "a", "b"]


def test_coco_split_pickle_and_safety(tmp_path):
    root = tmp_path / "COCO2014"
    for stem, values in {"x1": [0, 1], "x2": [0, 1, 2], "x3": [0, 5]}.items():
        _rgb(root / "val2014" / f"{stem}.jpg")
        _label_png(root / "annotations" / "val2014" / f"{stem}.png", values)
    split = root / "splits" / "coco" / "val"
    split.mkdir(parents=True)
    (split / "fold0.pkl").write_bytes(pickle.dumps({0: ["val2014/x1.jpg", "val2014/x2.jpg"], 4: ["val2014/x3.jpg"]}))
    ds = open_dataset(root, "auto", fold=0)
    assert isinstance(ds, CocoDataset) and ds.episode_order == "class-uniform"
    assert ds.pairs == (("val2014/x1", "person"), ("val2014/x2", "person"), ("val2014/x3", "airplane"))
    assert ds.tags("val2014/x2") == {"person", "bicycle"}
    assert ds.load_image("val2014/x1").shape == (4, 4, 3)
    (split / "fold0.pkl").write_bytes(pickle.dumps({0: [Path("val2014/x1.jpg")]}))
    with pytest.raises(DatasetError, match="only plain lists"):
        CocoDataset(root, fold=0)


def test_resolve_test_classes_generic(tmp_path):
    root = write_generic_dataset(tmp_path / "synth")
    ds = GenericDataset(root)
    assert resolve_test_classes(ds, root, " disk, square ") == ("disk", "square")
    assert resolve_test_classes(ds, root) == ("square", "disk", "grass")
    with pytest.raises(DatasetError, match="folds"):
        resolve_test_classes(ds, root, fold=0)
    (root / "folds.json").write_text('{"folds": [["square"], ["disk", "grass"]]}')
    assert resolve_test_classes(ds, root, fold=1) == ("disk", "grass")
    with pytest.raises(DatasetError, match="fold 2"):
        resolve_test_classes(ds, root, fold=2)


def test_packaged_msrc_folds_are_valid():
    import json
    from importlib import resources

    folds = json.loads(resources.files("hhn.data").joinpath("msrc_folds.json").read_text())
    msrc = {"building", "grass", "tree", "cow", "horse", "sheep", "sky", "mountain", "aeroplane", "water", "face",
            "car", "bicycle", "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat"}
    flat = [c for f in folds["folds"] for c in f]
    assert len(folds["folds"]) >= 4 and all(4 <= len(f) <= 6 for f in folds["folds"])
    assert len(flat) == len(set(flat)) and set(flat) <= msrc
    assert folds["exclude"] == ["horse"] and "horse" not in flat
