"""napari-wfss: tag a few images with class names, get editable masks for a whole folder.

The UI-free core (session, engine, export, CLI) lives here beside the thin napari/Qt layer
(:mod:`napari_wfss._qt`: widget, reader, writer, sample data); the model is the ``hhn`` library.
Nothing heavy is imported at package import time.
"""

__version__ = "0.1.0"
