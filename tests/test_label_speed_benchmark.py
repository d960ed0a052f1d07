"""benchmarks/label_speed.py: the folder it builds, its memory-growth slope, and one real run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "label_speed.py"


def _bench():
    spec = importlib.util.spec_from_file_location("label_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_msrc(tmp_path) -> Path:
    """An MSRC-like folder: 9 photos, classes cow / sheep / grass (the benchmark reads only these files)."""
    data = tmp_path / "msrc"
    (data / "images").mkdir(parents=True)
    present = {"1_01_s": ["cow", "grass"], "1_02_s": ["cow"], "1_03_s": ["cow", "sheep"], "2_01_s": ["sheep"],
               "2_02_s": ["sheep", "grass"], "2_03_s": ["sheep"], "3_01_s": ["grass"], "1_04_s": ["cow"],
               "2_04_s": ["sheep"]}
    rng = np.random.default_rng(0)
    for name in present:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(data / "images" / f"{name}.jpg")
    (data / "image_classes.json").write_text(json.dumps(present))
    return data


def test_the_folder_has_the_tagged_images_first_and_only_images_of_the_classes(fake_msrc, tmp_path):
    bench = _bench()
    images, tags, queries = bench.build_folder(fake_msrc, tmp_path / "folder", ["cow", "sheep"], 7, 2)
    rows = tags.read_text().splitlines()
    assert rows[0] == "image,class"
    # per class the first images showing it and no other benchmark class ("1_03_s" shows both)
    assert rows[1:] == ["1_01_s.jpg,cow", "1_02_s.jpg,cow", "2_01_s.jpg,sheep", "2_02_s.jpg,sheep"]
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == 7 and queries == 3 and "3_01_s.jpg" not in names  # grass only: not a class here

    images, tags, queries = bench.build_folder(fake_msrc, tmp_path / "growth", ["cow", "sheep"], 7, 2, copies=3)
    assert queries == 9 and len(list(images.iterdir())) == 4 + 9  # the untagged photos three times each
    assert (images / "1_03_s_copy002.jpg").read_bytes() == (fake_msrc / "images" / "1_03_s.jpg").read_bytes()


def test_memory_growth_is_the_slope_past_the_first_fifth():
    sampler = _bench().RssSampler(os.getpid(), Path("unused"))
    # a start-up bump in the first 20 % is left out; then 0.05 MiB per image
    sampler.samples = [(0, 500.0), (10, 700.0)] + [(n, 600.0 + 0.05 * n) for n in range(20, 101, 5)]
    assert sampler.growth_per_1000(100) == pytest.approx(50.0)
    sampler.samples = [(0, 500.0)]
    assert sampler.growth_per_1000(100) is None


@pytest.mark.slow
def test_the_benchmark_runs_wfss_label_and_the_floor(fake_msrc, tmp_path, tiny_model):
    record = tmp_path / "speed.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(fake_msrc), "--images", "7",
                           "--classes", "cow,sheep", "--model", tiny_model, "--record", str(record),
                           "--", "--device", "cpu"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert row["labelled"] == row["queries"] == 3
    assert "napari_wfss.cli label" in row["command"] and "--device cpu" in row["command"]
    assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_mib"] > 100
    assert 0 < row["floor_s_per_image"] < row["s_per_image"]
    assert row["floor_ratio"] == pytest.approx(row["s_per_image"] / row["floor_s_per_image"], rel=0.05)
