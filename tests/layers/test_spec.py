"""Layer specs without layers, tensorization helpers, initialisation, bad input, ONNX export."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from stsearch.errors import StsearchError
from stsearch.formats import FORMATS, get_format
from stsearch.layers import (
    FactorizedConv2d,
    FactorizedLinear,
    balanced_factorization,
    factorizations,
    layer_tensor_shape,
    normalize_layer_spec,
)

from ._cases import CONV_CASES, LINEAR_CASES, params

D64 = torch.float64


# -- factorizations ------------------------------------------------------------------------------------------
def test_factorizations_small():
    assert factorizations(1) == [(1,)]
    assert factorizations(7) == [(7,)]
    assert factorizations(8) == [(8,), (2, 4), (4, 2), (2, 2, 2)]
    assert factorizations(12, 2) == [(2, 6), (3, 4), (4, 3), (6, 2)]
    assert factorizations(8, 4) == []


@given(st.integers(1, 600), st.one_of(st.none(), st.integers(1, 4)))
def test_factorizations_are_exact_and_complete(n, depth):
    got = factorizations(n, depth)
    assert len(set(got)) == len(got)
    for f in got:
        assert math.prod(f) == n and (depth is None or len(f) == depth)
        assert n == 1 or min(f) >= 2
    # completeness: count ordered factorisations by recursion on the first factor
    def count(m: int, d) -> int:
        if d == 0:
            return int(m == 1)
        total = int(d is None)  # the factorisation (m,) itself when the length is free
        if d is not None and d == 1:
            return 1
        for a in range(2, m):
            if m % a == 0:
                total += count(m // a, None if d is None else d - 1)
        return total
    if n > 1:
        assert len(got) == count(n, depth)


def test_balanced_factorization():
    assert balanced_factorization(64) == (8, 8)
    assert balanced_factorization(32) == (4, 8)
    assert balanced_factorization(3) == (3,)
    assert balanced_factorization(64, 3) == (4, 4, 4)


# -- specs without layers ------------------------------------------------------------------------------------
def test_layer_tensor_shape_per_layout():
    assert layer_tensor_shape("conv", "tucker", 64, 32, 3) == (32, 64, 3, 3)
    assert layer_tensor_shape("conv", "sttu", 64, 32, 3, (8, 8), (32,)) == (32, 8, 8, 3, 3)
    assert layer_tensor_shape("conv", "tt", 64, 32, (3, 1)) == (3, 8 * 4, 8 * 8)
    assert layer_tensor_shape("conv", "stt", 64, 16, 3, (4, 4, 4), (16,)) == (9, 64, 4, 4)  # out padded
    assert layer_tensor_shape("conv", "tr", 64, 32, 3) == (8, 8, 9, 4, 8)
    assert layer_tensor_shape("linear", "tt", 64, 10) == (8 * 2, 8 * 5)
    assert layer_tensor_shape("linear", "str", 64, 10, in_shape=(64,)) == (64, 2, 5)
    assert layer_tensor_shape("linear", "tucker", 64, 10) == (10, 64)


@pytest.mark.parametrize("case", params(CONV_CASES))
def test_normalize_layer_spec_matches_the_layer(case):
    fmt, kw = case
    lay = normalize_layer_spec("conv", fmt, 8, 6, (3, 2), **kw)
    layer = FactorizedConv2d(8, 6, (3, 2), fmt=fmt, **kw)
    assert lay == layer.layout
    stored = sum(p.numel() for p in layer.factors)
    assert lay.weight_params == layer.weight_params == stored
    assert layer.num_params == stored + 6 == sum(p.numel() for p in layer.parameters())
    assert lay.weight_params == get_format(fmt).num_params(lay.tensor_shape, lay.ranks, lay.t)
    assert layer.dense_weight_params == 8 * 6 * 3 * 2
    assert lay.compression_ratio == pytest.approx(288 / stored)
    # the normalised ranks and t round-trip
    again = normalize_layer_spec("conv", fmt, 8, 6, (3, 2), rank=lay.ranks, t=lay.t, in_shape=lay.in_shape,
                                 out_shape=lay.out_shape)
    assert again == lay


@pytest.mark.parametrize("case", params(LINEAR_CASES))
def test_linear_spec_counts(case):
    fmt, kw = case
    layer = FactorizedLinear(12, 6, bias=False, fmt=fmt, **kw)
    assert layer.num_params == layer.weight_params == sum(p.numel() for p in layer.parameters())
    assert normalize_layer_spec("linear", fmt, 12, 6, **kw).weight_params == layer.weight_params


def test_rank_and_t_orders_documented_examples():
    tucker = normalize_layer_spec("conv", "sttu", 64, 32, 3, rank=(16, 8), t=(2, 1), in_shape=(64,),
                                  out_shape=(32,))
    assert tucker.ranks == (16, 8, None, None) and tucker.t == (2, 1, 1, 1)  # out modes, in modes, spatial
    tt = normalize_layer_spec("conv", "stt", 64, 64, 3, rank=(8, 16), t=(2, 4))
    assert tt.tensor_shape == (9, 64, 64) and tt.ranks == (8, 16) and tt.t == (2, 4)
    tr = normalize_layer_spec("conv", "str", 64, 64, 3, rank=(4, 8, 8, 8, 4), t=(4, 4, 4, 4))
    assert tr.tensor_shape == (8, 8, 9, 8, 8) and tr.ranks[0] == 4  # R_0 closes o_2 -> i_1


# -- initialisation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_init_is_variance_preserving(fmt):
    kw = dict(rank=8, t=2 if fmt.startswith("st") else 1)
    conv = FactorizedConv2d(64, 32, 3, fmt=fmt, generator=torch.Generator().manual_seed(0), **kw)
    rms = float(conv.weight().detach().pow(2).mean().sqrt())
    assert rms == pytest.approx(math.sqrt(2 / (64 * 9)), rel=1e-4)
    assert float(conv.bias.detach().abs().max()) <= 1 / math.sqrt(64 * 9)
    same = FactorizedConv2d(64, 32, 3, fmt=fmt, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(same.weight(), conv.weight())


def test_deep_random_stack_keeps_its_scale():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [FactorizedConv2d(32, 32, 3, padding=1, bias=False, fmt="stt", rank=8, t=2), nn.ReLU()]
    net = nn.Sequential(*layers)
    x = torch.randn(8, 32, 8, 8)
    with torch.no_grad():
        y = net(x)
    ratio = float(y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert 0.05 < ratio < 20, ratio


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    (dict(groups=2), "groups=2"),
    (dict(padding_mode="reflect"), "padding_mode='reflect'"),
    (dict(padding="same"), "padding='same'"),
    (dict(in_shape=(4, 4)), "in_shape=(4, 4) multiplies to 16, not in_channels=32"),
    (dict(out_shape=(4, 0)), "out_shape"),
    (dict(rank=100), "rank"),
    (dict(t=3, fmt="stt"), "t["),
    (dict(t=2, fmt="tt"), "t="),
    (dict(fmt="cp"), "unknown format 'cp'"),
    (dict(implementation="fast"), "implementation='fast'"),
    (dict(rank=(4, 4, 4), fmt="tucker"), "rank=[4, 4, 4] has 3 entries"),
    (dict(rank=(4, 4, 2, None), fmt="tucker"), "spatial modes"),
    (dict(stride=0), "stride"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
])
def test_conv_bad_arguments_name_the_argument(kwargs, needle):
    base = dict(in_channels=32, out_channels=16, kernel_size=3, fmt="stt", rank=4, t=1)
    base.update(kwargs)
    with pytest.raises(StsearchError) as err:
        FactorizedConv2d(**base)
    assert needle in str(err.value)


def test_errors_name_the_layer_and_numbers():
    with pytest.raises(StsearchError, match=r"conv 32→16 3×3, fmt='sttu'.*t\[0\]=3 must divide shape\[0\]=16"):
        normalize_layer_spec("conv", "sttu", 32, 16, 3, rank=6, t=3)
    with pytest.raises(StsearchError, match="at least 2"):
        normalize_layer_spec("linear", "tt", 7, 5, rank=2)
    with pytest.raises(StsearchError, match="kind='pool'"):
        normalize_layer_spec("pool", "tt", 7, 5, rank=2)


def test_from_dense_refuses_unsupported_convs():
    with pytest.raises(StsearchError, match="groups=2"):
        FactorizedConv2d.from_dense(nn.Conv2d(8, 8, 3, groups=2), "tucker", rank=2)
    with pytest.raises(StsearchError, match="padding='same'"):
        FactorizedConv2d.from_dense(nn.Conv2d(8, 8, 3, padding="same"), "tucker", rank=2)
    with pytest.raises(StsearchError, match="padding_mode='circular'"):
        FactorizedConv2d.from_dense(nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), "tucker", rank=2)
    with pytest.raises(StsearchError, match="nn.Linear"):
        FactorizedLinear.from_dense(nn.Conv2d(8, 8, 3), "tucker", rank=2)


def test_forward_refuses_wrong_input():
    conv = FactorizedConv2d(8, 6, 3, fmt="tr", rank=2)
    with pytest.raises(StsearchError, match=r"\(B, 8, H, W\)"):
        conv(torch.randn(2, 7, 5, 5))
    fc = FactorizedLinear(12, 6, fmt="tt", rank=2)
    with pytest.raises(StsearchError, match="in_features=12"):
        fc(torch.randn(2, 11))
    with pytest.raises(StsearchError, match="implementation"):
        conv.implementation = "dense"


# -- ONNX ----------------------------------------------------------------------------------------------------
def _onnx_model(fmt: str) -> nn.Module:
    kw = dict(rank=4, t=2 if fmt.startswith("st") else 1)
    return nn.Sequential(
        FactorizedConv2d(8, 8, 3, stride=2, padding=1, fmt=fmt, implementation="factorized", **kw), nn.ReLU(),
        nn.Flatten(), FactorizedLinear(8 * 4 * 4, 16, fmt=fmt, implementation="factorized", **kw)).eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_onnx_export_torchscript_exporter(fmt):
    ort = pytest.importorskip("onnxruntime")
    model, x = _onnx_model(fmt), torch.randn(2, 8, 8, 8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue())
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["sttu", "stt", "str"])
def test_onnx_export_dynamo_exporter(fmt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = _onnx_model(fmt), torch.randn(2, 8, 8, 8)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path))
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", params(CONV_CASES[::3]))
def test_layout_flops_without_a_layer(case):
    fmt, kw = case
    layer = FactorizedConv2d(8, 6, (3, 2), (2, 1), (1, 0), (1, 2), fmt=fmt, **kw)
    lay = normalize_layer_spec("conv", fmt, 8, 6, (3, 2), **kw)
    for impl in ("factorized", "reconstructed", "auto"):
        got = lay.flops((2, 8, 9, 9), impl, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        assert got == layer.flops((2, 8, 9, 9), implementation=impl)
    fc = FactorizedLinear(12, 6, fmt=fmt, rank=2)
    assert fc.layout.flops((3, 12)) == fc.flops((3, 12))
    with pytest.raises(StsearchError, match="input_shape"):
        lay.flops((2, 7, 9, 9))


def test_conv_attributes_mirror_nn_conv2d():
    layer = FactorizedConv2d(8, 6, (3, 2), 2, 1, fmt="tucker", rank=2)
    assert (layer.groups, layer.padding_mode, layer.kernel_size, layer.stride) == (1, "zeros", (3, 2), (2, 2))
    assert "fmt='tucker'" in repr(layer) and "weight CR" in repr(layer)


@pytest.mark.parametrize("name", ["_layout", "conv", "linear"])
def test_docstring_examples(name):
    import doctest
    import importlib

    mod = importlib.import_module(f"stsearch.layers.{name}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
