"""The child-process engine runner: streaming, cancel, kill after the grace period, error reports.

The fake engines below run in the child process, which imports this module by name (the
``child_sees_tests`` fixture puts the tests folder on its PYTHONPATH), so keep top-level imports light.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hhn.errors import UserError
from napari_wfss._engine_process import (
    EngineProcess,
    ModelWritten,
    RunFailed,
    RunFinished,
    RunProgress,
    RunWarning,
)
from napari_wfss.engine import ProposalResult

pytestmark = pytest.mark.usefixtures("child_sees_tests")


def _result(image: str, label_map: np.ndarray, scores: dict | None = None) -> ProposalResult:
    return ProposalResult(image, image.upper(), label_map, scores or {}, seconds=0.5, model="fake")


def counting_engine(n: int, shape: list[int], should_stop) -> object:
    """Yield ``n`` label maps of ``shape`` whose pixels all equal the image index, with scores for odd
    indices only; prints noise to stdout."""
    for i in range(n):
        print("noise on stdout that must not reach the protocol")
        yield _result(f"img{i}", np.full(shape, i, np.uint8), {"coin": i / 10} if i % 2 else {})


def slow_engine(n: int, seconds: float, should_stop) -> object:
    """Yield ``n`` tiny label maps, sleeping ``seconds`` before each (ignores ``should_stop``)."""
    for i in range(n):
        time.sleep(seconds)
        yield _result(f"img{i}", np.zeros((2, 2), np.uint8))


def polite_engine(should_stop) -> object:
    """Work on one image until asked to stop, then finish it: a cancel does not need the kill."""
    while not should_stop():
        time.sleep(0.01)
    yield _result("img0", np.zeros((2, 2), np.uint8))


def failing_engine(user: bool, should_stop) -> object:
    """Yield one result, then raise a UserError (``user``) or a plain bug."""
    yield _result("img0", np.zeros((2, 2), np.uint8))
    if user:
        raise UserError("tag at least one image per class")
    raise ZeroDivisionError("a bug")


def unreadable_engine(should_stop) -> object:
    """One image that could not be read, one proposed, then a warning of the run."""
    yield ProposalResult("bad.png", "bad", None, error="cannot identify image file", model="fake")
    yield _result("good.png", np.ones((2, 2), np.uint8))
    yield RunWarning("left out support s.png: truncated")


def crashing_engine(should_stop) -> object:
    """Write to stderr, then die by SIGSEGV without reporting anything."""
    print("about to crash", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
    yield _result("never", np.zeros((1, 1), np.uint8))


def staged_engine(should_stop) -> object:
    """A retraining's events: stage progress, a note, the model written."""
    yield RunProgress("training", 1, 2)
    yield RunProgress("training", 2, 2)
    yield RunWarning("one class (coin)")
    yield ModelWritten("/m/20261205", 2, 2, {"0": {"loss": 0.5, "iou": 0.25}, "2": {"loss": 0.4, "iou": 0.5}})


def _run(func: str, grace_s: float = 5.0, **kwargs: object) -> EngineProcess:
    return EngineProcess(kwargs, engine=f"{__name__}:{func}", grace_s=grace_s)


def test_results_stream_in_order_with_their_arrays():
    with _run("counting_engine", n=3, shape=[4, 5]) as run:
        events = list(run.events())
    assert [type(e) for e in events] == [ProposalResult] * 3 + [RunFinished]
    for i, e in enumerate(events[:3]):
        assert e.image == f"img{i}"
        assert e.label_map.shape == (4, 5) and e.label_map.dtype == np.uint8
        assert np.all(e.label_map == i)
    assert [e.scores for e in events[:3]] == [{}, {"coin": 0.1}, {}]
    assert all(e.key == e.image.upper() and e.model == "fake" and e.seconds == 0.5 for e in events[:3])
    assert events[-1].cancelled is False


def test_progress_and_model_events_cross_the_process_boundary():
    with _run("staged_engine") as run:
        events = list(run.events())
    assert events == [RunProgress("training", 1, 2), RunProgress("training", 2, 2), RunWarning("one class (coin)"),
                      ModelWritten("/m/20261205", 2, 2, {"0": {"loss": 0.5, "iou": 0.25},
                                                         "2": {"loss": 0.4, "iou": 0.5}}),
                      RunFinished(cancelled=False)]


def test_cancel_stops_between_images():
    with _run("slow_engine", n=200, seconds=0.05) as run:
        got = []
        for e in run.events():
            got.append(e)
            if len(got) == 2:
                run.cancel()
        assert run._proc.poll() is not None
    results = [e for e in got if isinstance(e, ProposalResult)]
    assert 2 <= len(results) < 200
    assert got[-1] == RunFinished(cancelled=True)


def test_engine_sees_the_cancel_through_should_stop():
    with _run("polite_engine", grace_s=60.0) as run:
        start = time.monotonic()
        run.cancel()
        events = list(run.events())
        elapsed = time.monotonic() - start
    assert [type(e) for e in events] == [ProposalResult, RunFinished]
    assert events[-1].cancelled is True
    assert elapsed < 30.0  # well inside the grace period: the child stopped by itself


def test_child_that_does_not_stop_is_killed_after_the_grace_period():
    with _run("slow_engine", grace_s=0.5, n=2, seconds=60.0) as run:
        start = time.monotonic()
        run.cancel()
        events = list(run.events())
        elapsed = time.monotonic() - start
    assert events == [RunFinished(cancelled=True)]
    assert elapsed < 20.0


@pytest.mark.parametrize("user", [True, False])
def test_engine_errors_are_reported_after_the_finished_images(user):
    with _run("failing_engine", user=user) as run:
        events = list(run.events())
    assert isinstance(events[0], ProposalResult)
    failed = events[1]
    assert isinstance(failed, RunFailed) and failed.user_error is user
    if user:
        assert failed.message == "tag at least one image per class"
    else:
        assert "ZeroDivisionError: a bug" in failed.message and "Traceback" in failed.details
    assert events[2] == RunFinished(cancelled=False)


def test_a_crashed_child_is_reported_with_its_log():
    with _run("crashing_engine") as run:
        events = list(run.events())
    assert isinstance(events[0], RunFailed)
    assert "stopped unexpectedly" in events[0].message and str(-signal.SIGSEGV) in events[0].message
    assert "about to crash" in events[0].details
    assert events[1] == RunFinished(cancelled=False)


def test_close_kills_a_running_child_and_removes_its_files():
    run = _run("slow_engine", n=2, seconds=60.0)
    workdir = Path(run._workdir.name)
    assert workdir.is_dir()
    run.close()
    assert run._proc.poll() is not None
    assert not workdir.exists()


def test_unreadable_images_and_warnings_reach_the_parent():
    with _run("unreadable_engine") as run:
        events = list(run.events())
    assert [type(e) for e in events] == [ProposalResult, ProposalResult, RunWarning, RunFinished]
    assert events[0].image == "bad.png" and events[0].label_map is None
    assert events[0].error == "cannot identify image file"
    assert events[1].error is None and events[1].label_map.sum() == 4
    assert events[2] == RunWarning("left out support s.png: truncated")
