"""Retrain on a project's accepted masks: export them, fine-tune a model on them, keep both in the project.

The widget's "Retrain on accepted masks" runs :func:`retrain_project` in a child process (see
:mod:`napari_wfss._engine_process`); :func:`retrain_session` is the same from Python. One retraining
writes, inside the project folder (``<project>/models/``):

- ``<stamp>-data/``: the export of the accepted and edited images (images hard-linked where possible),
  the data the model learnt from, named in its ``model.json``;
- ``<stamp>/``: the fine-tuned model (``model.safetensors`` + ``model.json``, see
  :mod:`hhn.training.finetune`), usable as ``wfss label --model <project>/models/<stamp>``.

Both exist only complete: a cancelled or failed retraining removes what it wrote.
"""

from __future__ import annotations

import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhn.errors import UserError
from hhn.training.finetune import PARTIAL_SUFFIX

from .export import export_session
from .statuses import ACCEPTED, EDITED

if TYPE_CHECKING:
    from hhn.training.finetune import FinetuneResult, Progress

    from .session import Session

MODELS_DIR = "models"
DATA_SUFFIX = "-data"
STAGE_NAMES = {"features": "encoding images", "priors": "tag priors", "training": "training"}


def retrain_session(session: Session, init: str = "default", *, steps: int | None = None,
                    log: Callable[[str], object] = print, progress: Progress | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> FinetuneResult:
    """Export the session's accepted and edited images and fine-tune ``init`` on them (module docstring).

    Raises ``UserError`` (nothing left behind) when there is nothing to learn from; returns the
    :class:`~hhn.training.finetune.FinetuneResult` (``model`` None when cancelled).
    """
    from hhn.training.finetune import FinetuneSettings, finetune

    done = session.images_with_status(ACCEPTED, EDITED)
    if not done:
        raise UserError("nothing to retrain on: accept or edit some proposals first (retraining learns from "
                        "accepted and edited masks only)")
    models = session.project_dir / MODELS_DIR
    remove_leftovers(models)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, data = models / stamp, models / f"{stamp}{DATA_SUFFIX}"
    n = 1
    while out.exists() or data.exists():
        n += 1
        out, data = models / f"{stamp}-{n}", models / f"{stamp}-{n}{DATA_SUFFIX}"
    settings = FinetuneSettings(steps=steps or FinetuneSettings.steps)
    try:
        export_session(session, data, statuses=(ACCEPTED, EDITED), images="link")
        result = finetune(init, data, out, settings, log=log, progress=progress, should_stop=should_stop)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    if result.cancelled:
        shutil.rmtree(data, ignore_errors=True)
    return result


def remove_leftovers(models: Path) -> None:
    """Delete what a killed retraining left in ``models``: ``*.partial`` folders, and ``<name>-data``
    exports whose model ``<name>`` was never written."""
    if not models.is_dir():
        return
    for path in models.iterdir():
        if path.is_dir() and (path.name.endswith(PARTIAL_SUFFIX)
                              or (path.name.endswith(DATA_SUFFIX)
                                  and not (models / path.name.removesuffix(DATA_SUFFIX) / "model.json").is_file())):
            shutil.rmtree(path, ignore_errors=True)


def retrain_project(project: str, should_stop: Callable[[], bool], init: str = "default",
                    steps: int | None = None) -> Iterator[Any]:
    """The child-process entry (``napari_wfss._engine_process``): open the project read-only, retrain, and
    yield :class:`~napari_wfss._engine_process.RunProgress` events as the run goes, a ``RunWarning`` per
    note, then a ``ModelWritten`` unless cancelled. Log lines go to stderr (the child's log)."""
    from ._engine_process import ModelWritten, RunProgress, RunWarning
    from .session import Session

    events: queue.Queue = queue.Queue()  # the fine-tuning runs in a thread; its progress streams out here
    outcome: dict[str, Any] = {}

    def work(session: Session) -> None:
        try:
            outcome["result"] = retrain_session(
                session, init, steps=steps, log=lambda s: print(f"retrain: {s}", file=sys.stderr, flush=True),
                progress=lambda stage, done, total: events.put(RunProgress(STAGE_NAMES[stage], done, total)),
                should_stop=should_stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the generator, in the caller's thread
            outcome["error"] = exc
        finally:
            events.put(None)

    with Session.open(project, read_only=True) as session:
        threading.Thread(target=work, args=(session,), daemon=True).start()
        while (event := events.get()) is not None:
            yield event
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    for note in result.notes:
        yield RunWarning(note)
    if result.model is not None:
        yield ModelWritten(str(result.model.parent), result.best_step, result.steps_run,
                           {str(k): v for k, v in result.scores.items()})
