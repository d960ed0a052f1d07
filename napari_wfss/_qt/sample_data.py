"""napari sample data: write the sample folder and open it, tagged as in its tags.csv, in the widget.

The folder lives in the user's cache (``$XDG_CACHE_HOME/napari-wfss/sample``, default ``~/.cache``),
so loading the sample again resumes the same project.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from napari_wfss.images import list_images, read_image
from napari_wfss.sample import make_sample_folder


def sample_dir() -> Path:
    """Where the sample folder is written."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "napari-wfss" / "sample"


def _open_in_widget(widget, folder: Path) -> None:
    widget.open_folder(folder / "images")
    if widget.session is not None and not widget.session.images_tagged():
        widget.import_tags_csv(folder / "tags.csv")


def make_sample_data() -> list[tuple]:
    """Return the first sample image as an Image layer and, in a viewer, open the folder in the widget.

    The widget adopts the returned layer as its image layer once napari has added it.
    """
    import napari
    from qtpy.QtCore import QTimer

    from napari_wfss._qt.layers import ROLE
    from napari_wfss._qt.reader import dock_widget

    folder = make_sample_folder(sample_dir())
    first = list_images(folder / "images")[0]
    viewer = napari.current_viewer()
    if viewer is not None:
        QTimer.singleShot(0, partial(_open_in_widget, dock_widget(viewer), folder))
    return [(read_image(first), {"name": first.name, "rgb": True, "metadata": {ROLE: "image"}}, "image")]
