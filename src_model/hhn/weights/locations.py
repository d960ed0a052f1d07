"""Where pretrained files are looked for, and whether they may be downloaded.

Weight files (backbone and CLIP) are looked for, in this order, under their expected file name:

0. the ``cache_dir`` argument, when a caller passes one (e.g. ``create_model(..., cache_dir=...)``),
1. ``$WFSS_WEIGHTS_DIR`` (if set),
2. the user cache, ``platformdirs.user_cache_dir("napari-wfss")/weights``
   (``~/.cache/napari-wfss/weights`` on Linux),
3. torch hub's cache, ``torch.hub.get_dir()/checkpoints`` (where torchvision downloads to).

In offline mode (``WFSS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) nothing is downloaded; without a network,
:func:`check_reachable` fails within seconds instead of letting a downloader retry for minutes.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

ENV_WEIGHTS_DIR = "WFSS_WEIGHTS_DIR"
OFFLINE_ENV_VARS = ("WFSS_OFFLINE", "HF_HUB_OFFLINE")


def offline() -> bool:
    """True when ``WFSS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on: never download."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENV_VARS)


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise ``OSError`` fast when ``url``'s host cannot be reached (no DNS / no route / firewall).

    Downloaders retry for a minute or more without a network; this probe fails within ``timeout``
    seconds instead. Skipped when a proxy is configured (the direct connection may be blocked).
    """
    if urllib.request.getproxies():
        return
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass


def user_weights_dir() -> Path:
    """The per-user weight folder: ``platformdirs.user_cache_dir("napari-wfss")/weights``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-wfss")) / "weights"


def torch_hub_weights_dir() -> Path:
    """torch hub's checkpoint cache, ``torch.hub.get_dir()/checkpoints`` (downloads go here)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weight_dirs(cache_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The folders searched for weight files, in order, each with a label for messages.

    ``cache_dir`` (e.g. ``create_model(..., cache_dir=...)``) comes first and receives downloads.
    """
    dirs = [(Path(cache_dir).expanduser(), "cache_dir")] if cache_dir else []
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    if env:
        dirs.append((Path(env).expanduser(), f"${ENV_WEIGHTS_DIR}"))
    dirs.append((user_weights_dir(), "user cache"))
    dirs.append((torch_hub_weights_dir(), "torch hub cache"))
    return dirs


def env_hint() -> list[str]:
    """A message line naming ``$WFSS_WEIGHTS_DIR``, when it is not set (else no line)."""
    if os.environ.get(ENV_WEIGHTS_DIR, "").strip():
        return []
    return [f"  or any folder you name with the environment variable {ENV_WEIGHTS_DIR}"]
