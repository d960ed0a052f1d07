"""The one few-shot pipeline (hhn.pipeline): what it composes, the rule overrides, encode-once taps.

A random-weight wfss-lite0 at 64x64 and a colour prior: no pretrained file is read.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from hhn.config import DecisionRule
from hhn.pipeline import FewShotPipeline, override_rule
from hhn.priors.base import ClassPrior, TaggedImage, TagPrior


class RedPrior(TagPrior):
    """The red channel in [0, 1], 0.8 at most (a soft prior); records its fits."""

    def __init__(self):
        self.fits = []

    def fit(self, class_name, positives, negatives=()):
        self.fits.append((class_name, len(positives), len(negatives)))

        class Fitted(ClassPrior):
            def _map(self, pixels):
                return 0.8 * pixels[:, :, 0].astype(np.float32) / 255.0

        return Fitted(class_name)


def _image(seed, size=(40, 52)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
    image[8:30, 10:40, 0] = 250  # a red object
    return image


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from hhn.config import load_preset
    from hhn.network import HHN

    torch.manual_seed(0)
    config = dataclasses.replace(load_preset("wfss-lite0"), image_size=(64, 64))
    return HHN(config, pretrained_backbone=False)


def test_fit_then_predict_is_the_predictor_composed_by_hand(tiny_model):
    from hhn.predictor import Predictor

    rule = DecisionRule(0.5, 0.6, trim=(1.0, 0.5, 0.0), refine_supports=True)
    pipeline = FewShotPipeline(Predictor(tiny_model, device="cpu", decision=rule), prior=RedPrior())
    painted = np.zeros((40, 52), np.float32)
    painted[5:20, 5:20] = 1.0
    positives = [TaggedImage(_image(0)), TaggedImage(_image(1), painted)]
    query = _image(2, (33, 47))
    segmenter = pipeline.fit("red", positives, negatives=[_image(3)], shots=2)
    got = segmenter.predict(query)

    by_hand = Predictor(tiny_model, device="cpu", decision=rule)
    prior = lambda im: 0.8 * im[:, :, 0].astype(np.float32) / 255.0  # noqa: E731
    maps = [by_hand.support_map(positives[0].pixels, prior(positives[0].pixels)), painted]
    support = by_hand.encode_support([p.pixels for p in positives], maps)
    want = by_hand.predict(query, support, prior(query))
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.fg_prob, want.fg_prob, atol=1e-6)
    assert pipeline.prior.fits == [("red", 2, 1)]
    assert got.fg_prob.shape == (33, 47)
    assert not np.array_equal(maps[0], prior(positives[0].pixels))  # the rule refined the tag support


def test_each_image_is_encoded_once_whatever_the_number_of_classes(tiny_model):
    from hhn.predictor import Predictor

    predictor = Predictor(tiny_model, device="cpu")
    seen = []
    real = predictor.encode_image
    predictor.encode_image = lambda im: seen.append(im.shape) or real(im)
    pipeline = FewShotPipeline(predictor, prior=RedPrior())
    shared, query = _image(0), _image(5)
    classes = [pipeline.fit(name, [TaggedImage(shared), TaggedImage(_image(i))]) for i, name in ((1, "a"), (2, "b"))]
    for segmenter in classes:
        segmenter.predict(query)
    assert len(seen) == 4  # shared, 1, 2 and the query: once each
    pipeline.forget_images()
    classes[0].predict(query)
    assert len(seen) == 5


def test_rule_overrides():
    shipped = DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06)
    assert override_rule(shipped) == shipped
    assert override_rule(shipped, snap=False) == DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), None)
    assert override_rule(shipped, refine_supports=True).refine_supports is True
    assert override_rule(shipped, threshold=0.8).threshold == 0.8
    for edge in (0.0, 1.0):  # no background / only certain pixels: the rule keeps its own threshold
        assert override_rule(shipped, threshold=edge) == shipped
    assert override_rule(shipped, decision=DecisionRule(), threshold=0.3) == DecisionRule(0.0, 0.3)


def test_from_model_applies_the_overrides(tiny_model):
    pipeline = FewShotPipeline.from_model(tiny_model, device="cpu", snap=False, threshold=0.7)
    assert pipeline.rule == override_rule(tiny_model.config.decision, snap=False, threshold=0.7)
    assert pipeline.predictor.decision is pipeline.rule


def test_classes_with_only_mask_supports_take_the_models_mask_rule(tiny_model):
    tags_rule, masks_rule = DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06), DecisionRule(0.0, 0.55, None, 0.06)
    model = copy.copy(tiny_model)
    model.config = dataclasses.replace(tiny_model.config, decision=tags_rule, decision_masks=masks_rule)
    pipeline = FewShotPipeline.from_model(model, device="cpu", prior=RedPrior())
    assert (pipeline.rule, pipeline.mask_rule) == (tags_rule, masks_rule)
    painted = np.zeros((40, 52), np.float32)
    painted[8:30, 10:40] = 1.0
    masked, tagged = TaggedImage(_image(0), painted), TaggedImage(_image(1))
    assert pipeline.fit("red", [masked]).rule == masks_rule
    assert pipeline.fit("red", [masked, tagged]).rule == tags_rule  # one tag-only support: the tags rule
    assert pipeline.fit("red", [tagged]).rule == tags_rule
    # the run's overrides act on both rules; a given decision replaces both
    no_snap = FewShotPipeline.from_model(model, device="cpu", snap=False, threshold=0.7)
    assert no_snap.mask_rule == DecisionRule(0.0, 0.7) and no_snap.rule == DecisionRule(0.5, 0.7, (1.0, 0.5, 0.0))
    given = FewShotPipeline.from_model(model, device="cpu", decision=DecisionRule())
    assert given.rule == given.mask_rule == DecisionRule()
    # a model without a mask rule uses its one rule for every class
    assert FewShotPipeline.from_model(tiny_model, device="cpu").mask_rule == tiny_model.config.decision


def test_config_round_trips_the_mask_rule(tiny_model):
    from hhn.config import HHNConfig
    from hhn.errors import UserError

    config = dataclasses.replace(tiny_model.config, decision_masks=DecisionRule(0.0, 0.5, None, 0.06))
    assert HHNConfig.from_dict(config.to_dict()) == config
    assert HHNConfig.from_dict(tiny_model.config.to_dict()).decision_masks is None
    with pytest.raises(UserError, match="prior_weight in"):
        HHNConfig.from_dict({**config.to_dict(), "decision_masks": {"prior_weight": 2.0}})
