"""Run the proposal engine in a child Python process, so torch never loads inside napari.

Why a process: on Mesa (llvmpipe) machines, importing torchvision or open_clip after napari has made
its OpenGL context loads triton's bundled LLVM next to Mesa's and kills the process with a
segmentation fault. A child process that never touches Qt or OpenGL side-steps that, and also gives
every byte of (GPU) memory back to the system when the run ends.

Protocol (one run = one child; JSON lines):

- parent -> child stdin: one request line ``{"engine": "module:function", "kwargs": {...},
  "workdir": "..."}``, later optionally ``"cancel"``. EOF on stdin (the parent died) also cancels.
- child -> parent (a private copy of the child's stdout; anything the libraries print goes to
  stderr, which the parent sends to a log file):
  ``{"event": "result", "image": key, "file": ".npy path", "scores": {...} | null}`` per finished
  image, then exactly one
  ``{"event": "done", "cancelled": bool}``, or ``{"event": "error", "message": str, "user": bool,
  "details": str}`` then ``done``.

The engine function is called as ``function(should_stop=callable, **kwargs)`` and must return an
iterator of ``(image_key, label_map)`` or ``(image_key, label_map, scores)``: ``image_key`` a ``str``,
``label_map`` an ``(H, W)`` integer array of class ids, ``scores`` a ``{class name: float}`` dict.
``should_stop()`` turns True once the parent cancels; the engine checks it between images, and the
child stops reading results at the next one. The parent kills a child that has not exited
``grace_s`` seconds after a cancel (e.g. stuck loading a model).
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

DEFAULT_ENGINE = "napari_wfss._engine_process:propose_project"
CHILD_NICENESS = 5  # lower scheduling priority of the child on POSIX
_LOG_TAIL = 2000  # characters of the child's stderr quoted when it dies without reporting


@dataclass(frozen=True)
class ProposalReady:
    """One finished image: ``label_map`` is ``(H, W)`` class ids as the engine returned them;
    ``scores`` the engine's per-class confidences in ``[0, 1]`` (``None`` if it gave none)."""

    image: str
    label_map: np.ndarray
    scores: dict[str, float] | None = None


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


RunEvent = ProposalReady | RunFailed | RunFinished


def propose_project(project: str, should_stop: Callable[[], bool], **options: Any) -> Iterator[tuple]:
    """The default engine entry in the child: open the session at ``project`` and propose its
    default queries without storing anything (the parent's session stores the results).

    ``options`` are :class:`napari_wfss.engine.Engine` arguments (``model``, ``device``, ``shots``,
    ``batch_size``, ``threshold``, ``snap``, ``refine_supports``). Yields ``(image path, label map,
    scores)`` per finished image; images that cannot be read are skipped.
    """
    from napari_wfss.engine import Engine
    from napari_wfss.session import Session

    engine = Engine(**options)
    for result in engine.propose(Session.open(project, read_only=True), store=False, should_stop=should_stop):
        if result.label_map is not None:
            yield result.image, result.label_map, result.scores


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
        self._send(json.dumps(request))

    @property
    def pid(self) -> int:
        """Process id of the child."""
        return self._proc.pid

    def _send(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self._proc.stdin.write((line + "\n").encode())
            self._proc.stdin.flush()

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
        """Yield :class:`ProposalReady` per finished image, a :class:`RunFailed` if the run failed,
        and always a final :class:`RunFinished`. Blocks while the child computes (call it off the
        UI thread)."""
        reported_done = False
        cancelled = False
        for raw in self._proc.stdout:
            msg = json.loads(raw)
            if msg["event"] == "result":
                path = Path(msg["file"])
                label_map = np.load(path)
                path.unlink()
                yield ProposalReady(msg["image"], label_map, msg.get("scores"))
            elif msg["event"] == "error":
                yield RunFailed(msg["message"], bool(msg["user"]), msg.get("details", ""))
            elif msg["event"] == "done":
                reported_done, cancelled = True, bool(msg["cancelled"])
        code = self._proc.wait()
        if self._killer is not None:
            self._killer.cancel()
        if not reported_done and not self._cancel_requested.is_set():  # (after a cancel: killed, as asked)
            tail = self._log_path.read_text(errors="replace")[-_LOG_TAIL:]
            yield RunFailed(f"the proposal process stopped unexpectedly (exit code {code})", False, tail)
        yield RunFinished(cancelled or self._cancel_requested.is_set())

    def close(self) -> None:
        """Kill the child if it still runs, reap it and delete the run's temporary folder."""
        if self._killer is not None:
            self._killer.cancel()
        self._kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
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
        results = _resolve(request["engine"])(should_stop=cancel.is_set, **request["kwargs"])
        for n, (image, label_map, *scores) in enumerate(results):
            path = workdir / f"{n:06d}.npy"
            tmp = workdir / f".{n:06d}.npy"
            np.save(tmp, np.asarray(label_map))
            os.replace(tmp, path)
            send(event="result", image=str(image), file=str(path), scores=scores[0] if scores else None)
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
    sys.exit(_child_main())
