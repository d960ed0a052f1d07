"""``wfss bench``: size parsing, early errors, and the training-step measurement (tiny geometry)."""

import argparse

import pytest
import torch

from hhn.bench import bench_train_step, parse_image_size, run_bench_cli
from hhn.errors import UserError


def test_image_size_parsing():
    assert parse_image_size(None) is None
    assert parse_image_size("288") == (288, 288)
    assert parse_image_size("256x320") == (256, 320)
    for bad in ("big", "1x2x3", "288x"):
        with pytest.raises(UserError, match="HEIGHTxWIDTH"):
            parse_image_size(bad)


def test_bad_preset_or_size_fails_before_any_worker_starts():
    base = {"preset": None, "repeats": 1, "threads": 1, "device": "cpu", "train_step": True, "batch_size": 2,
            "image_size": None}
    with pytest.raises(UserError, match="multiples of 16"):
        run_bench_cli(argparse.Namespace(**dict(base, image_size="100")))
    with pytest.raises(UserError, match="unknown model preset"):
        run_bench_cli(argparse.Namespace(**dict(base, preset=["nope"])))


def test_training_step_measurement_runs_the_loop_step_on_a_small_geometry():
    before = torch.get_num_threads()
    try:
        result = bench_train_step("wfss-lite0", repeats=1, device="cpu", threads=1, image_size=(64, 64),
                                  batch_size=2)
    finally:
        torch.set_num_threads(before)
    assert (result["size"], result["batch"], result["threads"]) == ("64x64", 2, 1)
    assert result["step_s"] > 0 and result["step_cpu_s"] > 0 and result["peak_rss_mib"] > 0
