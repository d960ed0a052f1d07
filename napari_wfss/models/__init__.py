"""The models shipped with napari-wfss, published to ``hhn`` by name (``pyproject.toml``, entry-point group
``hhn.models``), so ``hhn.factory.create_model("default")`` finds them without knowing this package."""

from pathlib import Path

#: the default model's checkpoint folder: model.safetensors + model.json (and its MODEL_CARD.md)
DEFAULT_DIR = Path(__file__).with_name("default")
