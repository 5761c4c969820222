"""Tensor Ring (TR) and semi-tensor ring (STR).

Definition (``t_k = 1`` everywhere gives classical TR)::

    X(i_1, …, i_N) = Tr[ (G_1[i_1] ⊗ I_g) ⋉ G_2[i_2] ⋉ ⋯ ⋉ G_N[i_N] ],     g = gcd(t_2, …, t_N)

* ``G_1``: (R_0/g, I_1, R_1/g); ``G_k`` (k ≥ 2): (R_{k-1}/t_k, I_k, R_k/t_k) acting as ``G_k[i] ⊗ I_{t_k}``;
  the closing bond is ``R_N = R_0``;
* ranks: (R_0, R_1, …, R_{N-1}) — R_0 is the closing bond between core N and core 1;
* t: (t_2, …, t_N), nested under divisibility (of any two, one divides the other), so g = min t;
* parameters: ``R_0 I_1 R_1 / g² + Σ_{k≥2} R_{k-1} I_k R_k / t_k²``.

A full first core would be redundant (THEORY §5): with every factor a multiple of ``⊗ I_g``, only the sum of
its g interleaved diagonal blocks reaches X. Storing it shrunk by g removes exactly that redundancy.
"""

from __future__ import annotations

import math

import torch

from .._stp import kron_identity
from ..errors import ShapeError
from ._decomp import tr_decompose
from .base import Equivalence, Format, Relayout, as_list, check_shape, nested, register


class TRFormat(Format):
    family = "tr"
    classical = "tr"

    def __init__(self, name: str, semi_tensor: bool):
        self.name = name
        self.semi_tensor = semi_tensor

    def normalize(self, shape, rank, t):
        shape = check_shape(shape, self.name, 2)
        n = len(shape)
        ranks = as_list(rank, n, "rank", self.name)
        ts = as_list(t, n - 1, "t", self.name)
        self.check_t(tuple(ts))
        if not nested(ts):
            raise ShapeError(f"{self.name}: t={ts} must be nested under divisibility (of any two values one "
                             f"divides the other); otherwise the first core is redundant (THEORY §3)")
        total = math.prod(shape)
        for k in range(n):
            if ranks[k] * ranks[(k + 1) % n] > total:
                raise ShapeError(f"{self.name}: rank[{k}]·rank[{(k + 1) % n}]={ranks[k] * ranks[(k + 1) % n]} "
                                 f"exceeds the tensor size {total}")
        g = min(ts)
        for name, v in (("rank[0]", ranks[0]), ("rank[1]", ranks[1 % n])):
            if v % g:
                raise ShapeError(f"{self.name}: g=min(t)={g} (the first core's shrink) must divide {name}={v}")
        for j, tv in enumerate(ts):
            core = j + 2
            a, b = ranks[j + 1], ranks[(j + 2) % n]
            if a % tv or b % tv:
                raise ShapeError(f"{self.name}: t[{j}]={tv} (core {core}) must divide its bonds "
                                 f"rank[{j + 1}]={a} and rank[{(j + 2) % n}]={b}")
        return tuple(ranks), tuple(ts)

    def factor_shapes(self, shape, ranks, t):
        n = len(shape)
        g = min(t)
        out = [(ranks[0] // g, shape[0], ranks[1 % n] // g)]
        for k in range(1, n):
            out.append((ranks[k] // t[k - 1], shape[k], ranks[(k + 1) % n] // t[k - 1]))
        return out

    def reconstruct(self, factors, shape, ranks, t):
        # Every factor is (…) ⊗ I_g, so the product is M' ⊗ I_g with M' built from t' = t / g, and
        # Tr(M' ⊗ I_g) = g · Tr(M').
        g = min(t)
        p = factors[0]  # (A, M, B): A = R_0/g rows kept for the trace
        for core, tv in zip(factors[1:], t):
            tp = tv // g
            a, m, _ = p.shape
            p4 = p.reshape(a, m, core.shape[0], tp)
            p = torch.einsum("amcs,cid->amids", p4, core).reshape(a, m * core.shape[1], core.shape[2] * tp)
        x = torch.einsum("ama->m", p)
        return (x * g if g != 1 else x).reshape(shape)

    def classical_factors(self, factors, shape, ranks, t):
        g = min(t)
        out = [kron_identity(factors[0].permute(1, 0, 2), g).permute(1, 0, 2)]
        out += [kron_identity(c.permute(1, 0, 2), tv).permute(1, 0, 2) for c, tv in zip(factors[1:], t)]
        return out

    # -- THEORY §4: uniform t is TR(R/t), the factor t absorbed into the first core -------------------------
    def equivalence(self, shape, ranks, t):
        shape = tuple(shape)
        if len(set(t)) != 1:
            return None
        g = t[0]
        eq_ranks = tuple(r // g for r in ranks)

        def to_eq(fs):
            return [fs[0] * g, *fs[1:]] if g != 1 else list(fs)

        def from_eq(fs):
            return [fs[0] / g, *fs[1:]] if g != 1 else list(fs)

        return Equivalence("tr", shape, eq_ranks, Relayout.identity(shape), to_eq, from_eq)

    def no_equivalent_reason(self, shape, ranks, t):
        if len(set(t)) == 1:
            return None
        g = min(t)
        k = next(j for j, v in enumerate(t) if v != g)
        return (f"t={list(t)} is not uniform: after factoring out g={g}, core {k + 2} carries an identity wire "
                f"of size {t[k] // g} through the ring as a chord; no single classical format has this topology")

    def decompose_classical(self, x, ranks, **kw):
        return tr_decompose(x, ranks, **kw)


TR = register(TRFormat("tr", semi_tensor=False))
STR = register(TRFormat("str", semi_tensor=True))
