"""compress / profile / estimate_params on real models, checked against hand counts and dense layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stsearch import CompressionPlan, compress, models, profile
from stsearch.errors import ConfigError
from stsearch.layers import FactorizedConv2d, FactorizedLinear
from stsearch.surgery import densify, estimate_params

# One layer per format, mixed t included, on ResNet-20 (CIFAR option A).
MIXED = {
    "layer1.0.conv1": {"format": "tucker", "rank": 8},
    "layer1.1.conv2": {"format": "sttu", "rank": 8, "t": 2},
    "layer2.1.conv1": {"format": "tt", "rank": 8, "in_shape": [4, 8], "out_shape": [4, 8]},
    "layer2.2.conv2": {"format": "stt", "rank": 8, "t": [2, 1], "in_shape": [4, 8], "out_shape": [4, 8]},
    "layer3.1.conv1": {"format": "tr", "rank": 6, "in_shape": [8, 8], "out_shape": [8, 8]},
    "layer3.2.conv2": {"format": "str", "rank": 8, "t": 2, "in_shape": [8, 8], "out_shape": [8, 8]},
    "fc": {"format": "tt", "rank": 4, "in_shape": [8, 8], "out_shape": [2, 5]},
}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20")


def test_mixed_plan_runs_forward_and_backward(resnet: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    small = compress(resnet, MIXED, init="decompose")
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items()), "original was modified"
    kinds = {type(small.get_submodule(n)) for n in MIXED}
    assert kinds == {FactorizedConv2d, FactorizedLinear}
    assert {small.get_submodule(n).fmt for n in MIXED} == {"tucker", "sttu", "tt", "stt", "tr", "str"}
    x = torch.randn(2, 3, 32, 32)
    out = small(x)
    out.sum().backward()
    for n in MIXED:
        for p in small.get_submodule(n).factors:
            assert p.grad is not None and torch.isfinite(p.grad).all()


def test_profile_matches_a_hand_count(resnet: nn.Module) -> None:
    small = compress(resnet, MIXED, init="random", seed=0)
    rep = profile(small, (3, 32, 32))
    dense_total = sum(p.numel() for p in resnet.parameters())
    # Hand count: replace each named layer's dense weight by the factor sizes actually stored.
    stored = dense_total
    fw = dw = 0
    for name in MIXED:
        layer = small.get_submodule(name)
        factors = sum(p.numel() for p in layer.factors)
        dense_w = resnet.get_submodule(name).weight.numel()
        stored += factors - dense_w
        fw += factors
        dw += dense_w
    assert rep.params == stored == sum(p.numel() for p in small.parameters())
    assert rep.dense_params == dense_total
    assert rep.compression_ratio == pytest.approx(dense_total / stored)
    assert rep.layer_compression_ratio == pytest.approx(dw / fw)
    est = estimate_params(resnet, MIXED)
    assert est["params"] == stored and est["compression_ratio"] == pytest.approx(rep.compression_ratio)
    assert set(rep.layers["format"]) >= {"tucker", "sttu", "tt", "stt", "tr", "str", "dense"}
    assert 0 < rep.flops < rep.dense_flops


def test_densify_reproduces_outputs(resnet: nn.Module) -> None:
    small = compress(resnet, MIXED, init="random", seed=1).eval()
    dense = densify(small).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(small(x), dense(x), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, (FactorizedConv2d, FactorizedLinear)) for m in dense.modules())


def test_full_rank_decompose_keeps_the_function() -> None:
    torch.manual_seed(0)
    m = models.create("digits_cnn").eval()
    plan = {"conv2": {"format": "tucker", "rank": [32, 16]}, "fc": {"format": "tt", "rank": 16,
                                                                     "in_shape": [8, 16], "out_shape": [2, 5]}}
    small = compress(m, plan).eval()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(small(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("plan", "needle"),
    [
        ({"nope": {"format": "tt", "rank": 4}}, "'nope'"),
        ({"bn1": {"format": "tt", "rank": 4}}, "BatchNorm2d"),
        ({"layer1.0.conv1": {"format": "tt", "rank": 4, "in_shape": [4, 8]}}, "in_shape"),
        ({"layer1.0.conv1": {"format": "str", "rank": 4, "t": [2, 3, 2, 2]}}, "layer1.0.conv1"),
    ],
)
def test_bad_plans_name_the_module(resnet: nn.Module, plan: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        compress(resnet, plan)
    assert needle in str(e.value)


def test_plan_object_and_dict_agree(resnet: nn.Module) -> None:
    a = estimate_params(resnet, MIXED)
    b = estimate_params(resnet, CompressionPlan(MIXED))
    assert a == b and math.isfinite(a["compression_ratio"]) and a["compression_ratio"] > 1


def test_profile_flops_do_not_include_the_auto_choice() -> None:
    """The first forward per input shape makes each layer's ``auto`` choice (which counts its candidate paths);
    profile() must count the forward pass only, whatever ran before in the process."""
    m = models.create("digits_cnn")
    plan = {"conv1": {"format": "tucker", "rank": [11, 1]}, "conv3": {"format": "tt", "rank": 7,
                                                                      "in_shape": [4, 8], "out_shape": [4, 8]}}
    cold = profile(compress(m, plan, init="decompose"), (1, 8, 8)).flops  # layouts unseen in this process
    warm = profile(compress(m, plan, init="random", seed=0), (1, 8, 8)).flops
    assert cold == warm
