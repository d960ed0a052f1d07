"""The inversion guard (hhn.priors.orientation): a class whose tag prior's support maps cover the frames' borders
has its prior fitted again on the other side of those maps (as masks), for supports and queries alike, and the
run says so; a class with a user mask is never flipped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import FnPrior

from hhn.config import DecisionRule, parse_decision_rule
from hhn.errors import UserError
from hhn.priors.base import TaggedImage
from hhn.priors.orientation import border_excess, orient

H, W = 40, 52


def ring(pixels):
    """1 on a border band 6 px wide, 0 inside: a map of what surrounds a centred object."""
    out = np.ones(pixels.shape[:2], np.float32)
    out[6:-6, 6:-6] = 0.0
    return out


def blob(pixels):
    """1 on a centred rectangle, 0 elsewhere: a map of the object."""
    return 1.0 - ring(pixels)


def _image(seed):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def test_border_excess_tells_a_centred_object_from_its_surroundings():
    pixels = _image(0)
    assert border_excess(blob(pixels)) < -0.5
    assert border_excess(ring(pixels)) > 0.5
    assert border_excess(np.full((H, W), 0.3, np.float32)) == pytest.approx(0.0, abs=1e-6)


class RingPrior:
    """A tag prior that maps the border band, or, fitted on positives carrying masks, the middle; records the
    masks it was fitted on."""

    name = "ring"

    def __init__(self):
        self.masks = []

    def fit(self, class_name, positives, negatives=()):
        masks = [p.mask for p in positives if p.mask is not None]
        self.masks.append(masks)
        return FnPrior(class_name, blob if masks else ring)

    def forget(self, pixels):
        pass


def test_orient_refits_on_the_other_side_of_a_prior_that_marks_the_borders_and_says_why():
    tags = RingPrior()
    positives = [TaggedImage(_image(i)) for i in range(3)]
    prior = tags.fit("coin", positives)
    oriented, found = orient(prior, positives, positives[:2], 0.1, lambda flipped: tags.fit("coin", flipped))
    assert found.flipped and found.border_excess > 0.5
    assert len(tags.masks[-1]) == 3  # every positive, with the other side of its map as its mask
    for mask, p in zip(tags.masks[-1], positives):
        np.testing.assert_array_equal(mask, blob(p.pixels))
    query = _image(5)
    np.testing.assert_array_equal(oriented(query), blob(query))
    message = found.message()
    assert message.startswith("coin: ") and "other side" in message and "accept one of its masks" in message


def test_orient_keeps_a_prior_that_marks_the_middle():
    supports = [TaggedImage(_image(i)) for i in range(2)]
    prior = FnPrior("cat", blob)
    oriented, found = orient(prior, supports, supports, 0.1, None)
    assert oriented is prior and not found.flipped and found.border_excess < 0


@pytest.mark.parametrize("limit, masked", [(None, False), (0.1, True)])
def test_orient_does_not_run_without_a_limit_or_with_a_user_mask(limit, masked):
    painted = np.zeros((H, W), np.float32)
    painted[:6] = 1.0  # a user mask on the border: the user says so
    positives = [TaggedImage(_image(0)), TaggedImage(_image(1), painted if masked else None)]
    prior = FnPrior("coin", ring)
    oriented, found = orient(prior, positives, positives[:1], limit, None)
    assert oriented is prior and found is None


def test_flip_is_a_decision_rule_step():
    rule = parse_decision_rule("0.5,0.6,trim:1/0.5/0,snap:0.06,flip:0.1")
    assert rule.flip_border == 0.1 and rule.snap == 0.06
    assert DecisionRule(**dataclasses.asdict(rule)) == rule  # stored in model.json as a field
    assert parse_decision_rule("0.5,0.6").flip_border is None
    with pytest.raises(UserError, match="flip_border"):
        DecisionRule(flip_border=1.5)
    with pytest.raises(UserError, match="flip"):
        parse_decision_rule("0.5,0.6,flip:x")


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from hhn.config import load_preset
    from hhn.network import HHN

    torch.manual_seed(0)
    return HHN(dataclasses.replace(load_preset("wfss-lite0"), image_size=(64, 64)), pretrained_backbone=False)


def test_pipeline_encodes_the_refitted_prior_for_supports_and_queries(tiny_model):
    from hhn.pipeline import FewShotPipeline
    from hhn.predictor import Predictor

    rule = DecisionRule(0.5, 0.5, flip_border=0.1)
    pipeline = FewShotPipeline(Predictor(tiny_model, device="cpu", decision=rule), prior=RingPrior())
    positives = [TaggedImage(_image(0)), TaggedImage(_image(1))]
    segmenter = pipeline.fit("coin", positives, [_image(3)])
    assert segmenter.orientation.flipped
    assert [len(m) for m in pipeline.prior.masks] == [0, 2]  # fitted on tags, then on the other side as masks

    by_hand = Predictor(tiny_model, device="cpu", decision=rule)
    support = by_hand.encode_support([p.pixels for p in positives], [blob(p.pixels) for p in positives])
    query = _image(7)
    want = by_hand.predict(query, support, blob(query))
    got = segmenter.predict(query)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.fg_prob, want.fg_prob, atol=1e-6)

    unguarded = FewShotPipeline(Predictor(tiny_model, device="cpu", decision=DecisionRule(0.5, 0.5)),
                                prior=RingPrior())
    plain = unguarded.fit("coin", positives, [_image(3)])
    assert plain.orientation is None and [len(m) for m in unguarded.prior.masks] == [0]
    assert not np.array_equal(plain.predict(query).fg_prob, got.fg_prob)


def test_eval_method_orients_like_the_product(tiny_model):
    from hhn.evaluation.methods import HHNMethod, MethodInputs
    from hhn.pipeline import FewShotPipeline
    from hhn.predictor import Predictor

    rule = DecisionRule(0.5, 0.5, flip_border=0.1)
    pipeline = FewShotPipeline(Predictor(tiny_model, device="cpu", decision=rule), prior=RingPrior())
    supports, extra, negatives = [_image(0), _image(1)], _image(2), [_image(3)]
    query = _image(7)
    tags = RingPrior()
    positives = [TaggedImage(s) for s in (*supports, extra)]
    prior = tags.fit("coin", positives, negatives)
    inputs = MethodInputs("coin", query, supports, [], prior(query), prior, positives,
                          lambda flipped: tags.fit("coin", flipped, negatives))
    got = HHNMethod(pipeline).predict(inputs)
    assert [len(m) for m in tags.masks] == [0, 3]
    want = pipeline.fit("coin", positives, negatives, shots=2).predict(query).mask
    np.testing.assert_array_equal(got, want)


def test_engine_reports_a_flipped_class(tmp_path, tiny_model):
    from PIL import Image

    from hhn.predictor import Predictor
    from napari_wfss.engine import Engine
    from napari_wfss.session import Session

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["c0", "c1", "q0"]):
        Image.fromarray(_image(10 + i)).save(folder / f"{name}.png")
    session = Session.create(folder, tmp_path / "project")
    for rel in ("c0.png", "c1.png"):
        session.tag(rel, "coin", add_class=True)

    predictor = Predictor(tiny_model, device="cpu", decision=DecisionRule(0.5, 0.5, flip_border=0.1))
    tags = RingPrior()
    engine = Engine(predictor, prior=tags)
    results = list(engine.propose(session))
    assert [r.image for r in results] == ["q0.png"]
    assert len(engine.warnings) == 1 and engine.warnings[0].startswith("coin: the tag prior marked the edges")
    assert [len(m) for m in tags.masks] == [0, 2]  # refitted on the other side of c0, c1

    painted = np.zeros((H, W), np.uint8)
    painted[:6] = session.classes.get("coin").id  # the user says the class fills the top edge
    session.accept("c0.png", painted)
    engine = Engine(predictor, prior=RingPrior())
    list(engine.propose(session, images=["q0.png"]))
    assert engine.warnings == []
