"""K-shot fusion of 1-shot predictions by voting (spec 1.11, the HSNet rule used by the released code).

There is no K-shot fusion inside the network: each support gives one 1-shot forward. The released
data loader's quirk of handing every shot all K support pseudo-masks concatenated along H only
affects the support branch, which K-shot inference does not use; it is not reproduced.
"""

from __future__ import annotations

import torch


def vote_kshot(shot_labels: torch.Tensor) -> torch.Tensor:
    """Fuse K per-shot binary predictions into one mask per episode.

    shot_labels: (B, K, H, W) integer or bool, 1 = foreground (the argmax of each 1-shot forward).
    Returns (B, H, W) bool. With V = number of fg votes per pixel and m = max(1, max_pixels V) per
    episode, a pixel is foreground iff V / m >= 0.5. For K = 1 this is exactly the single
    prediction (the released code returns it directly).
    """
    if shot_labels.ndim != 4:
        raise ValueError(f"shot_labels must be (B, K, H, W), got shape {tuple(shot_labels.shape)}")
    votes = shot_labels.to(torch.int64).sum(dim=1)
    max_vote = votes.flatten(1).max(dim=1).values.clamp(min=1).view(-1, 1, 1)
    return votes.float() / max_vote >= 0.5
