"""Machinery shared by :class:`FactorizedConv2d` and :class:`FactorizedLinear`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ShapeError, StsearchError
from ..formats.base import balance_factors
from ._forward import factorized_flops, reconstructed_flops
from ._layout import LayerLayout

IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")


def check_implementation(value: str) -> str:
    if value not in IMPLEMENTATIONS:
        raise StsearchError(f"implementation={value!r} must be one of {list(IMPLEMENTATIONS)}")
    return value


class FactorizedLayer(nn.Module):
    """Common part: the factors (``factors.0``, ``factors.1``, … in the format's storage order), the bias, the
    reconstructed weight, parameter and FLOP counts and the ``auto`` choice of implementation."""

    layout: LayerLayout
    factors: nn.ParameterList
    bias: nn.Parameter | None

    def _setup(self, layout: LayerLayout, bias: bool, implementation: str, fan_in: int,
               generator: torch.Generator | None, device, dtype, init: bool) -> None:
        self.layout = layout
        self._implementation = check_implementation(implementation)
        self._auto: dict[tuple[int, ...], str] = {}
        dtype = dtype or torch.get_default_dtype()
        if init:
            # Kaiming-like: reconstructed weight RMS sqrt(2 / fan_in), so deep stacks keep their scale.
            fs = layout.format.random_factors(layout.tensor_shape, layout.ranks, layout.t, generator=generator,
                                              dtype=dtype, device=device, std=math.sqrt(2.0 / fan_in))
        else:
            fs = [torch.zeros(s, dtype=dtype, device=device) for s in layout.factor_shapes]
        self.factors = nn.ParameterList([nn.Parameter(f) for f in fs])
        if bias:
            bound = 1.0 / math.sqrt(fan_in)
            b = torch.rand(layout.out_channels, generator=generator, dtype=torch.float64) * (2 * bound) - bound
            self.bias = nn.Parameter(b.to(dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    # -- the spec ------------------------------------------------------------------------------------
    @property
    def fmt(self) -> str:
        return self.layout.fmt

    @property
    def ranks(self) -> tuple:
        return self.layout.ranks

    @property
    def t(self) -> tuple[int, ...]:
        return self.layout.t

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.layout.in_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.layout.out_shape

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return self.layout.tensor_shape

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        self._implementation = check_implementation(value)

    # -- counts ----------------------------------------------------------------------------------------
    @property
    def weight_params(self) -> int:
        """Stored weight numbers (the format's count)."""
        return self.layout.weight_params

    @property
    def num_params(self) -> int:
        """Stored numbers, bias included."""
        return self.weight_params + (self.bias.numel() if self.bias is not None else 0)

    @property
    def dense_weight_params(self) -> int:
        return self.layout.dense_weight_params

    @property
    def compression_ratio(self) -> float:
        """Dense weight numbers ÷ stored weight numbers."""
        return self.layout.compression_ratio

    # -- weights ---------------------------------------------------------------------------------------
    def weight(self) -> torch.Tensor:
        """The reconstructed dense weight, (C_out, C_in, kh, kw) or (C_out, C_in)."""
        lay = self.layout
        x = lay.format.reconstruct(list(self.factors), lay.tensor_shape, lay.ranks, lay.t)
        return lay.tensor_to_kernel(x)

    def _load_dense(self, w: torch.Tensor, b: torch.Tensor | None, decompose_kwargs: dict | None) -> None:
        lay = self.layout
        with torch.no_grad():
            x = lay.kernel_to_tensor(w.detach())
            fs = lay.format.decompose(x, lay.ranks, lay.t, **(decompose_kwargs or {}))
            for p, f in zip(self.factors, balance_factors(fs)):  # equal scales: SGD-friendly, same weight
                p.copy_(f)
            if b is not None and self.bias is not None:
                self.bias.copy_(b.detach())

    # -- implementation choice and FLOPs ----------------------------------------------------------------
    def _flops_parts(self, input_shape: Sequence[int]) -> tuple[int, tuple[int, int], tuple[int, int]]:
        raise NotImplementedError

    def flops(self, input_shape: Sequence[int], implementation: str | None = None) -> int:
        """Forward FLOPs (2 × multiply-adds, the ``FlopCounterMode`` convention; bias adds are free).

        ``implementation=None`` counts the path this layer runs for that input (``auto`` resolved).
        """
        shape = tuple(int(s) for s in input_shape)
        impl = implementation or self._resolve(shape)
        check_implementation(impl)
        if impl == "auto":
            impl = self._choose(shape)
        batch, hw_in, hw_out = self._flops_parts(shape)
        if impl == "factorized":
            return factorized_flops(self.layout, batch, hw_in, hw_out)
        return reconstructed_flops(self.layout, batch, hw_out)

    def _choose(self, shape: tuple[int, ...]) -> str:
        choice = self._auto.get(shape)
        if choice is None:
            batch, hw_in, hw_out = self._flops_parts(shape)
            fac = factorized_flops(self.layout, batch, hw_in, hw_out)
            rec = reconstructed_flops(self.layout, batch, hw_out)
            choice = "factorized" if fac <= rec else "reconstructed"
            self._auto[shape] = choice
        return choice

    def _resolve(self, shape: tuple[int, ...]) -> str:
        return self._choose(shape) if self._implementation == "auto" else self._implementation

    def _spec_repr(self) -> str:
        lay = self.layout
        return (f"fmt={lay.fmt!r}, ranks={lay.ranks}, t={lay.t}, in_shape={lay.in_shape}, "
                f"out_shape={lay.out_shape}, implementation={self._implementation!r}, "
                f"params={self.num_params} (weight CR {lay.compression_ratio:.2f}x)")

    def _check_input(self, ok: bool, what: str, x: torch.Tensor) -> None:
        if not ok:
            raise ShapeError(f"{type(self).__name__}: input of shape {tuple(x.shape)} {what}")
