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


def show_image_layer(viewer: napari.viewer.Viewer, image: np.ndarray, name: str) -> tuple[Any, bool]:
    """Show ``image`` in the image layer: ``(H, W, 3)`` colour or ``(H, W)`` grey at any dtype (deep images
    keep their depth; contrast limits from ``napari_wfss.images.display_range``). The layer is made on first
    use, and again when the image switches between colour and grey (a napari layer's ``rgb`` is fixed).
    Returns the layer and whether the image's shape changed (then reset the view once the Labels layer has
    the new shape too)."""
    from napari_wfss.images import display_range

    rgb = image.ndim == 3
    layer = find_layer(viewer, "image")
    if layer is not None and layer.rgb != rgb:  # a new layer (its keys are bound again by the widget)
        viewer.layers.remove(layer)
        layer = viewer.add_image(image, name=name, rgb=rgb, metadata={ROLE: "image"})
        viewer.layers.move(viewer.layers.index(layer), 0)  # under the Labels layer again
        shape_changed = True
    elif layer is None:
        layer = viewer.add_image(image, name=name, rgb=rgb, metadata={ROLE: "image"})
        shape_changed = True
    else:
        shape_changed = layer.data.shape != image.shape
        layer.data = image
        layer.name = name
    layer.contrast_limits = display_range(image)
    return layer, shape_changed


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
