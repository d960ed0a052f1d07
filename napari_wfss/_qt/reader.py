"""napari reader: opening a folder of images (File > Open Folder, drag and drop) opens it as a project.

The reader docks the few-shot labelling widget (or reuses the docked one) and opens the folder in
it; the widget then shows the images. It returns napari's "nothing to add" sentinel because the
widget manages its own layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hhn.errors import UserError
from napari_wfss.images import is_image_file
from napari_wfss.session import PROJECT_FILE

PLUGIN_NAME = "napari-wfss"
WIDGET_NAME = "Few-shot labelling"


def _has_images(folder: Path) -> bool:
    """True if ``folder`` directly holds at least one image file (hidden files ignored)."""
    with os.scandir(folder) as entries:
        return any(e.is_file() and not e.name.startswith(".") and is_image_file(e.name) for e in entries)


def get_reader(path: str | list[str]) -> Callable[[str], list[tuple]] | None:
    """Return :func:`open_folder_in_widget` for a directory that holds images or is a project folder
    (``project.json``), else ``None``."""
    if not isinstance(path, str | os.PathLike):
        return None
    folder = Path(path)
    if not folder.is_dir() or not ((folder / PROJECT_FILE).is_file() or _has_images(folder)):
        return None
    return open_folder_in_widget


def dock_widget(viewer):
    """The viewer's few-shot labelling widget, docked now if it was not yet."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    return widget


def open_folder_in_widget(path: str) -> list[tuple]:
    """Open ``path`` in the current viewer's widget; returns ``[(None,)]`` (no layers for napari to add)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        raise UserError(f"open {path} from a napari window (File > Open Folder); there is no viewer to show it in")
    dock_widget(viewer).open_folder(path)
    return [(None,)]
