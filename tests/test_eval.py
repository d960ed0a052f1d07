"""``wfss eval`` end to end on a tiny synthetic generic dataset written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data import write_generic_dataset

from hhn.data.episodes import EpisodeSampler
from hhn.data.generic import GenericDataset
from napari_wfss.cli import main

KEYS = {"miou", "fbiou", "per_class", "episodes", "shots", "precision", "recall", "method", "support"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_generic_dataset(tmp_path_factory.mktemp("eval") / "synth")


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """One on-disk feature cache for every run of this module: each image meets the backbone once."""
    return str(tmp_path_factory.mktemp("features"))


def _eval(capsys, root, *extra: str, cache: str | None = None) -> dict:
    cache_args = ["--cache-dir", cache] if cache else []
    code = main(["eval", "--data", str(root), "--test-classes", "square,disk", "--episodes", "6", "--seed", "1",
                 "--device", "cpu", "--json", *cache_args, *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_all_fg_json_matches_hand_count(synth, capsys):
    result = _eval(capsys, synth, "--method", "all-fg", "--shots", "2")
    assert set(result) >= KEYS and result["episodes"] == 6 and result["shots"] == 2
    # the same episodes, scored independently: all-fg IoU = |true fg| / |valid| pooled per class
    ds = GenericDataset(synth)
    inter, union = {"square": 0, "disk": 0}, {"square": 0, "disk": 0}
    sampler = EpisodeSampler(ds, classes=["square", "disk"], shots=2, seed=1, prior_positives=3, prior_negatives=3)
    for ep in sampler.episodes(6):
        gt = ds.binary_mask(ep.query, ep.class_name)
        inter[ep.class_name] += int((gt == 1).sum())
        union[ep.class_name] += int((gt != 255).sum())
    expected = {c: 100 * inter[c] / max(union[c], 1) for c in inter}
    assert result["per_class"] == pytest.approx(expected, abs=0.01)
    assert result["miou"] == pytest.approx(np.mean(list(expected.values())), abs=0.01)
    assert all(r == pytest.approx(1.0) for r in result["recall"].values() if r)


def test_map_with_masks_beats_all_fg(synth, capsys, feature_cache):
    trivial = _eval(capsys, synth, "--method", "all-fg")
    result = _eval(capsys, synth, "--method", "map", "--support", "masks", cache=feature_cache)
    assert set(result["per_class"]) == {"square", "disk"}
    assert 0 <= result["miou"] <= 100 and 0 <= result["fbiou"] <= 100
    assert result["fbiou"] > trivial["fbiou"]


def test_prior_and_map_with_tags(synth, capsys, feature_cache):
    for method in ("prior", "map"):
        result = _eval(capsys, synth, "--method", method, "--support", "tags", "--prior-negatives", "2",
                       cache=feature_cache)
        assert result["method"] == method and result["support"] == "tags" and result["prior"] == "coseg"
        assert 0 <= result["miou"] <= 100 and 0 <= result["fbiou"] <= 100


def test_hhn_method_runs_with_a_checkpoint(synth, capsys, tiny_model, feature_cache):
    result = _eval(capsys, synth, "--method", "hhn", "--model", tiny_model, "--support", "masks",
                   "--threads", "1", cache=feature_cache)
    assert result["method"] == "hhn" and 0 <= result["miou"] <= 100


@pytest.mark.slow
def test_the_tag_prior_is_the_models_own_unless_given(synth, capsys, tiny_model, feature_cache, tmp_path):
    import shutil

    src = Path(tiny_model)
    for f in src.parent.glob(src.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / src.name).read_text())
    meta["config"]["tag_prior"] = "coseg-ms"
    (tmp_path / src.name).write_text(json.dumps(meta))
    args = ("--method", "hhn", "--support", "tags", "--prior-negatives", "2", "--threads", "1")
    assert _eval(capsys, synth, *args, "--model", tiny_model, cache=feature_cache)["prior"] == "coseg-ratio"  # preset's
    own = _eval(capsys, synth, *args, "--model", str(tmp_path / src.name), cache=feature_cache)
    assert own["prior"] == "coseg-ms" and 0 <= own["miou"] <= 100
    given = _eval(capsys, synth, *args, "--model", str(tmp_path / src.name), "--prior", "coseg", cache=feature_cache)
    assert given["prior"] == "coseg"


def test_hhn_decision_rules_share_one_pass_and_weight_one_is_the_prior_alone(synth, capsys, tiny_model,
                                                                              feature_cache):
    args = ("--support", "tags", "--prior-negatives", "2", "--threads", "1", "--prior", "coseg-ratio")
    prior = _eval(capsys, synth, "--method", "prior", *args, cache=feature_cache)
    code = main(["eval", "--data", str(synth), "--test-classes", "square,disk", "--episodes", "6", "--seed", "1",
                 "--device", "cpu", "--json", "--cache-dir", feature_cache, "--method", "hhn", "--model", tiny_model,
                 "--decision", "1,0.5", "--decision", "argmax", "--decision", "1,0.5,trim:1/0.5/0",
                 "--decision", "1,0.5,snap:0.06,trim:1/0.5/0", "--decision", "0,0.5,snap:0.06,supports:refined",
                 *args])
    assert code == 0
    only_prior, network, trimmed, snapped, refined = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert only_prior["decision"] == {"prior_weight": 1.0, "threshold": 0.5, "trim": None, "snap": None,
                                      "refine_supports": False, "flip_border": None}
    assert trimmed["decision"] == {"prior_weight": 1.0, "threshold": 0.5, "trim": [1.0, 0.5, 0.0], "snap": None,
                                   "refine_supports": False, "flip_border": None}
    assert snapped["decision"] == {"prior_weight": 1.0, "threshold": 0.5, "trim": [1.0, 0.5, 0.0], "snap": 0.06,
                                   "refine_supports": False, "flip_border": None}
    assert refined["decision"] == {"prior_weight": 0.0, "threshold": 0.5, "trim": None, "snap": 0.06,
                                   "refine_supports": True, "flip_border": None}
    for c in prior["per_class"]:  # the trim only removes foreground: never more recall than the prior
        assert trimmed["recall"][c] <= only_prior["recall"][c] + 1e-9
    assert snapped["per_class"] != trimmed["per_class"]  # the snap changed masks
    assert only_prior["per_class"] == prior["per_class"] and only_prior["fbiou"] == prior["fbiou"]
    alone = _eval(capsys, synth, "--method", "hhn", "--model", tiny_model, "--decision", "argmax", *args,
                  cache=feature_cache)
    assert network["decision"] == alone["decision"] == {"prior_weight": 0.0, "threshold": 0.5, "trim": None,
                                                        "snap": None, "refine_supports": False, "flip_border": None}
    assert network["per_class"] == alone["per_class"]  # the shared pass scores like a run of its own
    assert main(["eval", "--data", str(synth), "--test-classes", "square", "--model", tiny_model,
                 "--decision", "0.5"]) == 2
    assert "decision rule must be" in capsys.readouterr().err
    for bad in ("1,0.5,1/0/0", "1,0.5,trim:1/0", "1,0.5,snap:x", "1,0.5,snap:0.7", "1,0.5,blur:2",
                "1,0.5,snap:0.1,snap:0.2", "1,0.5,supports:maybe"):
        assert main(["eval", "--data", str(synth), "--test-classes", "square", "--model", tiny_model,
                     "--decision", bad]) == 2
        err = capsys.readouterr().err
        assert "decision rule must be" in err or "three non-negative tap weights" in err or "snap needs a band" in err
    assert main(["eval", "--data", str(synth), "--test-classes", "square", "--method", "map",
                 "--decision", "argmax"]) == 2
    assert "--method hhn only" in capsys.readouterr().err


def test_table_output_and_user_errors(synth, capsys):
    assert main(["eval", "--data", str(synth), "--test-classes", "square", "--episodes", "2",
                 "--method", "all-fg"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "square" in out
    assert main(["eval", "--data", str(synth), "--test-classes", "zebra", "--method", "all-fg"]) == 2
    assert "unknown class 'zebra'" in capsys.readouterr().err
    assert main(["eval", "--data", str(synth), "--fold", "0", "--method", "all-fg"]) == 2
    assert "folds.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["prior", "map"])
def test_baseline_trim_only_removes_foreground_and_is_recorded(synth, capsys, feature_cache, method):
    args = ("--method", method, "--support", "tags", "--prior-negatives", "2", "--threads", "1")
    plain = _eval(capsys, synth, *args, cache=feature_cache)
    trimmed = _eval(capsys, synth, *args, "--trim", "1/0.5/0", cache=feature_cache)
    assert trimmed["trim"] == [1.0, 0.5, 0.0] and "trim" not in plain
    for c in plain["per_class"]:
        assert trimmed["recall"][c] <= plain["recall"][c] + 1e-9


@pytest.mark.parametrize("method", ["prior", "map"])
def test_baseline_snap_is_applied_after_the_trim_and_recorded(synth, capsys, feature_cache, method):
    args = ("--method", method, "--support", "tags", "--prior-negatives", "2", "--threads", "1")
    trimmed = _eval(capsys, synth, *args, "--trim", "1/0.5/0", cache=feature_cache)
    snapped = _eval(capsys, synth, *args, "--trim", "1/0.5/0", "--snap", "0.06", cache=feature_cache)
    assert snapped["snap"] == 0.06 and snapped["trim"] == [1.0, 0.5, 0.0] and "snap" not in trimmed
    assert snapped["per_class"] != trimmed["per_class"]


def test_trim_flag_errors(synth, capsys, tiny_model):
    for extra, message in ((("--method", "hhn", "--model", tiny_model, "--trim", "1/0/0"), "--trim applies to"),
                           (("--method", "hhn", "--model", tiny_model, "--snap", "0.1"), "--snap applies to"),
                           (("--method", "prior", "--snap", "0.6"), "snap needs a band"),
                           (("--method", "prior", "--trim", "1/x/0"), "trim weights must be"),
                           (("--method", "prior", "--trim", "0/0/0"), "tap weights")):
        assert main(["eval", "--data", str(synth), "--test-classes", "square", *extra]) == 2
        assert message in capsys.readouterr().err
