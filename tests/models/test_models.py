"""stsearch.models: the registry, the CIFAR ResNets, LeNet-5, the digits CNN and torchvision models."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from torch import nn

from stsearch import models
from stsearch.errors import ConfigError


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_available_lists_the_builtins() -> None:
    assert models.available() == ["digits_cnn", "lenet5", "resnet20", "resnet32", "resnet56"]
    full = models.available(include_torchvision=True)
    assert "torchvision:resnet18" in full and "torchvision:mobilenet_v3_small" in full
    assert not any(n.startswith("torchvision:fcn") for n in full)  # classification models only


@pytest.mark.parametrize(("name", "params"), [("resnet20", 269_722), ("resnet32", 464_154),
                                              ("resnet56", 853_018)])
def test_cifar_resnet_param_counts(name: str, params: int) -> None:
    """He et al. (2016) Table 6: 0.27M, 0.46M, 0.85M parameters."""
    net = models.create(name)
    assert n_params(net) == params
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_structure_option_a() -> None:
    net = models.create("resnet20", num_classes=100, in_channels=1)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and convs[0] == "conv1" and "layer3.2.conv2" in convs
    assert isinstance(net.fc, nn.Linear) and net.fc.out_features == 100
    shortcuts = [m for m in net.modules() if isinstance(m, models.ShortcutA)]
    assert len(shortcuts) == 2 and all(n_params(s) == 0 for s in shortcuts)  # parameter-free option A
    x = torch.randn(3, 16, 8, 8)
    out = models.ShortcutA(16, 32, 2)(x)
    assert out.shape == (3, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_lenet5() -> None:
    net = models.create("lenet5")
    assert n_params(net) == 61_706
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert fnmatch.filter(names, "conv*") == ["conv1", "conv2"]
    assert fnmatch.filter(names, "fc*") == ["fc1", "fc2", "fc3"]
    classic = models.create("lenet5", input_size=32, in_channels=3, num_classes=5)
    assert classic(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_digits_cnn_has_real_layers_to_compress() -> None:
    net = models.create("digits_cnn")
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, _ in convs] == ["conv1", "conv2", "conv3"]
    assert [(m.in_channels, m.out_channels) for _, m in convs] == [(1, 16), (16, 32), (32, 32)]
    assert isinstance(net.fc, nn.Linear) and net.fc.in_features == 128
    assert models.create("digits_cnn", channels=[8, 8, 16])(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ConfigError, match="channels"):
        models.create("digits_cnn", channels=(8, 8))


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "digits_cnn", "torchvision:mobilenet_v3_small"])
def test_models_are_deterministic_under_manual_seed(name: str) -> None:
    torch.manual_seed(7)
    a = models.create(name).state_dict()
    torch.manual_seed(7)
    b = models.create(name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(8)
    c = models.create(name).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_torchvision_models() -> None:
    net = models.create("torchvision:resnet18", num_classes=7, in_channels=1)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert net.conv1.in_channels == 1
    net = models.create("torchvision:mobilenet_v3_small")
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    net = models.create("torchvision:googlenet")
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("resnet21", {}, r"unknown model 'resnet21'.*digits_cnn, lenet5, resnet20"),
    ("resnet20", {"depth": 3}, r"'depth'.*num_classes=10, in_channels=3"),
    ("lenet5", {"num_classes": 0}, "num_classes must be a positive integer"),
    ("lenet5", {"in_channels": 1.5}, "in_channels"),
    ("torchvision:resnet1", {}, r"unknown torchvision.*torchvision:resnet18"),
    ("torchvision:resnet18", {"foo": 1}, "foo"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "not supported"),
    ("", {}, "unknown model"),
])
def test_bad_names_and_kwargs_raise_config_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        models.create(name, **kwargs)


def test_model_kwargs_and_register() -> None:
    assert models.model_kwargs("lenet5") == {"num_classes": 10, "in_channels": 1, "input_size": 28}
    assert models.model_kwargs("resnet56")["in_channels"] == 3

    def tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    models.register("tiny_test_model", tiny)
    try:
        assert "tiny_test_model" in models.available()
        assert isinstance(models.create("tiny_test_model", num_classes=3), nn.Sequential)
    finally:
        models._registry._REGISTRY.pop("tiny_test_model")
    with pytest.raises(ConfigError, match="need defaults"):
        models.register("bad", lambda num_classes: nn.Identity())
