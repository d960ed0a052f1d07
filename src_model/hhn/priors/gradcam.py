"""CLIP Grad-CAM tag prior (spec section 2.4): where does CLIP see "a photo of a {class}"?

For an image (squash-resized to the CLIP input size, CLIP mean/std) and the class's text, the score is
``softmax(100 * cos(image, texts))[class]`` over the prior's vocabulary (the class plus the other
class names it was given; with a single text, the raw logit ``100 * cos`` is used, since a softmax over
one entry has no gradient). Grad-CAM on the output of the last visual block (``visual.layer4[-1]`` of
a CLIP ResNet): channel weights = spatial mean of the gradients, CAM = ReLU(sum_k w_k A_k), min-max
normalised to ``[0, 1]`` and bilinearly resized to the image.

Deviation from the authors' script: squash resize instead of resize + centre crop, so the map covers
the whole image (as everywhere else in this library).

Weights: ``GradCamPrior.from_pretrained`` resolves open_clip's ``RN50``/``openai`` weights through
``hhn.weights.clip`` (weight folders, Hugging Face cache, download unless offline); when they are missing it
raises ``PriorUnavailableError`` saying which file to put where.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hhn.errors import PriorUnavailableError
from hhn.priors.base import ClassPrior, TaggedImage, TagPrior

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT = "a photo of a {}"


class GradCamPrior(TagPrior):
    """Grad-CAM of a CLIP ResNet for any class name.

    Args:
        model: an open_clip ``CLIP`` model whose ``visual`` is a ``ModifiedResNet`` (has ``layer4``).
        tokenizer: the matching open_clip tokenizer (callable: list of str -> token tensor).
        vocabulary: other class names competing in the softmax (e.g. the project's classes).
        device: torch device.
    """

    name = "gradcam"

    def __init__(self, model: Any, tokenizer, vocabulary: Sequence[str] = (),
                 device: str | torch.device = "cpu") -> None:
        if not hasattr(model.visual, "layer4"):
            raise ValueError("Grad-CAM needs a CLIP ResNet (visual.layer4); got a different visual tower")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.vocabulary = tuple(dict.fromkeys(vocabulary))
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    @classmethod
    def from_pretrained(cls, arch: str = "RN50", pretrained: str = "openai", vocabulary: Sequence[str] = (),
                        device: str | torch.device = "cpu") -> GradCamPrior:
        """Build from open_clip weights found by ``hhn.weights.clip.resolve_clip_weights`` (a tag such as
        ``openai``, a weight file path, or ``local-dir:`` as ``arch``).

        Raises:
            PriorUnavailableError: the weights are not on this machine and cannot be downloaded; the
                message names the file and where to put it.
        """
        from hhn.weights.clip import load_clip_model, resolve_clip_weights

        try:
            model, tokenizer = load_clip_model(resolve_clip_weights(arch, pretrained), torch.device(device))
        except PriorUnavailableError as exc:
            raise PriorUnavailableError(f"{exc}\nThe CLIP Grad-CAM prior needs these weights; without them use "
                                        "the CLIP-free co-segmentation prior (--prior coseg).") from exc
        return cls(model, tokenizer, vocabulary=vocabulary, device=device)

    @torch.no_grad()
    def text_features(self, class_name: str) -> torch.Tensor:
        """``float32 (T, D)`` unit-norm text embeddings; row 0 is ``class_name``, then the vocabulary."""
        names = (class_name,) + tuple(n for n in self.vocabulary if n != class_name)
        tokens = self.tokenizer([PROMPT.format(n) for n in names]).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def fit(self, class_name: str, positives: Sequence[TaggedImage | np.ndarray] = (),
            negatives: Sequence[TaggedImage | np.ndarray] = ()) -> ClassPrior:
        """The class's prior; CLIP needs no examples, so ``positives`` and ``negatives`` are not used."""
        return _GradCamClassPrior(self, class_name, self.text_features(class_name))

    def cam(self, pixels: np.ndarray, text: torch.Tensor) -> np.ndarray:
        """Grad-CAM of ``text[0]`` (rows from ``text_features``) on a ``uint8 (H, W, 3)`` image.

        Returns ``float32 (H, W)`` in ``[0, 1]`` (all zeros when the CAM is flat).
        """
        h, w = pixels.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float().div(255.0)
        x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        x = ((x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        store: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            # a fresh leaf, so gradients reach it even when every CLIP parameter is frozen
            store["a"] = output.detach().requires_grad_(True)
            return store["a"]

        handle = self.model.visual.layer4[-1].register_forward_hook(keep)
        try:
            with torch.enable_grad():
                img = F.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1)
                logits = 100.0 * img @ text.T
                score = logits.softmax(-1)[0, 0] if text.shape[0] > 1 else logits[0, 0]
                (grads,) = torch.autograd.grad(score, store["a"])
        finally:
            handle.remove()
        acts = store["a"].detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        lo, hi = cam.min(), cam.max()
        cam = (cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)
        return cam.cpu().numpy().astype(np.float32)


class _GradCamClassPrior(ClassPrior):
    def __init__(self, owner: GradCamPrior, class_name: str, text: torch.Tensor) -> None:
        super().__init__(class_name)
        self._owner, self._text = owner, text

    def _map(self, pixels: np.ndarray) -> np.ndarray:
        return self._owner.cam(pixels, self._text)
