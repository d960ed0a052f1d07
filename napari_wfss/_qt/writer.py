"""napari writer: a 2-D Labels layer -> a palette PNG whose pixel values are the label ids.

The palette is the layer's own colormap (for a proposal layer: the class colours), so the file
looks as it does in napari in any image viewer, and its values stay the class ids for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_wfss.images import write_label_png


def palette_of(colormap: Any) -> bytes:
    """768-byte palette (256 RGB triples) of a napari label colormap; transparent ids become black."""
    if colormap is None:
        from napari.utils.colormaps import label_colormap

        colormap = label_colormap()
    rgba = np.asarray(colormap.map(np.arange(256)), dtype=np.float32)  # (256, 4) in [0, 1]
    rgb = np.rint(rgba[:, :3] * rgba[:, 3:4] * 255.0)
    return np.clip(rgb, 0, 255).astype(np.uint8).tobytes()


def write_labels_png(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: save ``data`` (``(H, W)`` ids 0..255) as a palette PNG at ``path``.

    ``.png`` is appended when ``path`` has no suffix. Raises a ``UserError`` (``LabelMapError``) for
    data that is not 2-D or has ids outside 0..255. Returns the written path.
    """
    out = Path(path)
    if not out.suffix:
        out = out.with_suffix(".png")
    write_label_png(out, np.asarray(data), palette_of(attributes.get("colormap")))
    return [str(out)]
