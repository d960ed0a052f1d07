"""The proposal engine: run planning, encode-once guarantees, per-pixel resolution, cancellation, safety.

Real-model tests use a random-weight wfss-lite0 at 64x64 and a colour prior (no pretrained file is
read); resolution tests use a fake predictor whose ``fg_prob`` is the query prior, so the scores are
known exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FnPrior
from PIL import Image

from hhn.config import DecisionRule
from hhn.errors import UserError
from hhn.priors.base import TagPrior, as_tagged
from napari_wfss.engine import (
    USER_MASK_KEPT,
    Engine,
    EngineError,
    default_queries,
    plan_run,
    resolve_label_map,
)
from napari_wfss.session import ACCEPTED, EDITED, PROPOSED, Session

H, W = 24, 32


def _write(folder, name, rgb):
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = rgb
    img[4:12, 6:20] = (255, 255, 255)  # a white patch so images are not flat
    Image.fromarray(img).save(folder / name)


@pytest.fixture
def session(tmp_path):
    """8 images: a0, a1 tagged 'a'; b0 tagged 'b'; ab tagged 'a' and 'b'; q0..q3 untagged."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["a0", "a1", "ab", "b0", "q0", "q1", "q2", "q3"]):
        _write(folder, f"{name}.png", (30 * i, 200 - 20 * i, 90))
    s = Session.create(folder, tmp_path / "project")
    for rel, tags in {"a0.png": ["a"], "a1.png": ["a"], "ab.png": ["a", "b"], "b0.png": ["b"]}.items():
        for t in tags:
            s.tag(rel, t, add_class=True)
    return s


class MapPrior(TagPrior):
    """A tag prior whose map for class ``name`` is ``maps[name](pixels)``; records what it was fitted on."""

    def __init__(self, maps):
        self.maps = maps
        self.fitted = {}

    def fit(self, class_name, positives, negatives=()):
        self.fitted[class_name] = ([as_tagged(p) for p in positives], list(negatives))
        return FnPrior(class_name, self.maps[class_name])


def red(pixels):
    return pixels[:, :, 0].astype(np.float32) / 255.0


def red_prior():
    """The red channel in [0, 1] for every class (ignores the tags)."""
    return MapPrior(defaultdict(lambda: red))


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from hhn.config import load_preset
    from hhn.network import HHN

    torch.manual_seed(0)
    return HHN(dataclasses.replace(load_preset("wfss-lite0"), image_size=(64, 64)), pretrained_backbone=False)


@pytest.fixture
def spied_predictor(tiny_model, monkeypatch):
    """A real predictor whose encode_image / encode_support calls are recorded."""
    from hhn.predictor import Predictor

    predictor = Predictor(tiny_model, device="cpu")
    calls = SimpleNamespace(images=[], supports=[])
    real_image, real_support = predictor.encode_image, predictor.encode_support

    def encode_image(image):
        calls.images.append(image.copy())
        return real_image(image)

    def encode_support(images, masks, text=None):
        calls.supports.append([m.copy() for m in masks])
        return real_support(images, masks, text)

    monkeypatch.setattr(predictor, "encode_image", encode_image)
    monkeypatch.setattr(predictor, "encode_support", encode_support)
    return predictor, calls


def _count_encodings(calls, image):
    return sum(1 for seen in calls.images if seen.shape == image.shape and np.array_equal(seen, image))


# ----------------------------------------------------------------------------------------- plan


def test_plan_classes_positives_negatives_and_queries(session):
    plan = plan_run(session, shots=5)
    by_name = {c.name: c for c in plan.classes}
    assert list(by_name) == ["a", "b"]
    assert by_name["a"].positives == ("a0.png", "a1.png", "ab.png")
    assert by_name["a"].negatives == ("b0.png",)
    assert by_name["b"].positives == ("ab.png", "b0.png")
    assert by_name["b"].negatives == ("a0.png", "a1.png")
    assert plan.queries == ("q0.png", "q1.png", "q2.png", "q3.png")
    assert default_queries(session) == list(plan.queries)


def test_plan_prefers_user_masks_accepted_first_and_caps_shots(session):
    a = session.classes.get("a").id
    painted = np.zeros((H, W), np.uint8)
    painted[2:10, 3:9] = a
    session.mark_edited("q1.png", painted)  # edited, untagged: becomes a positive through its mask
    session.accept("q0.png", painted)
    plan = plan_run(session, shots=3)
    cls_a = next(c for c in plan.classes if c.name == "a")
    assert cls_a.supports == ("q0.png", "q1.png", "a0.png")
    assert cls_a.painted == {"q0.png", "q1.png"}
    assert "q0.png" in cls_a.positives and "q1.png" in cls_a.positives
    cls_b = next(c for c in plan.classes if c.name == "b")
    assert "q0.png" in cls_b.negatives  # masked without b
    assert plan.queries == ("q2.png", "q3.png")


def test_plan_explicit_images_never_include_user_masks(session):
    session.accept("q0.png", np.zeros((H, W), np.uint8))
    session.mark_edited("q1.png", np.zeros((H, W), np.uint8))
    plan = plan_run(session, images=["q0.png", "q1.png", "q2.png", "a0.png"])
    assert plan.queries == ("q2.png", "a0.png")


def test_plan_without_tags_is_a_clear_error(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write(folder, "x.png", (1, 2, 3))
    s = Session.create(folder, tmp_path / "p")
    with pytest.raises(EngineError, match="tag at least one image"):
        plan_run(s)


def test_class_whose_images_cannot_be_read_is_a_clear_error(session, spied_predictor):
    (session.image_folder / "b0.png").write_bytes(b"not a png")
    (session.image_folder / "ab.png").write_bytes(b"not a png either")
    engine = Engine(spied_predictor[0], shots=1, prior=red_prior())
    with pytest.raises(EngineError, match="class 'b'"):
        list(engine.propose(session))


# ------------------------------------------------------------------------------ encode-once rules


def test_supports_encoded_once_per_class_and_each_image_once(session, spied_predictor):
    predictor, calls = spied_predictor
    engine = Engine(predictor, shots=5, batch_size=1, prior=red_prior())
    results = list(engine.propose(session, images=["q0.png", "q1.png"]))
    assert [r.image for r in results] == ["q0.png", "q1.png"]
    assert len(calls.supports) == 2  # one SupportSet per class, shared by both batches
    for rel in ["a0.png", "a1.png", "ab.png", "b0.png", "q0.png", "q1.png"]:
        # 'ab' supports both classes and every query is predicted for both: still one encoding each
        assert _count_encodings(calls, session.read_image(rel)) == 1, rel
    assert len(calls.images) == 6


def test_query_encoded_once_regardless_of_class_count(session, spied_predictor):
    predictor, calls = spied_predictor
    for name in ["c", "d", "e"]:
        session.tag("b0.png", name, add_class=True)
    list(Engine(predictor, shots=1, prior=red_prior()).propose(session, images=["q2.png"]))
    assert len(calls.supports) == 5
    assert _count_encodings(calls, session.read_image("q2.png")) == 1


def test_accepted_mask_becomes_a_pixel_support(session, spied_predictor):
    predictor, calls = spied_predictor
    a = session.classes.get("a").id
    painted = np.zeros((H, W), np.uint8)
    painted[2:10, 3:9] = a
    painted[0, 0] = 255  # ignore pixels are not foreground
    session.accept("q0.png", painted)
    list(Engine(predictor, shots=2, prior=red_prior()).propose(session, images=["q3.png"]))
    masks_a = calls.supports[0]  # class 'a' comes first in the class table
    assert len(masks_a) == 2
    np.testing.assert_array_equal(masks_a[0], (painted == a).astype(np.float32))
    np.testing.assert_array_equal(masks_a[1], red(session.read_image("a0.png")))


def test_a_refining_rule_refines_tagged_supports_and_leaves_user_masks(session, spied_predictor):
    predictor, calls = spied_predictor
    predictor.decision = dataclasses.replace(predictor.decision, refine_supports=True)
    a = session.classes.get("a").id
    painted = np.zeros((H, W), np.uint8)
    painted[2:10, 3:9] = a
    session.accept("q0.png", painted)
    def dim_red(pixels):  # a soft prior: 0.8 on the red square
        return 0.8 * red(pixels)

    list(Engine(predictor, shots=2, prior=MapPrior(defaultdict(lambda: dim_red))).propose(session, images=["q3.png"]))
    masks_a = calls.supports[0]
    np.testing.assert_array_equal(masks_a[0], (painted == a).astype(np.float32))  # the user's mask as it is
    a0 = session.read_image("a0.png")
    np.testing.assert_array_equal(masks_a[1], predictor.support_map(a0, dim_red(a0)))
    np.testing.assert_array_equal(masks_a[1], red(a0))  # thresholded to {0, 1}; the square's edges hold


def test_prior_is_fitted_once_per_class_with_user_masks_trusted(session):
    a = session.classes.get("a").id
    painted = np.zeros((H, W), np.uint8)
    painted[5:15, 5:15] = a
    session.accept("q0.png", painted)
    prior = red_prior()
    list(Engine(FakePredictor(), prior=prior).propose(session))
    assert sorted(prior.fitted) == ["a", "b"]
    positives_a, negatives_a = prior.fitted["a"]
    assert len(positives_a) == 4 and len(negatives_a) == 1  # a0, a1, ab, q0 / b0
    with_mask = [p for p in positives_a if p.mask is not None]
    assert len(with_mask) == 1
    np.testing.assert_array_equal(with_mask[0].mask, (painted == a).astype(np.float32))
    np.testing.assert_array_equal(with_mask[0].pixels, session.read_image("q0.png"))
    positives_b, negatives_b = prior.fitted["b"]
    assert all(p.mask is None for p in positives_b) and len(negatives_b) == 3  # a0, a1, q0 (masked, no b)


def test_real_model_proposals_are_stored_valid_label_maps(session, tiny_model):
    engine = Engine(tiny_model, device="cpu", shots=1, prior=red_prior(), threshold=0.0)
    results = list(engine.propose(session, images=["q0.png", "q3.png"]))
    assert len(results) == 2
    assert engine.model_name == "wfss-lite0 (in-memory)"
    for r in results:
        assert r.stored and r.error is None and r.seconds > 0
        assert r.label_map.shape == (H, W) and r.label_map.dtype == np.uint8
        assert set(np.unique(r.label_map)) <= {session.classes.get("a").id, session.classes.get("b").id}
        assert sum(r.fractions.values()) == pytest.approx(1.0)  # threshold 0: no background
        assert session.status(r.image) == PROPOSED
        np.testing.assert_array_equal(session.proposal(r.image), r.label_map)
        assert session.info(r.image).proposal_model == "wfss-lite0 (in-memory)"


# ------------------------------------------------------------------- resolution on known scores


class FakePredictor:
    """fg_prob of a query = the prior the engine passes for it; records nothing else."""

    def __init__(self, decision=None):
        self.config = SimpleNamespace(name="fake", use_text=False)
        self.decision = decision or DecisionRule()
        self.device = SimpleNamespace(type="cpu")

    def encode_image(self, image):
        from hhn.predictor import EncodedImage

        return EncodedImage((), image.shape[:2], "fake", image)

    def encode_support(self, images, masks, text=None):
        return SimpleNamespace(shots=len(images))

    def support_map(self, image, prior, rule=None):
        return prior

    def logits_batch(self, queries, support, priors):
        return priors

    def decide(self, scored, rule=None):
        return SimpleNamespace(fg_prob=scored.astype(np.float32))


def test_resolve_label_map_by_hand():
    pa = np.array([[0.9, 0.2, 0.6, 0.4]], np.float32)
    pb = np.array([[0.1, 0.7, 0.6, 0.45]], np.float32)
    label_map, best = resolve_label_map([pa, pb], [3, 7], threshold=0.5)
    np.testing.assert_array_equal(label_map, [[3, 7, 3, 0]])  # tie -> first class; both < 0.5 -> background
    np.testing.assert_allclose(best, [[0.9, 0.7, 0.6, 0.45]])


def test_resolve_label_map_with_a_threshold_per_class():
    pa = np.array([[0.9, 0.55, 0.52, 0.3]], np.float32)
    pb = np.array([[0.1, 0.5, 0.58, 0.4]], np.float32)
    label_map, _ = resolve_label_map([pa, pb], [3, 7], threshold=[0.6, 0.5])
    np.testing.assert_array_equal(label_map, [[3, 0, 7, 0]])  # each pixel's best class is cut at its own threshold


def test_a_class_learnt_from_user_masks_alone_is_decided_by_the_mask_rule(session, tiny_model):
    tags_rule, masks_rule = DecisionRule(0.5, 0.6), DecisionRule(0.0, 0.45)
    model = copy.copy(tiny_model)
    model.config = dataclasses.replace(tiny_model.config, decision=tags_rule, decision_masks=masks_rule)
    b = session.classes.get("b").id
    for rel in ("ab.png", "b0.png"):  # every 'b' support painted; 'a' keeps tag-only supports
        painted = np.zeros((H, W), np.uint8)
        painted[4:12, 6:20] = b
        session.accept(rel, painted)
    seen = {}

    class Capture:
        def stream(self, session, learnt, queries, should_stop):
            seen.update(rules=[s.rule for s in learnt.segmenters], thresholds=learnt.thresholds)
            return iter(())

    list(Engine(model, device="cpu", prior=red_prior()).propose(session, images=["q0.png"], runner=Capture()))
    assert seen == {"rules": [tags_rule, masks_rule], "thresholds": (0.6, 0.45)}  # class-table order: a, b
    list(Engine(model, device="cpu", prior=red_prior(), threshold=0.3).propose(session, images=["q0.png"],
                                                                               runner=Capture()))
    assert seen["thresholds"] == (0.3, 0.3)  # a given threshold is every class's


@pytest.mark.parametrize("given, rule", [(0.7, DecisionRule()), (None, DecisionRule(0.5, 0.7))],
                         ids=["given", "the-models"])
def test_multi_class_resolution_and_background_threshold(session, given, rule):
    # per class (class-table order: a, b) a prior map that depends on the query's position in the image
    ramp = np.tile(np.linspace(0.0, 1.0, W, dtype=np.float32), (H, 1))  # 0 at the left, 1 at the right
    prior = MapPrior({"a": lambda image: ramp, "b": lambda image: ramp[:, ::-1].copy()})
    engine = Engine(FakePredictor(rule), prior=prior, threshold=given)
    assert engine.threshold == 0.7
    (result,) = engine.propose(session, images=["q0.png"])
    a, b = session.classes.get("a").id, session.classes.get("b").id
    expected = np.where(ramp >= 0.7, a, np.where(ramp[:, ::-1] >= 0.7, b, 0))
    np.testing.assert_array_equal(result.label_map, expected)
    assert set(np.unique(result.label_map)) == {0, a, b}
    assert result.fractions["a"] == pytest.approx(np.mean(ramp >= 0.7))
    assert result.scores["a"] == pytest.approx(ramp[ramp >= 0.7].mean(), rel=1e-5)
    assert session.info("q0.png").proposal_scores == pytest.approx(result.scores)


# ------------------------------------------------------------------------ cancellation and safety


def test_should_stop_ends_the_run_between_images(session):
    asked = []

    def should_stop():
        asked.append(True)
        return len(asked) > 4  # asked once per class (2), then once per image: allow two images

    engine = Engine(FakePredictor(), prior=red_prior(), batch_size=3)
    results = list(engine.propose(session, should_stop=should_stop))
    assert [r.image for r in results] == ["q0.png", "q1.png"]
    assert session.images_with_status(PROPOSED) == ["q0.png", "q1.png"]


def test_queries_side_by_side_give_the_one_thread_results_in_plan_order(session, tiny_model):
    """``threads=2``: two queries at once, each on one torch thread; same label maps, same order, and
    torch's thread count is restored after the run."""
    import torch

    runs = {}
    for threads in (1, 2):
        engine = Engine(tiny_model, device="cpu", shots=1, prior=red_prior(), threads=threads)
        assert engine._workers() == threads
        before = torch.get_num_threads()
        runs[threads] = list(engine.propose(session, store=False))
        assert torch.get_num_threads() == before
    assert [r.image for r in runs[2]] == [r.image for r in runs[1]] == ["q0.png", "q1.png", "q2.png", "q3.png"]
    for one, two in zip(runs[1], runs[2]):
        np.testing.assert_array_equal(one.label_map, two.label_map)
        assert one.scores == pytest.approx(two.scores)


def test_finished_queries_leave_nothing_in_the_pipeline(session, tiny_model):
    """Memory stays flat: a query's taps (and the prior's copy of them) are dropped once it is done."""
    from hhn.priors.features import DenseFeatures

    engine = Engine(tiny_model, device="cpu", shots=1)
    assert len(list(engine.propose(session, store=False))) == 4
    pipeline = engine.pipeline()
    dense = pipeline.prior.features
    assert isinstance(dense, DenseFeatures)  # the tiny model's prior runs its own backbone: its cache counts
    assert len(pipeline.taps._items) == 0
    assert len(dense._memory) == 4  # the prior's gallery (a0, a1, ab, b0), none of the 4 queries


def test_should_stop_during_support_preparation_ends_the_run_without_results(session):
    prior = red_prior()
    results = list(Engine(FakePredictor(), prior=prior).propose(session, should_stop=lambda: bool(prior.fitted)))
    assert results == [] and list(prior.fitted) == ["a"]  # stopped before class 'b'
    assert session.images_with_status(PROPOSED) == []


def test_user_work_is_never_overwritten(session):
    painted = np.zeros((H, W), np.uint8)
    painted[:3] = session.classes.get("b").id
    session.accept("q0.png", painted)
    session.mark_edited("q1.png", painted)

    def edit_meanwhile():  # the user edits q3 while the run is going
        if session.status("q3.png") != EDITED:
            session.mark_edited("q3.png", painted)
        return False

    engine = Engine(FakePredictor(), prior=red_prior(), batch_size=8)
    results = {r.image: r for r in engine.propose(session, images=session.images, should_stop=edit_meanwhile)}
    assert "q0.png" not in results and "q1.png" not in results
    assert results["q3.png"].label_map is not None and not results["q3.png"].stored
    assert results["q3.png"].error == USER_MASK_KEPT  # named, for wfss label's summary and the widget's list
    assert results["q2.png"].stored
    assert session.status("q0.png") == ACCEPTED and session.status("q3.png") == EDITED
    for rel in ["q0.png", "q1.png", "q3.png"]:
        np.testing.assert_array_equal(session.mask(rel), painted)
        assert session.proposal(rel) is None


def test_unreadable_query_is_reported_and_the_run_goes_on(session):
    (session.image_folder / "q1.png").write_bytes(b"\x89PNG truncated")
    results = list(Engine(FakePredictor(), prior=red_prior()).propose(session))
    by_image = {r.image: r for r in results}
    assert "not an image, or its header is corrupt" in by_image["q1.png"].error and by_image["q1.png"].label_map is None
    assert [r.image for r in results if r.stored] == ["q0.png", "q2.png", "q3.png"]


def test_prior_reuses_the_network_taps_only_when_they_are_its_own_features(tiny_model):
    from hhn.config import load_preset
    from hhn.network import HHN
    from hhn.pipeline import taps_match_prior_features
    from hhn.priors.coseg import CosegPrior
    from hhn.priors.features import DenseFeatures

    def default_prior(model):
        return Engine(model, device="cpu").pipeline().prior

    features = DenseFeatures()
    assert not taps_match_prior_features(tiny_model, features)  # random backbone, 64x64
    assert isinstance(default_prior(tiny_model).features, DenseFeatures)

    assert not taps_match_prior_features(HHN(load_preset("wfss-lite0"), pretrained_backbone=True), features)  # 256
    at_prior_size = dataclasses.replace(load_preset("wfss-lite0"), image_size=(features.size, features.size))
    pretrained = HHN(at_prior_size, pretrained_backbone=True)
    assert taps_match_prior_features(pretrained, features)
    prior = default_prior(pretrained)
    assert isinstance(prior, CosegPrior) and not isinstance(prior.features, DenseFeatures)
    # a model whose config names the multi-scale prior: only its 320 px member can read the network's taps
    multi_scale = HHN(dataclasses.replace(at_prior_size, tag_prior="coseg-ms"), pretrained_backbone=True)
    members = default_prior(multi_scale).members
    assert not isinstance(members[0].features, DenseFeatures)
    assert [m.features.size for m in members[1:]] == [448, 576]
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    reused = prior.descriptors(pixels)  # the prior's own call, with its tap weights
    own = features(pixels, prior.tap_weights)
    np.testing.assert_allclose(reused.numpy(), own.numpy(), atol=1e-3)  # prior caches float16


def test_preset_models_are_labelled_untrained():
    engine = Engine("preset:wfss-lite0")
    assert engine.untrained and engine.model_name == "preset:wfss-lite0 (untrained heads)"
    assert Engine("wfss-lite0").untrained
    assert not Engine("some/checkpoint.safetensors").untrained


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="at least 1"):
        Engine("default", shots=0)
    with pytest.raises(UserError, match="threshold"):
        Engine("default", threshold=1.5)


def test_engine_decision_overrides_the_models_rule():
    rule = DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0))  # the default model's rule without its snap
    engine = Engine("preset:wfss-lite0", device="cpu", decision=rule)
    assert engine.load().decision == rule and engine.threshold == 0.6
    assert Engine("preset:wfss-lite0", device="cpu").load().decision.snap == 0.06  # the preset's own rule
    with pytest.raises(EngineError, match="give the decision rule to the Predictor"):
        Engine(FakePredictor(), decision=rule).load()
    without_snap = Engine("preset:wfss-lite0", device="cpu", snap=False).load().decision
    assert without_snap == DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), None, flip_border=0.1)  # minus its snap
    with pytest.raises(EngineError, match="give the decision rule to the Predictor"):
        Engine(FakePredictor(), snap=False).load()
    refining = Engine("preset:wfss-lite0", device="cpu", refine_supports=True).load().decision
    assert refining == DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06, refine_supports=True, flip_border=0.1)
    assert Engine("preset:wfss-lite0", device="cpu", decision=refining, refine_supports=False).load().decision == (
        DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06, flip_border=0.1))
    with pytest.raises(EngineError, match="give the decision rule to the Predictor"):
        Engine(FakePredictor(), refine_supports=True).load()


def test_a_given_threshold_becomes_the_rules_threshold():
    # the rule thresholds each class at the user's value before its trim and snap, so the pixels the
    # snap adds (scored at the rule's threshold) are not dropped by a higher user threshold
    shipped = DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06, flip_border=0.1)
    assert Engine("preset:wfss-lite0", device="cpu", threshold=0.8).load().decision == DecisionRule(
        0.5, 0.8, (1.0, 0.5, 0.0), 0.06, flip_border=0.1)
    assert Engine("preset:wfss-lite0", device="cpu", threshold=0.3, snap=False).load().decision == DecisionRule(
        0.5, 0.3, (1.0, 0.5, 0.0), None, flip_border=0.1)
    for edge in (0.0, 1.0):  # outside the rule's open range: the rule keeps its own, the resolver uses it
        engine = Engine("preset:wfss-lite0", device="cpu", threshold=edge)
        assert engine.load().decision == shipped and engine.threshold == edge
