"""mIoU / FB-IoU as in the spec's section 3, against a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hhn.metrics import FewShotMeter, episode_counts


def test_episode_counts_hand_case():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    gt = np.array([[1, 0, 255], [1, 0, 0]], np.uint8)
    # valid pixels (5): pred 1 1 . 0 0 0 / gt 1 0 . 1 0 0
    # fg: I = 1, |pred fg| = 2, |gt fg| = 2 -> U = 3; bg: I = 2, |pred bg| = 3, |gt bg| = 3 -> U = 4
    assert episode_counts(pred, gt).tolist() == [2, 4, 1, 3]


def test_meter_hand_case():
    meter = FewShotMeter(["a", "b"])
    meter.update("a", np.array([[1, 1, 0], [0, 0, 0]]), np.array([[1, 0, 255], [1, 0, 0]], np.uint8))
    meter.update("b", np.zeros((2, 2), bool), np.ones((2, 2), np.uint8))       # I_bg 0 U_bg 4, I_fg 0 U_fg 4
    meter.update("a", np.ones((1, 2), bool), np.ones((1, 2), np.uint8))        # I_bg 0 U_bg 0, I_fg 2 U_fg 2
    # a: I_fg 3 / U_fg 5 = 60 %; b: 0 / 4 = 0 %  -> mIoU 30
    assert meter.per_class_iou() == pytest.approx({"a": 60.0, "b": 0.0})
    assert meter.miou() == pytest.approx(30.0)
    # pooled: bg (2 + 0 + 0) / (4 + 4 + 0) = 0.25; fg (1 + 0 + 2) / (3 + 4 + 2) = 1/3
    assert meter.fbiou() == pytest.approx(100 * (0.25 + 1 / 3) / 2)
    # a: precision 3 / 4 predicted fg pixels, recall 3 / 4 true fg pixels; b: nothing predicted
    pr = meter.precision_recall()
    assert pr["a"] == pytest.approx((0.75, 0.75)) and pr["b"] == pytest.approx((0.0, 0.0))
    summary = meter.summary()
    assert summary["miou"] == 30.0 and summary["episodes_per_class"] == {"a": 2, "b": 1}


def test_class_without_episodes_counts_zero_and_ignore_only_image():
    meter = FewShotMeter(["a", "b"])
    meter.update("a", np.ones((2, 2), bool), np.full((2, 2), 255, np.uint8))  # nothing valid
    meter.update("a", np.ones((1, 1), bool), np.ones((1, 1), np.uint8))
    assert meter.per_class_iou() == {"a": 100.0, "b": 0.0}
    assert meter.miou() == 50.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        episode_counts(np.zeros((2, 2)), np.zeros((2, 3), np.uint8))
