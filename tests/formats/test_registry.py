"""The format registry: names, the common interface, argument expansion and bad input."""

from __future__ import annotations

import pytest
import torch

import stsearch
from stsearch.formats import FORMATS, FactorizedTensor, Relayout, get_format, num_params
from stsearch.formats.base import nested

from ._oracles import ALL_CASES, case_id, make

SHAPE = (4, 6, 8)
SMALL = {"tucker": 2, "tt": 2, "tr": 2, "sttu": 2, "stt": 2, "str": 2}
N_T = {"tucker": 3, "tt": 2, "tr": 2, "sttu": 3, "stt": 2, "str": 2}  # t values per format on an order-3 tensor


def test_registry_names() -> None:
    assert FORMATS == ("tucker", "tt", "tr", "sttu", "stt", "str")
    assert stsearch.FORMATS == FORMATS
    for name in FORMATS:
        f = get_format(name)
        assert f.name == name
        assert f.semi_tensor == name.startswith("st")
        assert get_format(f.classical).semi_tensor is False
        assert get_format(f.classical).family == f.family


@pytest.mark.parametrize("call", [
    lambda: stsearch.random_tensor(SHAPE, "cp", 2),
    lambda: stsearch.decompose(torch.randn(SHAPE), "cp", 2),
    lambda: num_params(SHAPE, "cp", 2),
    lambda: get_format("cp"),
    lambda: FactorizedTensor("cp", SHAPE, (2,), (1,), []),
    lambda: get_format("dense"),  # a plan may say "dense", but it is not a tensor format
])
def test_unknown_format(call) -> None:
    with pytest.raises(ValueError, match=r"unknown format '(cp|dense)'; known formats: \['str', 'stt', 'sttu', "
                                         r"'tr', 'tt', 'tucker'\]"):
        call()


@pytest.mark.parametrize("fmt", FORMATS)
def test_int_arguments_expand_to_one_value_per_bond_and_factor(fmt) -> None:
    t = 2 if get_format(fmt).semi_tensor else 1
    ft = stsearch.random_tensor(SHAPE, fmt, 2, t)
    assert ft.format == fmt and ft.shape == SHAPE
    assert ft.t == (t,) * N_T[fmt]
    n_ranks = {"tucker": 3, "tt": 2, "tr": 3}[get_format(fmt).family]
    assert ft.ranks == (2,) * n_ranks
    assert ft.to_tensor().shape == SHAPE and ft.to_tensor().dtype == torch.float32
    assert "num_params" in repr(ft)


@pytest.mark.parametrize("fmt", FORMATS)
def test_t_list_of_wrong_length(fmt) -> None:
    n = N_T[fmt]
    with pytest.raises(ValueError, match=rf"{fmt}: t=\[1, 1, 1, 1\] has 4 entries; expected {n}"):
        stsearch.random_tensor(SHAPE, fmt, 2, [1, 1, 1, 1])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [0, -2, 2.5, "2", True])
def test_bad_rank_values(fmt, bad) -> None:
    with pytest.raises(ValueError, match=rf"{fmt}: rank"):
        stsearch.random_tensor(SHAPE, fmt, bad)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_nothing_is_clipped(case) -> None:
    """random_tensor and decompose keep exactly the ranks and t asked for."""
    fmt, shape, rank, t = case
    ft = make(case)
    want_ranks = tuple(rank)
    assert ft.ranks == want_ranks
    # decompose a rank-1 tensor at the requested (larger) ranks: the ranks stay, padded, never lowered
    vecs = [torch.randn(s, dtype=torch.float64) for s in shape]
    x = vecs[0]
    for v in vecs[1:]:
        x = torch.tensordot(x, v, dims=0)
    out = stsearch.decompose(x, fmt, rank, t, n_iter=1, restarts=1)
    assert out.ranks == want_ranks and out.t == ft.t
    assert [f.shape for f in out.factors] == [f.shape for f in ft.factors]
    assert out.num_params == ft.num_params


def test_generator_reproducible_and_dtype() -> None:
    a = stsearch.random_tensor(SHAPE, "stt", 4, 2, generator=torch.Generator().manual_seed(5))
    b = stsearch.random_tensor(SHAPE, "stt", 4, 2, generator=torch.Generator().manual_seed(5))
    c = stsearch.random_tensor(SHAPE, "stt", 4, 2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.to_tensor(), b.to_tensor()) and not torch.equal(a.to_tensor(), c.to_tensor())
    d = stsearch.random_tensor(SHAPE, "stt", 4, 2, dtype=torch.float64)
    assert all(f.dtype == torch.float64 for f in d.factors)


def test_decompose_keeps_dtype() -> None:
    x = torch.randn(SHAPE)
    for fmt in FORMATS:
        t = 2 if get_format(fmt).semi_tensor else 1
        out = stsearch.decompose(x, fmt, 4, t)
        assert all(f.dtype == torch.float32 for f in out.factors), fmt


def test_relayout_round_trip() -> None:
    x = torch.arange(4 * 6 * 8.0).reshape(4, 6, 8)
    r = Relayout((4, 6, 8), (4, 6, 4, 2), (0, 3, 1, 2), (8, 6, 4))
    y = r.apply(x)
    assert y.shape == (8, 6, 4)
    assert y[1 * 2 + 1, 5, 3] == x[1, 5, 3 * 2 + 1]
    assert torch.equal(r.invert(y), x)
    assert not r.is_identity and Relayout.identity((4, 6, 8)).is_identity


def test_nested_helper() -> None:
    assert nested([2, 4, 2, 8]) and nested([3]) and nested([1, 6, 3])
    assert not nested([2, 3]) and not nested([4, 6])


def test_format_of_fewer_modes_than_allowed() -> None:
    for fmt in ("tt", "tr", "stt", "str"):
        with pytest.raises(ValueError, match=rf"{fmt}: shape=\[5\] must have at least 2 positive dimensions"):
            stsearch.random_tensor((5,), fmt, 1)


@pytest.mark.parametrize("case", ALL_CASES, ids=[case_id(c) for c in ALL_CASES])
def test_balance_factors_is_a_gauge_change(case) -> None:
    """Equal factor norms afterwards, the same tensor (every format is linear in each factor)."""
    from stsearch.formats.base import balance_factors

    ref = make(case, seed=3)
    skew = [f * 10.0 ** (k - 1) for k, f in enumerate(ref.factors)]  # scales 0.1, 1, 10, ...
    fmt = get_format(ref.format)
    x = fmt.reconstruct(skew, ref.shape, ref.ranks, ref.t)
    out = balance_factors(skew)
    norms = torch.tensor([float(f.norm()) for f in out])
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-5)
    got = fmt.reconstruct(out, ref.shape, ref.ranks, ref.t)
    assert torch.allclose(got, x, rtol=1e-4, atol=1e-6 * float(x.abs().max()))
