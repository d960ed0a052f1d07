"""The widget's "Retrain on accepted masks": fine-tuning in a child process, then the new model offered.

The retraining (:func:`napari_wfss.retrain.retrain_project`) runs in a child process through the same
:class:`~napari_wfss._engine_process.EngineProcess` as proposals: napari never imports torch, the UI
stays responsive, the progress bar follows the run's stages (encoding images, tag priors, training
steps) and Cancel stops it (nothing is kept of a cancelled run). When the model is written the widget
puts its folder in the Model field and ticks "Redo proposals of other models", so the next Propose
replaces the unreviewed proposals of the previous model; every proposal records the model that made it.
"""

from __future__ import annotations

import logging
from typing import Any

from hhn.errors import UserError
from napari_wfss._engine_process import EngineProcess, ModelWritten, RunFailed, RunFinished, RunProgress, RunWarning
from napari_wfss.session import ACCEPTED, EDITED

log = logging.getLogger(__name__)

RETRAIN_ENGINE = "napari_wfss.retrain:retrain_project"


class RetrainRunMixin:
    """``retrain`` and its events for :class:`~napari_wfss._qt.widget.WfssWidget`.

    Shares the proposal run's holder, progress bar, label and Cancel button (one child at a time), and
    uses the widget's ``model_edit``, ``redo_check``, ``retrain_steps_spin``, ``_model_name``,
    ``_show_model_threshold``, ``_capture_edits``, ``_report`` and the proposal run's ``_start_worker``.
    """

    _run_holder: dict[str, Any]

    def retrain(self) -> None:
        """Fine-tune the Model field's model on the project's accepted and edited masks, in a child process."""
        from napari.qt.threading import create_worker

        if self.session is None or self.running:
            return
        self._capture_edits()
        if not self.session.images_with_status(ACCEPTED, EDITED):
            self._report(UserError("nothing to retrain on yet: accept or edit some proposals first"))
            return
        self.session.save()
        self.new_model = None
        steps = self.retrain_steps_spin.value()
        run = EngineProcess({"project": str(self.session.project_dir), "init": self._model_name(), "steps": steps},
                            engine=RETRAIN_ENGINE)
        self._run_holder["run"] = run
        self.progress_bar.setRange(0, 0)  # busy until the first stage reports its size
        self.progress_bar.setVisible(True)
        self.run_label.setText("retraining: starting…")
        self._start_worker(create_worker(run.events, _ignore_errors=True), self._on_retrain_event)

    def _on_retrain_event(self, event) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        if isinstance(event, RunProgress):
            self.progress_bar.setRange(0, max(event.total, 1))
            self.progress_bar.setValue(event.done)
            self.run_label.setText(f"retraining: {event.stage}")
        elif isinstance(event, RunWarning):
            log.warning("retraining: %s", event.message)
            show_warning(event.message)
        elif isinstance(event, ModelWritten):
            self.new_model = event.path
            self.model_edit.setText(event.path)
            self._show_model_threshold()
            self.redo_check.setChecked(True)
            before, best = event.scores.get("0"), event.scores.get(str(event.best_step))
            scored = (f"; held-out IoU {before['iou']:.2f} -> {best['iou']:.2f}" if before and best else "")
            kept = " (no step beat the previous model: its weights are kept)" if before and event.best_step == 0 else ""
            show_info(f"retrained model ready{kept}{scored}; the next Propose uses it: {event.path}")
        elif isinstance(event, RunFailed):
            if event.details:
                log.error("retraining failed: %s\n%s", event.message, event.details)
            show_error(event.message if event.user_error else f"retraining failed: {event.message}")
        elif isinstance(event, RunFinished):
            if event.cancelled:
                self.run_label.setText("retraining cancelled: nothing kept")
            elif self.new_model is not None:
                self.run_label.setText("retrained: Model field set to the new model")
            else:
                self.run_label.setText("retraining stopped")
