"""Factorized fully connected layer in any registry format."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ._base import FactorizedLayer, check_implementation
from ._forward import factorized_linear
from ._layout import normalize_layer_spec

__all__ = ["FactorizedLinear"]


class FactorizedLinear(FactorizedLayer):
    """A ``Linear`` whose weight (C_out, C_in) is stored in format ``fmt``.

    x (…, C_in) -> (…, C_out), exactly ``F.linear(x, self.weight(), bias)``. TT is the TT-matrix format over
    (in_k, out_k) pairs (Novikov et al. 2015), TR a ring of input cores then output cores, Tucker a Tucker
    over ``out_shape + in_shape``.

    >>> fc = FactorizedLinear(64, 10, fmt="tt", rank=4, in_shape=(8, 8), out_shape=(2, 5))
    >>> fc(torch.randn(3, 64)).shape, fc.weight_params
    (torch.Size([3, 10]), 224)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, fmt: str, rank, t=1,
                 in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None,
                 implementation: str = "auto", generator: torch.Generator | None = None, device=None,
                 dtype=None, _init: bool = True):
        super().__init__()
        check_implementation(implementation)
        layout = normalize_layer_spec("linear", fmt, in_features, out_features, rank=rank, t=t,
                                      in_shape=in_shape, out_shape=out_shape)
        self.in_features, self.out_features = in_features, out_features
        self._setup(layout, bias, implementation, in_features, generator, device, dtype, _init)

    @classmethod
    def from_dense(cls, linear: nn.Linear, fmt: str, rank, t=1, in_shape: Sequence[int] | None = None,
                   out_shape: Sequence[int] | None = None, implementation: str = "auto",
                   decompose_kwargs: dict | None = None) -> FactorizedLinear:
        """Initialise by decomposing ``linear``'s weight with the format's ``decompose``; the bias is copied."""
        if not isinstance(linear, nn.Linear):
            raise ShapeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, fmt=fmt, rank=rank, t=t,
                    in_shape=in_shape, out_shape=out_shape, implementation=implementation, device=w.device,
                    dtype=w.dtype, _init=False)
        layer._load_dense(w, linear.bias, decompose_kwargs)
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear``."""
        w = self.weight().detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                        dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _flops_parts(self, input_shape):
        if len(input_shape) < 1 or input_shape[-1] != self.in_features:
            raise ShapeError(f"input_shape={tuple(input_shape)} must end with in_features={self.in_features}")
        batch = 1
        for s in input_shape[:-1]:
            batch *= s
        return batch, (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (…, C_in) -> (…, C_out)."""
        self._check_input(x.dim() >= 1 and x.shape[-1] == self.in_features,
                          f"does not end with in_features={self.in_features}", x)
        if self._resolve(tuple(x.shape)) == "factorized":
            lead = x.shape[:-1]
            y = factorized_linear(x.reshape(-1, self.in_features), list(self.factors), self.layout)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*lead, self.out_features)
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, " + self._spec_repr())
