"""Small CNNs: LeNet-5 for 28x28 digits/clothes and a tiny CNN for scikit-learn's 8x8 digits.

Module names are flat so that globs select layer kinds: ``conv*`` matches every conv, ``fc*`` every linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: (B, C, 28, 28) -> (B, num_classes), 61,706 params at C=1.

    conv1 5x5 (C -> 6, pad 2) -> pool -> conv2 5x5 (6 -> 16) -> pool -> fc1 (400 -> 120) -> fc2 (84) -> fc3.
    ``input_size`` sets the expected square input (28 by default; 32 gives the classic unpadded geometry).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        side = (input_size + 4 - 4) // 2  # conv1 keeps the size (pad 2), pool halves it
        side = (side - 4) // 2  # conv2 (no pad) then pool
        if side < 1:
            raise ConfigError(f"model 'lenet5': input_size must be at least 12, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DigitsCNN(nn.Module):
    """A 3-conv CNN for 8x8 digits: (B, C, 8, 8) -> (B, num_classes).

    conv1 3x3 (C -> c1) -> conv2 3x3 (c1 -> c2) -> pool 2 -> conv3 3x3 (c2 -> c3) -> avg-pool to 2x2 -> fc
    (4*c3 -> classes); each conv is followed by batch norm and ReLU. Default channels (16, 32, 32): 15.6k params.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        if len(channels) != 3 or any(int(c) < 1 for c in channels):
            raise ConfigError(f"model 'digits_cnn': channels must be 3 positive integers, got {channels!r}")
        c1, c2, c3 = (int(c) for c in channels)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> LeNet5:
    """LeNet-5 for (B, 1, 28, 28) input."""
    return LeNet5(num_classes, in_channels, input_size)


def digits_cnn(num_classes: int = 10, in_channels: int = 1,
               channels: Sequence[int] = (16, 32, 32)) -> DigitsCNN:
    """The small CNN for scikit-learn's 8x8 digits: (B, 1, 8, 8) -> (B, num_classes)."""
    return DigitsCNN(num_classes, in_channels, channels)
