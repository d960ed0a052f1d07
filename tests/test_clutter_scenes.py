"""benchmarks/clutter_scenes.py without a model: the compositing (label map vs pasted alpha, object sizes,
disjoint sources, determinism) and the scoring (IoU, precision, recall, FB-IoU on hand-made arrays)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "clutter_scenes.py"
MSRC = ROOT.parent / "shared" / "data" / "msrc_v2"


def _bench():
    spec = importlib.util.spec_from_file_location("clutter_scenes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cs = _bench()


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2 + 0.5) / (h / 2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2)) ** 2 <= 1


@pytest.fixture
def fake_msrc(tmp_path) -> Path:
    """A generic-layout folder like MSRC-v2: per class 4 photos with one or two blobs of it (on grass), and 24
    photos showing none of the classes (grass and void only)."""
    root = tmp_path / "msrc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = {"grass": 1, "cow": 3, "sheep": 5, "bird": 15, "cat": 19, "dog": 20}
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for n, i in ids.items()))
    rng = np.random.default_rng(0)

    def photo(name: str, label: np.ndarray) -> None:
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "masks" / f"{name}.png")

    for c in cs.CLASSES:
        for k in range(4):
            label = np.full((120, 160), ids["grass"], np.uint8)
            label[10:60, 20:70][_ellipse(50, 50)] = ids[c]
            if k % 2:
                label[70:110, 100:150][_ellipse(40, 50)] = ids[c]
            label[0, :] = 255
            photo(f"{c}_{k}", label)
    for k in range(24):
        label = np.full((100 + k % 3 * 10, 150), ids["grass"], np.uint8)
        label[:5] = 255
        photo(f"bg_{k:02d}", label)
    return root


def _options(**kw):
    defaults = {"tagged": 2, "queries": 12, "min_area": 300, "sizes": (0.02, 0.06)}
    return cs.SceneOptions(**{**defaults, **kw})


def test_compose_label_matches_alpha_and_sizes():
    rng = np.random.default_rng(3)
    background = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    mask = _ellipse(40, 60)
    cutouts = [cs.Cutout(f"src{i}", 1, "cow", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), mask)
               for i in range(4)]
    options = cs.SceneOptions(sizes=(0.02, 0.05), max_overlap=0.5)
    image, label, placements = cs.compose(background, [(1 + i % 2, k) for i, k in enumerate(cutouts)], options,
                                          np.random.default_rng(0))
    expected = np.zeros_like(label)
    touched = np.zeros(label.shape, bool)
    for p in placements:
        h, w = p.alpha.shape
        expected[p.y:p.y + h, p.x:p.x + w][p.alpha > 0.5] = p.class_index  # later paste wins
        touched[p.y:p.y + h, p.x:p.x + w] |= p.alpha > 0
        assert 0.02 * 0.95 <= p.fraction <= 0.05 * 1.05
        assert p.fraction == pytest.approx(np.count_nonzero(p.alpha > 0.5) / label.size, abs=1e-5)
        assert p.alpha.min() >= 0
        assert p.alpha.max() <= 1 and ((p.alpha > 0) & (p.alpha < 1)).any()  # a feathered edge
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(image[~touched], background[~touched])  # the rest is the background untouched
    assert set(np.unique(label)) == {0, 1, 2}


def test_scoreboard_known_answers():
    board = cs.Scoreboard(["a", "b"])
    truth = np.array([[0, 1, 1], [0, 2, 2]])
    pred = np.array([[1, 1, 0], [0, 2, 0]])
    board.update(pred, truth)
    s = board.summary()
    assert s["iou"] == {"a": pytest.approx(100 / 3, abs=0.01), "b": 50.0}
    assert s["precision"] == {"a": 0.5, "b": 1.0}
    assert s["recall"] == {"a": 0.5, "b": 0.5}
    assert s["miou"] == pytest.approx((100 / 3 + 50) / 2, abs=0.01)
    assert s["fbiou"] == pytest.approx(100 * (2 / 5 + 1 / 4) / 2, abs=0.01)  # fg: I 2, U 5; bg: I 1, U 4

    # pooled over images; ignore (255) left out; a wrong class is still foreground for FB-IoU
    board.update(np.array([[2, 2, 1]]), np.array([[1, 255, 0]]))
    s = board.summary()
    assert s["iou"]["a"] == pytest.approx(100 * 1 / 5, abs=0.01)  # tp 1, fp 1+1, fn 1+1
    assert s["precision"]["b"] == 0.5 and s["recall"]["b"] == 0.5
    assert s["fbiou"] == pytest.approx(100 * (3 / 7 + 1 / 5) / 2, abs=0.01)  # fg: I 3, U 7; bg: I 1, U 5

    floor = board.all_foreground()
    assert floor["iou"] == {"a": pytest.approx(300 / 8, abs=0.01), "b": 25.0}  # 3 and 2 of the 8 valid px
    assert floor["precision"]["a"] == 0.375 and floor["recall"]["a"] == 1.0
    assert floor["fbiou"] == pytest.approx(100 * (5 / 8) / 2)


def test_scoreboard_no_prediction():
    board = cs.Scoreboard(["a", "b"])
    board.update(np.zeros((2, 2), int), np.array([[1, 0], [0, 0]]))
    s = board.summary()
    assert s["precision"]["a"] is None and s["iou"]["a"] == 0.0 and s["recall"]["a"] == 0.0
    assert s["fbiou"] == pytest.approx(100 * (3 / 4 + 0) / 2)
    with pytest.raises(ValueError, match="shape"):
        board.update(np.zeros((2, 3), int), np.zeros((2, 2), int))


def test_pair_schedule():
    tagged, queries = cs.pair_schedule(cs.CLASSES, 3, 25, np.random.default_rng(0))
    for c in cs.CLASSES:
        assert sum(c in p for p in tagged) >= 3
    assert len(tagged) == 8  # 15 class slots in pairs
    assert len(queries) == 25 and len(set(queries[:10])) == 10 and len(set(queries[10:20])) == 10


def test_build_on_fake_dataset(fake_msrc):
    from hhn.data import open_dataset

    data = open_dataset(fake_msrc)
    options = _options()
    scenes = cs.build_scenes(data, options, seed=1)
    assert cs.check_scenes(scenes, options) == []
    tagged = [s for s in scenes if s.split == cs.TAGGED]
    queries = [s for s in scenes if s.split == cs.QUERY]
    assert len(queries) == 12 and len(tagged) >= 5
    assert not set().union(*(s.sources for s in tagged)) & set().union(*(s.sources for s in queries))
    for s in scenes:
        assert s.image.shape[:2] == s.label.shape == data.load_label(s.background).shape
        assert not s.background.startswith(cs.CLASSES)
        counts = [sum(p.class_index == cs.CLASSES.index(c) + 1 for p in s.placements) for c in s.classes]
        assert all(1 <= n <= 3 for n in counts) and len(s.placements) == sum(counts)

    again = cs.build_scenes(data, options, seed=1)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) for a, b in zip(scenes, again))
    other = cs.build_scenes(data, options, seed=2)
    assert any(not np.array_equal(a.label, b.label) for a, b in zip(scenes, other))

    broken = scenes[0]
    broken.label[broken.label > 0] = 0
    assert any("not visible" in p or "differs" in p for p in cs.check_scenes(scenes, options))


def test_cache_round_trip(fake_msrc, tmp_path):
    from hhn.data import open_dataset

    data = open_dataset(fake_msrc)
    options = _options(queries=4)
    scenes, folder, built = cs.scenes_for(data, fake_msrc, options, 0, tmp_path / "work")
    assert built > 0 and (folder / "images" / scenes[0].file).is_file()
    cached, folder2, again = cs.scenes_for(data, fake_msrc, options, 0, tmp_path / "work")
    assert folder2 == folder and again == 0.0
    for a, b in zip(scenes, cached):
        assert a.name == b.name and a.classes == b.classes and a.sources == b.sources
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    assert cs.check_scenes(cached, options) == []  # no alphas: the other checks still run


@pytest.mark.skipif(not (MSRC / "classes.txt").is_file(), reason=f"MSRC-v2 not found at {MSRC} (CI keeps it there)")
def test_check_only_on_msrc(tmp_path, capsys):
    assert cs.main(["--check-only", "--queries", "12", "--work", str(tmp_path), "--preview", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "checks: passed" in out and "12 queries" in out
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_presence_study_known_answers():
    """Two queries, classes cow (id 7) and bird (id 9): q1 shows cow, q2 shows bird; cow is proposed on both
    (scores 0.9 where it is, 0.55 where it is not), bird only on q2 (0.65)."""
    from types import SimpleNamespace

    from napari_wfss.engine import ProposalResult

    cow, bird = cs.CLASSES.index("cow") + 1, cs.CLASSES.index("bird") + 1
    plan = SimpleNamespace(classes=[SimpleNamespace(name="cow", id=7), SimpleNamespace(name="bird", id=9)])
    truth = {"q1": np.zeros((4, 4), np.uint8), "q2": np.zeros((4, 4), np.uint8)}
    truth["q1"][:2] = cow
    truth["q2"][:2] = bird
    m1, m2 = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    m1[:2] = 7  # right
    m2[:2, :2], m2[:2, 2:] = 7, 9  # half wrong (cow), half right (bird)
    results = {"q1": ProposalResult("q1", "q1", m1, scores={"cow": 0.9}),
               "q2": ProposalResult("q2", "q2", m2, scores={"cow": 0.55, "bird": 0.65})}
    study = cs.presence_study(results, truth, plan, min_scores=(0.6,))
    assert study["auc"]["cow"] == 1.0 and study["auc"]["bird"] == 1.0  # each score ranks its images right
    assert study["auc"]["sheep"] is None  # shown nowhere
    # pooled over (query, class): the present (0.9, 0.65) outrank every absent one (cow on q2: 0.55; the rest 0)
    assert study["auc"]["all"] == 1.0
    # removing cow from q2 (its score 0.55 < 0.6; and it is absent there): cow IoU 8/8, bird 4/8, the other three
    # classes 0 (neither shown nor proposed) -> mIoU (100 + 50) / 5
    for scored in (study["min_score"]["0.6"], study["oracle"]):
        assert scored["miou"] == pytest.approx(30.0)
    assert results["q2"].label_map[0, 0] == 7  # the study works on copies
    kept = cs.presence_study(results, truth, plan, min_scores=(0.5,))["min_score"]["0.5"]
    assert kept["miou"] == pytest.approx((100 * 8 / 12 + 50) / 5, abs=0.01)  # nothing removed: cow 8 / (8 + 4)
