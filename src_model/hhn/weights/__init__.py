"""Pretrained weights the library uses, one job per module.

- ``locations``: where pretrained files are looked for (folders, ``$WFSS_WEIGHTS_DIR``, offline mode).
- ``files``: the ImageNet backbone files: finding, checking, downloading and loading them, clear errors.
- ``clip``: the open_clip (CLIP) weights of the text and Grad-CAM priors: resolving and loading them.
- ``cli``: ``wfss weights``, every file as a table.
"""
