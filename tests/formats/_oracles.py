"""Test oracles: each format written out the slow, explicit way (``torch.kron`` with identities, Python loops).

Nothing here calls stsearch's contraction code, so comparing it with ``to_tensor()`` checks the definitions in
``docs/theory.md`` independently. Also the shared configurations (shape, rank, t) the per-format tests run on.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from stsearch.formats import FactorizedTensor

Case = tuple[str, tuple[int, ...], tuple, object]


def kron_eye(m: torch.Tensor, t: int) -> torch.Tensor:
    """``m ⊗ I_t`` for a matrix, with torch.kron (row index ``i·t + s``)."""
    return torch.kron(m, torch.eye(t, dtype=m.dtype))


def unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: (I_mode, product of the other sizes)."""
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def fold(m: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold` for a tensor of ``shape`` (with ``shape[mode]`` = rows of ``m``)."""
    rest = [s for j, s in enumerate(shape) if j != mode]
    return m.reshape(m.shape[0], *rest).movedim(0, mode)


def tucker_dense(core: torch.Tensor, us: Sequence[torch.Tensor | None], ts: Sequence[int]) -> torch.Tensor:
    """``G ×_1 (U_1 ⊗ I_{t_1}) ⋯ ×_N (U_N ⊗ I_{t_N})`` through unfoldings; ``None`` = unfactored mode."""
    x = core
    for mode, (u, t) in enumerate(zip(us, ts)):
        if u is None:
            continue
        big = kron_eye(u, t)  # (I_n, R_n)
        shape = list(x.shape)
        shape[mode] = big.shape[0]
        x = fold(big @ unfold(x, mode), mode, shape)
    return x


def tt_dense(cores: Sequence[torch.Tensor], shape: Sequence[int], ts: Sequence[int]) -> torch.Tensor:
    """STT (last-mode rule) by looping over every multi-index: ``G_1[i_1] (G_2[i_2] ⊗ I_{t_2}) ⋯``.

    cores[0]: (1, I_1, R_1); cores[k]: (R_{k-1}/t, I_k, R_k/t); cores[-1]: (R_{N-1}/t_N, I_N/t_N, 1).
    The last product is a 1×t_N row; its entry s is X(…, i'_N·t_N + s). ts = (t_2, …, t_N).
    """
    n = len(shape)
    out = torch.zeros(shape, dtype=cores[0].dtype)
    tn = ts[-1]
    ranges = [range(s) for s in shape[:-1]] + [range(shape[-1] // tn)]
    for idx in itertools.product(*ranges):
        row = cores[0][:, idx[0], :]  # (1, R_1)
        for k in range(1, n):
            row = row @ kron_eye(cores[k][:, idx[k], :], ts[k - 1])
        for s in range(tn):
            out[(*idx[:-1], idx[-1] * tn + s)] = row[0, s]
    return out


def tr_dense(cores: Sequence[torch.Tensor], shape: Sequence[int], ts: Sequence[int]) -> torch.Tensor:
    """STR by looping over every multi-index: ``Tr[(G_1[i_1] ⊗ I_g)(G_2[i_2] ⊗ I_{t_2}) ⋯]``, g = min t."""
    g = min(ts)
    out = torch.zeros(shape, dtype=cores[0].dtype)
    for idx in itertools.product(*[range(s) for s in shape]):
        m = kron_eye(cores[0][:, idx[0], :], g)
        for k in range(1, len(shape)):
            m = m @ kron_eye(cores[k][:, idx[k], :], ts[k - 1])
        out[idx] = torch.trace(m)
    return out


def dense(ft: FactorizedTensor) -> torch.Tensor:
    """The oracle reconstruction of any factorized tensor from its stored factors."""
    if ft.definition.family == "tucker":
        us = iter(ft.factors[1:])
        per_mode = [None if r is None else next(us) for r in ft.ranks]
        return tucker_dense(ft.factors[0], per_mode, ft.t)
    if ft.definition.family == "tt":
        return tt_dense(ft.factors, ft.shape, ft.t)
    return tr_dense(ft.factors, ft.shape, ft.t)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def jacobian_rank(fn: Callable[[torch.Tensor], torch.Tensor], core: torch.Tensor) -> tuple[int, int]:
    """(numpy matrix_rank of d fn / d core, core.numel())."""
    with warnings.catch_warnings():  # torch's vectorized jacobian imports a deprecated torch.jit helper
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        jac = torch.autograd.functional.jacobian(fn, core, vectorize=True, strategy="forward-mode")
    mat = jac.reshape(-1, core.numel()).numpy()
    return int(np.linalg.matrix_rank(mat)), core.numel()


def prod(xs: Sequence[int]) -> int:
    return math.prod(xs)


# -- shared configurations (fmt, shape, rank, t) -----------------------------------------------------------
TUCKER_CASES: list[Case] = [
    ("tucker", (4, 5, 6), (2, 3, 4), 1),
    ("tucker", (4, 5, 6), (2, None, 4), 1),
    ("sttu", (4, 6, 8), (2, 4, 4), 2),
    ("sttu", (4, 6, 8), (2, 4, 4), (2, 1, 4)),
    ("sttu", (6, 4, 9), (3, None, 6), (3, 1, 3)),
    ("sttu", (4, 6, 8, 3), (4, 3, 4, 3), (4, 3, 2, 1)),
]

TT_CASES: list[Case] = [
    ("tt", (4, 5, 6), (3, 4), 1),
    ("tt", (3, 4, 4, 5), (3, 5, 4), 1),
    ("stt", (4, 6, 8), (4, 4), 2),  # uniform, last-mode rule
    ("stt", (4, 6, 8), (4, 4), (2, 1)),  # unshrunk-last-core rule (t_N = 1)
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 2)),  # uniform, last-mode rule
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 1)),  # unshrunk-last-core rule
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 4)),  # non-decreasing: a TT
    ("stt", (4, 6, 6, 8), (4, 8, 8), (4, 4, 2)),  # a wire closes a ring: a TR
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 4, 1)),  # ring with a chord: new
    ("stt", (8, 6, 6, 8), (8, 8, 8), (4, 2, 2)),  # ring with a tail: new
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 4, 2)),  # ring with a tail: new
    ("stt", (4, 6, 6, 6), (4, 6, 6), (2, 3, 3)),  # not nested (allowed for STT): no equivalent claimed
]

TR_CASES: list[Case] = [
    ("tr", (4, 5, 6), (2, 3, 4), 1),
    ("tr", (3, 4, 2, 5), (2, 3, 2, 4), 1),
    ("str", (4, 6, 8), (4, 4, 4), 2),  # uniform
    ("str", (4, 6, 8), (8, 4, 8), (2, 4)),  # wire beside bond R_1: a TR
    ("str", (4, 6, 8), (4, 8, 8), (4, 2)),  # wire beside the closing bond: a TR
    ("str", (4, 6, 6, 8), (4, 8, 8, 4), (4, 4, 2)),  # wire beside the closing bond: a TR
    ("str", (4, 6, 6, 8), (4, 4, 8, 8), (2, 4, 4)),  # wire beside bond R_1: a TR
    ("str", (4, 6, 6, 8), (4, 8, 8, 8), (2, 4, 2)),  # chord: new
    ("str", (4, 6, 6, 8), (8, 8, 8, 8), (4, 2, 4)),  # chord: new
]

ALL_CASES: list[Case] = TUCKER_CASES + TT_CASES + TR_CASES


def case_id(case: Case) -> str:
    fmt, shape, rank, t = case
    return f"{fmt}-{'x'.join(map(str, shape))}-r{rank}-t{t}".replace(" ", "")


def make(case: Case, seed: int = 0) -> FactorizedTensor:
    """A float64 random tensor for ``case``."""
    from stsearch import random_tensor

    fmt, shape, rank, t = case
    return random_tensor(shape, fmt, rank, t, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_oracle(case: Case) -> None:
    """to_tensor() equals the explicit Kronecker computation."""
    ft = make(case)
    ref = dense(ft)
    assert ft.to_tensor().shape == ref.shape == tuple(case[1])
    torch.testing.assert_close(ft.to_tensor(), ref, rtol=1e-12, atol=1e-12)


def check_equivalent(case: Case) -> FactorizedTensor | None:
    """equivalent() holds the same entries after its relayout and stores the same number of parameters."""
    ft = make(case)
    eq = ft.equivalent()
    if eq is None:
        reason = ft.no_equivalent_reason()
        assert isinstance(reason, str) and reason
        return None
    assert ft.no_equivalent_reason() is None
    assert eq.format == ft.definition.classical or (ft.format, eq.format) == ("stt", "tr")
    assert all(v == 1 for v in eq.t)
    assert eq.num_params == ft.num_params
    assert sum(f.numel() for f in eq.factors) == ft.num_params
    relayout = ft.equivalent_relayout()
    assert relayout is not None and relayout.dst == eq.shape
    x = ft.to_tensor()
    torch.testing.assert_close(eq.to_tensor(), relayout.apply(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(relayout.invert(eq.to_tensor()), x, rtol=0, atol=1e-12)
    # the classical equivalent is a valid classical configuration of its format
    from stsearch.formats import get_format

    cls = get_format(eq.format)
    assert cls.normalize(eq.shape, list(eq.ranks), 1)[0] == eq.ranks
    # and the factor maps are inverse to each other
    eqdef = ft.definition.equivalence(ft.shape, ft.ranks, ft.t)
    back = eqdef.from_equivalent(eq.factors)
    for a, b in zip(back, ft.factors):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    return eq


def check_classical_twin(case: Case) -> FactorizedTensor:
    """to_classical(): the classical format at the same ranks, same tensor, factors = STP factors ⊗ I_t."""
    ft = make(case)
    tw = ft.to_classical()
    assert tw.format == ft.definition.classical
    assert tw.ranks == ft.ranks and tw.shape == ft.shape and all(v == 1 for v in tw.t)
    torch.testing.assert_close(tw.to_tensor(), ft.to_tensor(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense(tw), ft.to_tensor(), rtol=1e-12, atol=1e-12)
    return tw


def check_t1_is_classical(case: Case) -> None:
    """The ST format at t = 1 and the classical format, given the same factors, give the same tensor."""
    from stsearch import random_tensor

    fmt, shape, rank, _ = case
    st = random_tensor(shape, fmt, rank, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    classical = st.definition.classical
    cl = FactorizedTensor(classical, shape, st.ranks, st.t, st.factors)
    assert cl.num_params == st.num_params
    torch.testing.assert_close(cl.to_tensor(), st.to_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(dense(cl), st.to_tensor(), rtol=1e-12, atol=1e-12)


def nonredundant(fmt: str, shape: Sequence[int], ranks: Sequence) -> bool:
    """THEORY §5's condition that the classical format itself stores no redundant number.

    TT: R_k ≤ R_{k-1}·I_k and R_{k-1} ≤ I_k·R_k for every core (R_0 = R_N = 1); TR: the same around the ring,
    and ∏_{j≠k} I_j ≥ R_{k-1}·R_k; Tucker: R_n ≤ I_n and R_n ≤ ∏_{j≠n} R_j.
    """
    n = len(shape)
    if fmt == "tucker":
        core = [s if r is None else r for s, r in zip(shape, ranks)]
        return all(r is None or (r <= s and r <= prod(core) // r) for s, r in zip(shape, ranks))
    if fmt == "tt":
        bonds = [1, *ranks, 1]
        return all(bonds[k + 1] <= bonds[k] * shape[k] and bonds[k] <= shape[k] * bonds[k + 1] for k in range(n))
    bonds = [*ranks, ranks[0]]  # core k (0-based) is (bonds[k], I_k, bonds[k+1])
    total = prod(shape)
    return all(bonds[k + 1] <= bonds[k] * shape[k] and bonds[k] <= shape[k] * bonds[k + 1]
               and total // shape[k] >= bonds[k] * bonds[k + 1] for k in range(n))


def check_jacobians(case: Case) -> None:
    """THEORY §5: each stored core's Jacobian (others random, fixed) has rank equal to the core's size."""
    ft = make(case, seed=3)
    eq = ft.equivalent()
    if eq is not None:  # the shape is not degenerate: the classical equivalent has no redundancy either
        assert nonredundant(eq.format, eq.shape, eq.ranks), f"degenerate test shape {case_id(case)}"
    d = ft.definition
    for k, core in enumerate(ft.factors):
        def fn(c: torch.Tensor, k: int = k) -> torch.Tensor:
            return d.reconstruct([*ft.factors[:k], c, *ft.factors[k + 1:]], ft.shape, ft.ranks, ft.t)

        rank, size = jacobian_rank(fn, core)
        assert rank == size, f"{case_id(case)}: core {k} of shape {tuple(core.shape)} has Jacobian rank " \
                             f"{rank} < {size}"
