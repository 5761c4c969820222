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

Classical equivalents (same tensorization, same parameter count): uniform t is TR(R/t); the two mixed patterns
whose leftover identity wire runs beside an existing bond (``t_2 = … = t_{N-1} > t_N`` and
``t_2 < t_3 = … = t_N``, which cover every nested t when N = 3) are a TR with that wire merged into the bond.
Every other mixed t leaves a chord and has no classical equivalent.
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

    def bond_divisors(self, shape, t):
        # bond 0 joins core N and core 1 (shrunk by g); bond k ≥ 1 joins core k and core k+1
        g = min(t)
        per_core = (g, *t)
        n = len(shape)
        return [math.lcm(per_core[k - 1], per_core[k % n]) for k in range(n)]

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

    # -- THEORY §4 -----------------------------------------------------------------------------------------
    # Divide every factor by ⊗ I_g (g = min t); core k then carries identity wires of total size t_k/g.
    # Uniform t: no wire is left, and STR(R, t) is TR(R/t) with the factor g (the trace of I_g) absorbed into
    # the first core. A wire that passes through cores a+1..b-1 joins core a to core b; it is a chord unless
    # a and b are neighbours on the ring, which happens in exactly two patterns (h = T/g):
    #   A: t_2 = … = t_{N-1} = T, t_N = g: the wire joins core 1 to core N, beside the closing bond R_0;
    #   B: t_2 = g, t_3 = … = t_N = T: the wire joins core 2 to core 1, beside bond R_1.
    # A parallel wire merges into the bond it runs beside, so both are a TR on the same tensorization
    # (for N = 3 every nested t is uniform, A or B).
    @staticmethod
    def _case(t: tuple[int, ...]) -> str | None:
        if len(set(t)) == 1:
            return "uniform"
        g = min(t)
        if len(set(t[:-1])) == 1 and t[-1] == g:
            return "closing"
        if t[0] == g and len(set(t[1:])) == 1:
            return "first"
        return None

    def equivalence(self, shape, ranks, t):
        shape, ranks, t = tuple(shape), tuple(ranks), tuple(t)
        case = self._case(t)
        if case is None:
            return None
        n = len(shape)
        g = min(t)
        ident = Relayout.identity(shape)
        if case == "uniform":
            eq_ranks = tuple(r // g for r in ranks)

            def to_eq(fs):
                return [fs[0] * g, *fs[1:]] if g != 1 else list(fs)

            def from_eq(fs):
                return [fs[0] / g, *fs[1:]] if g != 1 else list(fs)

            return Equivalence("tr", shape, eq_ranks, ident, to_eq, from_eq)

        big_t = max(t)
        h = big_t // g
        if case == "closing":
            # Core 1's right index d·h + s and core N's left index a·h + s share the wire s; merge it into the
            # closing bond as b·h + s:
            #   G'_1[b·h+s, i, d] = g·G_1[b, i, d·h+s],   G'_N[a, i, b·h+s] = G_N[a·h+s, i, b].
            eq_ranks = (ranks[0] // g * h, *(r // big_t for r in ranks[1:]))
            b0, r1 = ranks[0] // g, ranks[1] // g
            an = ranks[-1] // g

            def to_eq(fs):
                i1, i_n = shape[0], shape[-1]
                g1 = fs[0].reshape(b0, i1, r1 // h, h).permute(0, 3, 1, 2).reshape(b0 * h, i1, r1 // h)
                gn = fs[-1].reshape(an // h, h, i_n, b0).permute(0, 2, 3, 1).reshape(an // h, i_n, b0 * h)
                return [g1 * g, *fs[1:-1], gn]

            def from_eq(fs):
                i1, i_n = shape[0], shape[-1]
                g1 = fs[0].reshape(b0, h, i1, r1 // h).permute(0, 2, 3, 1).reshape(b0, i1, r1)
                gn = fs[-1].reshape(an // h, i_n, b0, h).permute(0, 3, 1, 2).reshape(an, i_n, b0)
                return [g1 / g, *fs[1:-1], gn]

            return Equivalence("tr", shape, eq_ranks, ident, to_eq, from_eq)

        # case "first": core 2's right index a·h + s and core 1's left index b·h + s share the wire s; merge it
        # into bond 1 as d·h + s:
        #   G'_1[b, i, d·h+s] = g·G_1[b·h+s, i, d],   G'_2[d·h+s, i, a] = G_2[d, i, a·h+s].
        r0, r1, r2 = ranks[0] // g, ranks[1] // g, ranks[2 % n] // g
        eq_ranks = (ranks[0] // big_t, ranks[1] // g * h, *(r // big_t for r in ranks[2:]))

        def to_eq(fs):
            i1, i2 = shape[0], shape[1]
            g1 = fs[0].reshape(r0 // h, h, i1, r1).permute(0, 2, 3, 1).reshape(r0 // h, i1, r1 * h)
            g2 = fs[1].reshape(r1, i2, r2 // h, h).permute(0, 3, 1, 2).reshape(r1 * h, i2, r2 // h)
            return [g1 * g, g2, *fs[2:]]

        def from_eq(fs):
            i1, i2 = shape[0], shape[1]
            g1 = fs[0].reshape(r0 // h, i1, r1, h).permute(0, 3, 1, 2).reshape(r0, i1, r1)
            g2 = fs[1].reshape(r1, h, i2, r2 // h).permute(0, 2, 3, 1).reshape(r1, i2, r2)
            return [g1 / g, g2, *fs[2:]]

        return Equivalence("tr", shape, eq_ranks, ident, to_eq, from_eq)

    def no_equivalent_reason(self, shape, ranks, t):
        if self._case(tuple(t)) is not None:
            return None
        g = min(t)
        k = next(j for j, v in enumerate(t) if v != g)
        return (f"t={list(t)}: after factoring out g={g}, core {k + 2} carries an identity wire of size "
                f"{t[k] // g} that joins two cores that are not neighbours on the ring (a chord); no single "
                f"classical format has this topology (THEORY §4)")

    def decompose_classical(self, x, ranks, **kw):
        return tr_decompose(x, ranks, **kw)


TR = register(TRFormat("tr", semi_tensor=False))
STR = register(TRFormat("str", semi_tensor=True))
