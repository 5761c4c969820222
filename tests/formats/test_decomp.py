"""Decomposition: exact at full rank, as good as TensorLy at lower rank, ST via the equivalent, fits recover."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tensor_ring, tensor_ring_als, tensor_train, tucker

import stsearch
from stsearch.formats import get_format

from ._oracles import ALL_CASES, case_id, dense, make, rel_err

SHAPE = (6, 7, 8, 5)


def test_tensors() -> dict[str, torch.Tensor]:
    """A Gaussian tensor, a low-rank TT plus 5% noise, and a smooth (Hilbert-like) tensor."""
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    low = stsearch.random_tensor(SHAPE, "tt", (3, 4, 3), generator=g, dtype=torch.float64).to_tensor()
    noisy = low + 0.05 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    idx = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in SHAPE], indexing="ij")
    smooth = 1.0 / (1.0 + sum(idx))
    return {"gauss": gauss, "lowrank+noise": noisy, "smooth": smooth}


test_tensors.__test__ = False  # a helper, not a test
TENSORS = test_tensors()


def np_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- exact at full rank ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "rank"), [
    ("tucker", (6, 7, 8, 5)),
    ("tt", (6, 40, 5)),  # R_k = min(∏_{j≤k} I_j, ∏_{j>k} I_j)
    ("tr", (1, 6, 40, 5)),
    ("tr", (2, 3, 21, 10)),  # R_0·R_1 = I_1, then each unfolding at full rank
])
def test_classical_exact_at_full_rank(fmt, rank) -> None:
    x = TENSORS["gauss"]
    out = stsearch.decompose(x, fmt, rank)
    assert rel_err(out.to_tensor(), x) < 1e-12
    assert rel_err(dense(out), x) < 1e-12


@pytest.mark.parametrize(("fmt", "shape", "rank", "t"), [
    ("sttu", (4, 6, 8), (4, 6, 8), (2, 3, 4)),
    ("str", (4, 6, 8), (2, 8, 16), 2),  # TR(1, 4, 8): full rank
])
def test_st_exact_at_full_rank(fmt, shape, rank, t) -> None:
    """(STT never is: its first bond R_1 ≤ I_1 leaves rank R_1/t ≤ I_1/t on the equivalent's mode I_1·t.)"""
    x = torch.randn(shape, dtype=torch.float64)
    out = stsearch.decompose(x, fmt, rank, t)
    assert rel_err(out.to_tensor(), x) < 1e-12


# -- against TensorLy at lower ranks ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TENSORS))
@pytest.mark.parametrize("ranks", [(2, 3, 2), (3, 4, 3), (5, 12, 4)])
def test_tt_svd_vs_tensorly(name, ranks) -> None:
    x = TENSORS[name]
    ours = rel_err(stsearch.decompose(x, "tt", ranks).to_tensor(), x)
    theirs = np_rel(tl.tt_to_tensor(tensor_train(x.numpy(), rank=[1, *ranks, 1])), x.numpy())
    assert ours <= 1.05 * theirs + 1e-12


@pytest.mark.parametrize("name", list(TENSORS))
@pytest.mark.parametrize("ranks", [(2, 2, 2, 2), (3, 4, 4, 3), (5, 3, 6, 2)])
def test_hooi_vs_tensorly(name, ranks) -> None:
    x = TENSORS[name]
    ours = rel_err(stsearch.decompose(x, "tucker", ranks).to_tensor(), x)
    theirs = np_rel(tl.tucker_to_tensor(tucker(x.numpy(), rank=list(ranks))), x.numpy())
    assert ours <= 1.05 * theirs + 1e-12


@pytest.mark.parametrize("name", list(TENSORS))
@pytest.mark.parametrize("ranks", [(2, 3, 4, 3), (1, 3, 3, 2), (2, 2, 2, 2)])
def test_tr_vs_tensorly(name, ranks) -> None:
    """TensorLy's ranks are (R_0, R_1, …, R_{N-1}, R_0); ours omit the repeated closing bond."""
    x = TENSORS[name]
    ours = rel_err(stsearch.decompose(x, "tr", ranks).to_tensor(), x)
    tl_rank = [*ranks, ranks[0]]
    svd = np_rel(tl.tr_to_tensor(tensor_ring(x.numpy(), rank=tl_rank)), x.numpy())
    als = np_rel(tl.tr_to_tensor(tensor_ring_als(x.numpy(), rank=tl_rank, random_state=0)), x.numpy())
    assert ours <= 1.05 * min(svd, als) + 1e-12


# -- ST formats run the classical algorithm on their equivalent ------------------------------------------
@pytest.mark.parametrize(("fmt", "shape", "rank", "t"), [
    ("sttu", (4, 6, 8), (2, 4, 4), (2, 2, 4)),
    ("stt", (4, 6, 8), (4, 4), 2),
    ("stt", (4, 6, 8), (4, 4), (2, 1)),
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 4)),
    ("str", (4, 6, 8), (4, 4, 4), 2),
    ("str", (4, 6, 8), (8, 4, 8), (2, 4)),
])
def test_st_decomposition_equals_classical_on_equivalent(fmt, shape, rank, t) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    out = stsearch.decompose(x, fmt, rank, t)
    eq = out.equivalent()
    assert eq is not None
    relayout = out.equivalent_relayout()
    direct = stsearch.decompose(relayout.apply(x), eq.format, eq.ranks)
    assert rel_err(out.to_tensor(), x) == pytest.approx(rel_err(direct.to_tensor(), relayout.apply(x)), rel=1e-9)
    assert rel_err(out.to_tensor(), x) < 1.0


# -- each fit recovers a tensor of its own format --------------------------------------------------------
FIT_CASES = [c for c in ALL_CASES if c[0] in ("tucker", "sttu", "tt")] + [
    ("tr", (4, 6, 8), (2, 2, 2), 1),
    ("tr", (3, 4, 5, 6), (2, 2, 3, 2), 1),
    ("stt", (4, 6, 8), (4, 4), 2),  # TT equivalent
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 4)),  # TT equivalent, mixed t
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 2, 1)),  # TR equivalent (unshrunk last core)
    ("stt", (4, 6, 6, 8), (4, 8, 8), (4, 4, 2)),  # TR equivalent, mixed t
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 4, 1)),  # ALS: ring with a chord
    ("stt", (4, 6, 6, 8), (4, 8, 8), (2, 4, 2)),  # ALS: ring with a tail
    ("stt", (4, 4, 4, 4), (4, 4, 4), (1, 2, 1)),  # ALS: ring with a tail
    pytest.param(("stt", (8, 6, 6, 8), (8, 8, 8), (4, 2, 2)), marks=pytest.mark.slow),
    ("str", (4, 6, 8), (4, 4, 4), 2),  # uniform: TR(R/t)
    ("str", (4, 6, 8), (4, 4, 8), (2, 4)),  # wire beside bond R_1
    ("str", (8, 6, 8), (4, 8, 8), (4, 2)),  # wire beside the closing bond
    ("str", (4, 6, 6, 8), (4, 4, 8, 8), (2, 4, 4)),
    ("str", (4, 6, 6, 8), (4, 8, 8, 4), (4, 4, 2)),
    ("str", (4, 4, 4, 4), (4, 4, 4, 4), (2, 4, 2)),  # ALS: chord
    ("str", (2, 4, 4, 4), (4, 4, 8, 4), (4, 2, 4)),  # ALS: chord
    pytest.param(("str", (4, 6, 6, 8), (8, 8, 8, 8), (4, 2, 4)), marks=pytest.mark.slow),
]


def _fit_id(case) -> str:
    return case_id(case.values[0]) if hasattr(case, "values") else case_id(case)


@pytest.mark.parametrize("case", FIT_CASES, ids=[_fit_id(c) for c in FIT_CASES])
def test_fit_recovers_own_format(case) -> None:
    fmt, shape, rank, t = case
    ref = make(case, seed=7)
    x = ref.to_tensor()
    out = stsearch.decompose(x, fmt, rank, t)
    assert out.format == fmt and out.ranks == ref.ranks and out.t == ref.t
    assert rel_err(out.to_tensor(), x) < 1e-6, (case_id(case), out.no_equivalent_reason())


@pytest.mark.slow
def test_tr_als_hard_case_needs_more_sweeps() -> None:
    """Unequal TR ranks converge slowly (ALS swamps): (4, 5, 6) at (2, 3, 4) stalls near 1e-3 after the
    default 300 sweeps, and recovers with 3000."""
    ref = make(("tr", (4, 5, 6), (2, 3, 4), 1), seed=7)
    x = ref.to_tensor()
    out = stsearch.decompose(x, "tr", (2, 3, 4), n_iter=3000)
    assert rel_err(out.to_tensor(), x) < 1e-6


def test_fit_float32_input() -> None:
    x = stsearch.random_tensor((4, 6, 6, 8), "stt", (4, 8, 8), (2, 4, 1)).to_tensor()
    out = stsearch.decompose(x, "stt", (4, 8, 8), (2, 4, 1))
    assert out.factors[0].dtype == torch.float32
    assert rel_err(out.to_tensor(), x) < 1e-5
    assert get_format("stt").equivalence(out.shape, out.ranks, out.t) is None


def test_als_matrix_free_solver_matches_explicit() -> None:
    """The conjugate-gradient ALS step (used for large layers) reaches the explicit solver's fit on a chord."""
    from stsearch.formats._decomp import als_fit

    ref = make(("str", (2, 4, 4, 4), (4, 4, 8, 4), (4, 2, 4)), seed=7)
    x = ref.to_tensor().double()
    fmt = get_format("str")
    errs = {}
    for solver in ("explicit", "cg"):
        fs = als_fit(fmt, x, ref.ranks, ref.t, solver=solver)
        errs[solver] = rel_err(fmt.reconstruct(fs, x.shape, ref.ranks, ref.t), x)
    assert errs["cg"] < 1e-6 and errs["explicit"] < 1e-6, errs


def test_als_auto_solver_switches_to_cg_on_large_cores(monkeypatch) -> None:
    from stsearch.formats import _decomp

    calls = []
    real = _decomp._cg_core
    monkeypatch.setattr(_decomp, "_cg_core", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = make(("str", (4, 4, 4, 4), (4, 4, 4, 4), (2, 4, 2)), seed=7)
    x = ref.to_tensor().double()
    fmt = get_format("str")
    _decomp.als_fit(fmt, x, ref.ranks, ref.t, n_iter=1, restarts=1)
    assert calls == []  # small: explicit normal equations
    monkeypatch.setattr(_decomp, "EXPLICIT_MAX_ENTRIES", 0)
    _decomp.als_fit(fmt, x, ref.ranks, ref.t, n_iter=1, restarts=1)
    assert len(calls) == len(ref.factors)


def test_als_rejects_unknown_solver() -> None:
    from stsearch.formats._decomp import als_fit

    ref = make(("str", (4, 4, 4, 4), (4, 4, 4, 4), (2, 4, 2)), seed=7)
    with pytest.raises(ValueError, match="solver.*'lu'"):
        als_fit(get_format("str"), ref.to_tensor(), ref.ranks, ref.t, solver="lu")


def test_decompose_method_als_fits_a_classical_format(monkeypatch) -> None:
    """method="als" bypasses TT-SVD (the control for the mixed-t ALS fits) and still recovers a TT tensor."""
    from stsearch.formats import _decomp

    calls = []
    real = _decomp.als_fit
    monkeypatch.setattr(_decomp, "als_fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = make(("tt", (4, 6, 6), (3, 4), 1), seed=7)
    x = ref.to_tensor()
    out = stsearch.decompose(x, "tt", (3, 4), method="als")
    assert calls == [1] and out.format == "tt" and rel_err(out.to_tensor(), x) < 1e-6
    stsearch.decompose(x, "tt", (3, 4))
    assert calls == [1]  # the default path is TT-SVD
    with pytest.raises(ValueError, match="method.*'svd'"):
        stsearch.decompose(x, "tt", (3, 4), method="svd")
