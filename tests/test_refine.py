"""The own-appearance trim (hhn.refine) on a hand-built case, and through the predictor's decision."""

import numpy as np
import pytest
import torch

from hhn.refine import own_appearance_keep


def _two_region_descriptors(grid: int = 4) -> torch.Tensor:
    """(2, grid, grid): left half of the cells is e0 (the object), right half e1 (the background)."""
    desc = torch.zeros(2, grid, grid)
    desc[0, :, : grid // 2] = 1.0
    desc[1, :, grid // 2:] = 1.0
    return desc


def test_trim_removes_the_spill_onto_background_and_keeps_the_object():
    desc = _two_region_descriptors()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :24] = True  # the object (columns 0-15) plus one background cell column (16-23)
    keep = own_appearance_keep(mask, desc)
    # inside: 8 object cells + 4 background cells -> fg prototype (2, 1)/sqrt(5); outside: background.
    # object cells: 2/sqrt(5) - 0 > 0 (kept); background cells: 1/sqrt(5) - 1 < 0 (trimmed).
    assert keep[:, :12].all() and not keep[:, 20:].any()
    assert not (keep & ~mask).any()


@pytest.mark.parametrize("cover", ["none", "all"])
def test_trim_without_an_outside_or_inside_returns_the_mask(cover):
    mask = torch.full((32, 32), cover == "all")
    assert torch.equal(own_appearance_keep(mask, _two_region_descriptors()), mask)


def test_predictor_rule_with_trim_equals_the_hand_applied_trim():
    from hhn.config import DecisionRule, load_preset
    from hhn.network import HHN
    from hhn.predictor import Predictor
    from hhn.priors.features import descriptors_from_taps

    config = load_preset("wfss-lite0")
    torch.manual_seed(0)
    predictor = Predictor(HHN(config), device="cpu")
    rng = np.random.default_rng(0)
    query = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    query[:, :28] = (200, 30, 30)
    support_img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    prior = np.zeros((40, 56), np.float32)
    prior[:, :40] = 0.9  # spills 12 columns past the red half
    support = predictor.encode_support([support_img], [np.ones((48, 48), np.float32)])
    scored, = predictor.logits_batch([query], support, [prior])
    plain = predictor.decide(scored, DecisionRule(1.0, 0.5))
    trimmed = predictor.decide(scored, DecisionRule(1.0, 0.5, (1.0, 0.5, 0.0)))
    taps = [scored.query.features[i][0] for i in predictor.model.spec.support_taps]
    keep = own_appearance_keep(torch.from_numpy(plain.mask), descriptors_from_taps(taps, (1.0, 0.5, 0.0))).numpy()
    np.testing.assert_array_equal(trimmed.mask, keep)
    np.testing.assert_array_equal(trimmed.fg_prob, np.where(plain.mask & ~keep, 0.0, plain.fg_prob))
    assert trimmed.mask.sum() < plain.mask.sum()  # this prior's spill is trimmed
