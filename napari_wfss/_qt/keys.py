"""The widget's keys, bound on the viewer and on the widget's layers (so they win over napari's layer keys).

``1``-``9`` toggle the tag of the first nine classes (not on the Labels layer, where napari's ``1``-``7``
pick the painting tools), ``Alt+1``-``Alt+9`` do the same whatever layer is active; ``0`` (``Alt+0`` on any
layer) flips the negative tag "none of these classes"; ``C`` accept, ``X`` reject, ``N`` next, ``Shift+N``
previous (``P`` stays napari's paint brush).
"""

from __future__ import annotations

from functools import partial
from typing import Any

TAG_KEYS = tuple(str(i) for i in range(1, 10))
ANY_LAYER_TAG_KEYS = tuple(f"Alt-{i}" for i in range(1, 10))  #: napari's Labels layer leaves these free
REVIEW_KEYS = {"C": "accept", "X": "reject", "N": "next_image", "Shift-N": "previous_image"}


def key_actions(widget: Any, with_tags: bool) -> dict[str, Any]:
    """Key -> the widget's action: the review keys, and the tag keys if ``with_tags``."""
    actions = {key: getattr(widget, method) for key, method in REVIEW_KEYS.items()}
    actions.update({key: partial(widget.toggle_tag_index, i) for i, key in enumerate(ANY_LAYER_TAG_KEYS)})
    actions["Alt-0"] = widget.set_no_class
    if with_tags:
        actions.update({key: partial(widget.toggle_tag_index, i) for i, key in enumerate(TAG_KEYS)})
        actions["0"] = widget.set_no_class
    return actions


def _bind(provider: Any, actions: dict[str, Any]) -> None:
    for key, action in actions.items():
        provider.bind_key(key, lambda _provider, action=action: action(), overwrite=True)


def _unbind(providers: list[Any], keys: list[str]) -> None:
    """Remove our key bindings (connected to the widget's ``destroyed``; must not touch the widget)."""
    for provider in providers:
        for key in keys:
            provider.bind_key(key, None)


def bind_viewer_keys(widget: Any) -> None:
    """Bind all keys on the widget's viewer; they are unbound when the widget is destroyed."""
    actions = key_actions(widget, with_tags=True)
    _bind(widget.viewer, actions)
    widget.destroyed.connect(partial(_unbind, [widget.viewer], list(actions)))


def bind_layer_keys(widget: Any, layer: Any, with_tags: bool) -> None:
    """Bind the keys on one of the widget's layers, once (marked in ``metadata["wfss_keys"]``)."""
    if not layer.metadata.get("wfss_keys"):
        _bind(layer, key_actions(widget, with_tags))
        layer.metadata["wfss_keys"] = True
