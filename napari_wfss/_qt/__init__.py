"""The napari/Qt layer of the plugin: the dock widget, the reader, the writer and the sample data.

Everything that imports napari or Qt lives here; the UI-free core (``napari_wfss.session``,
``engine``, ``export``, ``batch``, ``cli``, ``_engine_process``, ...) never imports this package.

- :mod:`.widget`: :class:`~napari_wfss._qt.widget.WfssWidget`, its layout and public actions
- :mod:`.proposal_run`: a proposal run in a child process, its events, progress and Cancel
- :mod:`.layers`: the widget's Image and Labels layers and the class colormap
- :mod:`.keys`: the widget's key bindings
- :mod:`.reader`, :mod:`.writer`, :mod:`.sample_data`: the npe2 reader, writer and sample data
"""
