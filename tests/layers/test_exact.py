"""The layers compute exactly F.conv2d / F.linear with the Kronecker-oracle weight, in both implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stsearch.layers import FactorizedConv2d, FactorizedLinear

from ._cases import CONV_CASES, LINEAR_CASES, params
from ._oracle import oracle_weight

D64 = torch.float64
GEOMETRIES = [  # (kernel_size, stride, padding, dilation, bias)
    ((3, 2), 1, 0, 1, True),
    ((3, 2), (3, 1), (1, 2), (2, 1), False),
    ((3, 2), 2, 1, (1, 3), True),
]


def _conv(fmt, kw, ks=(3, 2), stride=1, padding=0, dilation=1, bias=True, impl="auto", dtype=D64):
    return FactorizedConv2d(8, 6, ks, stride, padding, dilation, bias, fmt=fmt, implementation=impl,
                            dtype=dtype, **kw)


@pytest.mark.parametrize("impl", ["factorized", "reconstructed"])
@pytest.mark.parametrize("case", params(CONV_CASES))
def test_conv_equals_kron_oracle(case, impl):
    fmt, kw = case
    x = torch.randn(3, 8, 11, 9, dtype=D64)
    for ks, stride, padding, dilation, bias in GEOMETRIES:
        layer = _conv(fmt, kw, ks, stride, padding, dilation, bias, impl)
        w = oracle_weight(layer)
        want = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation)
        got = layer(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.weight(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["factorized", "reconstructed"])
@pytest.mark.parametrize("case", params(LINEAR_CASES))
def test_linear_equals_kron_oracle(case, impl):
    fmt, kw = case
    x = torch.randn(2, 5, 12, dtype=D64)
    for bias in (True, False):
        layer = FactorizedLinear(12, 6, bias, fmt=fmt, implementation=impl, dtype=D64, **kw)
        want = F.linear(x, oracle_weight(layer), layer.bias)
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer(x[0, 0]), want[0, 0], rtol=1e-10, atol=1e-12)  # 1-D input


@pytest.mark.parametrize("fmt,kw", [("stt", dict(rank=8, t=2, in_shape=(4, 4), out_shape=(4, 4))),
                                    ("str", dict(rank=8, t=2)), ("sttu", dict(rank=8, t=2))])
def test_float32_within_1e5(fmt, kw):
    layer = FactorizedConv2d(16, 16, 3, 1, 1, fmt=fmt, implementation="factorized", **kw)
    x = torch.randn(4, 16, 8, 8)
    want = F.conv2d(x.double(), oracle_weight(layer).double(), layer.bias.double(), padding=1)
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)


def test_auto_matches_and_caches_per_shape():
    layer = _conv("tt", dict(rank=3), padding=1, impl="auto")
    small, big = torch.randn(1, 8, 4, 4, dtype=D64), torch.randn(4, 8, 12, 12, dtype=D64)
    for x in (small, big):
        want = F.conv2d(x, oracle_weight(layer), layer.bias, padding=1)
        torch.testing.assert_close(layer(x), want)
    assert set(layer._auto) == {tuple(small.shape), tuple(big.shape)}
    for shape, choice in layer._auto.items():
        fac = layer.flops(shape, implementation="factorized")
        rec = layer.flops(shape, implementation="reconstructed")
        assert choice == ("factorized" if fac <= rec else "reconstructed")
        assert layer.flops(shape) == min(fac, rec)


def test_unbatched_conv_input():
    layer = _conv("tucker", dict(rank=3), padding=1)
    x = torch.randn(8, 5, 5, dtype=D64)
    torch.testing.assert_close(layer(x), layer(x[None])[0])


@pytest.mark.parametrize("case", params(CONV_CASES))
def test_to_dense_round_trip_conv(case):
    fmt, kw = case
    layer = _conv(fmt, kw, (3, 2), (2, 1), (1, 0), (1, 2), True)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d) and dense.stride == (2, 1) and dense.dilation == (1, 2)
    x = torch.randn(2, 8, 9, 9, dtype=D64)
    torch.testing.assert_close(dense(x), layer(x))


@pytest.mark.parametrize("case", params(LINEAR_CASES))
def test_to_dense_round_trip_linear(case):
    fmt, kw = case
    layer = FactorizedLinear(12, 6, fmt=fmt, dtype=D64, **kw)
    dense = layer.to_dense()
    x = torch.randn(4, 12, dtype=D64)
    torch.testing.assert_close(dense(x), layer(x))


# Full ranks per format for an 8 -> 6 conv, kernel 3×3: the decomposition must be exact.
# tucker/sttu: R = I (sttu: R/t = I/t); tt on (9, 4·2, 2·3) with in (4, 2), out (2, 3): full TT ranks
# (9, 6); stt with t only on the last core is TT on (9, 8·2, 3): ranks (9, 6); tr (8, 9, 6) with ranks (2, 4, 12)
# has R_0·R_1 = 8 and R_1·9 = 36 ≥ 6·R_0 = 12 (TR-SVD exact); str uniform t=2 is TR(R/2) on the same modes.
FULL_RANK = [
    ("tucker", dict(rank=(6, 8))),
    ("sttu", dict(rank=(6, 8), t=2)),
    ("tt", dict(rank=(9, 6), in_shape=(4, 2), out_shape=(2, 3))),
    ("stt", dict(rank=(9, 6), t=(1, 2), in_shape=(4, 2), out_shape=(2, 3))),
    ("tr", dict(rank=(2, 4, 12), in_shape=(8,), out_shape=(6,))),
    ("str", dict(rank=(4, 8, 24), t=2, in_shape=(8,), out_shape=(6,))),
]


@pytest.mark.parametrize("fmt,kw", FULL_RANK)
def test_from_dense_full_rank_conv(fmt, kw):
    dense = nn.Conv2d(8, 6, 3, stride=(1, 2), padding=1, dilation=(2, 1), dtype=D64)
    x = torch.randn(2, 8, 10, 9, dtype=D64)
    for impl in ("factorized", "reconstructed"):
        layer = FactorizedConv2d.from_dense(dense, fmt, implementation=impl, **kw)
        assert layer.stride == (1, 2) and layer.dilation == (2, 1)
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(layer.bias, dense.bias)


FULL_RANK_LINEAR = [
    ("tucker", dict(rank=(6, 12), out_shape=(6,), in_shape=(12,))),
    ("sttu", dict(rank=(6, 12), t=(2, 4))),
    ("tt", dict(rank=6, in_shape=(3, 4), out_shape=(2, 3))),  # modes (6, 12): rank ≤ 6
    ("stt", dict(rank=6, t=3, in_shape=(3, 4), out_shape=(2, 3))),  # TT on (18, 4): eq. rank 2 < 4, so exact
    ("tr", dict(rank=(1, 6), in_shape=(12,), out_shape=(6,))),  # a TR with R_0 = 1 is a TT
    ("str", dict(rank=(2, 12), t=2, in_shape=(12,), out_shape=(6,))),
]


@pytest.mark.parametrize("fmt,kw", FULL_RANK_LINEAR)
def test_from_dense_full_rank_linear(fmt, kw):
    dense = nn.Linear(12, 6, dtype=D64)
    if fmt == "stt":  # make the weight representable: the exactness test is about decompose + layout
        src = FactorizedLinear(12, 6, fmt=fmt, dtype=D64, **kw)
        with torch.no_grad():
            dense.weight.copy_(src.weight())
    x = torch.randn(5, 12, dtype=D64)
    layer = FactorizedLinear.from_dense(dense, fmt, **kw)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(layer.to_dense().weight, dense.weight, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fmt,kw", [("stt", dict(rank=4, t=2, in_shape=(4, 2), out_shape=(3, 2))),
                                    ("sttu", dict(rank=4, t=2)), ("str", dict(rank=4, t=2))])
def test_from_dense_recovers_a_representable_kernel(fmt, kw):
    """A kernel that lies in the format is recovered exactly (the ST decomposition maps back losslessly)."""
    src = _conv(fmt, kw, ks=3, padding=1)
    dense = src.to_dense()
    layer = FactorizedConv2d.from_dense(dense, fmt, **kw)
    x = torch.randn(2, 8, 6, 6, dtype=D64)
    torch.testing.assert_close(layer(x), src(x), rtol=1e-6, atol=1e-8)


def test_state_dict_keys_and_reload():
    a = _conv("str", dict(rank=4, t=2), padding=1)
    keys = list(a.state_dict())
    assert sorted(keys) == sorted([f"factors.{i}" for i in range(len(a.factors))] + ["bias"])
    b = _conv("str", dict(rank=4, t=2), padding=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 5, 5, dtype=D64)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("order", ["spatial_first", "merged"])
@pytest.mark.parametrize("case", params([c for c in CONV_CASES if c[0] in ("tt", "stt")]))
def test_tt_conv_orders_both_equal_the_oracle(case, order):
    """Both TT contraction orders (Garipov spatial-first, and the spatial core merged into pair 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    from stsearch.layers import _forward

    fmt, kw = case
    layer = _conv(fmt, kw, (3, 2), (2, 1), (1, 2), (1, 2), True, "factorized")
    x = torch.randn(2, 8, 9, 7, dtype=D64)
    want = F.conv2d(x, oracle_weight(layer), layer.bias, layer.stride, layer.padding, layer.dilation)
    if order == "merged" and len(layer.layout.pairs[0]) < 2:
        pytest.skip("a single pair has no merged order")
    with FlopCounterMode(display=False) as counter:
        got = _forward.tt_conv(x, list(layer.factors), layer.layout, layer._geom, layer.bias, order=order)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    hw = _forward.conv_out_hw(9, 7, layer.kernel_size, layer._geom)
    assert _forward._tt_conv_flops(layer.layout, 2, hw, order) == counter.get_total_flops()


def test_tt_merged_order_is_used_for_unbalanced_pairs():
    from stsearch.layers import _forward

    layer = FactorizedConv2d(64, 64, 3, padding=1, fmt="tt", rank=7, in_shape=(64, 1), out_shape=(1, 64))
    assert _forward.tt_conv_order(layer.layout, 128, (8, 8)) == "merged"
    layer = FactorizedConv2d(64, 64, 3, padding=1, fmt="tt", rank=(3, 7))  # merged: 2.6× the FLOPs
    assert _forward.tt_conv_order(layer.layout, 128, (8, 8)) == "spatial_first"


def test_from_dense_balances_the_decomposed_factors() -> None:
    """A TR-ALS fit spreads the scale unevenly over the cores (norms 0.07 to 244 on a digits fc layer, and SGD
    diverged); from_dense stores the same weight with equal core norms."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 10)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.01, 100, 128))  # badly scaled columns
    layer = FactorizedLinear.from_dense(lin, fmt="tr", rank=5, in_shape=[4, 4, 8], out_shape=[10])
    norms = torch.tensor([float(f.detach().norm()) for f in layer.factors])
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)
    lay = layer.layout  # the weight is the format's reconstruction of its own (unbalanced) decomposition
    fs = lay.format.decompose(lay.kernel_to_tensor(lin.weight.detach()), lay.ranks, lay.t)
    expect = lay.format.reconstruct(fs, lay.tensor_shape, lay.ranks, lay.t)
    got = lay.format.reconstruct([f.detach() for f in layer.factors], lay.tensor_shape, lay.ranks, lay.t)
    assert torch.allclose(got, expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
