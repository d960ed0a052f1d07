"""The HHN model as data: :class:`HHNConfig` (a frozen dataclass with a JSON round trip) and presets.

Presets live as JSON files in ``hhn/configs/<name>.json``. The four ``tlg-*`` presets reproduce the
authors' released TLG model (spec sections 1 and 8: all quirks kept, both switches below OFF). The
``wfss-lite0`` preset is our recipe (EfficientNet-Lite0, 256x256, no CLIP text, both fixes ON).

Geometry is derived, never stored: :attr:`HHNConfig.geometry` computes every grid from the input size
and the backbone's down-sampling rule (see :class:`Geometry`). This module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

from hhn.errors import UserError
from hhn.registry import BACKBONE_ROUNDING, TAG_PRIORS

#: Backbone names known to the model (``hhn.registry``; ``hhn.backbones.BACKBONES`` builds exactly these).
SUPPORTED_BACKBONES = tuple(BACKBONE_ROUNDING)
#: Benchmarks whose class-phrase tables the authors' checkpoints were trained with.
SUPPORTED_BENCHMARKS = ("pascal", "coco")


@dataclass(frozen=True)
class SinkhornSettings:
    """Entropic OT solver settings of the transport step (spec 1.7; POT ``ot.sinkhorn`` defaults).

    reg: entropic regularisation (1/lambda in the paper's figure); max_iter: iteration cap;
    stop_thr: stop when the 2-norm of the column-marginal violation drops below it (checked every
    10th iteration, as POT does).
    """

    reg: float = 0.5
    max_iter: int = 1000
    stop_thr: float = 1e-9


@dataclass(frozen=True)
class DecisionRule:
    """How a query's foreground is decided from the network and the query's tag prior.

    Per shot, ``fg = (1 - prior_weight) * p_net + prior_weight * prior``, where ``p_net`` is the
    network's foreground softmax and ``prior`` the query's tag prior, both in [0, 1] at the image size;
    a pixel is foreground where ``fg > threshold`` (K shots: the vote of :func:`hhn.kshot.vote_kshot`).
    With ``trim`` (tap weights of the query's own descriptors, e.g. ``(1, 0.5, 0)``), the voted mask is
    then trimmed to the query's own appearance (:func:`hhn.refine.own_appearance_keep`) and the
    foreground score set to 0 where a pixel is trimmed away. With ``snap`` (a band, as a fraction of
    the image diagonal, e.g. 0.06), the mask is then snapped to the image's colour edges
    (:func:`hhn.refine.snap_to_edges`, GrabCut): the score is set to 0 where a pixel leaves the mask
    and raised to ``threshold`` where one joins it. With ``refine_supports``, a support known by its
    tags only is refined the same way before it is encoded: its prior thresholded at 0.5, trimmed and
    snapped with the rule's steps on the support's own pixels (:meth:`hhn.predictor.Predictor.support_map`);
    supports with a pixel mask are used as they are. With ``flip_border``, a class learnt from tags only
    whose supports' prior maps cover the frame's border band more than its inside by more than that
    (median :func:`hhn.priors.orientation.border_excess`) has its prior fitted again on the other side of
    those maps, for its supports and queries (:func:`hhn.priors.orientation.orient`). The default (0,
    0.5, no trim, no snap, supports as given, no flip) is the network's own argmax, as in the released
    code. A trained model may carry another rule, chosen on development episodes and stored with its
    config (``wfss-lite0``: see MODEL_CARD.md).
    """

    prior_weight: float = 0.0
    threshold: float = 0.5
    trim: tuple[float, ...] | None = None
    snap: float | None = None
    refine_supports: bool = False
    flip_border: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.refine_supports, bool):
            raise UserError(f"decision rule refine_supports must be true or false, got {self.refine_supports!r}")
        try:  # a hand-edited model.json may hold anything
            object.__setattr__(self, "prior_weight", float(self.prior_weight))
            object.__setattr__(self, "threshold", float(self.threshold))
            trim = None if self.trim is None else tuple(float(w) for w in self.trim)
            snap = None if self.snap is None else float(self.snap)
            flip = None if self.flip_border is None else float(self.flip_border)
        except (TypeError, ValueError):
            raise UserError(f"decision rule needs numbers: prior_weight, threshold, three trim tap weights or "
                            f"null, a snap band or null, a flip border excess or null; got {self.prior_weight!r}, "
                            f"{self.threshold!r}, {self.trim!r}, {self.snap!r}, {self.flip_border!r}") from None
        if not (0.0 <= self.prior_weight <= 1.0 and 0.0 < self.threshold < 1.0):
            raise UserError(f"decision rule needs prior_weight in [0, 1] and threshold in (0, 1), got "
                            f"{self.prior_weight} and {self.threshold}")
        if trim is not None:
            if len(trim) != 3 or min(trim) < 0 or max(trim) <= 0:
                raise UserError(f"decision rule trim needs three non-negative tap weights (strides 8, 16, "
                                f"32), not all 0, got {self.trim}")
            object.__setattr__(self, "trim", trim)
        if snap is not None:
            if not 0.0 < snap < 0.5:
                raise UserError(f"decision rule snap needs a band in (0, 0.5) of the image diagonal, got {self.snap}")
            object.__setattr__(self, "snap", snap)
        if flip is not None:
            if not 0.0 <= flip < 1.0:
                raise UserError(f"decision rule flip_border needs a border excess in [0, 1), got {self.flip_border}")
            object.__setattr__(self, "flip_border", flip)

    @property
    def is_argmax(self) -> bool:
        """True for the network's own per-query decision (no prior blended in, threshold 0.5, no trim, no snap;
        ``flip_border`` acts when a class is learnt, not here)."""
        return self.prior_weight == 0.0 and self.threshold == 0.5 and self.trim is None and self.snap is None


def parse_trim_weights(text: str) -> tuple[float, ...]:
    """``A/B/C`` -> trim tap weights (checked like a decision rule's ``trim``)."""
    try:
        weights = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"trim weights must be A/B/C numbers (e.g. 1/0.5/0), got {text!r}") from None
    DecisionRule(trim=weights)  # raises UserError unless they are three valid tap weights
    return weights


def parse_decision_rule(text: str) -> DecisionRule:
    """A rule written on a command line: ``argmax`` (the network alone), or ``W,T`` (prior weight,
    threshold) optionally followed by ``,trim:A/B/C`` (trim to the query's own appearance with tap
    weights A, B, C), ``,snap:BAND`` (snap to the image's edges), ``,supports:refined`` (tag
    supports refined with those steps before encoding; ``supports:prior``, the default, leaves them) and
    ``,flip:EXCESS`` (the inversion guard's ``flip_border``);
    the trim always runs first (``hhn.refine``). Raises ``UserError`` with the expected form."""
    if text == "argmax":
        return DecisionRule()
    parts = text.split(",")
    try:
        steps = dict(part.split(":", 1) for part in parts[2:])
        if (len(parts) < 2 or set(steps) - {"trim", "snap", "supports", "flip"} or len(steps) != len(parts) - 2
                or steps.get("supports", "prior") not in ("prior", "refined")):
            raise ValueError
        trim = parse_trim_weights(steps["trim"]) if "trim" in steps else None
        snap = float(steps["snap"]) if "snap" in steps else None
        flip = float(steps["flip"]) if "flip" in steps else None
        return DecisionRule(float(parts[0]), float(parts[1]), trim, snap, steps.get("supports") == "refined", flip)
    except ValueError:
        raise UserError(f"a decision rule must be 'argmax' or PRIOR_WEIGHT,THRESHOLD (e.g. 0.5,0.8), optionally "
                        f"followed by ,trim:A/B/C, ,snap:BAND, ,supports:refined and ,flip:EXCESS (e.g. "
                        f"0.5,0.6,trim:1/0.5/0,snap:0.06), got {text!r}") from None


@dataclass(frozen=True)
class Geometry:
    """Every spatial size of the network, derived from the input size and the backbone.

    All sizes are (height, width). For ResNet-50 at 400x400: grid8 (50, 50), grid16 (25, 25),
    grid32 (13, 13), tokens 50, token_grid_pixels 2500, text_grid (25, 25) (625 cells),
    head_size (100, 100).
    """

    image_size: tuple[int, int]  #: network input (h, w)
    grid8: tuple[int, int]  #: stride-8 feature map: HA / HT / decoder resolution
    grid16: tuple[int, int]  #: stride-16 feature map
    grid32: tuple[int, int]  #: stride-32 feature map
    text_grid: tuple[int, int]  #: text map (= grid16 = grid8 / 2, the HC working grid)
    head_size: tuple[int, int]  #: decoder output = 2 x grid8

    @property
    def tokens(self) -> int:
        """Number of HT tokens = rows of the stride-8 map (token r is the mean of row r)."""
        return self.grid8[0]

    @property
    def grid8_cells(self) -> int:
        """h8 * w8: output features of the token -> grid Linear (2500 at 400x400)."""
        return self.grid8[0] * self.grid8[1]

    @property
    def text_cells(self) -> int:
        """Output features of the text Linear(512 -> text cells) (625 at 400x400)."""
        return self.text_grid[0] * self.text_grid[1]


def _grid(size: int, stride: int, rounding: str) -> int:
    """Feature-map side of a backbone at ``stride`` for an input side ``size``."""
    return -(-size // stride) if rounding == "ceil" else size // stride


def _squeezed(side: int, strides: tuple[int, ...]) -> int:
    """Side of the second-image dims of a 4D correlation after the encoder's strided CP4d convs."""
    for s in strides:
        side = -(-side // s)
    return side


@dataclass(frozen=True)
class HHNConfig:
    """One HHN model configuration (architecture + switches). JSON round trip via to_dict/from_dict.

    ``decision``: how foreground is decided from the network and the query prior (:class:`DecisionRule`;
    the default is the network's argmax, as in the released code). ``decision_masks``: the rule for a
    class whose supports all carry pixel masks (a user's painted or accepted masks, ``wfss eval
    --support masks``), where the steps that rescue a tag-only support may cost more than they add;
    None: ``decision`` for every class. Both are chosen on development episodes.

    ``tag_prior``: the tag prior the model is used with, a name of ``hhn.registry.TAG_PRIORS``
    (like ``decision``, an inference setting chosen on development episodes; training builds its
    episodes' priors with ``coseg``). None: ``coseg``, or CLIP Grad-CAM in the app for a model that
    reads CLIP text.

    Paper-mode switches (both False reproduce the released code, spec 1.9 and 1.10):

    - ``mask_support_features``: multiply every support feature map by the support mask (or prior),
      bilinearly resized to that map (align_corners=True), before the correlation, as HSNet does.
      In the released code the support's mask never reaches the query prediction.
    - ``grad_through_fusion``: compute the text maps and the HC fusion with autograd enabled, so the
      HA / HT / HC layers receive the segmentation-loss gradient. The released code wraps them in
      ``torch.no_grad()``, so only the 4D encoder, decoders and fusion head are trained by the loss.

    Our architecture switch (False in every shipped preset and in the released model):

    - ``prior_in_decoder``: the image's prior, resized to the stride-8 grid, is also concatenated to
      the decoder's input, so its 3x3 convs see the prior's shape next to the fused features (the
      released decoder sees the prior only in its final per-pixel 1x1 fusion). The first decoder
      conv then takes 129 channels instead of 128, so checkpoints of the two kinds do not mix.
    """

    name: str
    backbone: str
    image_size: tuple[int, int]
    benchmark: str | None = None
    use_text: bool = True
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    text_template: str = "a clean origami {}."
    sinkhorn: SinkhornSettings = field(default_factory=SinkhornSettings)
    mask_support_features: bool = False
    grad_through_fusion: bool = False
    prior_in_decoder: bool = False
    decision: DecisionRule = field(default_factory=DecisionRule)
    decision_masks: DecisionRule | None = None
    tag_prior: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.backbone not in SUPPORTED_BACKBONES:
            raise UserError(f"config {self.name!r}: unknown backbone {self.backbone!r}; "
                            f"use one of {', '.join(SUPPORTED_BACKBONES)}")
        if self.benchmark is not None and self.benchmark not in SUPPORTED_BENCHMARKS:
            raise UserError(f"config {self.name!r}: unknown benchmark {self.benchmark!r}; "
                            f"use one of {', '.join(SUPPORTED_BENCHMARKS)} or null")
        try:
            size = tuple(int(v) for v in self.image_size)
        except (TypeError, ValueError):  # not a sequence of numbers, e.g. "abc" in a model.json
            size = ()
        if len(size) != 2 or min(size) < 16 or any(v % 16 for v in size):
            raise UserError(f"config {self.name!r}: image_size {self.image_size!r} must be two "
                            f"multiples of 16 (height, width), e.g. [400, 400]")
        object.__setattr__(self, "image_size", size)
        if isinstance(self.sinkhorn, dict):
            object.__setattr__(self, "sinkhorn", SinkhornSettings(**self.sinkhorn))
        for name in ("decision", "decision_masks"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, DecisionRule(**getattr(self, name)))
        if self.tag_prior is not None and self.tag_prior not in TAG_PRIORS:
            raise UserError(f"config {self.name!r}: unknown tag_prior {self.tag_prior!r}; use one of "
                            f"{', '.join(TAG_PRIORS)} or null")
        if "{}" not in self.text_template:
            raise UserError(f"config {self.name!r}: text_template must contain '{{}}' for the class name")

    @property
    def geometry(self) -> Geometry:
        """The derived spatial sizes (see :class:`Geometry`); raises UserError if they do not fit."""
        rounding = BACKBONE_ROUNDING[self.backbone]
        h, w = self.image_size
        g8, g16, g32 = ((_grid(h, s, rounding), _grid(w, s, rounding)) for s in (8, 16, 32))
        # The three correlation groups must squeeze to the same second-image size (spec 1.5 strides).
        squeezed = {(_squeezed(g[0], st), _squeezed(g[1], st))
                    for g, st in ((g32, (2, 2, 2)), (g16, (4, 2, 2)), (g8, (4, 4, 2)))}
        if len(squeezed) != 1 or g16 != (g8[0] // 2, g8[1] // 2):
            raise UserError(f"config {self.name!r}: image_size {self.image_size} gives incompatible "
                            f"feature grids {g8}/{g16}/{g32} for {self.backbone}; use a multiple of 32")
        return Geometry(image_size=(h, w), grid8=g8, grid16=g16, grid32=g32, text_grid=g16,
                        head_size=(2 * g8[0], 2 * g8[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HHNConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise UserError (a config from a newer version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"model config has unknown fields {unknown}; it was written by a newer "
                            f"napari-wfss: upgrade, or remove these fields")
        missing = sorted(f.name for f in fields(cls)
                         if f.name in ("name", "backbone", "image_size") and f.name not in data)
        if missing:
            raise UserError(f"model config lacks required fields {missing}")
        return cls(**data)  # __post_init__ converts image_size, sinkhorn and the decision rules


def list_presets() -> list[str]:
    """Names of the shipped presets (the JSON files in ``hhn/configs``), sorted."""
    root = resources.files("hhn") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> HHNConfig:
    """Load the preset ``name`` (e.g. ``"tlg-resnet50-pascal"``, ``"wfss-lite0"``)."""
    presets = list_presets()
    if name not in presets:
        raise UserError(f"unknown model preset {name!r}; available: {', '.join(presets)}")
    text = (resources.files("hhn") / "configs" / f"{name}.json").read_text(encoding="utf-8")
    return HHNConfig.from_dict(json.loads(text))
