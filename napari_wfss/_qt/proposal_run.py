"""The widget's proposal run: the Propose fields as options, the model in a child process, its events.

The model runs in a child process (:class:`~napari_wfss._engine_process.EngineProcess`): torch is never
imported into napari's process, a worker thread stores each finished proposal as it streams in
(:func:`_store_run`), the UI thread only refreshes the list (and the layer of the image on screen), and
Cancel stops the child between images.

Progress is a bar in the widget, not a napari ``progress``: napari's activity indicator animates a
GIF that makes Qt re-compose the whole window (OpenGL canvas included) about 40 times a second; with
software OpenGL (VMs, remote desktops, Xvfb) that took ~75% of a CPU core for the whole run in our
measurement, slowing the engine that shares the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

from hhn.errors import UserError
from napari_wfss._engine_process import (
    DEFAULT_ENGINE,
    EngineProcess,
    RunEvent,
    RunFailed,
    RunFinished,
    RunWarning,
)
from napari_wfss.engine import ProposalResult, declared_threshold, default_queries, store_proposals
from napari_wfss.options import OptionsError, ProposalOptions
from napari_wfss.session import Session

log = logging.getLogger(__name__)

MODELS_THRESHOLD = -0.05  #: the threshold box's "model's" setting (its minimum)
MODELS_PRIOR = "model's"  #: the tag prior box's first item: the model's own prior
#: seconds a cancelled proposal child may take to stop by itself before it is killed: it writes nothing
#: (the widget stores the results), so killing it loses only the images in flight
CANCEL_GRACE_S = 1.0


def _close_run(holder: dict) -> None:
    run = holder.get("run")
    if run is not None:
        run.close()


def _store_run(run: EngineProcess, session: Session) -> Iterator[RunEvent]:
    """Worker-thread generator: store each streamed result with the core's
    :func:`~napari_wfss.engine.store_proposals` (PNG + project.json writes stay off the UI thread) and pass
    every event on (a result then says whether it was stored, or why not)."""
    for event in run.events():
        if isinstance(event, ProposalResult):
            store_proposals(session, [event])
        yield event


class ProposalRunMixin:
    """The Propose box's actions of :class:`~napari_wfss._qt.widget.WfssWidget` (``propose``, ``cancel``,
    ``proposal_options``, ``running``, ``skipped``, ``engine_spec``).

    Uses the widget's ``session``, Propose fields (``model_edit``, ``device_combo``, ``shots_spin``,
    ``threshold_spin``, ``prior_combo``, ``snap_check``, ``refine_check``, ``redo_check``), ``progress_bar``,
    ``run_label``, ``skipped_list`` and its ``_report``, ``_capture_edits``, ``_refresh_enabled``,
    ``_update_image_row``, ``_update_counts``, ``_unedited`` and ``_show_labels``.
    """

    def _init_proposal_run(self) -> None:
        """Set up the run state (before the UI is built); a run still going is closed with the widget."""
        self.engine_spec = DEFAULT_ENGINE
        self._run_holder: dict[str, Any] = {}
        self._run_session: Session | None = None
        self._run_count = 0
        self.skipped: list[tuple[str, str]] = []  # (image, reason) of the last run's images left without a proposal
        self._worker = None  # the running proposal worker (kept referenced while it runs)
        self.destroyed.connect(partial(_close_run, self._run_holder))

    @property
    def running(self) -> bool:
        """True while a proposal run is in progress."""
        return self._run_holder.get("run") is not None

    def _model_name(self) -> str:
        """The Model field's name, ``"default"`` when it is empty."""
        return self.model_edit.text().strip() or "default"

    def _show_model_threshold(self) -> None:
        """Name the chosen model's own threshold in the threshold box's "model's" setting."""
        threshold = declared_threshold(self._model_name())
        self.threshold_spin.setSpecialValueText("model's" if threshold is None else f"model's ({threshold:.2f})")

    def proposal_options(self) -> ProposalOptions:
        """The run options the Propose fields give (raises ``OptionsError`` for a malformed value)."""
        threshold = self.threshold_spin.value()
        prior = self.prior_combo.currentText()
        return ProposalOptions(model=self._model_name(), device=self.device_combo.currentText(),
                               shots=self.shots_spin.value(),
                               threshold=None if threshold < 0 else round(threshold, 4),
                               snap=self.snap_check.isChecked(),
                               refine_supports=True if self.refine_check.isChecked() else None,
                               tag_prior=None if prior == MODELS_PRIOR else prior)

    def propose(self) -> None:
        """Propose label maps for every image without tags, proposal or mask, in a child process;
        results stream in as images finish."""
        from napari.qt.threading import create_worker

        if self.session is None or self.running:
            return
        from napari.utils.notifications import show_info

        self._capture_edits()
        if not self.session.images_tagged():
            self._report(UserError("tag at least one image with a class before proposing (tick a class or press 1-9)"))
            return
        redo = self._model_name() if self.redo_check.isChecked() else None
        targets = default_queries(self.session, redo_model=redo)
        if not targets:
            show_info("nothing to propose: every image is tagged, proposed or done")
            return
        try:
            options = self.proposal_options()
        except OptionsError as exc:
            self._report(exc)
            return
        self.session.save()
        self._run_session = self.session
        run = EngineProcess({"project": str(self.session.project_dir), "images": targets,
                             **dataclasses.asdict(options)},
                            engine=self.engine_spec, grace_s=CANCEL_GRACE_S)
        self._run_holder["run"] = run
        self._run_count = 0
        self.skipped = []
        self.skipped_list.clear()
        self.skipped_list.setVisible(False)
        self.progress_bar.setRange(0, len(targets))
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.run_label.setText(f"proposing {len(targets)} images…")
        self._start_worker(create_worker(_store_run, run, self.session, _ignore_errors=True), self._on_run_event)

    def _start_worker(self, worker, on_event) -> None:
        """Start a child run's reader ``worker``: its events go to ``on_event``, its end re-enables the UI."""
        worker.yielded.connect(on_event)
        worker.errored.connect(self._report)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._refresh_enabled()
        worker.start()

    def cancel(self) -> None:
        """Stop the run after the image in progress (the child is killed if it does not stop soon)."""
        run = self._run_holder.get("run")
        if run is not None:
            run.cancel()
            self.run_label.setText("cancelling…")

    def _on_run_event(self, event) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        if isinstance(event, ProposalResult):
            if event.error is not None:  # unreadable, or not stored (store_proposals says why)
                self._add_skipped(event.image, event.error)
            else:
                self._run_count += 1
                self.run_label.setText(f"{self._run_count} proposed")
                if self.session is self._run_session:  # else the user closed it meanwhile: stored, not shown
                    self._update_image_row(event.image)
                    self._update_counts()
                    if event.image == self.current and self._unedited():
                        self._show_labels()
            self.progress_bar.setValue(min(self._run_count + len(self.skipped), self.progress_bar.maximum()))
        elif isinstance(event, RunWarning):
            log.warning("proposal run: %s", event.message)
            show_warning(event.message)
        elif isinstance(event, RunFailed):
            if event.details:
                log.error("proposal run failed: %s\n%s", event.message, event.details)
            show_error(event.message if event.user_error else f"proposal run failed: {event.message}")
        elif isinstance(event, RunFinished):
            verb = "cancelled after" if event.cancelled else "finished:"
            skipped = f", {len(self.skipped)} skipped (listed below)" if self.skipped else ""
            self.run_label.setText(f"{verb} {self._run_count} proposed{skipped}")
            show_info(f"proposal run {verb} {self._run_count} image(s) proposed{skipped}")

    def _add_skipped(self, image: str, reason: str) -> None:
        """List an image the run left without a proposal, reason first."""
        self.skipped.append((image, reason))
        self.skipped_list.addItem(f"{reason}: {image}")
        self.skipped_list.setVisible(True)

    def _on_worker_finished(self) -> None:
        run = self._run_holder.pop("run", None)
        if run is not None:
            run.close()
        if self._run_session is not None and self._run_session is not self.session:
            self._run_session.close()  # the user closed it during the run
        self._run_session = None
        self.progress_bar.setVisible(False)
        self._worker = None
        self._refresh_enabled()

