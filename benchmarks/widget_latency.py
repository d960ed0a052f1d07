"""The napari widget's proposal latency on a folder: seconds from Propose to the first proposal shown.

Usage (``label_speed.py --widget`` runs it on its folder)::

    python benchmarks/widget_latency.py IMAGES_FOLDER TAGS.csv [--model default]

Opens a shown napari viewer (on a virtual display started here when ``DISPLAY`` is unset: Xvfb through
``pyvirtualdisplay``, which pytest-xvfb installs), docks the widget, opens the folder (its project is
created inside it, ``.wfss-project``), imports the tags, shows the first image to propose and clicks
Propose the way the button does (``WfssWidget.propose``: the model runs in the widget's child process).
Prints one JSON line: seconds until the first proposal reached the widget and was shown in its Labels
layer, seconds until the run finished, the images proposed and the seconds per image after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def measure(images: Path, tags: Path, model: str) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wfss._qt.widget import WfssWidget
    from napari_wfss.engine import ProposalResult, default_queries

    viewer = napari.Viewer(show=True)
    widget = WfssWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Few-shot labelling")
    widget.open_folder(images)
    widget.import_tags_csv(tags)
    assert widget.session is not None
    queries = default_queries(widget.session)
    widget.model_edit.setText(model)
    widget.device_combo.setCurrentText("cpu")
    widget.show_image(queries[0])
    shown: list[float] = []
    handle = widget._on_run_event

    def on_event(event) -> None:
        handle(event)  # the widget's own handling: list row, counts, the layer of the image on screen
        if isinstance(event, ProposalResult) and event.error is None:
            shown.append(time.perf_counter())

    widget._on_run_event = on_event  # the worker's signal is connected in propose(), after this
    app = QApplication.instance()
    start = time.perf_counter()
    widget.propose()
    while widget.running:
        app.processEvents()
        time.sleep(0.005)
    end = time.perf_counter()
    first_is_on_screen = widget.current == queries[0] and widget.session.proposal(queries[0]) is not None
    viewer.close()
    return {"benchmark": "widget_latency", "model": model, "images": len(shown), "queries": len(queries),
            "first_proposal_s": round(shown[0] - start, 2) if shown else None,
            "run_s": round(end - start, 2),
            "s_per_image_after_first": round((shown[-1] - shown[0]) / (len(shown) - 1), 3) if len(shown) > 1
            else None, "first_image_shown": first_is_on_screen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("tags", type=Path)
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
    try:
        print(json.dumps(measure(args.images.resolve(), args.tags.resolve(), args.model)))
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
