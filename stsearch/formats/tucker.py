"""Tucker and semi-tensor Tucker (STTu).

Definition (``t_n = 1`` for every mode gives classical Tucker)::

    X = G ×_1 (U_1 ⊗ I_{t_1}) ×_2 ⋯ ×_N (U_N ⊗ I_{t_N})   =   G ⋉_1 U_1 ⋯ ⋉_N U_N

* core ``G``: (R_1, …, R_N); factor ``U_n``: (I_n / t_n, R_n / t_n);
* a mode whose rank is ``None`` is left unfactored: no factor, the core keeps ``I_n`` (partial Tucker);
* parameters: ``∏ R_n + Σ I_n R_n / t_n²``.
"""

from __future__ import annotations

import torch

from .._stp import kron_identity, mode_product
from ..errors import ShapeError
from ._decomp import hooi
from .base import Equivalence, Format, Relayout, Shape, as_list, check_shape, register


class TuckerFormat(Format):
    family = "tucker"
    classical = "tucker"

    def __init__(self, name: str, semi_tensor: bool):
        self.name = name
        self.semi_tensor = semi_tensor

    def normalize(self, shape, rank, t):
        shape = check_shape(shape, self.name, 1)
        n = len(shape)
        ranks = as_list(rank, n, "rank", self.name, allow_none=True)
        ts = as_list(t, n, "t", self.name)
        self.check_t(tuple(ts))
        for i, (size, r, tv) in enumerate(zip(shape, ranks, ts)):
            if r is None:
                if tv != 1:
                    raise ShapeError(f"{self.name}: t[{i}]={tv} on mode {i}, which is unfactored (rank None)")
                continue
            if r > size:
                raise ShapeError(f"{self.name}: rank[{i}]={r} exceeds the mode size shape[{i}]={size}")
            if size % tv or r % tv:
                raise ShapeError(f"{self.name}: t[{i}]={tv} must divide shape[{i}]={size} and rank[{i}]={r}")
        return tuple(ranks), tuple(ts)

    @staticmethod
    def _core_shape(shape: Shape, ranks: tuple) -> Shape:
        return tuple(s if r is None else r for s, r in zip(shape, ranks))

    def bond_limits(self, shape):
        return list(shape)

    def bond_divisors(self, shape, t):
        return list(t)

    def factor_shapes(self, shape, ranks, t):
        out = [self._core_shape(shape, ranks)]
        out += [(s // tv, r // tv) for s, r, tv in zip(shape, ranks, t) if r is not None]
        return out

    def reconstruct(self, factors, shape, ranks, t):
        x = factors[0]
        us = iter(factors[1:])
        for mode, r in enumerate(ranks):
            if r is not None:
                x = mode_product(x, next(us), mode)  # semi-tensor mode product when t > 1
        return x

    def classical_factors(self, factors, shape, ranks, t):
        out = [factors[0]]
        us = iter(factors[1:])
        for r, tv in zip(ranks, t):
            if r is not None:
                out.append(kron_identity(next(us), tv))
        return out

    # -- THEORY §4: STTu is a partial Tucker of X reshaped to (I_1/t_1, t_1, I_2/t_2, t_2, ...) -----------
    def equivalence(self, shape, ranks, t):
        if all(v == 1 for v in t):
            return Equivalence(self.classical, tuple(shape), tuple(ranks), Relayout.identity(tuple(shape)),
                               to_eq=list, from_eq=list)
        eq_shape: list[int] = []
        eq_ranks: list[int | None] = []
        core_split: list[int] = []
        for size, r, tv in zip(shape, ranks, t):
            if tv == 1:
                eq_shape.append(size)
                eq_ranks.append(r)
                core_split.append(size if r is None else r)
            else:
                eq_shape += [size // tv, tv]
                eq_ranks += [r // tv, None]
                core_split += [r // tv, tv]
        eq_shape_t = tuple(eq_shape)
        relayout = Relayout(tuple(shape), eq_shape_t, tuple(range(len(eq_shape_t))), eq_shape_t)
        core_shape = self._core_shape(tuple(shape), ranks)

        def to_eq(fs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [fs[0].reshape(core_split), *fs[1:]]

        def from_eq(fs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [fs[0].reshape(core_shape), *fs[1:]]

        return Equivalence(self.classical, eq_shape_t, tuple(eq_ranks), relayout, to_eq, from_eq)

    def no_equivalent_reason(self, shape, ranks, t):
        return None

    def decompose_classical(self, x, ranks, **kw):
        return hooi(x, ranks, **kw)


TUCKER = register(TuckerFormat("tucker", semi_tensor=False))
STTU = register(TuckerFormat("sttu", semi_tensor=True))

