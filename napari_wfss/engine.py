"""The proposal engine: a session's tags and masks in, one proposed label map per query image out.

One run (:meth:`Engine.propose`):

1. **Plan** (:func:`plan_run`, no torch). The classes in play are those with at least one image
   tagged with them or one user mask (edited or accepted) painting them. Per class ``c``:
   *positives* = images tagged ``c`` or whose user mask paints ``c``; *negatives* = the other
   tagged or masked images, among them every image with a negative tag (``Session.set_no_class``) and
   every user mask painting no class; *supports* = up to ``shots`` positives, user masks painting ``c`` first
   (accepted before edited), then tagged images, each group in session order. Queries default to
   the images with no tag, no proposal and no user mask; an explicit list may name any image, but
   edited and accepted images (negative tags included) are always left out (a proposal never replaces
   the user's work).
2. **Supports, once per class**, through the model library's one few-shot pipeline
   (``hhn.pipeline.FewShotPipeline.fit``): the class's tag prior is fitted on its positives and
   negatives (positives the user painted ``c`` in carry ``user mask == c``, which the prior trusts);
   a support's mask is that user mask where there is one, else the fitted prior's map of the image
   (refined first when the rule says so); the supports are encoded once per class. Every gallery image
   is decoded once and run through the backbone at most once per run, however many classes it serves
   (the co-segmentation prior reads the same taps when they are the ones it expects).
3. **Queries, streamed.** Each query is decoded and encoded once (the prior reuses the taps too);
   per class the pipeline's ``ClassSegmenter.predict`` gives ``fg_prob`` ``(H, W)`` in ``[0, 1]`` (the
   network's softmax blended with the prior by the class's decision rule, ``hhn.config.DecisionRule``:
   the model's ``decision``, or its ``decision_masks`` for a class whose supports all carry user masks;
   0 where the rule's trim to the query's own appearance or its snap to the image's edges removed a
   pixel, at least the rule's threshold where the snap added one).
   Per pixel the label is the class with the highest ``fg_prob`` (ties: class-table order), or
   background (0) where that highest value is below ``threshold`` (default: that class's rule's; a given one
   also replaces the rule's, see :class:`Engine`). On the CPU, ``threads`` queries are computed side by
   side, each on one torch thread (one query's small convolutions, its GrabCut and its prior do not
   keep two cores busy; two queries do); results still come out in plan order, and a query's result
   does not depend on the thread count. Then everything held for the query is dropped
   (``FewShotPipeline.forget_image``), so memory stays flat over any number of images. With
   ``store=True`` the first result is stored alone (so a progress bar moves after the first image),
   then each ``batch_size`` results, with ``Session.set_proposal`` under one ``deferred_save`` (one
   write of ``project.json`` per batch), then yielded; with ``store=False``
   (the widget's child process: the widget stores them) each result is yielded as soon as it is done.

4. **No class present?** Per image, a class whose score (the mean ``fg_prob`` over the pixels it
   was given) is below ``min_score`` is judged absent: its pixels become background
   (:func:`decide_no_class`). An image left with no class (also one whose map was empty already) is
   "no class found": ``ProposalResult.no_class``. Off by default (``options.DEFAULT_MIN_SCORE`` = 0,
   measured with ``benchmarks/empty_decision.py``: see :mod:`napari_wfss.options`).

Cancellation: ``should_stop()`` is asked before each class's support preparation and before each
query image; once it returns True the images already started are finished, stored and yielded, and
the run ends. A query that cannot be read
yields a :class:`ProposalResult` with ``error`` set and the run goes on; a support image that cannot
be read is left out with a note in :attr:`Engine.warnings`, and so is a class whose tag prior the
inversion guard turned round (``hhn.priors.orientation``: the reason and what to do about it).

Torch and the model modules of :mod:`hhn` are imported on first use, so importing this module stays light.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hhn.errors import UserError

from .classes import BACKGROUND_ID
from .images import ImageReadError, read_image
from .options import DEFAULT_MIN_SCORE, ProposalOptions, check_run_numbers, check_tag_prior
from .session import ACCEPTED, EDITED, PROPOSED, REJECTED, UNTAGGED, Session

if TYPE_CHECKING:
    from hhn.pipeline import ClassSegmenter, FewShotPipeline
    from hhn.predictor import Predictor
    from hhn.priors.base import TagPrior

PRESET_PREFIX = "preset:"
UNTRAINED_NOTE = "untrained heads"
USER_MASK_KEPT = "a user mask appeared meanwhile"  #: why a finished proposal was not stored (the mask stays)


class EngineError(UserError):
    """The session cannot be proposed from (nothing tagged, a class without a readable image, ...)."""


# ============================================================================================ plan


@dataclass(frozen=True)
class ClassPlan:
    """What one class of a run is learnt from. Images are session paths (relative, POSIX).

    ``painted``: the positives whose user mask paints the class (their mask is used as it is, as
    support mask and at prior fitting); the other positives are known by their tags only.
    """

    name: str
    id: int
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    supports: tuple[str, ...]
    painted: frozenset[str]


@dataclass(frozen=True)
class RunPlan:
    """The classes of a run (class-table order) and its query images (session order)."""

    classes: tuple[ClassPlan, ...]
    queries: tuple[str, ...]


def default_queries(session: Session, redo_model: str | None = None) -> list[str]:
    """Images a run proposes by default: no tag, no proposal and no user mask (status untagged, or
    rejected without tags), in session order. With ``redo_model``, also the untagged images whose
    proposal (still unreviewed: status proposed) was made by another model than ``redo_model`` (after a
    retraining); edited and accepted masks are never among them."""
    with session.lock:
        return [rel for rel in session.images_with_status(UNTAGGED, REJECTED, PROPOSED) if not session.tags_of(rel)
                and (session.status(rel) != PROPOSED
                     or (redo_model is not None and session.info(rel).proposal_model != redo_model))]


def plan_run(session: Session, images: Sequence[str] | None = None, shots: int = 5) -> RunPlan:
    """Plan a run from the session's current tags and masks (see the module doc, step 1).

    ``images``: the queries (session paths or absolute paths); default :func:`default_queries`.
    Raises :class:`EngineError` when no image is tagged or masked.
    """
    if shots < 1:
        raise EngineError(f"shots must be at least 1, got {shots}")
    with session.lock:
        present: dict[str, set[int]] = {}  # image -> class ids it shows (tags and user-mask classes; none: a negative)
        painted: dict[str, set[int]] = {}  # image -> class ids of its user mask
        accepted: set[str] = set()
        ids_by_name = {c.name: c.id for c in session.classes}
        for rel in session.images:
            info = session.info(rel)
            ids = {ids_by_name[n] for n in info.tags}
            if info.status in (EDITED, ACCEPTED):
                painted[rel] = {ids_by_name[n] for n in info.classes_present}
                ids |= painted[rel]
                if info.status == ACCEPTED:
                    accepted.add(rel)
            if ids or rel in painted or info.no_class:
                present[rel] = ids
        if not any(present.values()):
            raise EngineError("no image is tagged: tag at least one image with a class (or accept a mask) "
                              "before proposing")
        plans = []
        for c in session.classes:
            positives = tuple(rel for rel, ids in present.items() if c.id in ids)
            if not positives:
                continue
            negatives = tuple(rel for rel, ids in present.items() if c.id not in ids)
            by_mask = [rel for rel in positives if c.id in painted.get(rel, ())]
            by_mask.sort(key=lambda rel: rel not in accepted)  # stable: accepted first, then edited
            tagged = [rel for rel in positives if rel not in by_mask]
            supports = tuple((by_mask + tagged)[:shots])
            plans.append(ClassPlan(c.name, c.id, positives, negatives, supports, frozenset(by_mask)))
        if images is None:
            queries = default_queries(session)
        else:
            rels = [session.info(im).path for im in images]
            queries = [rel for rel in dict.fromkeys(rels) if session.status(rel) not in (EDITED, ACCEPTED)]
    return RunPlan(tuple(plans), tuple(queries))


# ========================================================================================= results


@dataclass
class ProposalResult:
    """One finished query image.

    ``image``: session path; ``key``: its session key. ``label_map``: ``(H, W)`` ``uint8`` class ids
    (0 = background), None when ``error`` is set. ``scores``: per class name present in the map, the
    mean ``fg_prob`` over its pixels, in ``[0, 1]``. ``fractions``: per class in play, the share of
    the image's pixels labelled with it, in ``[0, 1]``. ``seconds``: the run's wall time since the
    previous result (decoding, encoding, priors, prediction; with queries computed side by side, the
    image's share of the run's time, not its own latency). ``stored``: whether the session now
    holds it as the proposal (False without ``store``, or when a user mask appeared meanwhile).
    ``error``: why the image has no label map (it could not be read) or was not stored. ``model``: the
    name of the model that proposed it, stored with the proposal (``Engine.model_name``). ``no_class``: the
    image-level decision (:func:`decide_no_class`) found none of the classes in the image: ``label_map`` is
    all background, ``scores`` empty.
    """

    image: str
    key: str
    label_map: np.ndarray | None
    scores: dict[str, float] = field(default_factory=dict)
    fractions: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stored: bool = False
    error: str | None = None
    model: str = ""
    no_class: bool = False


class _Resolver:
    """Running per-pixel decision over classes, fed one ``fg_prob`` map per class (holds two maps)."""

    def __init__(self) -> None:
        self.count = 0
        self.best: np.ndarray | None = None  # float32 (H, W): the highest fg_prob so far
        self.index: np.ndarray | None = None  # int32 (H, W): which class (feeding order) gave it

    def add(self, fg_prob: np.ndarray) -> None:
        """Feed the next class's ``float (H, W)`` map in ``[0, 1]``."""
        if self.best is None or self.index is None:  # the first map (both are set together)
            self.best = np.array(fg_prob, dtype=np.float32)
            self.index = np.zeros(fg_prob.shape, np.int32)
        else:
            better = fg_prob > self.best  # strict: on ties the earlier class keeps the pixel
            self.best[better] = fg_prob[better]
            self.index[better] = self.count
        self.count += 1

    def finish(self, class_ids: Sequence[int], threshold: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(label_map, best_prob)`` as :func:`resolve_label_map` returns them."""
        if self.best is None or self.index is None:
            raise ValueError("no class map to decide from")
        label_map = np.asarray(class_ids, dtype=np.uint8)[self.index]
        cut = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (self.count,))[self.index]
        label_map[self.best < cut] = BACKGROUND_ID
        return label_map, self.best


def resolve_label_map(fg_probs: Sequence[np.ndarray], class_ids: Sequence[int],
                      threshold: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel decision over classes.

    ``fg_probs``: one ``float32 (H, W)`` map in ``[0, 1]`` per class; ``class_ids``: their label ids;
    ``threshold``: one for every class, or one per class (its decision rule's).
    Returns ``(label_map, best_prob)``: ``uint8 (H, W)`` = the id of the class with the highest
    probability (first class on ties), or 0 where that probability is below that class's threshold; and
    ``float32 (H, W)`` that highest probability.
    """
    resolver = _Resolver()
    for fg in fg_probs:
        resolver.add(fg)
    return resolver.finish(class_ids, threshold)


def store_proposals(session: Session, results: Sequence[ProposalResult]) -> None:
    """Save finished results as their images' proposals with one ``project.json`` write: the one place
    both ``wfss label`` and the widget store proposals. Sets each result's ``stored``; a result that is
    not stored gets ``error``: :data:`USER_MASK_KEPT` when a user mask appeared meanwhile, else why (the
    file changed on disk meanwhile, a class was removed).
    Results without a label map (``error`` set) are left as they are."""
    with session.deferred_save():
        for result in results:
            if result.label_map is None:
                continue
            try:
                result.stored = session.set_proposal(result.image, result.label_map, model=result.model,
                                                     scores=result.scores)
            except UserError as exc:
                result.error = f"not stored: {exc}"
            else:
                if not result.stored:
                    result.error = USER_MASK_KEPT


def decide_no_class(result: ProposalResult, min_score: float, classes: Sequence[ClassPlan]) -> None:
    """The image-level decision (module doc, step 4), in place: every class of ``classes`` whose score in
    ``result.scores`` (mean ``fg_prob`` over its pixels, in ``[0, 1]``) is below ``min_score`` leaves the
    label map (its pixels become background), ``scores`` and ``fractions`` (0); ``no_class`` is set when no
    class is left. A result without a label map is left as it is."""
    if result.label_map is None:
        return
    for c in classes:
        if result.scores.get(c.name, 1.0) < min_score:
            result.label_map[result.label_map == c.id] = BACKGROUND_ID
            del result.scores[c.name]
            result.fractions[c.name] = 0.0
    result.no_class = not result.scores


def _summarise(label_map: np.ndarray, best_prob: np.ndarray, classes: Sequence[ClassPlan]) -> tuple[dict, dict]:
    """(scores, fractions) of a resolved map; see :class:`ProposalResult`."""
    scores, fractions = {}, {}
    for c in classes:
        where = label_map == c.id
        n = int(where.sum())
        fractions[c.name] = n / label_map.size
        if n:
            scores[c.name] = float(best_prob[where].mean())
    return scores, fractions


# ========================================================================================== engine


def is_preset_spec(model: str) -> bool:
    """True for ``"preset:NAME"`` and bare preset names (``hhn.config.list_presets()``): random heads."""
    from hhn.config import list_presets

    return model.startswith(PRESET_PREFIX) or model in list_presets()


def declared_threshold(model: str) -> float | None:
    """The foreground threshold of the decision rule that the model name ``model`` declares, read from its
    preset or checkpoint JSON without importing torch; None where that is unknown before loading (a
    single-file ``.pt`` checkpoint, a missing or invalid one: the run then reports the error)."""
    from hhn.model_names import declared_config

    try:
        config = declared_config(model.removeprefix(PRESET_PREFIX))
    except UserError:
        return None
    return None if config is None else config.decision.threshold


class Engine:
    """Turns a session into proposals with an HHN model (see the module doc).

    Args:
        model: ``"default"`` (the shipped checkpoint), a checkpoint path, ``"local-dir:/folder"``,
            ``"preset:NAME"`` (random heads on the ImageNet backbone: untrained, for trying the
            pipeline), an ``hhn.network.HHN`` instance, or a ready ``hhn.predictor.Predictor``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"`` (``hhn.device.select_device``).
        shots: at most this many support images per class.
        batch_size: results stored per ``project.json`` write (the first result is stored alone).
        threshold: background where the best class's ``fg_prob`` is below it: None (the rule's) or a
            value in ``[0, 1]``, as :mod:`napari_wfss.options` defines it (a ready ``Predictor`` keeps its
            rule; only the per-pixel decision uses it).
        decision: the ``hhn.config.DecisionRule`` that turns the network's output into each class's
            ``fg_prob``; default (None): the model's own rule.
        snap: False drops the rule's snap to the image's colour edges (GrabCut), e.g. for images whose
            colour edges do not follow the objects; True keeps the rule as it is.
        refine_supports: True refines each support known by its tags only (its prior thresholded,
            trimmed and snapped with the rule's steps) before it is encoded, False never does, None
            (default) follows the rule (``DecisionRule.refine_supports``; the default model's: no).
        precision: ``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"`` or
            ``"bfloat16"``: the network's compute precision (``hhn.device.inference_dtype``).
        min_score: in each image, a class scoring below it is judged absent (module doc, step 4); 0 keeps
            every class.
        tag_prior: the name of the tag prior (``hhn.registry.TAG_PRIORS``) classes learnt from tags are
            fitted with; None (default): the model's own. Not with ``prior``.
        threads: CPU cores a run uses: on the CPU this many queries are computed side by side, each on
            one torch thread (torch's thread count is set to 1 during a run and restored after); None
            (default): torch's thread count. On CUDA / MPS queries go one at a time.
        prior: the ``hhn.priors`` ``TagPrior`` fitted per class; default :meth:`default_prior`.
        model_name: the name stored with each proposal; default derived from ``model``.

    The model is loaded on the first run (or by :meth:`load`) and kept for later runs.
    """

    def __init__(
        self,
        model: Any = "default",
        device: str = "auto",
        shots: int = 5,
        batch_size: int = 4,
        threshold: float | None = None,
        prior: TagPrior | None = None,
        model_name: str | None = None,
        decision: Any = None,
        snap: bool = True,
        refine_supports: bool | None = None,
        precision: str = "auto",
        threads: int | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        tag_prior: str | None = None,
    ) -> None:
        check_run_numbers(shots, batch_size, threshold, min_score)
        check_tag_prior(tag_prior)
        if prior is not None and tag_prior is not None:
            raise EngineError("give the engine either a prior or the name of one (tag_prior), not both")
        if threads is not None and threads < 1:
            raise EngineError(f"threads must be at least 1, got {threads}")
        self.model_spec = model
        self.device = device
        self.shots = int(shots)
        self.batch_size = int(batch_size)
        self._threshold = None if threshold is None else float(threshold)
        self._decision = decision
        self._snap = bool(snap)
        self._refine_supports = None if refine_supports is None else bool(refine_supports)
        self._precision = precision
        self.threads = threads
        self.min_score = float(min_score)
        self._prior = prior
        self._tag_prior = tag_prior
        self._model_name = model_name
        self._pipeline: FewShotPipeline | None = None
        self.warnings: list[str] = []

    @classmethod
    def from_options(cls, options: ProposalOptions, **kwargs: Any) -> Engine:
        """The engine of a run's :class:`~napari_wfss.options.ProposalOptions` (``wfss label``, the widget's
        child process); ``kwargs``: the Python-only arguments (``prior``, ``model_name``)."""
        return cls(**options.engine_kwargs(), **kwargs)

    # ------------------------------------------------------------------ model
    @property
    def threshold(self) -> float:
        """The foreground threshold in use for classes learnt from tags: the one given, else the loaded
        model's decision rule's (a class learnt from pixel masks alone uses its own rule's threshold,
        ``FewShotPipeline.rule_for``, unless one is given)."""
        return self._threshold if self._threshold is not None else self.load().decision.threshold

    @property
    def untrained(self) -> bool:
        """True when the heads are random (a preset), so proposals are not meaningful."""
        return isinstance(self.model_spec, str) and is_preset_spec(self.model_spec)

    @property
    def model_name(self) -> str:
        """The name stored with each proposal (and in export manifests)."""
        if self._model_name:
            return self._model_name
        if not isinstance(self.model_spec, str | os.PathLike):
            return f"{self.model_spec.config.name} (in-memory)"
        name = os.fspath(self.model_spec)
        if self.untrained:
            preset = name.removeprefix(PRESET_PREFIX)
            return f"{PRESET_PREFIX}{preset} ({UNTRAINED_NOTE})"
        return name

    def settings(self) -> dict[str, Any]:
        """What decides this engine's proposals besides the session, as JSON values (``wfss label`` records
        them per image to tell a rerun with other options): the keys of
        :data:`~napari_wfss.options.PROPOSAL_SETTINGS`; the decision rule as a dict, None for the model's."""
        rule = self._decision
        return {"model": self.model_name, "shots": self.shots, "threshold": self._threshold,
                "decision": None if rule is None else dataclasses.asdict(rule), "snap": self._snap,
                "refine_supports": self._refine_supports, "min_score": self.min_score, "tag_prior": self._tag_prior}

    def load(self) -> Predictor:
        """Build the model and its predictor now (else done by the first run); returns the predictor."""
        return self.pipeline().predictor

    def pipeline(self) -> FewShotPipeline:
        """The few-shot pipeline of the model, under its decision rule with this engine's overrides
        (``hhn.pipeline.override_rule``); built on first use and kept for later runs."""
        if self._pipeline is None:
            from hhn.pipeline import FewShotPipeline

            model = self.model_spec
            if hasattr(model, "encode_support"):  # a ready predictor
                if (self._decision is not None or not self._snap or self._refine_supports is not None
                        or self._precision != "auto"):
                    raise EngineError("give the decision rule to the Predictor itself, not to the Engine")
                self._pipeline = FewShotPipeline(model, prior=self._prior, tag_prior=self._tag_prior)
            else:
                if isinstance(model, str | os.PathLike):
                    model = os.fspath(model).removeprefix(PRESET_PREFIX)
                self._pipeline = FewShotPipeline.from_model(
                    model, device=self.device, decision=self._decision, threshold=self._threshold, snap=self._snap,
                    refine_supports=self._refine_supports, precision=self._precision, prior=self._prior,
                    tag_prior=self._tag_prior)
        return self._pipeline

    # ------------------------------------------------------------------ supports
    def _read(self, session: Session, rel: str, cache: dict[str, np.ndarray | None]) -> np.ndarray | None:
        """Decoded gallery image (once per run), or None with a warning if it cannot be read."""
        if rel not in cache:
            try:
                cache[rel] = session.read_image(rel)
            except ImageReadError as exc:
                self.warnings.append(f"left out {rel}: {exc}")
                cache[rel] = None
        return cache[rel]

    def _prepare_class(self, session: Session, plan: ClassPlan, pixels: dict[str, np.ndarray | None]) -> ClassSegmenter:
        """Fit the class's prior and encode its support set through the pipeline (each gallery image
        decoded and encoded once per run)."""
        from hhn.priors.base import TaggedImage

        positives: dict[str, TaggedImage] = {}
        for rel in plan.positives:
            image = self._read(session, rel, pixels)
            if image is not None:
                painted = session.mask(rel) if rel in plan.painted else None  # None: no mask (any more)
                positives[rel] = TaggedImage(image,
                                             None if painted is None else (painted == plan.id).astype(np.float32))
        negatives = [im for im in (self._read(session, r, pixels) for r in plan.negatives) if im is not None]
        if not positives:
            raise EngineError(f"class {plan.name!r}: none of its images can be read "
                              f"({', '.join(plan.positives[:5])}); fix or re-tag them")
        supports = [positives[rel] for rel in plan.supports if rel in positives]
        segmenter = self.pipeline().fit(plan.name, list(positives.values()), negatives, supports=supports)
        if segmenter.orientation is not None and segmenter.orientation.flipped:
            self.warnings.append(segmenter.orientation.message())
        return segmenter

    # ------------------------------------------------------------------ run
    def propose(
        self,
        session: Session,
        images: Sequence[str] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        store: bool = True,
        plan: RunPlan | None = None,
        runner: QueryRunner | None = None,
    ) -> Iterator[ProposalResult]:
        """Propose label maps; yields one :class:`ProposalResult` per finished query (see the module doc).

        ``images``: queries (default :func:`default_queries`); ``plan``: a plan made beforehand with
        :func:`plan_run` (then ``images`` is ignored). ``store``: save each map as the image's
        proposal. ``runner``: computes the queries from the learnt classes (default: this process, on
        ``threads`` threads; ``napari_wfss.dask_runner`` on a Dask cluster). Raises :class:`EngineError`
        when nothing is tagged, or a class has no readable image.
        """
        plan = plan or plan_run(session, images, self.shots)
        self.warnings = []
        if not plan.queries:
            return
        pipeline = self.pipeline()
        pipeline.use_vocabulary([c.name for c in plan.classes])
        pixels: dict[str, np.ndarray | None] = {}
        prepared = []
        try:
            for c in plan.classes:
                if should_stop():
                    return
                prepared.append(self._prepare_class(session, c, pixels))
        finally:
            pipeline.forget_images()
        del pixels  # supports are encoded: free the gallery before streaming the queries
        thresholds = tuple(s.rule.threshold if self._threshold is None else self._threshold for s in prepared)
        learnt = LearntClasses(plan.classes, tuple(prepared), thresholds, self.model_name)
        results = (runner.stream(session, learnt, plan.queries, should_stop) if runner is not None
                   else self._stream(session, learnt, plan.queries, should_stop))
        results = self._decided(results, plan.classes)
        if not store:  # nothing to write: each result as soon as it is done (the widget shows them so)
            yield from results
            return
        batch: list[ProposalResult] = []
        size = 1  # the first result alone: the caller hears of the first image at once
        for result in results:
            batch.append(result)
            if len(batch) == size:
                store_proposals(session, batch)
                yield from batch
                batch, size = [], self.batch_size
        if batch:
            store_proposals(session, batch)
            yield from batch

    def _decided(self, results: Iterator[ProposalResult], classes: Sequence[ClassPlan]) -> Iterator[ProposalResult]:
        """``results`` after the image-level decision (:func:`decide_no_class` at ``min_score``)."""
        for result in results:
            decide_no_class(result, self.min_score, classes)
            yield result

    def _workers(self) -> int:
        """Queries computed side by side: ``threads`` (default torch's thread count) on the CPU, else 1."""
        import torch

        if self.pipeline().predictor.device.type != "cpu":
            return 1
        return self.threads if self.threads is not None else max(1, torch.get_num_threads())

    def _stream(self, session: Session, learnt: LearntClasses, queries: Sequence[str],
                should_stop: Callable[[], bool]) -> Iterator[ProposalResult]:
        """Every query's result in plan order, ``_workers()`` queries at a time (see the module doc).
        No new query starts once ``should_stop()`` is true; those started are finished and yielded.
        ``seconds``: the wall time since the previous result (the first: since the stream started)."""
        from hhn.device import cpu_threads

        workers = self._workers()
        on_cpu = self.pipeline().predictor.device.type == "cpu"
        todo = iter(queries)
        pending: deque[Future[ProposalResult]] = deque()
        stopped = False
        with cpu_threads(1 if on_cpu else None), ThreadPoolExecutor(workers, "wfss-query") as pool:
            try:
                def submit() -> None:
                    nonlocal stopped
                    stopped = stopped or should_stop()
                    rel = None if stopped else next(todo, None)
                    if rel is not None:
                        pending.append(pool.submit(learnt.propose_file, rel, session.key(rel),
                                                   session.image_path(rel), session.max_pixels))

                for _ in range(2 * workers):  # keep every worker busy while results are handed out
                    submit()
                last = time.perf_counter()
                while pending:
                    result = pending.popleft().result()
                    now = time.perf_counter()
                    result.seconds, last = now - last, now
                    yield result
                    submit()
            finally:
                for future in pending:  # the consumer stopped early or a query failed: no new work
                    future.cancel()



@dataclass(frozen=True)
class LearntClasses:
    """A run's classes once learnt (step 2 of the module doc): everything a query is proposed from.

    ``segmenters``: one ``hhn.pipeline.ClassSegmenter`` per class of ``classes`` (they share the
    pipeline, hence the model); ``thresholds``: the per-pixel decision's, one per class (its rule's, or
    the run's given threshold). Picklable (the prior's and the
    pipeline's caches travel empty), so a runner can ship it to other processes once
    (:mod:`napari_wfss.dask_runner`); every runner proposes through :meth:`propose_file`, so their
    masks are the same bit for bit on the CPU.
    """

    classes: tuple[ClassPlan, ...]
    segmenters: tuple[ClassSegmenter, ...]
    thresholds: tuple[float, ...]
    model_name: str

    def propose_file(self, rel: str, key: str, path: str | os.PathLike[str], max_pixels: int) -> ProposalResult:
        """Decode one query (``read_image`` with ``max_pixels``) and propose it; an unreadable file gives a
        result with ``error`` set. Thread-safe: runners call it on several threads at once."""
        try:
            image = read_image(path, max_pixels)
        except ImageReadError as exc:
            return ProposalResult(rel, key, None, error=str(exc), model=self.model_name)
        return self.propose_image(rel, key, image)

    def propose_image(self, rel: str, key: str, image: np.ndarray) -> ProposalResult:
        """``uint8 (H, W, 3)`` -> its proposal: every class predicted, then the per-pixel decision."""
        pipeline = self.segmenters[0].pipeline
        resolver = _Resolver()
        try:
            encoded = pipeline.taps(image)  # once, shared by every class
            for segmenter in self.segmenters:
                resolver.add(segmenter.predict(encoded).fg_prob)
        finally:
            pipeline.forget_image(image)
        result = ProposalResult(rel, key, None, model=self.model_name)
        result.label_map, best = resolver.finish([c.id for c in self.classes], self.thresholds)
        result.scores, result.fractions = _summarise(result.label_map, best, self.classes)
        return result


class QueryRunner(Protocol):
    """Computes a run's queries from its learnt classes (:meth:`Engine.propose`'s ``runner``)."""

    def stream(self, session: Session, learnt: LearntClasses, queries: Sequence[str],
               should_stop: Callable[[], bool]) -> Iterator[ProposalResult]:
        """One result per query, as each finishes; no new query starts once ``should_stop()`` is True."""
        ...
