"""The napari reader (directories of images) and writer (Labels -> palette PNG), without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hhn.errors import UserError
from napari_wfss._qt.reader import get_reader
from napari_wfss._qt.writer import write_labels_png
from napari_wfss.classes import ClassTable


def _labels_layer(data, classes=None):
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    layer = Labels(data)
    if classes is not None:
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colors.update({cid: (*(np.array(rgb) / 255.0), 1.0) for cid, rgb in classes.colors().items() if cid})
        layer.colormap = DirectLabelColormap(color_dict=colors)
    return layer


def test_writer_keeps_class_ids_and_class_colours(tmp_path):
    classes = ClassTable([{"name": "coin", "color": "#ff8000"}, {"name": "cat", "color": "#00c0ff"}])
    data = np.zeros((6, 7), np.uint8)
    data[1:3, 1:4] = 1
    data[4:, 5:] = 2
    data[0, 6] = 255
    layer = _labels_layer(data, classes)
    written = write_labels_png(str(tmp_path / "mask"), *layer.as_layer_data_tuple()[:2])
    assert written == [str(tmp_path / "mask.png")]
    with Image.open(written[0]) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), data)
        pal = np.array(im.getpalette()[:768]).reshape(256, 3)
    assert tuple(pal[1]) == (255, 128, 0) and tuple(pal[2]) == (0, 192, 255)
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[255]) == (128, 128, 128)


def test_writer_found_through_the_manifest_with_the_default_colormap(tmp_path):
    import npe2

    npe2.PluginManager.instance().discover()
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    layer = _labels_layer(data)
    written = npe2.write(str(tmp_path / "plain.png"), [layer], plugin_name="napari-wfss")
    assert [str(p) for p in written] == [str(tmp_path / "plain.png")]
    with Image.open(tmp_path / "plain.png") as im:
        np.testing.assert_array_equal(np.asarray(im), data)
        pal = np.array(im.getpalette()[:768]).reshape(256, 3)
    assert pal[1:12].sum(axis=1).min() > 0  # every used label id is visible, not black


@pytest.mark.parametrize("data", [np.zeros((2, 3, 4), np.uint8), np.full((3, 3), 300, np.int32)])
def test_writer_refuses_what_a_palette_png_cannot_hold(tmp_path, data):
    with pytest.raises(UserError):
        write_labels_png(str(tmp_path / "x.png"), data, {})
    assert not (tmp_path / "x.png").exists()


def test_reader_accepts_only_folders_with_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    (tmp_path / "pics").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "pics" / "a.png")
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "notes")) is None
    assert get_reader(str(tmp_path / "pics" / "a.png")) is None  # single files are napari's business
    assert get_reader([str(tmp_path / "pics")]) is None
    assert callable(get_reader(str(tmp_path / "pics")))
    (tmp_path / "notes" / "project.json").write_text("{}")
    assert callable(get_reader(str(tmp_path / "notes")))  # a project folder


def test_the_napari_layer_imports_without_torch():
    import json
    import subprocess
    import sys

    code = ("import json, sys; import napari_wfss._qt.widget, napari_wfss._qt.reader, napari_wfss._qt.writer, "
            "napari_wfss._qt.sample_data, napari_wfss._engine_process, napari_wfss.sample; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'open_clip', 'triton', 'hhn'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # hhn.device_names and hhn.registry: the device, precision and tag prior names the options check, torch-free
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["hhn", "hhn.device_names", "hhn.errors",
                                                                "hhn.registry"]
