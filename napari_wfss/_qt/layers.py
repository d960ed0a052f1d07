"""The widget's two napari layers: the current image and its label map, coloured by the class table.

Both are recognised by ``metadata[ROLE]`` (``"image"`` / ``"labels"``) and reused from image to image
(making a layer costs about a second under software OpenGL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_wfss.classes import ClassTable

if TYPE_CHECKING:
    import napari

ROLE = "wfss_role"
ROLES = ("image", "labels")


def label_colormap(classes: ClassTable):
    """A napari ``DirectLabelColormap``: class colours at their ids, 0 transparent, 255 (ignore) grey."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for class_id, rgb in classes.colors().items():
        if class_id:
            colors[class_id] = (*(c / 255.0 for c in rgb), 1.0)
    return DirectLabelColormap(color_dict=colors)


def find_layer(viewer: napari.viewer.Viewer, role: str) -> Any:
    """The viewer's layer with ``metadata[ROLE] == role`` (``"image"`` or ``"labels"``), or ``None``."""
    return next((lyr for lyr in viewer.layers if lyr.metadata.get(ROLE) == role), None)


def remove_layers(viewer: napari.viewer.Viewer) -> None:
    """Remove the widget's layers from the viewer."""
    for role in reversed(ROLES):
        layer = find_layer(viewer, role)
        if layer is not None:
            viewer.layers.remove(layer)


def show_image_layer(viewer: napari.viewer.Viewer, image: np.ndarray, name: str) -> Any:
    """Show ``image`` (RGB) in the image layer, made on first use; the view is reset when the shape changes."""
    layer = find_layer(viewer, "image")
    if layer is None:
        viewer.add_image(image, name=name, rgb=True, metadata={ROLE: "image"})
        viewer.reset_view()
    else:
        shape_changed = layer.data.shape != image.shape
        layer.data = image
        layer.name = name
        if shape_changed:
            viewer.reset_view()
    return find_layer(viewer, "image")


def show_labels_layer(viewer: napari.viewer.Viewer, data: np.ndarray, name: str, classes: ClassTable) -> Any:
    """Show a copy of the label map ``data`` in the Labels layer, made on first use, coloured by ``classes``.

    A reused layer keeps its mode and has its undo history cleared so napari's undo never reaches back
    into another image. The selected label is the first class present in ``data`` (else the first class).
    """
    layer = find_layer(viewer, "labels")
    if layer is None:
        layer = viewer.add_labels(data.copy(), name=name, metadata={ROLE: "labels"}, opacity=0.6)
    else:
        mode = layer.mode
        layer.data = data.copy()
        layer.name = name
        layer.editable = False  # public way to clear the undo history (napari resets it here)
        layer.editable = True
        layer.mode = mode
    layer.colormap = label_colormap(classes)
    if len(classes):
        present = [c for c in classes.ids if c in np.unique(data)]
        layer.selected_label = (present or classes.ids)[0]
    return layer
