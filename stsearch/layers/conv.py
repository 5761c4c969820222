"""Factorized 2-D convolution in any registry format."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ._base import FactorizedLayer, check_implementation
from ._forward import Geometry, conv_out_hw, factorized_conv
from ._layout import _pair, normalize_layer_spec

__all__ = ["FactorizedConv2d"]


def _geometry(stride, padding, dilation) -> Geometry:
    if isinstance(padding, str):
        raise ShapeError(f"padding={padding!r}: string padding is not supported; give explicit ints")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(s) < 1:
        raise ShapeError(f"stride={s} must be positive")
    if min(p) < 0:
        raise ShapeError(f"padding={p} must be non-negative")
    if min(d) < 1:
        raise ShapeError(f"dilation={d} must be positive")
    return s, p, d


class FactorizedConv2d(FactorizedLayer):
    """A ``Conv2d`` whose kernel (C_out, C_in, kh, kw) is stored in format ``fmt``.

    x (B, C_in, H, W) -> (B, C_out, H', W'), exactly ``F.conv2d(x, self.weight(), bias, …)``. ``implementation``:
    ``"factorized"`` runs small maps and convs without building the kernel, ``"reconstructed"`` builds it and
    runs one conv, ``"auto"`` picks the one with fewer FLOPs for each input shape (cached).

    >>> conv = FactorizedConv2d(64, 64, 3, padding=1, fmt="stt", rank=8, t=2, in_shape=(8, 8), out_shape=(8, 8))
    >>> conv(torch.randn(2, 64, 8, 8)).shape, conv.weight_params
    (torch.Size([2, 64, 8, 8]), 1224)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True, *, fmt: str, rank, t=1,
                 in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None,
                 implementation: str = "auto", groups: int = 1, padding_mode: str = "zeros",
                 generator: torch.Generator | None = None, device=None, dtype=None, _init: bool = True):
        super().__init__()
        if groups != 1:
            raise ShapeError(f"groups={groups}: factorized convolutions support groups=1 only")
        if padding_mode != "zeros":
            raise ShapeError(f"padding_mode={padding_mode!r}: only 'zeros' is supported")
        check_implementation(implementation)
        self.stride, self.padding, self.dilation = _geometry(stride, padding, dilation)
        layout = normalize_layer_spec("conv", fmt, in_channels, out_channels, kernel_size, rank=rank, t=t,
                                      in_shape=in_shape, out_shape=out_shape)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.padding_mode = 1, "zeros"  # what nn.Conv2d-inspecting code expects
        self.kernel_size: tuple[int, int] = layout.kernel_size  # type: ignore[assignment]
        fan_in = in_channels * layout.kernel_size[0] * layout.kernel_size[1]
        self._setup(layout, bias, implementation, fan_in, generator, device, dtype, _init)

    @property
    def _geom(self) -> Geometry:
        return self.stride, self.padding, self.dilation

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, fmt: str, rank, t=1, in_shape: Sequence[int] | None = None,
                   out_shape: Sequence[int] | None = None, implementation: str = "auto",
                   decompose_kwargs: dict | None = None) -> FactorizedConv2d:
        """Initialise by decomposing ``conv``'s kernel with the format's ``decompose``; the bias is copied."""
        if not isinstance(conv, nn.Conv2d):
            raise ShapeError(f"from_dense expects an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.bias is not None, fmt=fmt, rank=rank, t=t, in_shape=in_shape,
                    out_shape=out_shape, implementation=implementation, groups=conv.groups,
                    padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype, _init=False)
        layer._load_dense(w, conv.bias, decompose_kwargs)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (kernel reconstructed, bias copied)."""
        w = self.weight().detach()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def _flops_parts(self, input_shape):
        if len(input_shape) == 3:
            input_shape = (1, *input_shape)
        if len(input_shape) != 4:
            raise ShapeError(f"input_shape={tuple(input_shape)} must be (B, C, H, W) or (C, H, W)")
        b, _, h, w = input_shape
        return b, (h, w), conv_out_hw(h, w, self.kernel_size, self._geom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) or (C_in, H, W) -> (B, C_out, H', W') or (C_out, H', W')."""
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        self._check_input(x.dim() == 4 and x.shape[1] == self.in_channels,
                          f"does not fit (B, {self.in_channels}, H, W)", x)
        if self._resolve(tuple(x.shape)) == "factorized":
            return factorized_conv(x, list(self.factors), self.layout, self._geom, self.bias)
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                + self._spec_repr())
