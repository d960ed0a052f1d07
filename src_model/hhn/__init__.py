"""HHN (Homologous-Heterogeneous Network) for weakly-supervised few-shot segmentation.

The model library behind napari-wfss. No napari and no Qt here. Heavy submodules (torch) load on
first use, so ``import hhn`` is cheap; the public names are:

- ``HHNConfig``, ``create_model`` (factory: preset name, checkpoint path or ``local-dir:``)
- ``HHN`` (the network), ``Predictor`` and ``SupportSet`` (encode supports once, predict many)
- ``select_device``
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "HHNConfig": "hhn.config",
    "create_model": "hhn.factory",
    "HHN": "hhn.network",
    "Predictor": "hhn.predictor",
    "SupportSet": "hhn.predictor",
    "select_device": "hhn.device",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hhn' has no attribute {name!r}")
