"""Batched torch Sinkhorn vs POT, the OT step rules, and the attention blocks of HT (spec 1.7)."""

import numpy as np
import ot
import pytest
import torch

from hhn.config import SinkhornSettings
from hhn.transport import SelfAttention, TransportAttention, sinkhorn, transport_plan


def _attention(bsz: int, n: int, spread: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(bsz, n, n, generator=gen) * spread).softmax(dim=-1)


def _pot_plan(attention: np.ndarray) -> np.ndarray:
    """The released per-sample step: float32 cost 1 - A, float64 uniform marginals, reg 0.5."""
    n, m = attention.shape
    return ot.sinkhorn(np.ones(n) / n, np.ones(m) / m, (1 - attention).astype(np.float32), 0.5)


@pytest.mark.parametrize("spread", [1.0, 8.0, 40.0])
def test_sinkhorn_matches_pot(spread):
    attn = _attention(3, 50, spread, seed=int(spread))
    ours = sinkhorn(1 - attn, reg=0.5, max_iter=1000, stop_thr=1e-9).numpy()
    for b in range(3):
        ref = _pot_plan(attn[b].numpy())
        np.testing.assert_allclose(ours[b], ref, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(ours.sum(axis=2), 1 / 50, rtol=1e-6)
    np.testing.assert_allclose(ours.sum(axis=1), 1 / 50, rtol=1e-6)


def test_sinkhorn_stops_per_sample_like_pot():
    # Sample 0 converges at the first check (uniform cost), sample 1 needs many iterations; the batch
    # must not change sample 0 after it stopped, nor stop sample 1 early.
    hard = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(3))
    cost = torch.cat([torch.full((1, 6, 6), 0.5), hard])
    ours = sinkhorn(cost, reg=0.05, max_iter=1000, stop_thr=1e-9).numpy()
    for b in range(2):
        ref = ot.sinkhorn(np.ones(6) / 6, np.ones(6) / 6, cost[b].numpy(), 0.05)
        np.testing.assert_allclose(ours[b], ref, rtol=1e-6, atol=1e-12)


def test_iteration_cap_is_respected():
    cost = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(1))
    ours = sinkhorn(cost, reg=0.02, max_iter=3, stop_thr=1e-15).numpy()[0]
    ref = ot.sinkhorn(np.ones(5) / 5, np.ones(5) / 5, cost[0].numpy(), 0.02, numItermax=3,
                      stopThr=1e-15, warn=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_nonpositive_attention_entries_become_1e_6():
    attn = _attention(2, 8, 1.0, seed=5)
    attn[0, 2, 3] = 0.0
    attn[1, 4, :4] = 0.0
    plan = transport_plan(attn, SinkhornSettings())
    assert plan.dtype == torch.float32
    for b in range(2):
        floored = np.where(attn[b].numpy() <= 0, np.float32(1e-6), attn[b].numpy())
        np.testing.assert_allclose(plan[b].numpy(), _pot_plan(floored), rtol=1e-5, atol=1e-9)
    # a zero entry of A has cost 1 - 1e-6 (not 1): compare with the plan for cost exactly 1
    exact_one = attn[0].numpy().copy()
    assert not np.allclose(_pot_plan(exact_one), plan[0].numpy(), rtol=0, atol=1e-12)


def test_self_attention_pairs_even_tokens_as_keys_odd_as_values():
    torch.manual_seed(0)
    layer = SelfAttention(dim=16, heads=2).eval()
    tokens = torch.randn(2, 6, 16)
    out = layer(tokens)
    q = layer.query(tokens).view(2, 6, 2, 8).transpose(1, 2)
    kv = layer.key_value(tokens).view(2, 6, 2, 8).transpose(1, 2)  # (B, heads, N, 8)
    keys, values = kv[:, :, 0::2], kv[:, :, 1::2]
    attn = (q @ keys.transpose(-1, -2) / np.sqrt(8)).softmax(-1)
    expected = layer.out((attn @ values).transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_transport_attention_uses_the_plan_and_gives_no_grad_to_query_key():
    torch.manual_seed(0)
    layer = TransportAttention(dim=16).eval()
    attended, tokens = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    out = layer(attended, tokens)
    attn = (layer.query(attended) @ layer.key(tokens).transpose(-1, -2) / 4.0).softmax(-1)
    plan = torch.from_numpy(_pot_plan(attn[0].detach().numpy())).float()
    expected = layer.out(plan @ layer.value(tokens)[0])
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-7)
    out.sum().backward()
    assert layer.query.weight.grad is None and layer.key.weight.grad is None
    assert layer.value.weight.grad is not None and layer.value.weight.grad.abs().sum() > 0
