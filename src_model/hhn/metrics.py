"""Few-shot segmentation metrics exactly as the spec's section 3 (HSNet's ``common/evaluation.py``).

Per episode, for the background (0) and foreground (1) bins over the non-ignored pixels:
``I = |pred == gt == b|`` and ``U = |pred == b| + |gt == b| - I``. Both are summed per class over its
episodes. ``mIoU = mean over classes of I_fg,c / max(U_fg,c, 1)`` and
``FB-IoU = mean over {bg, fg} of (sum_c I_b,c / sum_c U_b,c)``, both in percent.

Also kept per class: foreground precision ``I_fg / |pred fg|`` and recall ``I_fg / |gt fg|`` (pooled
over the class's episodes), which show over-segmentation of small objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = 255


def episode_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Counts of one episode.

    Args:
        pred: ``(H, W)`` bool or {0, 1} prediction (1 = foreground).
        gt: ``(H, W)`` ground truth, values 0, 1 or ``IGNORE`` (255, excluded).

    Returns:
        ``int64 (4,)``: ``[I_bg, U_bg, I_fg, U_fg]``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = gt != IGNORE
    p = pred.astype(bool)[valid]
    g = gt[valid] == 1
    i_fg = int(np.count_nonzero(p & g))
    i_bg = int(np.count_nonzero(~p & ~g))
    n_pf, n_gf, n = int(np.count_nonzero(p)), int(np.count_nonzero(g)), int(p.size)
    return np.array([i_bg, (n - n_pf) + (n - n_gf) - i_bg, i_fg, n_pf + n_gf - i_fg], dtype=np.int64)


class FewShotMeter:
    """Accumulates episode counts per class and reports mIoU, FB-IoU, per-class IoU, precision, recall.

    Args:
        classes: the test classes; mIoU averages over all of them (a class without episodes counts 0,
            as in the reference code, so draw enough episodes).
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.iu = np.zeros((len(self.classes), 4), dtype=np.int64)        # I_bg, U_bg, I_fg, U_fg
        self.pr = np.zeros((len(self.classes), 2), dtype=np.int64)        # |pred fg|, |gt fg|
        self.episodes = np.zeros(len(self.classes), dtype=np.int64)

    def update(self, class_name: str, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one episode of ``class_name`` (``pred``/``gt`` as in ``episode_counts``)."""
        k = self._index[class_name]
        counts = episode_counts(pred, gt)
        self.iu[k] += counts
        valid = gt != IGNORE
        self.pr[k] += (np.count_nonzero(pred.astype(bool) & valid), np.count_nonzero(gt == 1))
        self.episodes[k] += 1

    def per_class_iou(self) -> dict[str, float]:
        """Foreground IoU of each class in percent."""
        return {c: 100.0 * self.iu[k, 2] / max(self.iu[k, 3], 1) for c, k in self._index.items()}

    def miou(self) -> float:
        """Mean foreground IoU over the classes, in percent."""
        return float(np.mean(list(self.per_class_iou().values()))) if self.classes else 0.0

    def fbiou(self) -> float:
        """Mean of the pooled background and foreground IoU, in percent."""
        tot = self.iu.sum(axis=0)
        return 100.0 * float(np.mean([tot[0] / max(tot[1], 1), tot[2] / max(tot[3], 1)]))

    def precision_recall(self) -> dict[str, tuple[float, float]]:
        """Per class ``(precision, recall)`` of the foreground, pooled over its episodes, in [0, 1]."""
        return {c: (self.iu[k, 2] / max(self.pr[k, 0], 1), self.iu[k, 2] / max(self.pr[k, 1], 1))
                for c, k in self._index.items()}

    def summary(self) -> dict:
        """JSON-ready result: miou, fbiou (percent), per_class IoU, per-class precision/recall, episode counts."""
        pr = self.precision_recall()
        return {
            "miou": round(self.miou(), 2),
            "fbiou": round(self.fbiou(), 2),
            "per_class": {c: round(v, 2) for c, v in self.per_class_iou().items()},
            "precision": {c: round(p, 4) for c, (p, _) in pr.items()},
            "recall": {c: round(r, 4) for c, (_, r) in pr.items()},
            "episodes_per_class": {c: int(self.episodes[k]) for c, k in self._index.items()},
        }
