"""The refinements of hhn.refine (trim to the own appearance, snap to the edges) on hand-built cases, and
through the predictor's decision."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from hhn.refine import own_appearance_keep, snap_to_edges


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


def _disk_scene(height: int = 120, width: int = 160, radius: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A brown disk on noisy green (a cow on grass): uint8 (H, W, 3) image and its bool (H, W) disk."""
    yy, xx = np.mgrid[:height, :width]
    disk = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < radius ** 2
    image = np.empty((height, width, 3), np.float32)
    image[:] = (40, 140, 40)
    image[disk] = (150, 90, 40)
    image += np.random.default_rng(0).normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disk


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("change", ["spill", "short"])
def test_snap_pulls_a_blob_to_the_object_and_fills_a_short_mask(change):
    image, disk = _disk_scene()
    cross = ndimage.generate_binary_structure(2, 1)
    # band 0.06 of the 200-pixel diagonal = 12 pixels: the changes below stay inside it
    mask = (ndimage.binary_dilation(disk, cross, iterations=10) if change == "spill"
            else ndimage.binary_erosion(disk, cross, iterations=6))
    snapped = snap_to_edges(image, mask, 0.06)
    assert snapped.shape == disk.shape and snapped.dtype == bool
    assert _iou(mask, disk) < 0.8 and _iou(snapped, disk) > 0.95
    assert (snapped.sum() < mask.sum()) if change == "spill" else (snapped.sum() > mask.sum())
    np.testing.assert_array_equal(snap_to_edges(image, mask, 0.06), snapped)  # deterministic


def test_snap_on_a_large_image_works_at_the_capped_side_and_returns_full_size():
    image, disk = _disk_scene(360, 480, 90)
    mask = ndimage.binary_dilation(disk, ndimage.generate_binary_structure(2, 1), iterations=25)
    snapped = snap_to_edges(image, mask, 0.06, max_side=120)
    assert snapped.shape == disk.shape and _iou(snapped, disk) > 0.9 > _iou(mask, disk)


@pytest.mark.parametrize("scale", [None, 0.3])
def test_a_small_objects_band_is_capped_by_its_size(monkeypatch, scale):
    import hhn.refine as refine

    monkeypatch.setattr(refine, "SNAP_OBJECT_SCALE", scale)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # the same noise inside and outside
    mask = np.zeros((200, 200), bool)
    mask[80:120, 80:120] = True  # 40 x 40 px: the frame's band (0.06: 17 px) would erode it to nothing
    mask[10:12, 10:12] = True  # a speck: the cap follows the largest part, not the smallest
    snapped = snap_to_edges(image, mask, 0.06)
    radius = 17 if scale is None else round(0.3 * 40)  # 12 px
    core = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(2, 1), iterations=radius)
    assert snapped[core].all()  # the sure-foreground core is always kept
    outer = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(2, 1), iterations=radius)
    assert not snapped[~outer].any()  # nothing joins beyond the band
    if scale is not None:
        assert core.sum() == 16 * 16  # a core exists only with the cap


@pytest.mark.parametrize("cover", ["none", "all"])
def test_snap_without_an_outside_or_inside_returns_the_mask(cover):
    image, _ = _disk_scene()
    mask = np.full(image.shape[:2], cover == "all")
    np.testing.assert_array_equal(snap_to_edges(image, mask, 0.06), mask)


def test_predictor_rule_with_snap_equals_the_hand_applied_snap():
    from hhn.config import DecisionRule, load_preset
    from hhn.network import HHN
    from hhn.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor(HHN(load_preset("wfss-lite0")), device="cpu")
    query, disk = _disk_scene()
    prior = ndimage.binary_dilation(disk, iterations=10).astype(np.float32) * 0.9
    support = predictor.encode_support([query[::2, ::2].copy()], [disk[::2, ::2].astype(np.float32)])
    scored, = predictor.logits_batch([query], support, [prior])
    plain = predictor.decide(scored, DecisionRule(1.0, 0.5))
    snapped = predictor.decide(scored, DecisionRule(1.0, 0.5, snap=0.06))
    np.testing.assert_array_equal(snapped.mask, snap_to_edges(query, plain.mask, 0.06))
    np.testing.assert_array_equal(snapped.fg_prob, np.where(snapped.mask, np.maximum(plain.fg_prob, 0.5), 0.0))
    assert _iou(snapped.mask, disk) > 0.95 > _iou(plain.mask, disk) + 0.1


def _lite0_predictor(rule=None):
    from hhn.config import load_preset
    from hhn.network import HHN
    from hhn.predictor import Predictor

    torch.manual_seed(0)
    return Predictor(HHN(load_preset("wfss-lite0")), device="cpu", decision=rule)


def test_support_map_refines_a_tag_prior_only_when_the_rule_says_so():
    from hhn.config import DecisionRule

    image, disk = _disk_scene()
    blob = ndimage.binary_dilation(disk, iterations=10)
    prior = np.where(blob, 0.8, 0.1).astype(np.float32)
    plain = _lite0_predictor(DecisionRule(0.5, 0.6, snap=0.06))
    plain.encode_image = None  # a rule that does not refine needs no backbone pass
    np.testing.assert_array_equal(plain.support_map(image, prior), prior)
    with pytest.raises(ValueError, match="at the image's size"):
        plain.support_map(image, prior[1:])
    refining = _lite0_predictor(DecisionRule(0.5, 0.6, snap=0.06, refine_supports=True))
    refined = refining.support_map(image, prior)
    assert refined.dtype == np.float32 and set(np.unique(refined)) == {0.0, 1.0}
    np.testing.assert_array_equal(refined.astype(bool), snap_to_edges(image, blob, 0.06))  # threshold 0.5, snap
    assert _iou(refined.astype(bool), disk) > 0.95 > _iou(blob, disk) + 0.1
    # a rule given to the call wins over the predictor's
    np.testing.assert_array_equal(refining.support_map(image, prior, DecisionRule()), prior)


def test_support_map_keeps_a_prior_that_refining_would_empty():
    from hhn.config import DecisionRule

    image, _ = _disk_scene()
    faint = np.full(image.shape[:2], 0.3, np.float32)  # nothing above 0.5
    predictor = _lite0_predictor(DecisionRule(0.5, 0.6, (1.0, 0.5, 0.0), 0.06, refine_supports=True))
    np.testing.assert_array_equal(predictor.support_map(image, faint), faint)


def test_eval_method_encodes_refined_tag_supports_and_shares_passes_between_alike_rules():
    from hhn.config import DecisionRule
    from hhn.evaluation.methods import HHNMethod, MethodInputs
    from hhn.pipeline import FewShotPipeline
    from hhn.priors.base import ClassPrior

    image, disk = _disk_scene()
    prior = np.where(ndimage.binary_dilation(disk, iterations=10), 0.8, 0.1).astype(np.float32)
    predictor = _lite0_predictor()
    calls = []
    real = predictor.logits_batch
    predictor.logits_batch = lambda *a, **k: calls.append(a[1].masks.clone()) or real(*a, **k)
    base = DecisionRule(0.5, 0.6, snap=0.06)
    rules = [base, DecisionRule(0.5, 0.7, snap=0.06), DecisionRule(0.5, 0.6, snap=0.06, refine_supports=True),
             DecisionRule(0.5, 0.7, snap=0.06, refine_supports=True),
             DecisionRule(0.5, 0.6, snap=0.03, refine_supports=True)]
    shared: dict = {}
    pipeline = FewShotPipeline(predictor)
    methods = [HHNMethod(pipeline, decision=r, shared=shared) for r in rules]

    class Fitted(ClassPrior):
        def _map(self, pixels):
            return prior

    tags = MethodInputs("cow", image, [image], [], prior, Fitted("cow"))
    masks = [m.predict(tags) for m in methods]
    assert len(calls) == 3  # rules that encode the supports alike share a pass: prior / refined at 0.06 / at 0.03
    assert torch.equal(calls[0][0], predictor._network_map(prior)[0])
    refined = predictor._network_map(predictor.support_map(image, prior, rules[2]))[0]
    assert torch.equal(calls[1][0], refined) and not torch.equal(calls[0], calls[1])
    assert torch.equal(calls[2][0], predictor._network_map(predictor.support_map(image, prior, rules[4]))[0])
    assert all(m.shape == disk.shape and m.dtype == bool for m in masks)
    with_masks = MethodInputs("cow", image, [image], [disk.astype(np.uint8)], prior, Fitted("cow"))
    for m in methods:
        m.predict(with_masks)
    assert len(calls) == 4  # a pixel-mask support is never refined: one pass for every rule
