"""Names the library knows, as data at the bottom of the import graph (no torch, no hhn imports).

A config names its backbone and its tag prior; it checks those names here, so :mod:`hhn.config` needs
neither the torch modules that build them (:mod:`hhn.backbones`, :mod:`hhn.priors.catalog`) nor
anything that imports the config back.
"""

from __future__ import annotations

#: backbone name -> how its feature-map side follows from the input side (``ceil`` or ``floor`` of
#: size / stride); :data:`hhn.backbones.BACKBONES` builds exactly these names
BACKBONE_ROUNDING: dict[str, str] = {"resnet50": "ceil", "vgg16": "floor", "efficientnet_lite0": "ceil"}

#: every tag prior name :func:`hhn.priors.catalog.build_tag_prior` accepts
TAG_PRIORS: tuple[str, ...] = ("coseg", "coseg-ms", "coseg-ratio", "coseg-objects", "gradcam")

#: a model name or CLIP model name starting with this names a folder: ``local-dir:/path``
LOCAL_DIR_PREFIX = "local-dir:"
