"""Test oracle: a layer's dense weight rebuilt with explicit Kronecker products (``torch.kron(G, I_t)``).

Independent of the formats' ``reconstruct`` and of the layers' layout code: each ST factor is expanded into its
classical form with ``torch.kron`` and contracted the slow, obvious way; the tensor is then mapped to the kernel
by the index rule documented in ``docs/theory.md`` ("Layers").
"""

from __future__ import annotations

import math

import torch


def _eye(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(t, dtype=like.dtype, device=like.device)


def tucker_tensor(factors, ranks, t) -> torch.Tensor:
    """X = G ×_n (U_n ⊗ I_{t_n}) over the factored modes."""
    x = factors[0]
    us = iter(factors[1:])
    for mode, (r, tv) in enumerate(zip(ranks, t)):
        if r is None:
            continue
        u = torch.kron(next(us), _eye(tv, x))  # (I_n, R_n)
        x = torch.movedim(torch.tensordot(u, x, dims=([1], [mode])), 0, mode)
    return x


def tt_tensor(factors, shape, t) -> torch.Tensor:
    """X(i) = G_1[i_1] (G_2[i_2] ⊗ I_{t_2}) ⋯; the last core's t columns become the low part of mode N."""
    p = factors[0][0]  # (I_1, R_1)
    for g, tv in zip(factors[1:], t):
        mats = [torch.kron(g[:, i, :], _eye(tv, g)) for i in range(g.shape[1])]
        p = torch.stack([p @ m for m in mats], dim=1).reshape(-1, mats[0].shape[1])
    return p.reshape(shape)


def tr_tensor(factors, shape, t) -> torch.Tensor:
    """X(i) = Tr[(G_1[i_1] ⊗ I_g) (G_2[i_2] ⊗ I_{t_2}) ⋯], g = min t."""
    g = min(t)
    g1 = factors[0]
    p = torch.stack([torch.kron(g1[:, i, :], _eye(g, g1)) for i in range(g1.shape[1])])  # (I_1, R_0, R_1)
    for c, tv in zip(factors[1:], t):
        mats = [torch.kron(c[:, i, :], _eye(tv, c)) for i in range(c.shape[1])]
        p = torch.stack([p @ m for m in mats], dim=1).reshape(-1, p.shape[1], mats[0].shape[1])
    return torch.einsum("maa->m", p).reshape(shape)


def oracle_weight(layer) -> torch.Tensor:
    """The layer's dense weight (C_out, C_in[, kh, kw]) from its factors, by explicit Kronecker products."""
    fs = [f.detach() for f in layer.factors]
    family = {"tucker": "tucker", "sttu": "tucker", "tt": "tt", "stt": "tt", "tr": "tr", "str": "tr"}[layer.fmt]
    shape, ranks, t = layer.tensor_shape, layer.ranks, layer.t
    ins, outs = tuple(layer.in_shape), tuple(layer.out_shape)
    c_out, c_in = math.prod(outs), math.prod(ins)
    spatial = tuple(getattr(layer, "kernel_size", ()))
    ns = len(spatial)
    if family == "tucker":
        x = tucker_tensor(fs, ranks, t)
        return x.reshape(c_out, c_in, *spatial)
    if family == "tt":
        x = tt_tensor(fs, shape, t)
        d = max(len(ins), len(outs))
        ins, outs = ins + (1,) * (d - len(ins)), outs + (1,) * (d - len(outs))
        inter = [v for pair in zip(ins, outs) for v in pair]  # (I_1, O_1, ..., I_d, O_d), i_k major
        x = x.reshape(*spatial, *inter)
        perm = [ns + 2 * k + 1 for k in range(d)] + [ns + 2 * k for k in range(d)] + list(range(ns))
        return x.permute(perm).reshape(c_out, c_in, *spatial)
    x = tr_tensor(fs, shape, t)  # modes (I_1..I_α, [kh·kw], O_1..O_β)
    a, b = len(ins), len(outs)
    x = x.reshape(*ins, *spatial, *outs)
    perm = list(range(a + ns, a + ns + b)) + list(range(a)) + list(range(a, a + ns))
    return x.permute(perm).reshape(c_out, c_in, *spatial)
