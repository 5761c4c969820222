"""Tensor Train (TT) and semi-tensor train (STT).

Definition (last-mode rule; ``t_k = 1`` everywhere gives classical TT)::

    X(i_1, …, i_{N-1}, i'_N·t_N + s) = [G_1[i_1] ⋉ G_2[i_2] ⋉ ⋯ ⋉ G_N[i'_N]]_{0, s}

* ``G_1``: (1, I_1, R_1);  ``G_k`` (2 ≤ k < N): (R_{k-1}/t_k, I_k, R_k/t_k), acting as ``G_k[i] ⊗ I_{t_k}``;
* ``G_N``: (R_{N-1}/t_N, I_N/t_N, 1): the chain ends as a 1×t_N row whose index ``s`` becomes the low part of
  the last mode, ``i_N = i'_N·t_N + s``;
* ranks: (R_1, …, R_{N-1}); t: (t_2, …, t_N);
* parameters: ``I_1 R_1 + Σ_{k=2}^{N-1} R_{k-1} I_k R_k / t_k² + R_{N-1} I_N / t_N²``.

The unshrunk-last-core rule of THEORY §3 is the special case ``t_N = 1``.
"""

from __future__ import annotations

import math

import torch

from .._stp import kron_identity
from ..errors import ShapeError
from ._decomp import tt_svd
from .base import Equivalence, Format, Relayout, as_list, check_shape, register


class TTFormat(Format):
    family = "tt"
    classical = "tt"

    def __init__(self, name: str, semi_tensor: bool):
        self.name = name
        self.semi_tensor = semi_tensor

    def normalize(self, shape, rank, t):
        shape = check_shape(shape, self.name, 2)
        n = len(shape)
        ranks = as_list(rank, n - 1, "rank", self.name)
        ts = as_list(t, n - 1, "t", self.name)
        self.check_t(tuple(ts))
        for k, r in enumerate(ranks):
            left, right = math.prod(shape[: k + 1]), math.prod(shape[k + 1:])
            if r > min(left, right):
                raise ShapeError(f"{self.name}: rank[{k}]={r} (bond R_{k + 1}) exceeds the rank of the unfolding "
                                 f"it carries, min({left}, {right})={min(left, right)}")
        for j, tv in enumerate(ts):  # t[j] belongs to core j+2 (1-based)
            core = j + 2
            bonds = [ranks[j]] + ([ranks[j + 1]] if core < n else [])
            sizes = bonds + ([shape[-1]] if core == n else [])
            for v in sizes:
                if v % tv:
                    what = f"rank {bonds}" + (f" and shape[{n - 1}]={shape[-1]}" if core == n else "")
                    raise ShapeError(f"{self.name}: t[{j}]={tv} (core {core}) must divide {what}")
        return tuple(ranks), tuple(ts)

    def bond_limits(self, shape):
        return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1:])) for k in range(len(shape) - 1)]

    def bond_divisors(self, shape, t):
        full = (1, *t)  # bond k (1-based) joins core k and core k+1
        return [math.lcm(full[k], full[k + 1]) for k in range(len(shape) - 1)]

    def factor_shapes(self, shape, ranks, t):
        n = len(shape)
        out = [(1, shape[0], ranks[0])]
        for k in range(1, n - 1):
            out.append((ranks[k - 1] // t[k - 1], shape[k], ranks[k] // t[k - 1]))
        out.append((ranks[-1] // t[-1], shape[-1] // t[-1], 1))
        return out

    def reconstruct(self, factors, shape, ranks, t):
        p = factors[0].reshape(shape[0], -1)  # (M, R_1)
        for g, tv in zip(factors[1:], t):
            # Fast STP form: P (M, R) viewed (M, R/t, t); (P ⋉ G[i])[m, c'·t+s] = Σ_c P[m,c,s] G[c,i,c'].
            m = p.shape[0]
            p3 = p.reshape(m, g.shape[0], tv)
            p = torch.einsum("mcs,cid->mids", p3, g).reshape(m * g.shape[1], g.shape[2] * tv)
        return p.reshape(shape)

    def classical_factors(self, factors, shape, ranks, t):
        out = [factors[0]]
        n = len(factors)
        for k, (g, tv) in enumerate(zip(factors[1:], t), start=1):
            big = kron_identity(g.permute(1, 0, 2), tv)  # (I_k, R_{k-1}, R_k or t_N)
            if k == n - 1:  # last core: (I'_N, R_{N-1}, t_N) -> (R_{N-1}, I'_N·t_N, 1)
                big = big.permute(1, 0, 2).reshape(big.shape[1], -1, 1)
            else:
                big = big.permute(1, 0, 2)
            out.append(big)
        return out

    # -- THEORY §4 ----------------------------------------------------------------------------------
    def _case(self, shape, t):
        n = len(shape)
        full = (1, *t)  # t_1 = 1: core 1 is stored whole
        if all(full[k + 1] % full[k] == 0 for k in range(n - 1)):
            return "tt"
        inner = t[:-1]
        if inner and len(set(inner)) == 1 and inner[0] % t[-1] == 0:
            return "tr"
        return None

    def equivalence(self, shape, ranks, t):
        shape, ranks, t = tuple(shape), tuple(ranks), tuple(t)
        case = self._case(shape, t)
        if case == "tt":
            return self._tt_equivalence(shape, ranks, t)
        if case == "tr":
            return self._tr_equivalence(shape, ranks, t)
        return None

    def _tt_equivalence(self, shape, ranks, t):
        """t non-decreasing under divisibility: each wire starts at a core, ends at the last mode."""
        n = len(shape)
        full = (1, *t)
        h = [full[k + 1] // full[k] for k in range(n - 1)]  # wire started by core k+1 (0-based k)
        if all(v == 1 for v in t):
            return Equivalence("tt", shape, ranks, Relayout.identity(shape), list, list)
        eq_shape = tuple(shape[k] * h[k] for k in range(n - 1)) + (shape[-1] // t[-1],)
        eq_ranks = tuple(ranks[k] // full[k + 1] for k in range(n - 1))
        # X as (I_1..I_{N-1}, I'_N, h_{N-1}, ..., h_1) -> (I_1, h_1, ..., I_{N-1}, h_{N-1}, I'_N)
        split = (*shape[:-1], shape[-1] // t[-1], *reversed(h))
        perm: list[int] = []
        for k in range(n - 1):
            perm += [k, len(split) - 1 - k]
        perm.append(n - 1)
        relayout = Relayout(shape, split, tuple(perm), eq_shape)

        def to_eq(fs):
            out = []
            for k in range(n - 1):
                g = fs[k]  # (a, I_k, R_k/full[k]) with R_k/full[k] = (R_k/full[k+1], h_k)
                a, i, _ = g.shape
                out.append(g.reshape(a, i, -1, h[k]).permute(0, 1, 3, 2).reshape(a, i * h[k], -1))
            out.append(fs[-1])
            return out

        def from_eq(fs):
            out = []
            for k in range(n - 1):
                g = fs[k]
                a, _, b = g.shape
                out.append(g.reshape(a, shape[k], h[k], b).permute(0, 1, 3, 2).reshape(a, shape[k], b * h[k]))
            out.append(fs[-1])
            return out

        return Equivalence("tt", eq_shape, eq_ranks, relayout, to_eq, from_eq)

    def _tr_equivalence(self, shape, ranks, t):
        """t_2 = … = t_{N-1} = T and t_N | T, t_N < T: a wire of T/t_N closes a ring, t_N moves to mode 1."""
        n = len(shape)
        big_t, tn = t[0], t[-1]
        q = big_t // tn
        eq_shape = (shape[0] * tn, *shape[1:-1], shape[-1] // tn)
        eq_ranks = (q, *(r // big_t for r in ranks))
        split = (*shape[:-1], shape[-1] // tn, tn)
        perm = (0, n, *range(1, n))
        relayout = Relayout(shape, split, perm, eq_shape)
        i1, r1 = shape[0], ranks[0]
        rn1 = ranks[-1]

        def to_eq(fs):
            # G_1 (1, I_1, R_1) with R_1 index c·T + s_hi·t_N + s_lo -> (T/t_N, I_1·t_N, R_1/T)
            g1 = fs[0].reshape(i1, r1 // big_t, q, tn).permute(2, 0, 3, 1).reshape(q, i1 * tn, r1 // big_t)
            # G_N (R_{N-1}/t_N, I'_N, 1) with row c·q + s_hi -> (R_{N-1}/T, I'_N, q)
            gn = fs[-1].reshape(rn1 // big_t, q, -1).permute(0, 2, 1)
            return [g1, *fs[1:-1], gn]

        def from_eq(fs):
            g1 = fs[0].reshape(q, i1, tn, r1 // big_t).permute(1, 3, 0, 2).reshape(1, i1, r1)
            gn = fs[-1].permute(0, 2, 1).reshape(rn1 // tn, -1, 1)
            return [g1, *fs[1:-1], gn]

        return Equivalence("tr", eq_shape, eq_ranks, relayout, to_eq, from_eq)

    def no_equivalent_reason(self, shape, ranks, t):
        if self._case(tuple(shape), tuple(t)) is not None:
            return None
        full = (1, *t)
        for k in range(len(full) - 1):
            a, b = full[k], full[k + 1]
            if a % b and b % a:
                return (f"t values {a} (core {k + 1}) and {b} (core {k + 2}) are not nested under divisibility: "
                        f"their identity wires do not separate into a tensor network")
        k = next(k for k in range(1, len(full) - 1) if full[k + 1] < full[k])
        return (f"t={list(t)}: an identity wire ends at core {k + 2} (t drops from {full[k]} to {full[k + 1]}) "
                f"after passing through other cores as an identity; no single TT or TR has this topology "
                f"(a ring with a tail or a chord, THEORY §4)")

    def decompose_classical(self, x, ranks, **kw):
        return tt_svd(x, ranks)


TT = register(TTFormat("tt", semi_tensor=False))
STT = register(TTFormat("stt", semi_tensor=True))
