"""The named tag priors (settings as data): what ``wfss eval --prior``, a model's ``tag_prior`` and the
proposal engine build.

- ``coseg``: the co-segmentation prior (``hhn.priors.coseg``) on EfficientNet-Lite0 descriptors of the
  image squashed to 320 x 320 (the prior the default model was trained with).
- ``coseg-ms``: the same prior run on the image squashed to 320, 448 and 576 px, the three maps
  averaged (``hhn.priors.ensemble.MeanPrior``): about six times the backbone work of ``coseg``; a
  better prior on development episodes, a gain that did not carry over to the test cells
  (MODEL_CARD.md, "A multi-scale tag prior"), so no shipped model uses it.
- ``coseg-ratio``: ``coseg`` whose first pass compares recurrence in the positives with recurrence in
  the negatives as a log ratio, not a difference (``CosegPrior(contrast="ratio")``), at the same cost:
  the default model's prior before ``coseg-objects`` (chosen after training on development episodes;
  MODEL_CARD.md, "The ratio contrast in the tag prior").
- ``coseg-objects``: ``coseg-ratio`` with the shipped objectness head (``hhn.priors.objectness``): a
  class learnt from tags whose most recurrent cells are things is learnt from the object cells of its
  positives against every cell of its negatives, and mapped on object cells only; other classes (stuff,
  or any user mask) are mapped exactly as by ``coseg-ratio`` (``CosegPrior(objectness=...)``): small
  objects among clutter and co-occurring classes (MODEL_CARD.md, "Objects in clutter").
- ``gradcam``: CLIP RN50 Grad-CAM of the class name (``hhn.priors.gradcam``; needs CLIP weights).

The names themselves are :data:`hhn.registry.TAG_PRIORS` (a config checks its ``tag_prior`` there).
Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhn.errors import UserError
from hhn.registry import TAG_PRIORS

if TYPE_CHECKING:
    from hhn.priors.base import TagPrior
    from hhn.priors.features import DenseFeatures


@dataclass(frozen=True)
class CosegVariant:
    """A named co-segmentation prior: the square input sides in px (one prior per side, maps averaged),
    the first pass's contrast (``hhn.priors.coseg.CONTRASTS``) and whether it reads the shipped
    objectness head (``hhn.priors.objectness.DEFAULT_HEAD``; its input side must be the head's)."""

    sizes: tuple[int, ...]
    contrast: str = "difference"
    objectness: bool = False


#: the co-segmentation prior variants, by name (with ``gradcam``, the names of ``TAG_PRIORS``)
COSEG_PRIORS: dict[str, CosegVariant] = {"coseg": CosegVariant((320,)),
                                         "coseg-ms": CosegVariant((320, 448, 576)),
                                         "coseg-ratio": CosegVariant((320,), "ratio"),
                                         "coseg-objects": CosegVariant((320,), "ratio", objectness=True)}


def build_tag_prior(name: str, *, device: Any = "cpu", cache_dir: str | Path | None = None,
                    vocabulary: Sequence[str] = (),
                    reuse: Callable[[DenseFeatures], Callable | None] | None = None,
                    objectness: str | Path | None = None) -> TagPrior:
    """The tag prior called ``name`` (see the module doc).

    Args:
        device: torch device of the backbone (or of CLIP).
        cache_dir: on-disk tap cache of the co-segmentation priors (``DenseFeatures``).
        vocabulary: the competing class names (``gradcam`` only).
        reuse: given the ``DenseFeatures`` a co-segmentation prior would build, returns a callable that
            gives the same descriptors more cheaply (e.g. from taps the network computed anyway), or None.
        objectness: the objectness head file of a prior that reads one (default: the shipped head), e.g. one
            refitted without a benchmark fold's classes (``python -m hhn.priors.objectness --exclude ...``).

    Raises:
        ValueError: an unknown name.
        UserError: an objectness head given to a prior that reads none (it would be ignored silently).
    """
    if objectness is not None and not (name in COSEG_PRIORS and COSEG_PRIORS[name].objectness):
        readers = ", ".join(n for n, v in COSEG_PRIORS.items() if v.objectness)
        raise UserError(f"the tag prior {name} reads no objectness head, so {objectness} would be ignored; "
                        f"an objectness head applies to {readers}")
    if name == "gradcam":
        from hhn.priors.gradcam import GradCamPrior

        return GradCamPrior.from_pretrained(vocabulary=vocabulary, device=device)
    if name not in COSEG_PRIORS:
        raise ValueError(f"unknown tag prior {name!r}; use one of {', '.join(TAG_PRIORS)}")
    from hhn.priors.coseg import CosegPrior
    from hhn.priors.ensemble import MeanPrior
    from hhn.priors.features import DenseFeatures

    variant, members = COSEG_PRIORS[name], []
    head = None
    if variant.objectness:
        from hhn.priors.objectness import DEFAULT_HEAD, ObjectnessHead

        head = ObjectnessHead.load(objectness or DEFAULT_HEAD)
    for size in variant.sizes:
        dense = DenseFeatures(size=size, device=device, cache_dir=cache_dir)
        if head is not None and (head.size, head.backbone) != (size, dense.backbone):
            raise ValueError(f"{name}: the objectness head reads {head.backbone} at {head.size} px, not at {size}")
        members.append(CosegPrior(features=(reuse(dense) if reuse is not None else None) or dense,
                                  contrast=variant.contrast, objectness=head))
    return members[0] if len(members) == 1 else MeanPrior(members)
