"""A small model registry: the benchmark CNNs and any torchvision classifier, by name.

>>> from stsearch import models
>>> net = models.create("resnet20", num_classes=10)       # (B, 3, 32, 32) -> (B, 10)
>>> net = models.create("torchvision:mobilenet_v3_small")  # weights=None, nothing downloaded

Every keyword has a default (``num_classes=10``; ``in_channels`` is 1 for ``lenet5``/``digits_cnn`` and 3
otherwise). An unknown name or keyword raises :class:`~stsearch.errors.ConfigError` naming it and listing what
exists. Construction draws from torch's global RNG only, so ``torch.manual_seed(s)`` makes it deterministic.
"""

from __future__ import annotations

from ._registry import TORCHVISION_PREFIX, available, create, model_kwargs, register
from .cifar_resnet import BasicBlock, CifarResNet, ShortcutA, resnet20, resnet32, resnet56
from .small import DigitsCNN, LeNet5, digits_cnn, lenet5

__all__ = [
    "create", "available", "register", "model_kwargs", "TORCHVISION_PREFIX",
    "CifarResNet", "BasicBlock", "ShortcutA", "resnet20", "resnet32", "resnet56",
    "LeNet5", "lenet5", "DigitsCNN", "digits_cnn",
]

for _name, _builder in (("resnet20", resnet20), ("resnet32", resnet32), ("resnet56", resnet56),
                        ("lenet5", lenet5), ("digits_cnn", digits_cnn)):
    register(_name, _builder)
del _name, _builder
