"""TT and STT: definition (last-mode rule), both last-bond rules' equivalents, counts, ranks, §5, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import stsearch
from stsearch.formats import num_params

from ._oracles import (
    TT_CASES,
    case_id,
    check_classical_twin,
    check_equivalent,
    check_jacobians,
    check_oracle,
    check_t1_is_classical,
    kron_eye,
    make,
)

ST_CASES = [c for c in TT_CASES if c[0] == "stt"]


def stt_params(shape, ranks, ts) -> int:
    """I_1 R_1 + Σ_{k=2}^{N-1} R_{k-1} I_k R_k / t_k² + R_{N-1} I_N / t_N²."""
    n = len(shape)
    out = shape[0] * ranks[0]
    out += sum(ranks[k - 2] * shape[k - 1] * ranks[k - 1] // ts[k - 2] ** 2 for k in range(2, n))
    return out + ranks[-1] * shape[-1] // ts[-1] ** 2


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_to_tensor_matches_kronecker_oracle(case) -> None:
    check_oracle(case)


@pytest.mark.parametrize("case", ST_CASES, ids=case_id)
def test_t1_equals_tt(case) -> None:
    check_t1_is_classical(case)


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_to_classical_expands_each_core(case) -> None:
    ft = make(case)
    tw = check_classical_twin(case)
    torch.testing.assert_close(tw.factors[0], ft.factors[0])
    for k in range(1, len(ft.shape)):
        g, w, t = ft.factors[k], tw.factors[k], ft.t[k - 1]
        if k < len(ft.shape) - 1:
            for i in range(g.shape[1]):
                torch.testing.assert_close(w[:, i, :], kron_eye(g[:, i, :], t))
        else:  # last core (R_{N-1}/t, I_N/t, 1) -> (R_{N-1}, I_N, 1): W[:, i'·t + s, 0] = (G[:, i', :] ⊗ I_t)[:, s]
            for i in range(g.shape[1]):
                torch.testing.assert_close(w[:, i * t:(i + 1) * t, 0], kron_eye(g[:, i, :], t))


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_equivalent_matches(case) -> None:
    check_equivalent(case)


@pytest.mark.parametrize(("shape", "ranks", "t"), [((4, 6, 8), (4, 4), 2), ((4, 6, 8), (4, 8), 4),
                                                  ((4, 6, 6, 8), (4, 8, 8), 2), ((4, 6, 6, 8), (4, 8, 8), 4),
                                                  ((2, 3, 4, 2, 6), (2, 6, 6, 6), 2)])
def test_last_mode_rule_uniform_is_tt_with_t_moved_to_mode_1(shape, ranks, t) -> None:
    """STT(R, t) = TT(R/t) on modes (I_1·t, I_2, …, I_N/t): X[…, i'_N·t + s] = Y[i_1·t + s, …, i'_N]."""
    ft = stsearch.random_tensor(shape, "stt", ranks, t, dtype=torch.float64)
    eq = ft.equivalent()
    assert eq is not None and eq.format == "tt"
    want_shape = (shape[0] * t, *shape[1:-1], shape[-1] // t)
    assert eq.shape == want_shape and eq.ranks == tuple(r // t for r in ranks)
    assert eq.num_params == ft.num_params == stt_params(shape, ranks, (t,) * (len(shape) - 1))
    x = ft.to_tensor()
    moved = x.reshape(*shape[:-1], shape[-1] // t, t).movedim(-1, 1).reshape(want_shape)
    torch.testing.assert_close(eq.to_tensor(), moved, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("shape", "ranks", "big_t"), [((4, 6, 8), (4, 4), 2), ((4, 6, 6, 8), (4, 8, 8), 2),
                                                       ((4, 6, 6, 8), (4, 8, 8), 4), ((6, 6, 6), (6, 6), 3)])
def test_unshrunk_last_core_rule_is_tr_with_closing_bond_t(shape, ranks, big_t) -> None:
    """The unshrunk-last-core rule is t_N = 1: a TR with closing bond T and inner ranks R/T, same modes."""
    ts = [big_t] * (len(shape) - 2) + [1]
    ft = stsearch.random_tensor(shape, "stt", ranks, ts, dtype=torch.float64)
    assert ft.factors[-1].shape == (ranks[-1], shape[-1], 1)  # the last core is stored whole
    eq = ft.equivalent()
    assert eq is not None and eq.format == "tr"
    assert eq.shape == tuple(shape) and eq.ranks == (big_t, *(r // big_t for r in ranks))
    assert eq.num_params == ft.num_params == stt_params(shape, ranks, ts)
    torch.testing.assert_close(eq.to_tensor(), ft.to_tensor(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("t", "topology"),
    [((2, 2, 4), "tt"), ((1, 2, 2), "tt"), ((1, 1, 2), "tt"), ((4, 4, 2), "tr"), ((4, 4, 1), "tr"),
     ((2, 4, 1), None), ((2, 4, 2), None), ((4, 2, 2), None), ((1, 2, 1), None), ((4, 2, 4), None)],
)
def test_mixed_t_topology(t, topology) -> None:
    """Non-decreasing t is a TT; a wire that runs to the last core closes a ring; a wire ending mid-chain is new."""
    shape, ranks = (8, 6, 6, 8), (8, 8, 8)
    ft = stsearch.random_tensor(shape, "stt", ranks, t, dtype=torch.float64)
    eq = ft.equivalent()
    if topology is None:
        assert eq is None
        reason = ft.no_equivalent_reason()
        assert isinstance(reason, str) and str(list(t)) in reason
    else:
        assert eq is not None and eq.format == topology and eq.num_params == ft.num_params
        relayout = ft.equivalent_relayout()
        torch.testing.assert_close(eq.to_tensor(), relayout.apply(ft.to_tensor()), rtol=0, atol=1e-12)


def test_every_three_core_nested_pattern_is_classical() -> None:
    for t in [(1, 2), (2, 2), (2, 4), (4, 2), (2, 1), (4, 1), (1, 4)]:
        ft = stsearch.random_tensor((8, 6, 8), "stt", (8, 8), t, dtype=torch.float64)
        assert ft.equivalent() is not None, t


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_num_params_formula(case) -> None:
    fmt, shape, rank, t = case
    ft = make(case)
    want = stt_params(shape, ft.ranks, ft.t)
    assert ft.num_params == want == num_params(shape, fmt, rank, t)
    assert sum(f.numel() for f in ft.factors) == want


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_unfolding_rank_bounded_by_bond(case) -> None:
    """rank of X unfolded as (modes ≤ k) × (modes > k) ≤ R_k, attained by generic cores."""
    ft = make(case)
    x = ft.to_tensor()
    for k, r in enumerate(ft.ranks):
        rows = math.prod(ft.shape[: k + 1])
        rank = int(torch.linalg.matrix_rank(x.reshape(rows, -1)))
        assert rank <= r
        if ft.format == "tt":
            assert rank == r


@pytest.mark.parametrize("case", TT_CASES, ids=case_id)
def test_every_stored_number_matters(case) -> None:
    check_jacobians(case)


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "rank", "t", "pattern"),
    [
        ((4, 6, 7), 4, 2, r"t\[1\]=2 \(core 3\) must divide rank \[4\] and shape\[2\]=7"),
        ((4, 6, 8), (3, 4), 2, r"t\[0\]=2 \(core 2\) must divide rank \[3, 4\]"),
        ((4, 6, 8), (4, 6), (2, 4), r"t\[1\]=4 \(core 3\) must divide rank \[6\]"),
        ((4, 6, 8), (5, 4), 1, r"rank\[0\]=5 \(bond R_1\) exceeds the rank of the unfolding it carries, "
                               r"min\(4, 48\)=4"),
        ((4, 6, 8), (4, 9), 1, r"rank\[1\]=9 \(bond R_2\) exceeds .* min\(24, 8\)=8"),
        ((4, 6, 8), (4, 4, 4), 2, r"rank=\[4, 4, 4\] has 3 entries; expected 2"),
        ((4, 6, 8), 4, (2, 2, 2), r"t=\[2, 2, 2\] has 3 entries; expected 2"),
        ((4, 6, 8), 4, (2,), r"t=\[2\] has 1 entries; expected 2"),
        ((8,), 4, 1, r"shape=\[8\] must have at least 2"),
        ((4, 6, 8), True, 1, r"rank=True must be an int"),
    ],
)
def test_stt_bad_input(shape, rank, t, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        stsearch.random_tensor(shape, "stt", rank, t)
    with pytest.raises(ValueError, match=pattern):
        stsearch.decompose(torch.randn(*shape), "stt", rank, t)


def test_classical_tt_refuses_t() -> None:
    with pytest.raises(ValueError, match=r"tt: t=\[2, 2\] but the classical format takes t=1"):
        stsearch.random_tensor((4, 6, 8), "tt", 4, 2)
