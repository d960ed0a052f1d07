"""The CLIP (open_clip) weights of the class-name text priors and the Grad-CAM tag prior.

:func:`resolve_clip_weights` finds the weights of an open_clip ``(model, pretrained-tag)`` pair, a
weight file or a ``local-dir:`` folder (our weight folders of :mod:`hhn.weights.locations` first, then
the Hugging Face and open_clip caches, then a download unless offline) without building the model;
:func:`load_clip_model` builds the model from them. Missing weights raise
:class:`PriorUnavailableError` naming the file to place and where.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hhn.errors import PriorUnavailableError
from hhn.registry import LOCAL_DIR_PREFIX
from hhn.weights.locations import check_reachable, env_hint, offline, weight_dirs

#: CLIP weights the library can use, for `wfss weights`: (open_clip model, pretrained tag, used by).
CLIP_WEIGHTS: tuple[tuple[str, str, str], ...] = (
    ("ViT-B-32", "openai", "class-name text priors (hhn.text)"),
    ("RN50", "openai", "CLIP Grad-CAM tag prior (hhn.priors.gradcam)"),
)

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


def cached_clip_file(model_name: str, pretrained: str, cfg: dict, cache_dir: str | None) -> Path | None:
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
    lines += env_hint()
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
    found = cached_clip_file(model_name, pretrained, cfg, cache_dir)
    if found is not None:
        return ClipWeights(model_name, _usable_clip_file(found, "cache"), quick_gelu)
    if offline():
        raise PriorUnavailableError(
            clip_missing_message(model_name, pretrained, cfg,
                                 "offline mode (WFSS_OFFLINE / HF_HUB_OFFLINE): no download tried")
        )
    from huggingface_hub.constants import ENDPOINT
    from open_clip.pretrained import download_pretrained, has_hf_hub

    try:
        check_reachable(ENDPOINT if cfg.get("hf_hub") and has_hf_hub() else cfg.get("url", ENDPOINT))
        downloaded = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network/hub failures become one actionable error
        raise PriorUnavailableError(
            clip_missing_message(model_name, pretrained, cfg,
                                 f"download failed (no network?): {type(exc).__name__}: {exc}")
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

