"""Layer layouts: how a conv kernel or a linear weight becomes a tensor of one registry format.

Every layout is a :class:`~stsearch.formats.Relayout` (reshape → permute → reshape) from the weight to the
format's tensor, plus the translation of a layer's ``rank``/``t`` arguments into the format's own. Shapes,
parameter counts, reconstruction and decomposition all come from the format registry; this module only says
where each weight index goes.

Conv kernel ``W`` (C_out, C_in, kh, kw); ``out_shape`` = (O_1..O_β) splits C_out, ``in_shape`` = (I_1..I_α)
splits C_in (row-major, the first factor most significant).

========  ==========================================================  ===================================
family    tensor modes (conv)                                         tensor modes (linear)
========  ==========================================================  ===================================
tucker    (O_1..O_β, I_1..I_α, kh, kw), spatial ranks ``None``         (O_1..O_β, I_1..I_α)
tt        (kh·kw, I_1·O_1, …, I_d·O_d), pair index ``i_k·O_k + o_k``   (I_1·O_1, …, I_d·O_d)
tr        (I_1..I_α, kh·kw, O_1..O_β), closed in a ring               (I_1..I_α, O_1..O_β)
========  ==========================================================  ===================================

TT pairs input and output factors; when ``in_shape`` and ``out_shape`` have different lengths the shorter is
padded with trailing 1s (d = the longer length). Defaults when a shape is ``None``: Tucker keeps the channels
unsplit; TT and TR split them into two balanced factors ``(a, n/a)``, a the largest divisor ≤ √n (prime and
n < 4 stay unsplit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import ShapeError
from ..formats import Format, Relayout, get_format

__all__ = ["LayerLayout", "factorizations", "balanced_factorization", "layer_tensor_shape",
           "normalize_layer_spec"]

Shape = tuple[int, ...]
_KINDS = {"conv": "conv", "conv2d": "conv", "linear": "linear"}


def factorizations(n: int, depth: int | None = None) -> list[tuple[int, ...]]:
    """Ordered factorisations of ``n`` into factors ≥ 2 (``[(1,)]`` for n = 1).

    ``depth`` fixes the number of factors; ``None`` gives every length. Sorted by length, then lexicographically.

    >>> factorizations(12, 2)
    [(2, 6), (3, 4), (4, 3), (6, 2)]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ShapeError(f"factorizations: n={n!r} must be a positive int")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ShapeError(f"factorizations: depth={depth!r} must be a positive int or None")
    if n == 1:
        return [(1,)] if depth in (None, 1) else []

    def rec(m: int, d: int | None) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        if d is None or d == 1:
            out.append((m,))
        if d == 1:
            return out
        for f in range(2, m // 2 + 1):
            if m % f == 0:
                out += [(f, *rest) for rest in rec(m // f, None if d is None else d - 1)]
        return out

    return sorted(rec(n, depth), key=lambda f: (len(f), f))


def balanced_factorization(n: int, depth: int = 2) -> tuple[int, ...]:
    """The most balanced ordered factorisation of ``n`` into ``depth`` factors, ascending; ``(n,)`` if none.

    >>> balanced_factorization(64), balanced_factorization(32), balanced_factorization(7)
    ((8, 8), (4, 8), (7,))
    """
    cands = factorizations(n, depth) if n > 1 else []
    if not cands:
        return (n,)
    return min(cands, key=lambda f: (max(f) / min(f), f))


def _as_shape(value: Sequence[int] | int, channels: int, what: str, ch_name: str) -> Shape:
    if isinstance(value, bool):
        raise ShapeError(f"{what}={value!r} must be a sequence of positive ints")
    if isinstance(value, int):
        value = (value,)
    try:
        shape = tuple(value)
    except TypeError:
        raise ShapeError(f"{what}={value!r} must be a sequence of positive ints") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ShapeError(f"{what}={value!r} must be a non-empty sequence of positive ints")
    if math.prod(shape) != channels:
        raise ShapeError(f"{what}={shape} multiplies to {math.prod(shape)}, not {ch_name}={channels}")
    return shape


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ShapeError(f"{what}={v!r} must be an int or a pair of ints")
    if isinstance(v, int):
        v = (v, v)
    try:
        a, b = v  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ShapeError(f"{what}={v!r} must be an int or a pair of ints") from None
    if any(isinstance(x, bool) or not isinstance(x, int) for x in (a, b)):
        raise ShapeError(f"{what}={v!r} must be an int or a pair of ints")
    return int(a), int(b)


@dataclass(frozen=True)
class LayerLayout:
    """A validated layer spec: the weight's tensorization in one format, with the format's ranks and t.

    Build it with :func:`normalize_layer_spec`. ``ranks`` and ``t`` are in the format's own order (see the
    module docstring and ``docs/theory.md``); ``weight_params`` is the format's exact count.
    """

    kind: str
    fmt: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    in_shape: Shape
    out_shape: Shape
    tensor_shape: Shape
    ranks: tuple
    t: tuple[int, ...]

    # -- derived --------------------------------------------------------------------------------------
    @property
    def format(self) -> Format:
        return get_format(self.fmt)

    @property
    def family(self) -> str:
        return self.format.family

    @property
    def kernel_shape(self) -> Shape:
        """Shape of the dense weight: (C_out, C_in, kh, kw) or (C_out, C_in)."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def pairs(self) -> tuple[Shape, Shape]:
        """TT only: (in, out) factor tuples padded with trailing 1s to a common length."""
        d = max(len(self.in_shape), len(self.out_shape))
        return (tuple(self.in_shape) + (1,) * (d - len(self.in_shape)),
                tuple(self.out_shape) + (1,) * (d - len(self.out_shape)))

    @cached_property
    def relayout(self) -> Relayout:
        """Maps the dense weight to the format's tensor: ``relayout.apply(W)``; ``invert`` maps back."""
        return _relayout(self.kind, self.family, self.kernel_shape, self.in_shape, self.out_shape,
                         self.kernel_size, self.pairs)

    @property
    def factor_shapes(self) -> list[Shape]:
        return [tuple(s) for s in self.format.factor_shapes(self.tensor_shape, self.ranks, self.t)]

    @property
    def weight_params(self) -> int:
        """Stored weight numbers (the format's exact count; bias not included)."""
        return int(self.format.num_params(self.tensor_shape, self.ranks, self.t))

    @property
    def dense_weight_params(self) -> int:
        return math.prod(self.kernel_shape)

    @property
    def compression_ratio(self) -> float:
        """Dense weight numbers ÷ stored weight numbers."""
        return self.dense_weight_params / self.weight_params

    def flops(self, input_shape: Sequence[int], implementation: str = "auto", *, stride=1, padding=0,
              dilation=1) -> int:
        """Forward FLOPs (2 × multiply-adds, the ``FlopCounterMode`` convention) of a layer with this layout
        for ``input_shape`` ((B, C, H, W) conv, (…, C) linear), without building it. ``"auto"`` = the smaller
        of the two implementations (what the layer runs)."""
        from ._forward import conv_out_hw, factorized_flops, reconstructed_flops

        shape = tuple(int(v) for v in input_shape)
        if self.kind == "conv":
            if len(shape) == 3:
                shape = (1, *shape)
            if len(shape) != 4 or shape[1] != self.in_channels:
                raise ShapeError(f"input_shape={tuple(input_shape)} must be (B, {self.in_channels}, H, W)")
            geom = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"))
            batch, hw_in = shape[0], shape[2:]
            hw_out = conv_out_hw(*hw_in, self.kernel_size, geom)
        else:
            if not shape or shape[-1] != self.in_channels:
                raise ShapeError(f"input_shape={tuple(input_shape)} must end with in_features={self.in_channels}")
            batch, hw_in, hw_out = math.prod(shape[:-1]), (1, 1), (1, 1)
        fac = factorized_flops(self, batch, hw_in, hw_out)
        rec = reconstructed_flops(self, batch, hw_out)
        if implementation == "factorized":
            return fac
        if implementation == "reconstructed":
            return rec
        if implementation == "auto":
            return min(fac, rec)
        raise ShapeError(f"implementation={implementation!r} must be 'auto', 'factorized' or 'reconstructed'")

    def kernel_to_tensor(self, w: torch.Tensor) -> torch.Tensor:
        return self.relayout.apply(w)

    def tensor_to_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self.relayout.invert(x)

    def describe(self) -> str:
        if self.kind == "conv":
            kh, kw = self.kernel_size
            head = f"conv {self.in_channels}→{self.out_channels} {kh}×{kw}"
        else:
            head = f"linear {self.in_channels}→{self.out_channels}"
        return f"{head}, fmt={self.fmt!r}, tensor shape {self.tensor_shape}"


def _relayout(kind: str, family: str, kshape: Shape, in_shape: Shape, out_shape: Shape,
              ksize: tuple[int, ...], pairs: tuple[Shape, Shape]) -> Relayout:
    conv = kind == "conv"
    spatial = tuple(ksize)
    if family == "tucker":
        split = (*out_shape, *in_shape, *spatial)
        return Relayout(kshape, split, tuple(range(len(split))), split)
    if family == "tt":
        ins, outs = pairs
        d = len(ins)
        split = (*outs, *ins, *spatial)
        perm: list[int] = [2 * d, 2 * d + 1] if conv else []
        for k in range(d):
            perm += [d + k, k]
        dst = ((math.prod(spatial),) if conv else ()) + tuple(i * o for i, o in zip(ins, outs))
        return Relayout(kshape, split, tuple(perm), dst)
    if family == "tr":
        a, b = len(in_shape), len(out_shape)
        split = (*out_shape, *in_shape, *spatial)
        perm = [*range(b, b + a), *([a + b, a + b + 1] if conv else []), *range(b)]
        dst = (*in_shape, *((math.prod(spatial),) if conv else ()), *out_shape)
        return Relayout(kshape, split, tuple(perm), dst)
    raise ShapeError(f"no layer layout for format family {family!r}")  # pragma: no cover


def _resolve_shapes(kind: str, family: str, in_channels: int, out_channels: int,
                    in_shape, out_shape) -> tuple[Shape, Shape]:
    def default(n: int) -> Shape:
        return (n,) if family == "tucker" else balanced_factorization(n, 2)

    ins = default(in_channels) if in_shape is None else _as_shape(in_shape, in_channels, "in_shape",
                                                                   "in_channels" if kind == "conv"
                                                                   else "in_features")
    outs = default(out_channels) if out_shape is None else _as_shape(out_shape, out_channels, "out_shape",
                                                                      "out_channels" if kind == "conv"
                                                                      else "out_features")
    return ins, outs


def _check_channels(kind: str, in_channels: int, out_channels: int) -> None:
    names = ("in_channels", "out_channels") if kind == "conv" else ("in_features", "out_features")
    for name, v in zip(names, (in_channels, out_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ShapeError(f"{name}={v!r} must be a positive int")


def _kind(kind: str) -> str:
    try:
        return _KINDS[kind]
    except (KeyError, TypeError):
        raise ShapeError(f"kind={kind!r} must be 'conv' or 'linear'") from None


def _kernel(kind: str, kernel_size) -> tuple[int, ...]:
    if kind == "linear":
        return ()
    if kernel_size is None:
        raise ShapeError("kernel_size is required for a conv layer")
    ks = _pair(kernel_size, "kernel_size")
    if min(ks) < 1:
        raise ShapeError(f"kernel_size={ks} must be positive")
    return ks


def layer_tensor_shape(kind: str, fmt: str, in_channels: int, out_channels: int,
                       kernel_size: int | Sequence[int] | None = None, in_shape: Sequence[int] | None = None,
                       out_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The tensor shape the layer's weight takes in format ``fmt`` (validates the channel splits).

    >>> layer_tensor_shape("conv", "stt", 64, 64, 3, (8, 8), (8, 8))
    (9, 64, 64)
    >>> layer_tensor_shape("conv", "tucker", 64, 32, 3)
    (32, 64, 3, 3)
    """
    kind = _kind(kind)
    family = get_format(fmt).family
    _check_channels(kind, in_channels, out_channels)
    ks = _kernel(kind, kernel_size)
    ins, outs = _resolve_shapes(kind, family, in_channels, out_channels, in_shape, out_shape)
    d = max(len(ins), len(outs))
    pairs = (ins + (1,) * (d - len(ins)), outs + (1,) * (d - len(outs)))
    return _relayout(kind, family, (out_channels, in_channels, *ks), ins, outs, ks, pairs).dst


def _tucker_arg(value, n_channel: int, n_spatial: int, what: str, fill):
    """Expand a Tucker rank/t given per channel mode (or for every mode) to one value per tensor mode."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n_channel + [fill] * n_spatial
    try:
        vals = list(value)
    except TypeError:
        return value  # let the format produce the error
    if len(vals) == n_channel:
        return vals + [fill] * n_spatial
    if len(vals) == n_channel + n_spatial and n_spatial:
        bad = [v for v in vals[n_channel:] if v != fill]
        if bad:
            raise ShapeError(f"{what}={vals}: the spatial modes (last {n_spatial}) are unfactored in the "
                             f"Tucker layer layout, so their {what} must be {fill!r}")
        return vals
    raise ShapeError(f"{what}={vals} has {len(vals)} entries; expected one per channel mode "
                     f"(out modes then in modes: {n_channel})"
                     + (f" or one per tensor mode ({n_channel + n_spatial})" if n_spatial else ""))


def normalize_layer_spec(kind: str, fmt: str, in_channels: int, out_channels: int,
                         kernel_size: int | Sequence[int] | None = None, *, rank, t=1,
                         in_shape: Sequence[int] | None = None,
                         out_shape: Sequence[int] | None = None) -> LayerLayout:
    """Validate a layer spec without building the layer; the result carries ``weight_params`` and the CR.

    kind: ``"conv"`` or ``"linear"``; fmt: a registry format. ``rank``/``t``: an int, or per the layout —
    Tucker: one per channel mode (out modes, then in modes; conv also accepts the full list with ``None`` /
    ``1`` for the two spatial modes); TT: one per bond (N−1) and one per core 2..N; TR: one per bond
    (R_0 = the closing bond, then R_1…) and one per core 2..N. Invalid → :class:`ShapeError` naming the field.

    >>> lay = normalize_layer_spec("conv", "tucker", 64, 64, 3, rank=16)
    >>> lay.ranks, lay.weight_params, round(lay.compression_ratio, 2)
    ((16, 16, None, None), 4352, 8.47)
    """
    kind = _kind(kind)
    f = get_format(fmt)
    _check_channels(kind, in_channels, out_channels)
    ks = _kernel(kind, kernel_size)
    ins, outs = _resolve_shapes(kind, f.family, in_channels, out_channels, in_shape, out_shape)
    d = max(len(ins), len(outs))
    pairs = (ins + (1,) * (d - len(ins)), outs + (1,) * (d - len(outs)))
    shape = _relayout(kind, f.family, (out_channels, in_channels, *ks), ins, outs, ks, pairs).dst
    desc = LayerLayout(kind, f.name, in_channels, out_channels, ks, ins, outs, shape, (), ()).describe()
    try:
        if f.family == "tucker":
            n_sp = 2 if kind == "conv" else 0
            n_ch = len(ins) + len(outs)
            rank = _tucker_arg(rank, n_ch, n_sp, "rank", None)
            t = _tucker_arg(t, n_ch, n_sp, "t", 1)
        if f.family == "tt" and len(shape) < 2:
            raise ShapeError(f"a TT linear layer needs at least 2 (in, out) factor pairs; got in_shape={ins}, "
                             f"out_shape={outs}: split the features, e.g. in_shape="
                             f"{balanced_factorization(in_channels)}")
        ranks, ts = f.normalize(shape, rank, t)
    except ShapeError as e:
        raise ShapeError(f"{desc}: {e}") from None
    return LayerLayout(kind, f.name, in_channels, out_channels, ks, ins, outs, tuple(shape), tuple(ranks),
                       tuple(ts))
