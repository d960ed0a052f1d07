"""K-shot vote rule (spec 1.11) on hand-made votes."""

import pytest
import torch

from hhn.kshot import vote_kshot


def test_one_shot_is_the_prediction_itself():
    labels = torch.tensor([[[[0, 1], [1, 0]]]])  # (B=1, K=1, 2, 2)
    assert vote_kshot(labels).tolist() == [[[False, True], [True, False]]]


def test_one_shot_all_background_stays_background():
    assert not vote_kshot(torch.zeros(1, 1, 3, 3, dtype=torch.long)).any()


def test_votes_are_normalised_by_the_episode_maximum():
    # K = 4; votes per pixel [[4, 2], [1, 0]] -> V / 4 >= 0.5 -> [[T, T], [F, F]]
    votes = torch.tensor([[4, 2], [1, 0]])
    labels = torch.stack([(votes > k).long() for k in range(4)]).unsqueeze(0)  # (1, 4, 2, 2)
    assert labels.sum(dim=1).tolist() == [votes.tolist()]
    assert vote_kshot(labels).tolist() == [[[True, True], [False, False]]]


def test_maximum_below_k_rescales_threshold():
    # K = 5 but no pixel has more than 2 votes: m = 2, so a single vote (1/2) is already foreground.
    votes = torch.tensor([[2, 1, 0]])
    labels = torch.stack([(votes > k).long() for k in range(5)]).unsqueeze(0)
    assert vote_kshot(labels).tolist() == [[[True, True, False]]]


def test_each_episode_has_its_own_maximum():
    ep0 = torch.stack([torch.tensor([[1, 1, 1]]), torch.tensor([[1, 1, 0]]), torch.tensor([[1, 0, 0]])])
    ep1 = torch.stack([torch.tensor([[1, 0, 0]]), torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0, 0]])])
    out = vote_kshot(torch.stack([ep0, ep1]).bool())  # (2, 3, 1, 3)
    # ep0 votes [3, 2, 1] / 3 -> [T, T, F]; ep1 votes [1, 0, 0] / 1 -> [T, F, F]
    assert out.tolist() == [[[True, True, False]], [[True, False, False]]]


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        vote_kshot(torch.zeros(3, 4, 4))
