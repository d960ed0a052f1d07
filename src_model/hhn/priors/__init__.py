"""Tag priors: where a class probably is in an image, learnt from image-level tags.

- ``base``: the interface (``TaggedImage``, ``TagPrior.fit`` -> ``ClassPrior``; user masks replace the prior).
- ``coseg``: the CLIP-free co-segmentation prior on frozen EfficientNet-Lite0 features (offline default).
- ``gradcam``: CLIP RN50 Grad-CAM of "a photo of a {class}" (needs CLIP weights).
- ``features``: the dense backbone descriptors the co-segmentation prior and the MAP baseline share.
- ``ensemble``: ``MeanPrior``, the mean of several priors' maps (e.g. one per input size).
- ``objectness``: the thing-vs-stuff head the ``coseg-objects`` prior reads (shipped, refittable).
- ``catalog``: the named priors (``coseg``, ``coseg-ms``, ``coseg-ratio``, ``coseg-objects``, ``gradcam``) and
  ``build_tag_prior``, which the engine, ``wfss eval`` and ``wfss train`` build their prior with.
"""

from hhn.priors.base import ClassPrior, TaggedImage, TagPrior, as_tagged

__all__ = ["ClassPrior", "TagPrior", "TaggedImage", "as_tagged"]
