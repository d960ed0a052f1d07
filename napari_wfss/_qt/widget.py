"""The dock widget :class:`WfssWidget`: its layout and public actions (open a folder, tag images with class
names, propose, review, export).

One :class:`~napari_wfss.session.Session` is the single source of truth; the widget shows it and
turns clicks and keys into session calls. The proposal run is :mod:`napari_wfss._qt.proposal_run`, the
napari layers :mod:`napari_wfss._qt.layers`, the keys :mod:`napari_wfss._qt.keys`.

Edits in the Labels layer are captured into the session (``mark_edited``) when the user accepts, moves
to another image, proposes or exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hhn.errors import UserError
from hhn.registry import TAG_PRIORS
from napari_wfss._qt.keys import TAG_KEYS, bind_layer_keys, bind_viewer_keys
from napari_wfss._qt.layers import (
    find_layer,
    label_colormap,
    remove_layers,
    show_image_layer,
    show_labels_layer,
)
from napari_wfss._qt.proposal_run import MODELS_PRIOR, MODELS_THRESHOLD, ProposalRunMixin
from napari_wfss._qt.retrain_run import RetrainRunMixin
from napari_wfss.images import ImageReadError, image_size, read_display_image, refuse_large
from napari_wfss.options import DEVICES
from napari_wfss.project_store import DamagedProjectError, restore_backup
from napari_wfss.session import (
    ACCEPTED,
    DEFAULT_PROJECT_DIRNAME,
    EDITED,
    PROJECT_FILE,
    PROPOSED,
    REJECTED,
    TAGGED,
    UNTAGGED,
    Session,
)

if TYPE_CHECKING:
    import napari

STATUS_COLORS = {
    UNTAGGED: "#9e9e9e",
    TAGGED: "#42a5f5",
    PROPOSED: "#ffa726",
    EDITED: "#ba68c8",
    ACCEPTED: "#66bb6a",
    REJECTED: "#ef5350",
}
UNREADABLE = "unreadable"  #: shown instead of the status of an image that cannot be read (reason in its tooltip)
UNREADABLE_COLOR = "#e53935"


def _swatch(rgb: tuple[int, int, int]) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(*rgb))
    return QIcon(pix)


class WfssWidget(ProposalRunMixin, RetrainRunMixin, QWidget):
    """Few-shot labelling: tag a few images with class names, get proposals for the rest, review them.

    The public methods (``open_folder``, ``show_image``, ``toggle_tag``, ``add_class``, ``propose``,
    ``cancel``, ``accept``, ``reject``, ``next_image``, ``previous_image``, ``export``, ...) are what
    the buttons and keys call; scripts and tests may call them directly. The Propose box's actions
    (``propose``, ``cancel``, ``proposal_options``, ``running``) come from
    :class:`~napari_wfss._qt.proposal_run.ProposalRunMixin`, ``retrain`` from
    :class:`~napari_wfss._qt.retrain_run.RetrainRunMixin`.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.current: str | None = None
        self._loaded: np.ndarray | None = None  # the label map as shown, to detect edits
        self._init_proposal_run()
        self._export_worker = None  # the running export worker (kept referenced while it runs)
        self.new_model: str | None = None  # the folder of the last retrained model
        self._updating = False
        self.last_export = None
        self.unreadable: dict[str, str] = {}  # image -> why it cannot be read (marked in the list)
        self._build_ui()
        bind_viewer_keys(self)
        self._refresh_enabled()

    # ================================================================ UI
    def _build_ui(self) -> None:
        # everything in a scroll area: the dock fits a 1366 x 768 screen and scrolls when napari is smaller
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area)
        layout = QVBoxLayout(content)

        row = QHBoxLayout()
        self.open_button = QPushButton("Open folder…")
        self.open_button.clicked.connect(lambda: self.open_folder())
        self.folder_label = QLabel("no folder open")
        self.folder_label.setWordWrap(True)
        row.addWidget(self.open_button)
        row.addWidget(self.folder_label, 1)
        layout.addLayout(row)

        box = QGroupBox("Images")
        inner = QVBoxLayout(box)
        self.image_table = QTableWidget(0, 3)
        self.image_table.setHorizontalHeaderLabels(["Image", "Status", "Tags"])
        self.image_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.image_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.image_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.image_table.verticalHeader().setVisible(False)
        self.image_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.image_table.currentCellChanged.connect(self._on_image_row_changed)
        self.image_table.setMinimumHeight(180)
        self.counts_label = QLabel("")
        inner.addWidget(self.image_table)
        inner.addWidget(self.counts_label)
        layout.addWidget(box, 2)

        box = QGroupBox("Classes (tick = tag the current image; keys 1-9, Alt+1-9 on any layer)")
        inner = QVBoxLayout(box)
        self.class_table = QTableWidget(0, 3)
        self.class_table.setHorizontalHeaderLabels(["Tag", "Class", "Colour"])
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.class_table.itemChanged.connect(self._on_class_item_changed)
        self.class_table.cellClicked.connect(self._on_class_cell_clicked)
        self.class_table.setMinimumHeight(120)
        inner.addWidget(self.class_table)
        row = QHBoxLayout()
        self.new_class_edit = QLineEdit()
        self.new_class_edit.setPlaceholderText("new class name, e.g. coin")
        self.new_class_edit.returnPressed.connect(lambda: self.add_class(self.new_class_edit.text()))
        self.add_class_button = QPushButton("Add")
        self.add_class_button.clicked.connect(lambda: self.add_class(self.new_class_edit.text()))
        row.addWidget(self.new_class_edit, 1)
        row.addWidget(self.add_class_button)
        inner.addLayout(row)
        row = QHBoxLayout()
        self.import_classes_button = QPushButton("Import classes…")
        self.import_classes_button.clicked.connect(lambda: self.import_classes_csv())
        self.export_classes_button = QPushButton("Export classes…")
        self.export_classes_button.clicked.connect(lambda: self.export_classes_csv())
        self.import_tags_button = QPushButton("Import tags…")
        self.import_tags_button.clicked.connect(lambda: self.import_tags_csv())
        for b in (self.import_classes_button, self.export_classes_button, self.import_tags_button):
            row.addWidget(b)
        inner.addLayout(row)
        self.no_class_check = QCheckBox("None of these classes here (0)")
        self.no_class_check.setToolTip("a negative tag: the image is never proposed, teaches every class what it "
                                       "is not, and is exported with an all-background mask")
        self.no_class_check.clicked.connect(lambda checked: self.set_no_class(checked))
        inner.addWidget(self.no_class_check)
        layout.addWidget(box, 1)

        box = QGroupBox("Propose")
        inner = QVBoxLayout(box)
        form = QFormLayout()
        self.model_edit = QLineEdit("default")
        self.model_edit.setToolTip("'default' (the shipped model), a checkpoint path, local-dir:/folder, "
                                   "or preset:NAME (random heads, to try the pipeline)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.shots_spin = QSpinBox()
        self.shots_spin.setRange(1, 50)
        self.shots_spin.setValue(5)
        self.shots_spin.setToolTip("at most this many tagged images per class are used as supports")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(MODELS_THRESHOLD, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(MODELS_THRESHOLD)
        # the minimum, one step below 0, shows "model's": the model's decision rule (its threshold, where the
        # model's JSON declares it); 0 and up mean what `wfss label --threshold` means (napari_wfss.options)
        self.model_edit.editingFinished.connect(self._show_model_threshold)
        self._show_model_threshold()
        self.threshold_spin.setToolTip("background where no class reaches this foreground score; higher: "
                                       "smaller, surer masks; 0: no background ('model's': the model's own "
                                       "threshold)")
        self.snap_check = QCheckBox("Snap to edges")
        self.snap_check.setChecked(True)
        self.snap_check.setToolTip("pull each mask to the image's colour edges (GrabCut), as the model's rule "
                                   "does; turn off where colour edges do not follow the objects")
        form.addRow("Model", self.model_edit)
        form.addRow("Device", self.device_combo)
        form.addRow("Shots", self.shots_spin)
        form.addRow("Threshold", self.threshold_spin)
        self.refine_check = QCheckBox("Refine tagged supports")
        self.refine_check.setToolTip("refine each tagged image's prior like a mask (trim, snap) before it serves "
                                     "as a support: helps objects of one appearance (animals, cells), can cut "
                                     "parts off objects made of unlike parts (signs, buildings); off: the "
                                     "model's rule")
        self.prior_combo = QComboBox()
        self.prior_combo.addItems([MODELS_PRIOR, *TAG_PRIORS])
        self.prior_combo.setToolTip("how a class is found from its tags: the model's own prior (the default model: "
                                    "coseg-objects, which finds objects among clutter), or coseg-ratio, which maps "
                                    "every class as a region: safer for surfaces such as sky, water or foliage")
        form.addRow("Tag prior", self.prior_combo)
        form.addRow("", self.snap_check)
        form.addRow("", self.refine_check)
        inner.addLayout(form)
        row = QHBoxLayout()
        self.propose_button = QPushButton("Propose untagged images")
        self.propose_button.clicked.connect(self.propose)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.propose_button, 1)
        row.addWidget(self.cancel_button)
        inner.addLayout(row)
        self.redo_check = QCheckBox("Redo proposals of other models")
        self.redo_check.setToolTip("Propose also replaces the unreviewed proposals made by another model than the "
                                   "Model field's (edited and accepted masks are never replaced); ticked after a "
                                   "retraining")
        inner.addWidget(self.redo_check)
        row = QHBoxLayout()
        self.retrain_button = QPushButton("Retrain on accepted masks")
        self.retrain_button.setToolTip("fine-tune the Model field's model on the accepted and edited masks (in the "
                                       "background, minutes on a CPU); the new model is kept in the project and put "
                                       "in the Model field")
        self.retrain_button.clicked.connect(self.retrain)
        self.retrain_steps_spin = QSpinBox()
        self.retrain_steps_spin.setRange(1, 5000)
        self.retrain_steps_spin.setValue(200)
        self.retrain_steps_spin.setPrefix("at most ")
        self.retrain_steps_spin.setSuffix(" steps")
        self.retrain_steps_spin.setToolTip("training steps of a retraining (it stops earlier when held-out accepted "
                                           "images stop improving)")
        row.addWidget(self.retrain_button, 1)
        row.addWidget(self.retrain_steps_spin)
        inner.addLayout(row)
        row = QHBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m")
        self.progress_bar.setVisible(False)
        self.run_label = QLabel("")
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.run_label)
        inner.addLayout(row)
        self.skipped_list = QListWidget()
        self.skipped_list.setToolTip("images the last run left without a proposal, with the reason")
        self.skipped_list.setMaximumHeight(80)
        self.skipped_list.setVisible(False)
        inner.addWidget(self.skipped_list)
        layout.addWidget(box)

        box = QGroupBox("Review")
        inner = QVBoxLayout(box)
        row = QHBoxLayout()
        self.previous_button = QPushButton("◀ Prev (⇧N)")
        self.previous_button.clicked.connect(self.previous_image)
        self.reject_button = QPushButton("Reject (X)")
        self.reject_button.clicked.connect(self.reject)
        self.accept_button = QPushButton("Accept (C)")
        self.accept_button.clicked.connect(self.accept)
        self.next_button = QPushButton("Next (N) ▶")
        self.next_button.clicked.connect(self.next_image)
        for b in (self.previous_button, self.reject_button, self.accept_button, self.next_button):
            row.addWidget(b)
        inner.addLayout(row)
        row = QHBoxLayout()
        self.export_button = QPushButton("Export dataset…")
        self.export_button.clicked.connect(lambda: self.export())
        self.export_unreviewed_check = QCheckBox("include unreviewed proposals")
        self.export_unreviewed_check.setToolTip("off: only accepted and edited masks are exported (coco.json marks "
                                                "each image's review status either way)")
        row.addWidget(self.export_button)
        row.addWidget(self.export_unreviewed_check)
        inner.addLayout(row)
        layout.addWidget(box)

    def _refresh_enabled(self) -> None:
        has_session = self.session is not None
        has_image = self.current is not None
        for w in (self.add_class_button, self.new_class_edit, self.import_classes_button,
                  self.export_classes_button, self.import_tags_button, self.export_button):
            w.setEnabled(has_session)
        for w in (self.accept_button, self.reject_button, self.next_button, self.previous_button):
            w.setEnabled(has_image)
        self.propose_button.setEnabled(has_session and not self.running)
        self.retrain_button.setEnabled(has_session and not self.running)
        self.cancel_button.setEnabled(self.running)
        self.open_button.setEnabled(not self.running)

    def _report(self, exc: Exception) -> None:
        """Show a user-fixable error as a napari notification (never a traceback dialog)."""
        from napari.utils.notifications import show_error

        show_error(str(exc))

    # ================================================================ session
    def open_folder(self, path: str | Path | None = None) -> None:
        """Open (or resume) the project of an image folder; a project folder may be given too."""
        if self.running:
            self._report(UserError("a proposal run is in progress; cancel it before opening another folder"))
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open an image folder")
            if not path:
                return
        self._capture_edits()
        folder = Path(path)
        project = folder if (folder / PROJECT_FILE).is_file() else folder / DEFAULT_PROJECT_DIRNAME
        if self.session is not None and self.session.project_dir == project.resolve():
            self.close_session()  # reopening: release the project first (one writer per project)
        try:
            if (folder / PROJECT_FILE).is_file():
                session = Session.open(folder)
            else:
                session = Session.open_or_create(folder)
        except DamagedProjectError as exc:
            session = self._offer_backup(exc)
            if session is None:
                return
        except UserError as exc:
            self._report(exc)
            return
        if self.session is not None:
            self.close_session()
        from napari.utils.notifications import show_warning

        for warning in session.warnings:
            show_warning(warning)
        self.session = session
        self.current = None
        self._loaded = None
        folder = session.image_folder
        self.folder_label.setText(f"…/{folder.parent.name}/{folder.name}" if folder.parent.name else str(folder))
        self.folder_label.setToolTip(f"images: {folder}\nproject: {session.project_dir}")
        self._check_images()
        self._fill_image_table()
        self._fill_class_table()
        readable = [i for i in session.images if i not in self.unreadable] or session.images
        todo = [i for i in readable if session.status(i) != ACCEPTED]
        self.show_image((todo or readable)[0])

    def _offer_backup(self, exc: DamagedProjectError) -> Session | None:
        """Offer the damaged project's previous version (one save earlier); the session opened from it, or
        None (reported) when there is none, the user declines, or it cannot be opened either."""
        from napari.utils.notifications import show_info

        if exc.backup is None or QMessageBox.question(
                self, "Damaged project",
                f"{exc}\n\nRestore the previous version of the project now? The damaged file is kept beside it.",
                QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes) != QMessageBox.Yes:
            self._report(exc)
            return None
        try:
            kept = restore_backup(exc.project)
            session = Session.open(exc.project)
        except UserError as again:
            self._report(again)
            return None
        show_info(f"project restored from its previous version; the damaged file is kept as {kept}")
        return session

    def close_session(self) -> None:
        """Capture pending edits, release the project for other windows and forget the session (its files
        stay on disk for resuming)."""
        if self.running:
            self.cancel()
        self._capture_edits()
        if self.session is not None and not (self.running and self.session is self._run_session):
            self.session.close()  # else released when the cancelled run's last proposals are stored
        remove_layers(self.viewer)
        self.session, self.current, self._loaded = None, None, None
        self.image_table.setRowCount(0)
        self.class_table.setRowCount(0)
        self.folder_label.setText("no folder open")
        self.counts_label.setText("")
        self._refresh_enabled()

    # ================================================================ image table
    def _check_images(self) -> None:
        """Mark the images whose header cannot be read, or that are over the size limit (no pixel is decoded)."""
        self.unreadable = {}
        limit = self.session.max_pixels
        for rel in self.session.images:
            path = self.session.image_path(rel)
            try:
                h, w = image_size(path)
                refuse_large(path, w, h, limit)
            except ImageReadError as exc:  # too large included
                self.unreadable[rel] = str(exc)

    def mark_unreadable(self, rel: str, reason: str) -> None:
        """Show ``rel`` as unreadable in the list, with ``reason`` in its tooltip (e.g. after a failed read)."""
        self.unreadable[rel] = reason
        if self.session is not None and rel in self.session.images:
            self._update_image_row(rel)
            self._update_counts()

    def _fill_image_table(self) -> None:
        self._updating = True
        try:
            images = self.session.images
            self.image_table.setRowCount(len(images))
            for row, rel in enumerate(images):
                item = QTableWidgetItem(rel)
                item.setData(Qt.ItemDataRole.UserRole, rel)
                self.image_table.setItem(row, 0, item)
                self.image_table.setItem(row, 1, QTableWidgetItem())
                self.image_table.setItem(row, 2, QTableWidgetItem())
                self._update_image_row(rel, row)
        finally:
            self._updating = False
        self._update_counts()

    def _row_of(self, rel: str) -> int:
        return self.session.images.index(rel)

    def _update_image_row(self, rel: str, row: int | None = None) -> None:
        row = self._row_of(rel) if row is None else row
        status = self.session.status(rel)
        item = self.image_table.item(row, 1)
        reason = self.unreadable.get(rel)
        item.setText(UNREADABLE if reason else status)
        item.setForeground(QColor(UNREADABLE_COLOR if reason else STATUS_COLORS[status]))
        for column in (0, 1):
            self.image_table.item(row, column).setToolTip(reason or "")
        tags = self.session.tags_of(rel)
        self.image_table.item(row, 2).setText("none (negative tag)" if self.session.info(rel).no_class
                                              else ", ".join(tags))

    def _update_counts(self) -> None:
        counts = {k: v for k, v in self.session.counts().items() if v}
        text = f"{len(self.session)} images: " + ", ".join(f"{v} {k}" for k, v in counts.items())
        self.counts_label.setText(text + (f"; {len(self.unreadable)} {UNREADABLE}" if self.unreadable else ""))

    def _on_image_row_changed(self, row: int, *_: int) -> None:
        if self._updating or row < 0 or self.session is None:
            return
        rel = self.image_table.item(row, 0).data(Qt.ItemDataRole.UserRole)
        if rel != self.current:
            self.show_image(rel)

    # ================================================================ class table
    def _fill_class_table(self) -> None:
        self._updating = True
        try:
            classes = list(self.session.classes)
            tags = set(self.session.tags_of(self.current)) if self.current else set()
            self.class_table.setRowCount(len(classes))
            for row, info in enumerate(classes):
                key = TAG_KEYS[row] if row < len(TAG_KEYS) else ""
                tag = QTableWidgetItem(key)
                tag.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
                tag.setCheckState(Qt.CheckState.Checked if info.name in tags else Qt.CheckState.Unchecked)
                tag.setToolTip(f"tag the current image with {info.name!r}" + (f" (key {key})" if key else ""))
                name = QTableWidgetItem(info.name)
                name.setData(Qt.ItemDataRole.UserRole, info.name)
                name.setToolTip("double-click to rename")
                color = QTableWidgetItem(info.hex_color)
                color.setIcon(_swatch(info.color))
                color.setFlags(Qt.ItemFlag.ItemIsEnabled)
                color.setToolTip("click to change the colour")
                for col, item in enumerate((tag, name, color)):
                    self.class_table.setItem(row, col, item)
            self.no_class_check.setChecked(bool(self.current) and self.session.info(self.current).no_class)
        finally:
            self._updating = False

    def _on_class_item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating or self.session is None:
            return
        row = item.row()
        old_name = self.class_table.item(row, 1).data(Qt.ItemDataRole.UserRole)
        if item.column() == 0:
            self.toggle_tag(old_name, item.checkState() == Qt.CheckState.Checked)
        elif item.column() == 1:
            self.rename_class(old_name, item.text())

    def _on_class_cell_clicked(self, row: int, column: int) -> None:
        if column != 2 or self.session is None:
            return
        name = self.class_table.item(row, 1).data(Qt.ItemDataRole.UserRole)
        color = QColorDialog.getColor(QColor(self.session.classes.get(name).hex_color), self, f"Colour of {name}")
        if color.isValid():
            self.set_class_color(name, color.name())

    def _classes_changed(self) -> None:
        self._fill_class_table()
        layer = self._layer("labels")
        if layer is not None:
            layer.colormap = label_colormap(self.session.classes)
        if self.current is not None:
            self._update_image_row(self.current)

    def add_class(self, name: str, color: str | None = None) -> None:
        """Add a class to the table (its id is the lowest free one)."""
        try:
            self.session.add_class(name, color=color)
        except UserError as exc:
            self._report(exc)
            return
        self.new_class_edit.clear()
        self._classes_changed()

    def rename_class(self, name: str, new_name: str) -> None:
        """Rename a class; tags and masks keep it (they store its id)."""
        try:
            self.session.rename_class(name, new_name)
        except UserError as exc:
            self._report(exc)
        self._classes_changed()
        self._fill_image_table()

    def set_class_color(self, name: str, color: str) -> None:
        """Recolour a class (``#rrggbb``)."""
        try:
            self.session.set_class_color(name, color)
        except UserError as exc:
            self._report(exc)
        self._classes_changed()

    def import_classes_csv(self, path: str | Path | None = None) -> None:
        """Merge an ``id,name,color`` CSV into the class table."""
        path = path or QFileDialog.getOpenFileName(self, "Import classes", filter="CSV (*.csv)")[0]
        if not path:
            return
        try:
            self.session.import_classes_csv(path)
        except UserError as exc:
            self._report(exc)
        self._classes_changed()

    def export_classes_csv(self, path: str | Path | None = None) -> None:
        """Write the class table as an ``id,name,color`` CSV."""
        path = path or QFileDialog.getSaveFileName(self, "Export classes", "classes.csv", "CSV (*.csv)")[0]
        if path:
            self.session.export_classes_csv(path)

    def import_tags_csv(self, path: str | Path | None = None) -> None:
        """Apply an ``image,class`` CSV; rows that cannot be applied are listed in a warning."""
        from napari.utils.notifications import show_info, show_warning

        path = path or QFileDialog.getOpenFileName(self, "Import tags", filter="CSV (*.csv)")[0]
        if not path:
            return
        try:
            report = self.session.import_tags_csv(path)
        except UserError as exc:
            self._report(exc)
            return
        message = f"imported {report.tags_added} tag(s) on {len(report.images_tagged)} image(s)"
        if report.new_classes:
            message += f"; new classes: {', '.join(report.new_classes)}"
        if report.ok:
            show_info(message)
        else:
            show_warning(message + "; skipped rows:\n" + "\n".join(report.problems))
        self._classes_changed()
        self._fill_image_table()

    # ================================================================ tags
    def toggle_tag(self, class_name: str, on: bool | None = None) -> None:
        """Tag (``on=True``), untag (``False``) or flip (``None``) ``class_name`` on the current image."""
        if self.current is None:
            return
        try:
            if on is None:
                on = class_name not in self.session.tags_of(self.current)
            (self.session.tag if on else self.session.untag)(self.current, class_name)
        except UserError as exc:
            self._report(exc)
        self._fill_class_table()
        self._update_image_row(self.current)
        self._update_counts()

    def set_no_class(self, on: bool | None = None) -> None:
        """Give the current image a negative tag (``on=True``: it holds none of the classes), remove it
        (``False``) or flip it (``None``); refused with a message while the image has class tags."""
        if self.current is None:
            return
        try:
            on = not self.session.info(self.current).no_class if on is None else on
            self.session.set_no_class(self.current, on)
        except UserError as exc:
            self._report(exc)
        self._show_labels()
        self._fill_class_table()
        self._update_image_row(self.current)
        self._update_counts()

    def toggle_tag_index(self, index: int) -> None:
        """Flip the tag of the class in row ``index`` (0-based) of the class table, if there is one."""
        if self.session is not None and index < len(self.session.classes):
            self.toggle_tag(self.session.classes.names[index])

    # ================================================================ layers
    def _layer(self, role: str):
        return find_layer(self.viewer, role)

    def show_image(self, rel: str) -> None:
        """Capture edits of the image shown, then show ``rel`` and its label map. An image that cannot be
        read is reported (a notification, no traceback) and the image shown stays."""
        if self.session is None:
            return
        self._capture_edits()
        try:  # deep images at their own depth: the model reads its own 8-bit copy
            image = read_display_image(self.session.image_path(rel), self.session.max_pixels)
        except ImageReadError as exc:
            self.mark_unreadable(rel, str(exc))
            self._report(exc)
            return
        self.current = rel
        layer, shape_changed = show_image_layer(self.viewer, image, rel)
        bind_layer_keys(self, layer, with_tags=True)
        self._show_labels()
        if shape_changed:  # after both layers have the new shape, so the view fits the image
            self.viewer.reset_view()
        self._select_row(rel)
        self._fill_class_table()
        self._refresh_enabled()

    def _show_labels(self) -> None:
        """Show the current image's label map (or an empty one to paint) in the Labels layer (selected if
        there is a stored map, else the image layer is)."""
        rel = self.current
        stored = self.session.current_label_map(rel)
        shape = self._layer("image").data.shape[:2]
        data = stored if stored is not None else np.zeros(shape, np.uint8)
        layer = show_labels_layer(self.viewer, data, f"labels: {rel}", self.session.classes)
        bind_layer_keys(self, layer, with_tags=False)
        self._loaded = data.copy()
        self.viewer.layers.selection.active = layer if stored is not None else self._layer("image")

    def _select_row(self, rel: str) -> None:
        self._updating = True
        try:
            self.image_table.selectRow(self._row_of(rel))
        finally:
            self._updating = False

    def _capture_edits(self) -> None:
        """If the Labels layer differs from what was loaded, store it as the user's edit."""
        layer = self._layer("labels")
        if self.session is None or self.current is None or layer is None or self._loaded is None:
            return
        data = np.asarray(layer.data)
        if data.shape == self._loaded.shape and np.array_equal(data, self._loaded):
            return
        try:
            self.session.mark_edited(self.current, data)
        except UserError as exc:
            self._report(exc)
            return
        self._loaded = data.copy()
        self._update_image_row(self.current)
        self._update_counts()

    def _unedited(self) -> bool:
        layer = self._layer("labels")
        return layer is None or self._loaded is None or np.array_equal(np.asarray(layer.data), self._loaded)

    # ================================================================ review
    def _step(self, delta: int) -> None:
        if self.current is None:
            return
        images = self.session.images
        i = images.index(self.current) + delta
        if 0 <= i < len(images):
            self.show_image(images[i])

    def next_image(self) -> None:
        """Show the next image (edits of this one are kept)."""
        self._step(+1)

    def previous_image(self) -> None:
        """Show the previous image (edits of this one are kept)."""
        self._step(-1)

    def accept(self) -> None:
        """Accept the current label map as the image's mask (saved at once), then go to the next image."""
        layer = self._layer("labels")
        if self.current is None or layer is None:
            return
        try:
            self.session.accept(self.current, label_map=np.asarray(layer.data))
        except UserError as exc:
            self._report(exc)
            return
        self._loaded = np.asarray(layer.data).copy()
        self._after_review()

    def reject(self) -> None:
        """Reject the current proposal (it is deleted; a later run may propose again), then go on."""
        if self.current is None:
            return
        try:
            self.session.reject(self.current)
        except UserError as exc:
            self._report(exc)
            return
        self._loaded = None  # the discarded edit must not be captured again
        self._after_review()

    def _after_review(self) -> None:
        rel = self.current
        self._update_image_row(rel)
        self._update_counts()
        images = self.session.images
        if images.index(rel) + 1 < len(images):
            self.next_image()
        else:
            self._show_labels()

    # ================================================================ export
    def export(self, out_dir: str | Path | None = None) -> None:
        """Export the accepted and edited images (and the unreviewed proposals when *include unreviewed
        proposals* is ticked) as a dataset folder, off the UI thread."""
        from napari.qt.threading import create_worker

        from napari_wfss.export import export_session

        if self.session is None:
            return
        out_dir = out_dir or QFileDialog.getExistingDirectory(self, "Export to folder")
        if not out_dir:
            return
        self._capture_edits()
        statuses = (ACCEPTED, EDITED, PROPOSED) if self.export_unreviewed_check.isChecked() else (ACCEPTED, EDITED)
        worker = create_worker(export_session, self.session, out_dir, statuses=statuses, _ignore_errors=True)
        worker.returned.connect(self._on_exported)
        worker.errored.connect(self._report)
        self.export_button.setEnabled(False)
        worker.finished.connect(lambda: self.export_button.setEnabled(self.session is not None))
        self._export_worker = worker
        worker.start()

    def _on_exported(self, summary) -> None:
        from napari.utils.notifications import show_info

        self.last_export = summary
        show_info(f"exported {summary.count} image(s) to {summary.out_dir}")
