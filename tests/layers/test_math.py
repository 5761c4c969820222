"""Gradients, THEORY §5 Jacobian ranks, and FLOPs measured with torch.utils.flop_counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stsearch.formats import get_format
from stsearch.layers import FactorizedConv2d, FactorizedLinear

from ._cases import CONV_CASES, LINEAR_CASES, params

D64 = torch.float64


def _counted(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


# -- gradients --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", params(CONV_CASES))
def test_conv_gradients_reach_every_entry_and_agree(case):
    fmt, kw = case
    x = torch.randn(2, 8, 7, 6, dtype=D64)
    grads = {}
    for impl in ("factorized", "reconstructed"):
        torch.manual_seed(1)
        layer = FactorizedConv2d(8, 6, (3, 2), 2, 1, fmt=fmt, implementation=impl, dtype=D64, **kw)
        y = layer(x)
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=D64)).sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and bool((p.grad != 0).all()), f"{impl}: {name} has zero gradient entries"
        grads[impl] = [p.grad for p in layer.parameters()]
    for a, b in zip(grads["factorized"], grads["reconstructed"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", params(LINEAR_CASES))
def test_linear_gradients_reach_every_entry(case):
    fmt, kw = case
    layer = FactorizedLinear(12, 6, fmt=fmt, implementation="factorized", dtype=D64, **kw)
    y = layer(torch.randn(5, 12, dtype=D64))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert bool((p.grad != 0).all()), f"{name} has zero gradient entries"


# -- THEORY §5: each stored core's Jacobian has full column rank --------------------------------------------
class _Weight(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self):
        return self.layer.weight()


def _jacobian_ranks(layer) -> list[tuple[int, int]]:
    wrap = _Weight(layer)
    out = []
    for k, f in enumerate(layer.factors):
        def fn(p, k=k):
            return torch.func.functional_call(wrap, {f"layer.factors.{k}": p}, ())

        jac = torch.func.jacrev(fn)(f.detach())
        mat = jac.detach().reshape(-1, f.numel()).numpy()
        out.append((int(np.linalg.matrix_rank(mat)), f.numel()))
    return out


# Small layers where the classical format itself has no redundancy (TT: R_k ≤ R_{k-1} I_k, R_{k-1} ≤ I_k R_k;
# TR additionally ∏_{j≠k} I_j ≥ R_{k-1} R_k; Tucker: R_n ≤ I_n and R_n ≤ the product of the other core modes).
JACOBIAN_CONV = [
    ("tucker", dict(rank=(3, 2))),
    ("sttu", dict(rank=(4, 2), t=2)),
    ("sttu", dict(rank=(2, 2, 2), t=(2, 1, 2), out_shape=(2, 3))),
    ("tt", dict(rank=(3, 4), in_shape=(2, 2), out_shape=(2, 3))),
    ("stt", dict(rank=4, t=2, in_shape=(2, 2), out_shape=(3, 2))),
    ("stt", dict(rank=(4, 4), t=(2, 4), in_shape=(2, 2), out_shape=(3, 4))),
    ("tr", dict(rank=2, in_shape=(2, 2), out_shape=(2, 3))),
    ("str", dict(rank=4, t=2, in_shape=(2, 2), out_shape=(2, 3))),
    ("str", dict(rank=4, t=(2, 4, 2, 4), in_shape=(2, 2), out_shape=(2, 3))),
]


@pytest.mark.parametrize("fmt,kw", JACOBIAN_CONV)
def test_conv_factor_jacobians_have_full_column_rank(fmt, kw):
    out_ch = 12 if kw.get("out_shape") == (3, 4) else 6
    layer = FactorizedConv2d(4, out_ch, 3, fmt=fmt, dtype=D64, **kw)
    for k, (rank, size) in enumerate(_jacobian_ranks(layer)):
        assert rank == size, f"factor {k}: Jacobian rank {rank} < {size} stored numbers"


@pytest.mark.parametrize("fmt,kw", [
    ("tucker", dict(rank=(3, 3))), ("sttu", dict(rank=(2, 4), t=2)),
    ("tt", dict(rank=3, in_shape=(3, 4), out_shape=(2, 3))), ("stt", dict(rank=4, t=2, in_shape=(3, 4),
                                                                      out_shape=(3, 2))),
    ("tr", dict(rank=2, in_shape=(3, 4), out_shape=(2, 3))), ("str", dict(rank=4, t=2, in_shape=(3, 4),
                                                                      out_shape=(2, 3))),
])
def test_linear_factor_jacobians_have_full_column_rank(fmt, kw):
    layer = FactorizedLinear(12, 6, fmt=fmt, dtype=D64, **kw)
    for k, (rank, size) in enumerate(_jacobian_ranks(layer)):
        assert rank == size, f"factor {k}: Jacobian rank {rank} < {size} stored numbers"


# -- FLOPs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["factorized", "reconstructed", "auto"])
@pytest.mark.parametrize("case", params(CONV_CASES))
def test_conv_flops_match_the_counter(case, impl):
    fmt, kw = case
    layer = FactorizedConv2d(8, 6, (3, 2), (2, 1), (1, 0), (1, 2), fmt=fmt, implementation=impl, **kw)
    for shape in [(2, 8, 9, 9), (1, 8, 5, 12)]:
        x = torch.randn(shape)
        want = _counted(layer, x)
        assert abs(layer.flops(shape) - want) <= 0.05 * want, (layer.flops(shape), want)


@pytest.mark.parametrize("impl", ["factorized", "reconstructed", "auto"])
@pytest.mark.parametrize("case", params(LINEAR_CASES))
def test_linear_flops_match_the_counter(case, impl):
    fmt, kw = case
    layer = FactorizedLinear(12, 6, fmt=fmt, implementation=impl, **kw)
    for shape in [(3, 12), (2, 4, 12)]:
        want = _counted(layer, torch.randn(shape))
        assert abs(layer.flops(shape) - want) <= 0.05 * want, (layer.flops(shape), want)


# 64 -> 64 3×3 at CR ≥ 10 (ResNet-20's widest conv)
CR10 = [
    ("tucker", dict(rank=14)),
    ("sttu", dict(rank=16, t=2)),
    ("tt", dict(rank=7)),
    ("stt", dict(rank=(8, 14), t=2)),
    ("tr", dict(rank=9)),
    ("str", dict(rank=18, t=2)),
]


@pytest.mark.parametrize("fmt,kw", CR10)
def test_factorized_beats_reconstructed_at_cr10(fmt, kw):
    layer = FactorizedConv2d(64, 64, 3, padding=1, fmt=fmt, device="meta", **kw)
    assert layer.compression_ratio >= 10
    x = torch.empty(8, 64, 16, 16, device="meta")
    layer.implementation = "factorized"
    fac = _counted(layer, x)
    layer.implementation = "reconstructed"
    rec = _counted(layer, x)
    assert fac < rec
    layer.implementation = "auto"
    assert layer.flops(x.shape) == fac


def _classical_twin(layer):
    """The classical layer at the same ranks, its factors from ``Format.classical_factors``."""
    f = get_format(layer.fmt)
    kw = dict(fmt=f.classical, rank=layer.ranks, t=1, in_shape=layer.in_shape, out_shape=layer.out_shape,
              implementation="factorized", dtype=D64)
    if isinstance(layer, FactorizedConv2d):
        twin = FactorizedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, layer.dilation, **kw)
    else:
        twin = FactorizedLinear(layer.in_features, layer.out_features, **kw)
    cls = f.classical_factors([p.detach() for p in layer.factors], layer.tensor_shape, layer.ranks, layer.t)
    with torch.no_grad():
        for p, c in zip(twin.factors, cls):
            p.copy_(c)
        twin.bias.copy_(layer.bias)
    return twin


ST_CONV = [c for c in CONV_CASES if c[0].startswith("st")]
ST_LINEAR = [c for c in LINEAR_CASES if c[0].startswith("st")]


@pytest.mark.parametrize("case", params(ST_CONV))
def test_st_conv_has_fewer_flops_than_its_classical_twin(case):
    fmt, kw = case
    layer = FactorizedConv2d(8, 6, (3, 2), 1, 1, fmt=fmt, implementation="factorized", dtype=D64, **kw)
    twin = _classical_twin(layer)
    x = torch.randn(2, 8, 9, 9, dtype=D64)
    torch.testing.assert_close(layer(x), twin(x))
    assert _counted(layer, x) < _counted(twin, x)
    assert layer.weight_params < twin.weight_params


def _saving_only_in_unshared_last_core(layer) -> bool:
    """STT whose only t > 1 is on the last core with t ∤ O_d: that core runs in its classical form."""
    if layer.fmt != "stt":
        return False
    outs = layer.layout.pairs[1]
    return all(tv == 1 for tv in layer.t[:-1]) and outs[-1] % layer.t[-1] != 0


@pytest.mark.parametrize("case", params(ST_LINEAR))
def test_st_linear_has_fewer_flops_than_its_classical_twin(case):
    fmt, kw = case
    layer = FactorizedLinear(12, 6, fmt=fmt, implementation="factorized", dtype=D64, **kw)
    twin = _classical_twin(layer)
    x = torch.randn(4, 12, dtype=D64)
    torch.testing.assert_close(layer(x), twin(x))
    if _saving_only_in_unshared_last_core(layer):
        assert _counted(layer, x) == _counted(twin, x)
    else:
        assert _counted(layer, x) < _counted(twin, x)
