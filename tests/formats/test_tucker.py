"""Tucker and STTu: definition, equivalence, parameter count, rank bounds, THEORY §5, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import stsearch
from stsearch.formats import FactorizedTensor, num_params

from ._oracles import (
    TUCKER_CASES,
    case_id,
    check_classical_twin,
    check_equivalent,
    check_jacobians,
    check_oracle,
    check_t1_is_classical,
    kron_eye,
    make,
)

ST_CASES = [c for c in TUCKER_CASES if c[0] == "sttu"]


def tucker_params(shape, ranks, ts) -> int:
    """∏ R_n + Σ I_n R_n / t_n² (an unfactored mode keeps I_n in the core and has no factor)."""
    core = math.prod(s if r is None else r for s, r in zip(shape, ranks))
    return core + sum(s * r // (t * t) for s, r, t in zip(shape, ranks, ts) if r is not None)


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_to_tensor_matches_kronecker_oracle(case) -> None:
    check_oracle(case)


@pytest.mark.parametrize("case", ST_CASES, ids=case_id)
def test_t1_equals_tucker(case) -> None:
    check_t1_is_classical(case)


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_to_classical_expands_each_factor(case) -> None:
    ft = make(case)
    tw = check_classical_twin(case)
    us = iter(ft.factors[1:])
    ws = iter(tw.factors[1:])
    torch.testing.assert_close(tw.factors[0], ft.factors[0])
    for r, t in zip(ft.ranks, ft.t):
        if r is not None:
            torch.testing.assert_close(next(ws), kron_eye(next(us), t))


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_equivalent_is_partial_tucker(case) -> None:
    """STTu(R, t) = partial Tucker of X reshaped to (I_1/t_1, t_1, …): ranks R_n/t_n, the t modes unfactored."""
    eq = check_equivalent(case)
    assert eq is not None  # every STTu has one
    _, shape, rank, t = case
    ft = make(case)
    want_shape, want_ranks = [], []
    for s, r, tv in zip(shape, ft.ranks, ft.t):
        if tv == 1:
            want_shape.append(s)
            want_ranks.append(r)
        else:
            want_shape += [s // tv, tv]
            want_ranks += [r // tv, None]
    assert eq.shape == tuple(want_shape) and eq.ranks == tuple(want_ranks)
    # the relayout is a plain reshape (no permutation): row-major i_n = c·t_n + s
    torch.testing.assert_close(eq.to_tensor(), ft.to_tensor().reshape(want_shape), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_num_params_formula(case) -> None:
    fmt, shape, rank, t = case
    ft = make(case)
    want = tucker_params(shape, ft.ranks, ft.t)
    assert ft.num_params == want == num_params(shape, fmt, rank, t)
    assert sum(f.numel() for f in ft.factors) == want


def test_num_params_saves_t_squared() -> None:
    # each factor stores I_n R_n / t_n² numbers instead of I_n R_n
    shape, ranks = (8, 12, 16), (4, 6, 8)
    full = num_params(shape, "tucker", ranks)
    st = num_params(shape, "sttu", ranks, (2, 3, 4))
    assert full - st == (8 * 4 - 8 * 4 // 4) + (12 * 6 - 12 * 6 // 9) + (16 * 8 - 16 * 8 // 16)


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_mode_unfolding_rank_bounded(case) -> None:
    ft = make(case)
    x = ft.to_tensor()
    core = ft.factors[0].shape
    for mode, r in enumerate(ft.ranks):
        rank = int(torch.linalg.matrix_rank(x.movedim(mode, 0).reshape(x.shape[mode], -1)))
        bound = x.shape[mode] if r is None else r
        assert rank <= bound
        # generic factors attain the bound when the core allows it
        if bound <= math.prod(core) // core[mode]:
            assert rank == bound


@pytest.mark.parametrize("case", TUCKER_CASES, ids=case_id)
def test_every_stored_number_matters(case) -> None:
    check_jacobians(case)


def test_random_tensor_has_unit_rms() -> None:
    x = stsearch.random_tensor((4, 6, 8), "sttu", (2, 4, 4), (2, 2, 4), dtype=torch.float64).to_tensor()
    assert abs(float(x.pow(2).mean().sqrt()) - 1.0) < 1e-12


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "rank", "t", "pattern"),
    [
        ((4, 6, 8), (2, 4, 4), (3, 1, 1), r"t\[0\]=3 must divide shape\[0\]=4 and rank\[0\]=2"),
        ((4, 6, 8), (4, 3, 4), (1, 2, 1), r"t\[1\]=2 must divide shape\[1\]=6 and rank\[1\]=3"),
        ((4, 6, 8), (5, 4, 4), 1, r"rank\[0\]=5 exceeds the mode size shape\[0\]=4"),
        ((4, 6, 8), (2, 4), 1, r"rank=\[2, 4\] has 2 entries; expected 3"),
        ((4, 6, 8), (2, 4, 4), (2, 2), r"t=\[2, 2\] has 2 entries; expected 3"),
        ((4, 6, 8), (2, None, 4), (2, 2, 2), r"t\[1\]=2 on mode 1, which is unfactored"),
        ((4, 6, 8), (2, 0, 4), 1, r"rank\[1\]=0 must be a positive int"),
        ((4, 6, 8), (2, 2.0, 4), 1, r"rank\[1\]=2.0 must be a positive int"),
        ((4, 6, 8), 2, 0, r"t\[0\]=0 must be a positive int"),
        ((4, 0, 8), 2, 1, r"shape=\[4, 0, 8\]"),
    ],
)
def test_sttu_bad_input(shape, rank, t, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        stsearch.random_tensor(shape, "sttu", rank, t)
    with pytest.raises(ValueError, match=pattern):
        num_params(shape, "sttu", rank, t)
    with pytest.raises(ValueError, match=pattern):
        stsearch.decompose(torch.randn(*shape), "sttu", rank, t)


def test_classical_tucker_refuses_t() -> None:
    with pytest.raises(ValueError, match=r"tucker: t=\[2, 1, 1\]"):
        stsearch.random_tensor((4, 6, 8), "tucker", 2, (2, 1, 1))


def test_factor_shapes_are_checked() -> None:
    ft = make(ST_CASES[0])
    bad = [ft.factors[0], ft.factors[1].T, *ft.factors[2:]]
    with pytest.raises(ValueError, match="factor shapes"):
        FactorizedTensor("sttu", ft.shape, ft.ranks, ft.t, bad)
