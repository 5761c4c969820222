"""TR and STR: definition (first core shrunk by g = min t), equivalents, counts, ranks, §5, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import stsearch
from stsearch.formats import num_params

from ._oracles import (
    TR_CASES,
    case_id,
    check_classical_twin,
    check_equivalent,
    check_jacobians,
    check_oracle,
    check_t1_is_classical,
    kron_eye,
    make,
)

ST_CASES = [c for c in TR_CASES if c[0] == "str"]


def str_params(shape, ranks, ts) -> int:
    """R_0 I_1 R_1 / g² + Σ_{k≥2} R_{k-1} I_k R_k / t_k², with R_N = R_0 and g = min t."""
    n, g = len(shape), min(ts)
    out = ranks[0] * shape[0] * ranks[1] // g**2
    return out + sum(ranks[k - 1] * shape[k - 1] * ranks[k % n] // ts[k - 2] ** 2 for k in range(2, n + 1))


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_to_tensor_matches_kronecker_oracle(case) -> None:
    check_oracle(case)


@pytest.mark.parametrize("case", ST_CASES, ids=case_id)
def test_t1_equals_tr(case) -> None:
    check_t1_is_classical(case)


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_to_classical_expands_each_core(case) -> None:
    ft = make(case)
    tw = check_classical_twin(case)
    ts = (min(ft.t), *ft.t)  # the first core acts as G_1 ⊗ I_g
    for g, w, t in zip(ft.factors, tw.factors, ts):
        for i in range(g.shape[1]):
            torch.testing.assert_close(w[:, i, :], kron_eye(g[:, i, :], t))


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_equivalent_matches(case) -> None:
    check_equivalent(case)


@pytest.mark.parametrize(("shape", "ranks", "t"), [((4, 6, 8), (4, 4, 4), 2), ((4, 6, 6, 8), (4, 8, 8, 4), 4),
                                                  ((3, 4, 5, 6, 2), (6, 6, 6, 6, 6), 3)])
def test_uniform_is_tr_of_rank_r_over_t(shape, ranks, t) -> None:
    """STR(R, t) = TR(R/t) on the same modes: the same cores, the first one scaled by t (= Tr I_t)."""
    ft = stsearch.random_tensor(shape, "str", ranks, t, dtype=torch.float64)
    eq = ft.equivalent()
    assert eq is not None and eq.format == "tr" and eq.shape == tuple(shape)
    assert eq.ranks == tuple(r // t for r in ranks)
    assert ft.equivalent_relayout().is_identity
    torch.testing.assert_close(eq.factors[0], ft.factors[0] * t)
    for a, b in zip(eq.factors[1:], ft.factors[1:]):
        torch.testing.assert_close(a, b)
    assert eq.num_params == ft.num_params == str_params(shape, ranks, (t,) * (len(shape) - 1))
    torch.testing.assert_close(eq.to_tensor(), ft.to_tensor(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "ranks", "t", "eq_ranks"),
    [
        # t_2 = … = t_{N-1} = T > t_N = g: the wire (T/g) joins core 1 to core N, beside the closing bond
        ((4, 6, 8), (4, 8, 8), (4, 2), (4, 2, 2)),
        ((4, 6, 6, 8), (4, 8, 8, 4), (4, 4, 2), (4, 2, 2, 1)),
        # t_2 = g < t_3 = … = t_N = T: the wire joins core 2 to core 1, beside bond R_1
        ((4, 6, 8), (8, 4, 8), (2, 4), (2, 4, 2)),
        ((4, 6, 6, 8), (4, 4, 8, 8), (2, 4, 4), (1, 4, 2, 2)),
        ((4, 6, 6, 8), (6, 3, 6, 6), (1, 3, 3), (2, 9, 2, 2)),
    ],
)
def test_mixed_t_wire_beside_a_bond_is_tr(shape, ranks, t, eq_ranks) -> None:
    ft = stsearch.random_tensor(shape, "str", ranks, t, dtype=torch.float64)
    eq = ft.equivalent()
    assert eq is not None and eq.format == "tr" and eq.ranks == eq_ranks and eq.shape == tuple(shape)
    assert eq.num_params == ft.num_params
    torch.testing.assert_close(eq.to_tensor(), ft.to_tensor(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [(2, 2), (2, 4), (4, 2), (1, 3), (3, 1), (8, 2)])
def test_every_three_core_nested_pattern_is_tr(t) -> None:
    ft = stsearch.random_tensor((8, 6, 12), "str", (24, 24, 24), t, dtype=torch.float64)
    assert ft.equivalent() is not None and ft.no_equivalent_reason() is None


@pytest.mark.parametrize("t", [(2, 4, 2), (4, 2, 4), (1, 2, 1), (2, 4, 8), (1, 2, 4)])
def test_chord_has_no_equivalent(t) -> None:
    ft = stsearch.random_tensor((4, 6, 6, 8), "str", (8, 8, 8, 8), t, dtype=torch.float64)
    assert ft.equivalent() is None and ft.equivalent_relayout() is None
    reason = ft.no_equivalent_reason()
    assert isinstance(reason, str) and "chord" in reason and str(list(t)) in reason


def test_full_first_core_would_be_redundant() -> None:
    """Why the first core is stored shrunk by g: stored whole, only R_0 I_1 R_1 / t² of its numbers matter."""
    shape, ranks, t = (4, 6, 8), (4, 4, 4), 2
    ft = stsearch.random_tensor(shape, "str", ranks, t, dtype=torch.float64)
    full = torch.randn(ranks[0], shape[0], ranks[1], dtype=torch.float64)

    def fn(g1: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(shape[0]):
            rest = torch.stack([torch.stack([torch.trace(g1[:, i, :] @ kron_eye(ft.factors[1][:, j, :], t)
                                                         @ kron_eye(ft.factors[2][:, k, :], t))
                                             for k in range(shape[2])]) for j in range(shape[1])])
            out.append(rest)
        return torch.stack(out)

    jac = torch.autograd.functional.jacobian(fn, full).reshape(-1, full.numel()).numpy()
    assert np.linalg.matrix_rank(jac) == full.numel() // t**2 == ft.factors[0].numel()


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_num_params_formula(case) -> None:
    fmt, shape, rank, t = case
    ft = make(case)
    want = str_params(shape, ft.ranks, ft.t)
    assert ft.num_params == want == num_params(shape, fmt, rank, t)
    assert sum(f.numel() for f in ft.factors) == want


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_unfolding_rank_bounded_by_r0_rk(case) -> None:
    """rank of X unfolded as (modes ≤ k) × (modes > k) ≤ R_0 · R_k."""
    ft = make(case)
    x = ft.to_tensor()
    for k in range(1, len(ft.shape)):
        rows = math.prod(ft.shape[:k])
        rank = int(torch.linalg.matrix_rank(x.reshape(rows, -1)))
        assert rank <= ft.ranks[0] * ft.ranks[k]


@pytest.mark.parametrize("case", TR_CASES, ids=case_id)
def test_every_stored_number_matters(case) -> None:
    check_jacobians(case)


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "rank", "t", "pattern"),
    [
        ((4, 6, 8), 6, (2, 3), r"t=\[2, 3\] must be nested under divisibility"),
        ((4, 6, 8, 5), 12, (4, 6, 2), r"t=\[4, 6, 2\] must be nested"),
        ((4, 6, 8), (4, 4, 6), (2, 4), r"t\[1\]=4 \(core 3\) must divide its bonds rank\[2\]=6 and rank\[0\]=4"),
        ((4, 6, 8), (4, 3, 4), 2, r"g=min\(t\)=2 \(the first core's shrink\) must divide rank\[1\]=3"),
        ((4, 6, 8), (4, 4, 4), (2, 2, 2), r"t=\[2, 2, 2\] has 3 entries; expected 2"),
        ((4, 6, 8), (4, 4), 1, r"rank=\[4, 4\] has 2 entries; expected 3"),
        ((2, 2, 2), (4, 3, 1), 1, r"rank\[0\]·rank\[1\]=12 exceeds the tensor size 8"),
    ],
)
def test_str_bad_input(shape, rank, t, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        stsearch.random_tensor(shape, "str", rank, t)
    with pytest.raises(ValueError, match=pattern):
        stsearch.decompose(torch.randn(*shape), "str", rank, t)


def test_classical_tr_refuses_t() -> None:
    with pytest.raises(ValueError, match=r"tr: t=\[2, 2\] but the classical format takes t=1"):
        stsearch.random_tensor((4, 6, 8), "tr", 4, 2)
