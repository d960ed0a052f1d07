"""``wfss weights``: every pretrained file the library uses, present or missing, with its path.

Backbone files (:mod:`hhn.weights.files`) and CLIP weights (:mod:`hhn.weights.clip`) in one table,
the folders they are looked for in (:mod:`hhn.weights.locations`), and the presets that need them.
"""

from __future__ import annotations

from collections.abc import Sequence

from hhn.config import list_presets, load_preset
from hhn.weights.clip import CLIP_WEIGHTS, cached_clip_file, clip_file_name
from hhn.weights.files import (
    WEIGHT_FILES,
    InvalidWeightsError,
    download_hint,
    find_weight_file,
    verify_weight_file,
    weight_spec,
)
from hhn.weights.locations import offline, weight_dirs


def _backbone_status(name: str) -> tuple[str, str]:
    path = find_weight_file(name)
    if path is None:
        spec = weight_spec(name)
        return "missing", f"place at {weight_dirs()[0][0] / spec.filename}{download_hint(spec)}"
    try:
        verify_weight_file(name, path)
    except InvalidWeightsError:
        return "BAD HASH", str(path)
    return "ok", str(path)


def _clip_status(model_name: str, pretrained: str) -> tuple[str, str]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    try:
        found = cached_clip_file(model_name, pretrained, cfg, None)
    except Exception as exc:  # noqa: BLE001 - a broken cache must not stop the listing
        return "error", f"{type(exc).__name__}: {exc}"
    if found is None:
        return "missing", f"place at {weight_dirs()[0][0] / clip_file_name(model_name, pretrained)}"
    return "ok", str(found)


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def _print_presets() -> None:
    rows = [("preset", "backbone", "text prior", "description")]
    for name in list_presets():
        cfg = load_preset(name)
        text = f"{cfg.clip_model}/{cfg.clip_pretrained}" if cfg.use_text else "none"
        rows.append((name, cfg.backbone, text, cfg.description))
    _print_table(rows)


def run_weights_cli(args) -> int:
    """``wfss weights [--presets]``: every weight file, present or missing, with its path."""
    if getattr(args, "presets", False):
        _print_presets()
        return 0
    print("Backbone weights (searched in this order):")
    for folder, label in weight_dirs():
        print(f"  {label}: {folder}")
    print()
    rows = [("name", "file", "status", "path")]
    for name, spec in WEIGHT_FILES.items():
        rows.append((name, spec.filename, *_backbone_status(name)))
    for model_name, tag, _used_by in CLIP_WEIGHTS:
        rows.append((f"clip {model_name}/{tag}", clip_file_name(model_name, tag), *_clip_status(model_name, tag)))
    _print_table(rows)
    print()
    print("CLIP weights used by: " + "; ".join(f"{m}/{t}: {u}" for m, t, u in CLIP_WEIGHTS))
    print("Offline: " + ("yes (no downloads)" if offline() else "no (missing files are downloaded on first use)"))
    print()
    _print_presets()
    return 0
