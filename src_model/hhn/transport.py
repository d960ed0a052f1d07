"""HT attention blocks and the batched Sinkhorn optimal-transport step (spec 1.7, 8.4).

The released code solves the OT problem per sample with POT on the CPU (numpy). :func:`sinkhorn` is
the same Sinkhorn-Knopp iteration, batched in torch on the tensors' device, with POT's stopping rule
(column-marginal error checked every 10th iteration), so it matches ``ot.sinkhorn(a, b, M, reg)``.
The transport plan is a constant (computed from a detached cost), as in the released code.
"""

from __future__ import annotations

import torch
from torch import nn

from hhn.config import SinkhornSettings

#: Attention entries <= 0 are replaced by this before the OT step (released code).
ATTENTION_FLOOR = 1e-6
#: Dropout after the output projections of both attention blocks (released code).
ATTENTION_DROPOUT = 0.1


def sinkhorn(cost: torch.Tensor, reg: float = 0.5, max_iter: int = 1000,
             stop_thr: float = 1e-9) -> torch.Tensor:
    """Entropic OT plans with uniform marginals for a batch of cost matrices.

    cost (B, n, m) float -> plans (B, n, m) float64 (float32 on MPS, which lacks float64), rows
    summing to 1/n and columns to 1/m. Mirrors POT's ``sinkhorn_knopp``: K = exp(-cost / reg) in the
    cost's dtype, u = 1/n, v = 1/m, then v = b / K^T u, u = 1 / ((K / a) v); every 10th iteration
    (0, 10, ...) a sample whose column-marginal error (2-norm) is below ``stop_thr`` stops updating.
    With costs in [0, 1] and reg = 0.5, K lies in [e^-2, 1], so POT's numerical-error exit cannot occur.
    """
    bsz, n, m = cost.shape
    dtype = torch.float32 if cost.device.type == "mps" else torch.float64
    kernel = torch.exp(cost / -reg).to(dtype)
    a, b = 1.0 / n, 1.0 / m
    kernel_over_a = kernel / a
    u = torch.full((bsz, n), a, dtype=dtype, device=cost.device)
    v = torch.full((bsz, m), b, dtype=dtype, device=cost.device)
    active = torch.ones(bsz, 1, dtype=torch.bool, device=cost.device)
    for it in range(max_iter):
        v_new = b / torch.einsum("bij,bi->bj", kernel, u)
        u_new = 1.0 / torch.einsum("bij,bj->bi", kernel_over_a, v_new)
        u = torch.where(active, u_new, u)
        v = torch.where(active, v_new, v)
        if it % 10 == 0:
            marginal = torch.einsum("bi,bij,bj->bj", u, kernel, v)
            err = torch.linalg.vector_norm(marginal - b, dim=-1, keepdim=True)
            active = active & ~(err < stop_thr)
            if not bool(active.any()):
                break
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


def transport_plan(attention: torch.Tensor, settings: SinkhornSettings) -> torch.Tensor:
    """The released OT step: attention (B, n, m) in [0, 1] -> constant plan, same dtype, no grad.

    Entries <= 0 become 1e-6, cost = 1 - attention (detached), plan = Sinkhorn(1/n, 1/m, cost, reg);
    the solver runs outside autocast (float64 on CPU and CUDA), so mixed precision does not change it.
    """
    floored = torch.where(attention <= 0, torch.full_like(attention, ATTENTION_FLOOR), attention)
    cost = (1.0 - floored).detach().float()
    with torch.autocast(cost.device.type, enabled=False):  # under AMP too: the solver needs its precision
        plan = sinkhorn(cost, settings.reg, settings.max_iter, settings.stop_thr)
    return plan.to(attention.dtype)


class SelfAttention(nn.Module):
    """The released "SelfAttention" (8 heads) with its odd key/value pairing.

    tokens (B, N, C) -> (B, N, C). q = query(t) split into heads; kv = key_value(t) viewed as
    (B, N/2, 2, heads, C/heads): token 2j becomes key j and token 2j+1 value j, so each head attends
    from N queries to N/2 keys. softmax(q k^T / sqrt(C/heads)) v -> merge heads -> out (with bias) ->
    dropout(0.1). N must be even.
    """

    def __init__(self, dim: int = 128, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bsz, n, dim = tokens.shape
        head_dim = dim // self.heads
        q = self.query(tokens).reshape(bsz, n, self.heads, head_dim).permute(0, 2, 1, 3)
        kv = self.key_value(tokens).reshape(bsz, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ kv[1]).transpose(1, 2).reshape(bsz, n, dim)
        return self.out_drop(self.out(x))


class TransportAttention(nn.Module):
    """The released "CrossAttention" with the OT step (1 head; it attends within the same image).

    forward(u, t): Q = query(u), K = key(t), V = value(t) (no biases); A = softmax(Q K^T / sqrt(C))
    (B, N, N); A is REPLACED by the constant transport plan of :func:`transport_plan` (rows sum to
    1/N, not 1); out(P V) (no bias) -> dropout(0.1). Q and K therefore receive no gradient.
    """

    def __init__(self, dim: int = 128, sinkhorn_settings: SinkhornSettings | None = None) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.settings = sinkhorn_settings or SinkhornSettings()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.out_drop = nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """attended (B, N, C) = SelfAttention output u, tokens (B, N, C) = t -> (B, N, C)."""
        attn = ((self.query(attended) @ self.key(tokens).transpose(-2, -1)) * self.scale).softmax(dim=-1)
        plan = transport_plan(attn, self.settings)
        return self.out_drop(self.out(plan @ self.value(tokens)))
