"""Run the proposal engine (or a retraining) in a child Python process, so torch never loads inside napari.

Why a process: on Mesa (llvmpipe) machines, importing torchvision or open_clip after napari has made
its OpenGL context loads triton's bundled LLVM next to Mesa's and kills the process with a
segmentation fault. A child process that never touches Qt or OpenGL side-steps that, and also gives
every byte of (GPU) memory back to the system when the run ends.

Protocol (one run = one child; JSON lines):

- parent -> child stdin: one request line ``{"engine": "module:function", "kwargs": {...},
  "workdir": "..."}``, later optionally ``"cancel"``. EOF on stdin (the parent died) also cancels.
- child -> parent (a private copy of the child's stdout; anything the libraries print goes to
  stderr, which the parent sends to a log file): per finished image
  ``{"event": "result", "image": path, "key": key, "file": ".npy path" | null, "scores": {...},
  "error": str | null, "model": str, "seconds": float}`` (``file`` null when the image could not be
  read: ``error`` says why), ``{"event": "warning", "message": str}`` for each of the run's warnings
  (e.g. a support image left out), ``{"event": "progress", "stage": str, "done": int, "total": int}`` for
  a run that reports stages (retraining), ``{"event": "model", "path": str, "best_step": int,
  "steps_run": int, "scores": {...}}`` when a retraining wrote its model, then exactly one
  ``{"event": "done", "cancelled": bool}``, or ``{"event": "error", "message": str, "user": bool,
  "details": str}`` then ``done``.

The engine function is called as ``function(should_stop=callable, **kwargs)`` and must return an
iterator of :class:`napari_wfss.engine.ProposalResult` (one per finished image, unreadable ones with
``error`` set), :class:`RunWarning`, :class:`RunProgress` and :class:`ModelWritten`. ``should_stop()``
turns True once the parent cancels; the engine checks it between images (a retraining between steps),
and the child stops reading results at the next one. The parent kills a
child that has not exited ``grace_s`` seconds after a cancel (e.g. stuck loading a model).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from napari_wfss.engine import ProposalResult

DEFAULT_ENGINE = "napari_wfss._engine_process:propose_project"
CHILD_NICENESS = 5  # lower scheduling priority of the child on POSIX
_LOG_TAIL = 2000  # characters of the child's stderr quoted when it dies without reporting


@dataclass(frozen=True)
class RunWarning:
    """Something the run left out or worked around (e.g. a support image it could not read)."""

    message: str


@dataclass(frozen=True)
class RunProgress:
    """``done`` of ``total`` units of the run's current ``stage`` (e.g. "training", steps)."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class ModelWritten:
    """A retraining wrote its model folder ``path``; ``scores``: step -> held-out {"loss", "iou"}."""

    path: str
    best_step: int
    steps_run: int
    scores: dict


@dataclass(frozen=True)
class RunFailed:
    """The run stopped on an error; ``user_error`` is True for a ``UserError`` (message says what to do)."""

    message: str
    user_error: bool
    details: str = ""


@dataclass(frozen=True)
class RunFinished:
    """The child has exited; ``cancelled`` is True if it stopped early on request."""

    cancelled: bool


RunEvent = ProposalResult | RunWarning | RunProgress | ModelWritten | RunFailed | RunFinished


def propose_project(project: str, should_stop: Callable[[], bool], images: list[str] | None = None,
                    **options: Any) -> Iterator[ProposalResult | RunWarning]:
    """The default engine entry in the child: open the session at ``project`` read-only and propose
    ``images`` (default: its default queries) without storing anything (the parent stores the results
    with :func:`napari_wfss.engine.store_proposals`).

    ``options``: the fields of a :class:`napari_wfss.options.ProposalOptions`. Yields a ``ProposalResult``
    per finished image (unreadable images with ``error`` set), then a :class:`RunWarning` per warning of
    the run.
    """
    from napari_wfss.engine import Engine
    from napari_wfss.options import ProposalOptions
    from napari_wfss.session import Session

    engine = Engine.from_options(ProposalOptions.from_dict(options))
    with Session.open(project, read_only=True) as session:
        yield from engine.propose(session, images=images, store=False, should_stop=should_stop)
    for message in engine.warnings:
        yield RunWarning(message)


class EngineProcess:
    """One proposal run in a child process; iterate :meth:`events` (from a worker thread) for results.

    ``kwargs`` must be JSON-serialisable. ``engine`` is ``"module:function"`` (see the module doc).
    Use as a context manager, or call :meth:`close`; both kill a child still running and delete
    the temporary folder.
    """

    def __init__(
        self,
        kwargs: dict[str, Any],
        engine: str = DEFAULT_ENGINE,
        grace_s: float = 5.0,
    ) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="wfss-run-")
        self._log_path = Path(self._workdir.name) / "child.log"
        self._grace_s = grace_s
        self._cancel_requested = threading.Event()
        self._killer: threading.Timer | None = None
        request = {"engine": engine, "kwargs": kwargs, "workdir": self._workdir.name}
        child_env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "napari_wfss._engine_process"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env,
            )
        if self._proc.stdin is None or self._proc.stdout is None:  # never: both are pipes
            raise RuntimeError("the proposal process was started without pipes")
        self._stdin: IO[bytes] = self._proc.stdin
        self._stdout: IO[bytes] = self._proc.stdout
        self._send(json.dumps(request))

    @property
    def pid(self) -> int:
        """Process id of the child."""
        return self._proc.pid

    def _send(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self._stdin.write((line + "\n").encode())
            self._stdin.flush()

    def cancel(self) -> None:
        """Ask the child to stop after the current image; kill it if it is still running ``grace_s`` later.

        Safe to call from any thread, more than once, and after the child has exited.
        """
        if self._cancel_requested.is_set():
            return
        self._cancel_requested.set()
        self._send("cancel")
        self._killer = threading.Timer(self._grace_s, self._kill)
        self._killer.daemon = True
        self._killer.start()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()

    def events(self) -> Iterator[RunEvent]:
        """Yield a ``ProposalResult`` per finished image, a :class:`RunWarning` per warning, the run's
        :class:`RunProgress` and :class:`ModelWritten` events, a :class:`RunFailed` if the run failed,
        and always a final :class:`RunFinished`. Blocks while the child computes (call it off the
        UI thread)."""
        reported_done = False
        cancelled = False
        for raw in self._stdout:
            msg = json.loads(raw)
            if msg["event"] == "result":
                label_map = None
                if msg["file"] is not None:
                    path = Path(msg["file"])
                    label_map = np.load(path)
                    path.unlink()
                yield ProposalResult(msg["image"], msg["key"], label_map, msg["scores"], seconds=msg["seconds"],
                                     error=msg["error"], model=msg["model"])
            elif msg["event"] == "warning":
                yield RunWarning(msg["message"])
            elif msg["event"] == "progress":
                yield RunProgress(msg["stage"], int(msg["done"]), int(msg["total"]))
            elif msg["event"] == "model":
                yield ModelWritten(msg["path"], int(msg["best_step"]), int(msg["steps_run"]), msg["scores"])
            elif msg["event"] == "error":
                yield RunFailed(msg["message"], bool(msg["user"]), msg.get("details", ""))
            elif msg["event"] == "done":
                reported_done, cancelled = True, bool(msg["cancelled"])
        code = self._proc.wait()
        if self._killer is not None:
            self._killer.cancel()
        if not reported_done and not self._cancel_requested.is_set():  # (after a cancel: killed, as asked)
            tail = self._log_path.read_text(errors="replace")[-_LOG_TAIL:]
            yield RunFailed(f"the background process stopped unexpectedly (exit code {code})", False, tail)
        yield RunFinished(cancelled or self._cancel_requested.is_set())

    def close(self) -> None:
        """Kill the child if it still runs, reap it and delete the run's temporary folder."""
        if self._killer is not None:
            self._killer.cancel()
        self._kill()
        self._proc.wait()
        for stream in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._workdir.cleanup()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ child side


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, func_name = spec.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def _watch_for_cancel(stdin: IO[str], cancel: threading.Event) -> None:
    """Set ``cancel`` on a ``cancel`` line or on EOF (the parent went away)."""
    for line in stdin:
        if line.strip() == "cancel":
            break
    cancel.set()


def _child_main() -> int:
    """Entry of the child process: read the request, stream results, report errors; see the module doc."""
    from hhn.errors import UserError

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to the log, never into the protocol stream
    sys.stdout = sys.stderr

    def send(**msg: Any) -> None:
        proto.write(json.dumps(msg) + "\n")

    if hasattr(os, "nice"):
        os.nice(CHILD_NICENESS)  # the UI thread of napari wins when both want the CPU
    request = json.loads(sys.stdin.readline())
    cancel = threading.Event()
    threading.Thread(target=_watch_for_cancel, args=(sys.stdin, cancel), daemon=True).start()
    workdir = Path(request["workdir"])
    try:
        events = _resolve(request["engine"])(should_stop=cancel.is_set, **request["kwargs"])
        for n, event in enumerate(events):
            if isinstance(event, RunWarning):
                send(event="warning", message=event.message)
                continue
            if isinstance(event, RunProgress):
                send(event="progress", stage=event.stage, done=event.done, total=event.total)
                continue
            if isinstance(event, ModelWritten):
                send(event="model", path=event.path, best_step=event.best_step, steps_run=event.steps_run,
                     scores=event.scores)
                continue
            path = None
            if event.label_map is not None:
                path = workdir / f"{n:06d}.npy"
                tmp = workdir / f".{n:06d}.npy"
                np.save(tmp, np.asarray(event.label_map))
                os.replace(tmp, path)
            send(event="result", image=event.image, key=event.key, file=None if path is None else str(path),
                 scores=event.scores, error=event.error, model=event.model, seconds=event.seconds)
            if cancel.is_set():
                break
    except UserError as exc:
        send(event="error", message=str(exc), user=True, details="")
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent, not lost
        send(event="error", message=f"{type(exc).__name__}: {exc}", user=False, details=traceback.format_exc())
    send(event="done", cancelled=cancel.is_set())
    proto.close()
    return 0


if __name__ == "__main__":
    # run the module's importable copy, so the classes engines yield (RunWarning) are the ones the loop tests
    from napari_wfss._engine_process import _child_main as child_main

    sys.exit(child_main())
