"""The options of a proposal run, in one dataclass: what ``wfss label`` parses, what the widget's fields
give, what travels to the engine's child process as JSON, and what :class:`napari_wfss.engine.Engine`
is built from. No torch, no Qt.

The threshold, defined here once for every entry:

- ``None``: the decision rule's own threshold (the model's; ``wfss label`` without ``--threshold``, the
  widget's "model's" setting);
- a value ``t`` in ``[0, 1]``: background where no class reaches a foreground score of ``t``. A ``t``
  strictly inside (0, 1) also becomes the rule's threshold, so each class's mask is decided at ``t``
  before the rule's trim and snap (``hhn.pipeline.override_rule``); ``0`` leaves no background pixel
  (every pixel takes its best class) and ``1`` labels only pixels scored 1, both with the rule's own
  per-class threshold.

The minimum class score (``min_score``), the image-level "no class present" decision: in each proposed
image a class whose score (the mean foreground score over the pixels labelled with it) is below
``min_score`` is judged absent and its pixels become background; an image left with no class is "no class
found" (``napari_wfss.engine.decide_no_class``). ``0`` keeps every class: the default
(:data:`DEFAULT_MIN_SCORE`), because no minimum kept the mIoU of the images that show the classes within 1
point on every MSRC-v2 split of ``benchmarks/empty_decision.py`` (0.8 emptied 30-58 % of the photos showing
none of the classes, and changed that mIoU by -2.5 to +6.5 points; benchmarks/results/empty-decision.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhn.device_names import DEVICE_NAMES, PRECISIONS
from hhn.errors import UserError
from hhn.registry import TAG_PRIORS

from .atomic import atomic_write_json

if TYPE_CHECKING:
    from hhn.config import DecisionRule

DEVICES = DEVICE_NAMES
#: the settings that decide a proposal besides the session (``Engine.settings``; the other options, device,
#: precision, threads and batch size, only change the speed)
PROPOSAL_SETTINGS = ("model", "shots", "threshold", "decision", "snap", "refine_supports", "min_score",
                     "tag_prior")
RECORD_FORMAT = "napari-wfss-proposal-settings"
#: the default minimum class score: off (module doc; benchmarks/results/empty-decision.jsonl)
DEFAULT_MIN_SCORE = 0.0


class OptionsError(UserError):
    """A proposal option out of range, or an options record that cannot be read."""


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` flag every ``wfss`` subcommand that computes shares."""
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="compute device; auto picks cuda, then mps, then cpu (default: auto)")


def check_run_numbers(shots: int, batch_size: int, threshold: float | None, min_score: float = 0.0) -> None:
    """Raise :class:`OptionsError` unless ``shots`` and ``batch_size`` are at least 1, ``threshold`` is
    None or in ``[0, 1]`` and ``min_score`` is in ``[0, 1]`` (see the module doc)."""
    if shots < 1 or batch_size < 1:
        raise OptionsError(f"shots and batch size must be at least 1 (got {shots} and {batch_size})")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise OptionsError(f"threshold must be in [0, 1] (or left out for the model's own), got {threshold}")
    if not 0.0 <= min_score <= 1.0:
        raise OptionsError(f"minimum class score must be in [0, 1] (0 keeps every class), got {min_score}")


def check_tag_prior(name: str | None) -> None:
    """Raise :class:`OptionsError` unless ``name`` is None (the model's own prior) or a name of
    ``hhn.registry.TAG_PRIORS``."""
    if name is not None and name not in TAG_PRIORS:
        raise OptionsError(f"tag prior must be one of {', '.join(TAG_PRIORS)} (or left out for the model's own), "
                           f"got {name!r}")


@dataclass(frozen=True)
class ProposalOptions:
    """One proposal run's settings.

    ``model``: ``"default"``, a checkpoint path, ``"local-dir:/folder"`` or ``"preset:NAME"``;
    ``device``: one of :data:`DEVICES`; ``shots``: at most this many supports per class; ``batch_size``:
    proposals saved per project-file write; ``threshold``: see the module doc; ``decision``: a rule as ``wfss eval
    --decision`` writes it (``hhn.config.parse_decision_rule``), None for the model's; ``snap``: False
    drops the rule's snap to the image's edges; ``refine_supports``: True / False refines tag supports
    or not, None follows the rule; ``precision``: one of :data:`PRECISIONS` (the network's compute
    precision; ``auto``: float16 on CUDA, float32 elsewhere); ``threads``: CPU cores a run uses (queries
    computed side by side), None for torch's thread count; ``min_score``: the minimum class score (module doc);
    ``tag_prior``: the tag prior classes learnt from tags are fitted with, a name of
    ``hhn.registry.TAG_PRIORS``, None for the model's own (its config's ``tag_prior``).
    """

    model: str = "default"
    device: str = "auto"
    shots: int = 5
    batch_size: int = 4
    threshold: float | None = None
    decision: str | None = None
    snap: bool = True
    refine_supports: bool | None = None
    precision: str = "auto"
    threads: int | None = None
    min_score: float = DEFAULT_MIN_SCORE
    tag_prior: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise OptionsError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise OptionsError(f"threads must be at least 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise OptionsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_tag_prior(self.tag_prior)
        check_run_numbers(self.shots, self.batch_size, self.threshold, self.min_score)
        object.__setattr__(self, "min_score", float(self.min_score))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))
        self.decision_rule()  # a malformed rule fails here, before any work

    def decision_rule(self) -> DecisionRule | None:
        """The parsed ``decision``, or None for the model's own rule."""
        from hhn.config import parse_decision_rule

        return None if self.decision is None else parse_decision_rule(self.decision)

    def engine_kwargs(self) -> dict[str, Any]:
        """The :class:`napari_wfss.engine.Engine` arguments these options stand for."""
        fields = dataclasses.asdict(self)
        fields["decision"] = self.decision_rule()
        return fields

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        """One JSON object (the child process's request); :meth:`from_json` reads it back equal."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProposalOptions:
        """Options from :meth:`to_json`'s text; unknown or badly typed fields raise :class:`OptionsError`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionsError(f"proposal options are not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise OptionsError("proposal options must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProposalOptions:
        """Options from a dict of field values (see :meth:`from_json`)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise OptionsError(f"unknown proposal option(s): {', '.join(unknown)}")
        types = {"model": (str,), "device": (str,), "shots": (int,), "batch_size": (int,),
                 "threshold": (int, float, type(None)), "decision": (str, type(None)), "snap": (bool,),
                 "refine_supports": (bool, type(None)), "precision": (str,), "threads": (int, type(None)),
                 "min_score": (int, float), "tag_prior": (str, type(None))}
        for name, value in data.items():
            if not isinstance(value, types[name]) or (isinstance(value, bool) and bool not in types[name]):
                raise OptionsError(f"proposal option {name} has the wrong type: {value!r}")
        return cls(**data)

    # ------------------------------------------------------------------ command line
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the options' flags to a parser (``wfss label``); :meth:`from_args` reads them back."""
        parser.add_argument("--model", default="default",
                            help="'default' (shipped offline model), a checkpoint path, local-dir:FOLDER, or "
                                 "preset:NAME (random heads: untrained, only to try the pipeline) (default: default)")
        parser.add_argument("--shots", type=int, default=5, help="at most this many supports per class (default: 5)")
        parser.add_argument("--batch-size", type=int, default=4,
                            help="proposals saved per write of the project file (default: 4)")
        parser.add_argument("--threshold", type=float, default=None,
                            help="background where no class reaches this foreground score, in [0, 1] (0: no "
                                 "background); inside (0, 1) also each class's threshold in the decision rule, "
                                 "before its trim and snap (default: the rule's own)")
        parser.add_argument("--decision", default=None, metavar="RULE",
                            help="override the model's decision rule, as in `wfss eval --decision`: 'argmax' or "
                                 "PRIOR_WEIGHT,THRESHOLD[,trim:A/B/C][,snap:BAND][,supports:refined][,flip:EXCESS], "
                                 "e.g. 0.5,0.6,trim:1/0.5/0 (default: the model's rule)")
        parser.add_argument("--no-snap", dest="snap", action="store_false",
                            help="leave out the rule's snap to the image's colour edges (GrabCut), e.g. for images "
                                 "whose colour edges do not follow the objects")
        parser.add_argument("--refine-supports", action="store_true", default=None,
                            help="refine each tagged support's prior like a mask (threshold, trim, snap) before it "
                                 "is used: helped objects of one appearance (animals) and hurt objects made of "
                                 "unlike parts (signs, buildings) on MSRC; see the model card (default: the "
                                 "model's rule)")
        parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                            help="in each image, a class whose mean foreground score over its pixels is below this "
                                 "is judged absent (its pixels become background); an image left with no class "
                                 "counts as 'no class found'; 0 keeps every class (default: "
                                 f"{DEFAULT_MIN_SCORE:g}; 0.8 emptied 30-58 %% of MSRC photos showing none of the "
                                 "classes, and lowered the mIoU of the photos showing them by up to 2.5 points: "
                                 "benchmarks/empty_decision.py)")
        parser.add_argument("--tag-prior", default=None, choices=TAG_PRIORS,
                            help="the tag prior classes learnt from tags are fitted with (default: the model's own; "
                                 "the default model's is coseg-objects, which finds objects in clutter; coseg-ratio "
                                 "maps every class as a region, safer for surfaces such as sky, water or foliage; see "
                                 "the model card)")
        add_device_argument(parser)
        parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                            help="the network's compute precision; auto: float16 on CUDA, float32 elsewhere "
                                 "(default: auto)")
        parser.add_argument("--threads", type=int, default=None,
                            help="CPU cores to use: that many images are computed side by side (default: "
                                 "torch's thread count, normally every core)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProposalOptions:
        """The options of parsed :meth:`add_arguments` flags."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclass
class ProposalRecord:
    """Which settings (:data:`PROPOSAL_SETTINGS`, as ``Engine.settings`` gives them) made each image's
    proposal; ``wfss label`` keeps it in its project folder to tell a rerun with other options.

    The file is ``{"format", "version", "settings": [settings, ...], "images": {image: [index, proposal
    time]}}``; an entry holds only while the image's proposal has that time (a proposal made since by
    anything else, e.g. the widget, has another time, so its settings are unknown).
    """

    path: Path
    settings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    images: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ProposalRecord:
        """The record in ``path``; empty when the file does not exist. A damaged file raises
        :class:`OptionsError` naming it."""
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != RECORD_FORMAT:
                raise ValueError(f"format is not {RECORD_FORMAT!r}")
            settings = [dict(s) for s in data["settings"]]
            images = {str(rel): (int(i), str(t)) for rel, (i, t) in data["images"].items()}
            if any(not 0 <= i < len(settings) for i, _ in images.values()):
                raise ValueError("an image names settings that are not listed")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OptionsError(f"the record of proposal options is damaged ({exc}): {path}; delete it (the proposals "
                               "are kept; their options count as unknown)") from exc
        return cls(path, settings, images)

    def settings_of(self, image: str, proposal_time: str | None) -> dict[str, Any] | None:
        """The settings that made ``image``'s proposal of ``proposal_time``, None when unknown."""
        entry = self.images.get(image)
        if entry is None or proposal_time is None or entry[1] != proposal_time:
            return None
        return self.settings[entry[0]]

    def note(self, image: str, settings: dict[str, Any], proposal_time: str) -> None:
        """Record that ``settings`` made ``image``'s proposal of ``proposal_time`` (in memory: :meth:`save`)."""
        if settings not in self.settings:
            self.settings.append(settings)
        self.images[image] = (self.settings.index(settings), proposal_time)

    def save(self) -> None:
        """Write the record atomically."""
        atomic_write_json(self.path, {"format": RECORD_FORMAT, "version": 1, "settings": self.settings,
                                      "images": {rel: list(entry) for rel, entry in self.images.items()}})


def settings_differences(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (earlier value, value now)}`` for the settings of ``earlier`` that ``now`` changes."""
    return {name: (earlier[name], now[name]) for name in PROPOSAL_SETTINGS
            if name in earlier and earlier[name] != now.get(name)}
