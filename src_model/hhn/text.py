"""Class text priors: CLIP text embeddings (fg / refine / bg) for any class name, decoupled from the network.

The authors' code (spec 1.3; ``model/tlg_module.py: zeroshot_classifier``) builds, per class, one
prompt per template (there is one, ``"a clean origami {}."``) from the *whole* phrase string,
commas included (``"person with clothes,people,human"`` is one prompt, synonyms are not split),
encodes it with the CLIP text tower, L2-normalises it, averages over templates and L2-normalises
again. :meth:`TextEncoder.class_embeddings` does exactly that, with three phrases per class:

- the paper's VOC / COCO tables (``hhn/text_phrases/tlg.json``) for their class names (matched
  case-, space- and underscore-insensitively, with a few alias spellings such as airplane/aeroplane);
- any other name: ``fg`` = the name, ``refine`` = the name, ``bg`` = :data:`GENERIC_BACKGROUND`
  (a generic context phrase in the tables' comma style; chosen by us, not measured).

Embeddings are cached per prompt, so each class name is encoded once per :class:`TextEncoder`.
When the CLIP weights are unavailable, :class:`~hhn.errors.PriorUnavailableError` is raised:
random embeddings are never returned.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import torch

from hhn.device import select_device
from hhn.errors import UserError
from hhn.network import ClassEmbeddings
from hhn.weights.clip import load_clip_model, resolve_clip_weights

DEFAULT_TEMPLATE = "a clean origami {}."
#: bg phrase for class names outside the paper's tables (one prompt, in the tables' comma style).
GENERIC_BACKGROUND = "background,surroundings"
#: config ``benchmark`` value -> section of tlg.json.
BENCHMARK_TABLES = {"pascal": "voc", "coco": "coco"}


class ClassPhrases(NamedTuple):
    """The three phrases of one class; each is ONE prompt (commas are part of the text)."""

    fg: str
    refine: str
    bg: str


@functools.cache
def _phrase_data() -> dict:
    text = (resources.files("hhn") / "text_phrases" / "tlg.json").read_text(encoding="utf-8")
    return json.loads(text)


def _key(name: str) -> str:
    """Comparison key of a class name: lower case, no spaces / underscores / hyphens."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _spellings(name: str) -> set[str]:
    keys = {_key(name)}
    for group in _phrase_data()["aliases"]:
        group_keys = {_key(g) for g in group}
        if keys & group_keys:
            keys |= group_keys
    return keys


def lookup_phrases(class_name: str, benchmark: str | None = None) -> ClassPhrases | None:
    """The paper's phrases for ``class_name``, or None when it is not in the tables.

    Args:
        class_name: any spelling of a VOC or COCO class (``"dining table"``, ``"airplane"``, ``"TV"``).
        benchmark: ``"pascal"`` or ``"coco"`` to use that table only (the two differ in some bg
            phrases); None looks in the VOC table, then COCO.
    """
    if benchmark is not None and benchmark not in BENCHMARK_TABLES:
        raise UserError(f"unknown phrase table {benchmark!r}; use one of {', '.join(BENCHMARK_TABLES)} or None")
    sections = [BENCHMARK_TABLES[benchmark]] if benchmark else ["voc", "coco"]
    wanted = _spellings(class_name)
    for section in sections:
        table = _phrase_data()[section]
        for i, name in enumerate(table["names"]):
            if _key(name) in wanted:
                return ClassPhrases(table["fg"][i], table["refine"][i], table["bg"][i])
    return None


def class_phrases(class_name: str, benchmark: str | None = None) -> ClassPhrases:
    """Phrases for any class name: the paper's when known, else (name, name, :data:`GENERIC_BACKGROUND`)."""
    found = lookup_phrases(class_name, benchmark)
    if found is not None:
        return found
    name = " ".join(class_name.split())
    if not name:
        raise UserError("a class name must not be empty")
    return ClassPhrases(name, name, GENERIC_BACKGROUND)


class TextEncoder:
    """CLIP text tower + prompt cache: class names -> L2-normalised text embeddings.

    Args:
        model_name: open_clip architecture (``"ViT-B-32"``, the paper's) or ``"local-dir:/folder"``.
        pretrained: open_clip tag (``"openai"``) or a weight file; see
            :func:`hhn.weights.clip.resolve_clip_weights` for the search order and offline behaviour.
        cache_dir: open_clip / Hugging Face cache folder (default: theirs).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch.device.

    Raises:
        PriorUnavailableError: the weights are absent (message names the file and where to put it)
            or do not load.

    Only the text tower is kept (the image tower is dropped after loading to save memory, about
    350 MB for ViT-B-32). Embeddings are float32 on ``device``; their width ``embed_dim`` is 512
    for ViT-B-32 (the network's text branch expects 512), 1024 for RN50.
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str = "openai",
                 cache_dir: str | None = None, device: str | torch.device = "cpu") -> None:
        self.device = select_device(device)
        self.weights = resolve_clip_weights(model_name, pretrained, cache_dir)
        self.model, self.tokenizer = load_clip_model(self.weights, self.device)
        self.model.visual = None  # encode_text never touches the image tower
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def embed_dim(self) -> int:
        """Width D of the embeddings (rows of ``text_projection``)."""
        return int(self.model.text_projection.shape[-1])

    @torch.no_grad()
    def embed_phrases(self, phrases: Sequence[str]) -> torch.Tensor:
        """Encode prompts as given (no template added).

        Args:
            phrases: N strings, each encoded as one prompt.

        Returns:
            float32 ``(N, D)`` on ``self.device``, each row L2-normalised (norm 1).
        """
        new = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if new:
            tokens = self.tokenizer(new).to(self.device)
            emb = self.model.encode_text(tokens).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            self._cache.update(zip(new, emb))
        if not phrases:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.stack([self._cache[p] for p in phrases])

    def embed_phrase(self, phrase: str, template: str | Sequence[str] = DEFAULT_TEMPLATE) -> torch.Tensor:
        """One phrase through the template(s), as the authors' ``zeroshot_classifier`` does.

        Each template is filled with the whole phrase, encoded and normalised; the results are
        averaged over templates and normalised again (with one template this is the single
        normalised embedding).

        Returns:
            float32 ``(D,)``, norm 1.
        """
        templates = [template] if isinstance(template, str) else list(template)
        emb = self.embed_phrases([t.format(phrase) for t in templates]).mean(dim=0)
        return emb / emb.norm()

    def class_embeddings(self, class_name: str, phrases: ClassPhrases | None = None,
                         template: str | Sequence[str] = DEFAULT_TEMPLATE,
                         benchmark: str | None = None) -> ClassEmbeddings:
        """fg / refine / bg embeddings of one class, for the network's text branch (HC).

        Args:
            class_name: any class name (used to look up phrases when ``phrases`` is None).
            phrases: explicit phrases; default :func:`class_phrases` ``(class_name, benchmark)``.
            template: the prompt template(s), each with one ``{}``.
            benchmark: ``"pascal"`` / ``"coco"`` phrase table, or None (VOC first, then COCO).

        Returns:
            ``ClassEmbeddings(fg, refine, bg)``, each float32 ``(1, D)`` on ``self.device``, norm 1.
        """
        p = phrases if phrases is not None else class_phrases(class_name, benchmark)
        return ClassEmbeddings(*(self.embed_phrase(text, template)[None] for text in p))
