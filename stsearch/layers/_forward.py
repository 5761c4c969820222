"""Factorized forward passes and their FLOP counts.

Each factorized forward is an alternative contraction order of the format's stored factors (the tests prove it
equal to ``F.conv2d``/``F.linear`` with the reconstructed kernel). An ST factor ``U`` of shape (K, J) acting as
``U ⊗ I_t`` on a channel mode of size ``K·t`` (index ``c·t + s``) runs as one map shared by the t interleaved
channel groups: view the activation (P, K·t, Q) as (P, K, t·Q) and contract K — t times fewer multiply-adds
than the expanded factor, and no copy.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: 2 × multiply-adds of every matmul, einsum and
convolution; reshapes, permutes, bias additions and traces are free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._layout import LayerLayout

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


def conv_out_hw(h: int, w: int, kernel: tuple[int, ...], geom: Geometry) -> tuple[int, int]:
    (sh, sw), (ph, pw), (dh, dw) = geom
    kh, kw = kernel
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _map(z: torch.Tensor, u: torch.Tensor, pre: int, k: int, n: int, *, left: bool,
         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Contract the middle index of ``z`` viewed as (pre, k, n) with ``u``; ``bias`` (only with n = 1) is
    added to the result.

    left=False: u is (k, j) and out[p, j, q] = Σ_c z[p, c, q] u[c, j]; left=True: u is (j, k), u @ z.
    """
    if k == 1:  # an outer product: a broadcast multiply (free for FlopCounterMode)
        out = u.reshape(1, -1, 1) * z.reshape(pre, 1, n)
        return out if bias is None else out.reshape(pre, -1) + bias
    if n == 1:
        m = u.T if left else u
        z2 = z.reshape(pre, k)
        return z2 @ m if bias is None else torch.addmm(bias, z2, m)
    # one (j, k) map shared by all pre·n columns: a broadcast batched matmul, no copy of z
    return torch.matmul(u if left else u.T, z.reshape(pre, k, n))


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B·H·W, C): a view when ``x`` is channels_last, else one copy."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def _from_nhwc(z: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B·H·W, C) -> (B, C, H, W) in channels_last memory format (a view)."""
    return z.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _map_flops(pre: int, k: int, n: int, j: int) -> int:
    return _einsum_flops(pre * k * n * j, k)


def _einsum_flops(macs: int, contraction: int) -> int:
    """2 × multiply-adds; an einsum whose contraction has size 1 is a broadcast multiply, which
    ``FlopCounterMode`` (and hence this count) treats as free."""
    return 0 if contraction == 1 else 2 * macs


# ==================================================================================================
# Tucker / STTu: input-mode maps, one core conv (or matmul), output-mode maps
# ==================================================================================================
def _tucker_modes(lay: LayerLayout):
    """Per mode (size, effective rank, t, factored?) for the output modes and the input modes."""
    nb, na = len(lay.out_shape), len(lay.in_shape)
    ranks, ts = lay.ranks, lay.t

    def mode(size: int, r, tv: int):
        return (size, size, 1, False) if r is None else (size, r, tv, True)

    outs = [mode(lay.out_shape[k], ranks[k], ts[k]) for k in range(nb)]
    ins = [mode(lay.in_shape[k], ranks[nb + k], ts[nb + k]) for k in range(na)]
    return outs, ins


def _split_us(us: Sequence[torch.Tensor], outs, ins):
    it = iter(us)
    u_out = [next(it) if f else None for *_, f in outs]
    u_in = [next(it) if f else None for *_, f in ins]
    return u_out, u_in


def _tucker_in(z: torch.Tensor, us, ins, batch: int, spatial: int) -> torch.Tensor:
    pre = batch
    sizes = [m[0] for m in ins]
    for k, (u, (size, r, tv, _)) in enumerate(zip(us, ins)):
        if u is not None:
            post = math.prod(sizes[k + 1:]) * spatial
            z = _map(z, u, pre, size // tv, tv * post, left=False)  # (pre, R/t, t·post)
        pre = pre * r
    return z


def _tucker_out(z: torch.Tensor, us, outs, batch: int, spatial: int, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    pre = batch
    ranks = [m[1] for m in outs]
    for k, (u, (size, r, tv, _)) in enumerate(zip(us, outs)):
        if u is not None:
            post = math.prod(ranks[k + 1:]) * spatial
            last = bias if k == len(outs) - 1 else None
            z = _map(z, u, pre, r // tv, tv * post, left=True, bias=last)  # (pre, O/t, t·post)
        pre = pre * size
    return z


def _tucker_in_flops(ins, batch: int, spatial: int) -> int:
    total, pre = 0, batch
    sizes = [m[0] for m in ins]
    for k, (size, r, tv, factored) in enumerate(ins):
        if factored:
            total += _map_flops(pre, size // tv, tv * math.prod(sizes[k + 1:]) * spatial, r // tv)
        pre = pre * r
    return total


def _tucker_out_flops(outs, batch: int, spatial: int) -> int:
    total, pre = 0, batch
    ranks = [m[1] for m in outs]
    for k, (size, r, tv, factored) in enumerate(outs):
        if factored:
            total += _map_flops(pre, r // tv, tv * math.prod(ranks[k + 1:]) * spatial, size // tv)
        pre = pre * size
    return total


def tucker_conv(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout, geom: Geometry,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C_in, H, W) -> (B, C_out, H', W') (channels_last): 1×1 maps per input mode, the core conv, 1×1
    maps per output mode, all on the channels-last view (B·H·W, C). Factors: [core (R_o…, R_i…, kh, kw),
    U_o1…U_oβ, U_i1…U_iα] with U (size/t, R/t)."""
    outs, ins = _tucker_modes(lay)
    core = factors[0]
    u_out, u_in = _split_us(factors[1:], outs, ins)
    b, _, h, w = x.shape
    r_in = math.prod(m[1] for m in ins)
    r_out = math.prod(m[1] for m in outs)
    stride, padding, dilation = geom
    kern = core.reshape(r_out, r_in, *lay.kernel_size)
    if _tucker2_fast(outs, ins):
        return _tucker2_conv(x, kern, u_out[0], u_in[0], outs[0][2], ins[0][2], geom, bias)
    z = _tucker_in(_to_nhwc(x), u_in, ins, b * h * w, 1)
    z = F.conv2d(_from_nhwc(z, b, h, w), kern, None, stride, padding, dilation)
    h2, w2 = z.shape[-2:]
    n = b * h2 * w2
    fuse = bias is not None and len(outs) == 1 and outs[0][3] and outs[0][2] == 1
    z = _tucker_out(_to_nhwc(z), u_out, outs, n, 1, bias if fuse else None)
    z = z.reshape(n, lay.out_channels)
    if bias is not None and not fuse:
        z = z.add_(bias)  # in place: the last map's backward does not need its output
    return _from_nhwc(z, b, h2, w2)


def _tucker2_fast(outs, ins) -> bool:
    """Tucker-2 with one factored input and one factored output mode, no size-1 contraction."""
    if len(outs) != 1 or len(ins) != 1 or not (outs[0][3] and ins[0][3]):
        return False
    return ins[0][0] // ins[0][2] > 1 and outs[0][1] // outs[0][2] > 1


def _tucker2_conv(x: torch.Tensor, kern: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor, t_out: int,
                  t_in: int, geom: Geometry, bias: torch.Tensor | None) -> torch.Tensor:
    """Tucker-2 on the channels-last view with every ST map as one plain matmul over *blocked* groups.

    The input channel c·t + s is read as (s, c) by the one copy that makes the input channels-last, so
    ``U_in`` is a single (N·t, K) @ (K, J) matmul; its output (s, j) feeds the core conv, whose kernel is
    permuted to read channel s·J + j where the format has j·t + s (and to write its output blocked the same
    way). The output map is again one matmul; the final (s, o') -> o'·t + s interleave is the copy that adds
    the bias. FLOPs equal the shared-map count: t times fewer than the expanded factors.
    """
    b, c_in, h, w = x.shape
    k_in, j_in = u_in.shape
    j_out = u_out.shape[1]
    r_in, r_out = j_in * t_in, j_out * t_out
    o_t = u_out.shape[0]
    stride, padding, dilation = geom
    xb = x.reshape(b, k_in, t_in, h, w).permute(0, 3, 4, 2, 1).reshape(b * h * w * t_in, k_in)
    z = xb @ u_in  # (B·H·W·t_in, J_in): channel (s, j)
    kh, kw = kern.shape[-2:]
    kb = kern.reshape(j_out, t_out, j_in, t_in, kh, kw).permute(1, 0, 3, 2, 4, 5).reshape(r_out, r_in, kh, kw)
    z = F.conv2d(_from_nhwc(z.reshape(b * h * w, r_in), b, h, w), kb, None, stride, padding, dilation)
    h2, w2 = z.shape[-2:]
    n = b * h2 * w2
    zb = _to_nhwc(z).reshape(n * t_out, j_out)
    if t_out == 1:
        y = zb @ u_out.T if bias is None else torch.addmm(bias, zb, u_out.T)
        return _from_nhwc(y, b, h2, w2)
    y = (zb @ u_out.T).reshape(n, t_out, o_t).transpose(1, 2)  # (N, O/t, t): o = o'·t + s
    y = y.reshape(n, o_t * t_out) if bias is None else torch.add(y, bias.reshape(o_t, t_out))
    return _from_nhwc(y.reshape(n, o_t * t_out), b, h2, w2)


def tucker_linear(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout) -> torch.Tensor:
    """x (B, C_in) -> (B, C_out): maps per input mode, the core matmul, maps per output mode."""
    outs, ins = _tucker_modes(lay)
    core = factors[0]
    u_out, u_in = _split_us(factors[1:], outs, ins)
    b = x.shape[0]
    z = _tucker_in(x, u_in, ins, b, 1)
    r_in = math.prod(m[1] for m in ins)
    r_out = math.prod(m[1] for m in outs)
    z = z.reshape(b, r_in) @ core.reshape(r_out, r_in).T
    z = _tucker_out(z, u_out, outs, b, 1)
    return z.reshape(b, lay.out_channels)


def tucker_flops(lay: LayerLayout, batch: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> int:
    outs, ins = _tucker_modes(lay)
    r_in = math.prod(m[1] for m in ins)
    r_out = math.prod(m[1] for m in outs)
    l_in, l_out = math.prod(hw_in), math.prod(hw_out)
    core = 2 * batch * l_out * r_in * r_out * math.prod(lay.kernel_size)
    return _tucker_in_flops(ins, batch * l_in, 1) + core + _tucker_out_flops(outs, batch * l_out, 1)


# ==================================================================================================
# TT / STT (Garipov et al. 2016): spatial conv first, then the chain over (in_k, out_k) pairs
# ==================================================================================================
# State before pair k (1-based): z[b, i_k, …, i_d, o_1, …, o_{k-1}, r_k, l] with r_k = a·t + s.
def _tt_chain(z: torch.Tensor, cores: Sequence[torch.Tensor], ts: Sequence[int], lay: LayerLayout,
              first: int, batch: int, spatial: int, last_full: torch.Tensor | None) -> torch.Tensor:
    ins, outs = lay.pairs
    d = len(ins)
    for k in range(first, d):  # 0-based pair index
        core, tv = cores[k - first], ts[k - first]
        i_k, o_k = ins[k], outs[k]
        m = math.prod(ins[k + 1:]) * math.prod(outs[:k])
        a = core.shape[0]
        if k < d - 1:
            c = core.shape[2]
            zz = z.reshape(batch, i_k, m, a, tv, spatial)
            z = torch.einsum("bimasl,aioc->bmocsl", zz, core.reshape(a, i_k, o_k, c))
        elif last_full is None:  # last core, t | O_d: o_d = o'·t + s
            zz = z.reshape(batch, i_k, m, a, tv, spatial)
            z = torch.einsum("bimasl,aio->bmosl", zz, core.reshape(a, i_k, o_k // tv))
        else:  # last core with t ∤ O_d: its classical (⊗ I_t) form
            r = last_full.shape[0]
            zz = z.reshape(batch, i_k, m, r, spatial)
            z = torch.einsum("bimrl,rio->bmol", zz, last_full.reshape(r, i_k, o_k))
    return z


def _tt_chain_flops(lay: LayerLayout, first: int, batch: int, spatial: int) -> int:
    ins, outs = lay.pairs
    d = len(ins)
    shapes = lay.factor_shapes
    ts = lay.t
    total = 0
    n_cores = len(shapes)
    for k in range(first, d):
        ci = n_cores - d + k  # index of pair k's core among the factors
        tv = ts[ci - 1]
        m = math.prod(ins[k + 1:]) * math.prod(outs[:k])
        a = shapes[ci][0]
        if k < d - 1:
            total += _einsum_flops(batch * m * tv * spatial * ins[k] * a * outs[k] * shapes[ci][2], ins[k] * a)
        elif outs[k] % tv == 0:
            total += _einsum_flops(batch * m * tv * spatial * ins[k] * a * (outs[k] // tv), ins[k] * a)
        else:
            total += _einsum_flops(batch * m * spatial * ins[k] * (a * tv) * outs[k], ins[k] * a * tv)
    return total


def _tt_last_full(factors: Sequence[torch.Tensor], lay: LayerLayout) -> torch.Tensor | None:
    ins, outs = lay.pairs
    tv = lay.t[-1]
    if outs[-1] % tv == 0:
        return None
    # The format's classical twin of the last core: (R_{N-1}, I_N, 1), the STP expanded by ⊗ I_t.
    return lay.format.classical_factors(list(factors), lay.tensor_shape, lay.ranks, lay.t)[-1]


def tt_conv_order(lay: LayerLayout, batch: int, hw_out: tuple[int, int]) -> str:
    """``"spatial_first"`` (Garipov: a depthwise conv of every input channel into R_1 maps, then the pair
    chain) or ``"merged"`` (the spatial core merged into the first pair core, run as one ordinary conv
    I_1 -> O_1·R_2 per group of the other input factors, then the rest of the chain). Merged when it has
    at most ``SPATIAL_FIRST_PENALTY`` times the FLOPs of spatial-first and (unless it is the cheaper one) fewer
    than the dense conv. A single pair always runs spatial-first (merging would build the kernel)."""
    if len(lay.pairs[0]) < 2:
        return "spatial_first"
    a = _tt_conv_flops(lay, batch, hw_out, "spatial_first")
    b = _tt_conv_flops(lay, batch, hw_out, "merged")
    dense = 2 * batch * math.prod(hw_out) * lay.dense_weight_params
    return "merged" if b <= SPATIAL_FIRST_PENALTY * a and (b < dense or b <= a) else "spatial_first"


SPATIAL_FIRST_PENALTY = 2.0
"""Spatial-first writes R_1 maps per input channel through a depthwise conv with multiplier R_1, which runs
several times slower per FLOP on CPU than an ordinary conv; merged is kept up to this FLOP ratio."""


def _tt_merged_kernel(factors: Sequence[torch.Tensor], lay: LayerLayout) -> torch.Tensor:
    """G_1 ⋉ G_2 as a conv kernel (O_1·R_2, I_1, kh, kw)."""
    ins, outs = lay.pairs
    g1, g2 = factors[0], factors[1]
    a, _, c = g2.shape
    tv = lay.t[0]
    k2 = g1.shape[1]
    p = g1.reshape(k2, a, tv)  # bond R_1 = a·t + s
    merged = torch.einsum("hcs,cid->hids", p, g2)  # (k², I_1·O_1, c, t): R_2 = c·t + s
    merged = merged.reshape(k2, ins[0], outs[0], c * tv)
    return merged.permute(2, 3, 1, 0).reshape(outs[0] * c * tv, ins[0], *lay.kernel_size)


def tt_conv(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout, geom: Geometry,
            bias: torch.Tensor | None = None, order: str | None = None) -> torch.Tensor:
    """x (B, C_in, H, W) -> (B, C_out, H', W') (channels_last), then one einsum per remaining (in_k, out_k)
    pair core on the channels-last view (B·H'·W', …) at the output resolution. The first step is
    :func:`tt_conv_order`'s choice (``order`` overrides it)."""
    b, c_in, h, w = x.shape
    stride, padding, dilation = geom
    ins, outs = lay.pairs
    if order is None:
        h2, w2 = conv_out_hw(h, w, lay.kernel_size, geom)
        order = tt_conv_order(lay, b, (h2, w2))
    if order == "spatial_first":
        g1 = factors[0]
        r1 = g1.shape[2]
        kern = g1.reshape(*lay.kernel_size, r1).permute(2, 0, 1).unsqueeze(1)  # (R_1, 1, kh, kw)
        z = F.conv2d(x.contiguous(memory_format=torch.channels_last), kern.repeat(c_in, 1, 1, 1), None, stride,
                     padding, dilation, c_in)  # (B, C_in·R_1, H', W'): channel i·R_1 + r
        h2, w2 = z.shape[-2:]
        n = b * h2 * w2
        z = _tt_chain(_to_nhwc(z), factors[1:], lay.t, lay, 0, n, 1, _tt_last_full(factors, lay))
    else:
        m = c_in // ins[0]
        if m == 1:
            xin = x.contiguous(memory_format=torch.channels_last)
        else:  # (B, H, W, I_1, M) -> (B·M, I_1, H, W) in channels_last
            xin = x.permute(0, 2, 3, 1).reshape(b, h, w, ins[0], m).permute(0, 4, 1, 2, 3)
            xin = xin.reshape(b * m, h, w, ins[0]).permute(0, 3, 1, 2)
        z = F.conv2d(xin, _tt_merged_kernel(factors, lay), None, stride, padding, dilation)
        h2, w2 = z.shape[-2:]
        n = b * h2 * w2
        # (B·M, O_1·R_2, H', W') channels_last = (B, M, H', W', O_1·R_2) -> state [n, i_2.., o_1, r_2]
        z = z.permute(0, 2, 3, 1).reshape(b, m, h2 * w2, -1).transpose(1, 2).reshape(n, -1)
        z = _tt_chain(z, factors[2:], lay.t[1:], lay, 1, n, 1, _tt_last_full(factors, lay))
    z = z.reshape(n, lay.out_channels)
    return _from_nhwc(z if bias is None else z.add_(bias), b, h2, w2)


def tt_linear(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout) -> torch.Tensor:
    """x (B, C_in) -> (B, C_out): TT-matrix chain, one einsum per (in_k, out_k) core."""
    ins, outs = lay.pairs
    b = x.shape[0]
    g1 = factors[0]
    m = math.prod(ins[1:])
    z = torch.einsum("bim,ior->bmor", x.reshape(b, ins[0], m), g1.reshape(ins[0], outs[0], g1.shape[2]))
    z = _tt_chain(z, factors[1:], lay.t, lay, 1, b, 1, _tt_last_full(factors, lay))
    return z.reshape(b, lay.out_channels)


def _tt_conv_flops(lay: LayerLayout, batch: int, hw_out: tuple[int, int], order: str) -> int:
    l_out = math.prod(hw_out)
    k2 = math.prod(lay.kernel_size)
    shapes = lay.factor_shapes
    r1 = shapes[0][2]
    if order == "spatial_first":
        spatial = 2 * batch * lay.in_channels * r1 * k2 * l_out
        return spatial + _tt_chain_flops(lay, 0, batch * l_out, 1)
    ins, outs = lay.pairs
    a, _, c = shapes[1]
    tv = lay.t[0]
    merge = _einsum_flops(k2 * tv * a * ins[0] * outs[0] * c, a)
    conv = 2 * batch * (lay.in_channels // ins[0]) * l_out * outs[0] * c * tv * ins[0] * k2
    return merge + conv + _tt_chain_flops(lay, 1, batch * l_out, 1)


def tt_flops(lay: LayerLayout, batch: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> int:
    if lay.kind == "conv":
        return _tt_conv_flops(lay, batch, hw_out, tt_conv_order(lay, batch, hw_out))
    ins, outs = lay.pairs
    r1 = lay.factor_shapes[0][2]
    first = _einsum_flops(batch * math.prod(ins[1:]) * ins[0] * outs[0] * r1, ins[0])
    return first + _tt_chain_flops(lay, 1, batch, 1)


# ==================================================================================================
# TR / STR (Tensor Ring Nets, Wang et al. 2018): merged input block, spatial conv, merged output block
# ==================================================================================================
def _stp_chain(p: torch.Tensor, cores: Sequence[torch.Tensor], ts: Sequence[int]) -> torch.Tensor:
    """p (A, M, B) times cores (c, I, D) acting as ⊗ I_t: p (A, M, c·t) ⋉ core -> (A, M·I, D·t)."""
    for core, tv in zip(cores, ts):
        a, m, _ = p.shape
        p4 = p.reshape(a, m, core.shape[0], tv)
        p = torch.einsum("amcs,cid->amids", p4, core).reshape(a, m * core.shape[1], core.shape[2] * tv)
    return p


def _stp_chain_flops(a: int, m: int, shapes: Sequence[tuple[int, ...]], ts: Sequence[int]) -> int:
    total = 0
    for (c, i, d), tv in zip(shapes, ts):
        total += _einsum_flops(a * m * tv * c * i * d, c)
        m *= i
    return total


def _tr_parts(lay: LayerLayout):
    """(number of input cores, g, relative t of cores 2..N)."""
    g = min(lay.t)
    return len(lay.in_shape), g, [tv // g for tv in lay.t]


def _tr_blocks(factors: Sequence[torch.Tensor], lay: LayerLayout, spatial_core: bool):
    """Merged input block (R_0', C_in, R_α') and output block (R', C_out, R_0'), R' = R/g."""
    na, g, rel = _tr_parts(lay)
    f_in = _stp_chain(factors[0], factors[1:na], rel[:na - 1])
    first_out = na + (1 if spatial_core else 0)
    r_mid = factors[first_out - 1].shape[2] * rel[first_out - 2] if first_out >= 2 else factors[0].shape[2]
    eye = torch.eye(r_mid, dtype=factors[0].dtype, device=factors[0].device).reshape(r_mid, 1, r_mid)
    f_out = _stp_chain(eye, factors[first_out:], rel[first_out - 1:])
    return f_in * g if g != 1 else f_in, f_out


def tr_conv(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout, geom: Geometry,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C_in, H, W) -> (B, C_out, H', W') (channels_last). A 1×1 map C_in -> R_0'·R_α' (the merged input
    cores), the spatial core as a conv R_α' -> R_{α+1}' shared by R_0'·ts groups (a grouped conv with the
    core repeated; ts = the spatial core's t / g), a 1×1 map R_0'·R_{α+1}' -> C_out (the merged output
    cores); R' = R / g, g = min(t), folded into the input block."""
    na, _, rel = _tr_parts(lay)
    f_in, f_out = _tr_blocks(factors, lay, True)
    spat = factors[na]
    ts = rel[na - 1]  # the spatial core's relative t
    c, _, c2 = spat.shape
    r0 = f_in.shape[0]
    b, c_in, h, w = x.shape
    # w_in[(a, s, c), i] = f_in[a, i, c·ts + s]
    w_in = f_in.reshape(r0, c_in, c, ts).permute(0, 3, 2, 1).reshape(r0 * ts * c, c_in)
    z = _map(_to_nhwc(x), w_in, b * h * w, c_in, 1, left=True)  # (B·H·W, R_0'·ts·c)
    stride, padding, dilation = geom
    groups = r0 * ts
    kern = spat.reshape(c, *lay.kernel_size, c2).permute(3, 0, 1, 2)  # (c2, c, kh, kw)
    z = F.conv2d(_from_nhwc(z, b, h, w), kern.repeat(groups, 1, 1, 1), None, stride, padding, dilation, groups)
    h2, w2 = z.shape[-2:]
    # w_out[o, (a, s, c2)] = f_out[c2·ts + s, o, a]
    w_out = f_out.reshape(c2, ts, lay.out_channels, r0).permute(2, 3, 1, 0).reshape(lay.out_channels, -1)
    z = _map(_to_nhwc(z), w_out, b * h2 * w2, groups * c2, 1, left=True, bias=bias)
    return _from_nhwc(z, b, h2, w2)


def tr_linear(x: torch.Tensor, factors: Sequence[torch.Tensor], lay: LayerLayout) -> torch.Tensor:
    """x (B, C_in) -> (B, C_out) through the merged input block (C_in -> R_0'·R_α') and output block."""
    f_in, f_out = _tr_blocks(factors, lay, False)
    r0, c_in, ra = f_in.shape
    z = x.reshape(x.shape[0], c_in) @ f_in.permute(1, 0, 2).reshape(c_in, r0 * ra)
    return z @ f_out.permute(2, 0, 1).reshape(r0 * ra, lay.out_channels)


def tr_flops(lay: LayerLayout, batch: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> int:
    na, _, rel = _tr_parts(lay)
    shapes = lay.factor_shapes
    conv = lay.kind == "conv"
    first_out = na + (1 if conv else 0)
    r0 = shapes[0][0]
    total = _stp_chain_flops(r0, lay.in_shape[0], shapes[1:na], rel[:na - 1])
    r_in = shapes[na - 1][2] * (rel[na - 2] if na >= 2 else 1)  # R_α'
    r_mid = shapes[first_out - 1][2] * (rel[first_out - 2] if first_out >= 2 else 1)
    total += _stp_chain_flops(r_mid, 1, shapes[first_out:], rel[first_out - 1:])
    l_in, l_out = math.prod(hw_in), math.prod(hw_out)
    if not conv:  # two plain matmuls
        return total + 2 * batch * lay.in_channels * r0 * r_in + 2 * batch * lay.out_channels * r0 * r_mid
    total += _map_flops(batch, lay.in_channels, l_in, r0 * r_in)
    ts = rel[na - 1]
    c, _, c2 = shapes[na]
    total += 2 * batch * r0 * ts * c2 * c * math.prod(lay.kernel_size) * l_out
    return total + _map_flops(batch, r0 * r_mid, l_out, lay.out_channels)


# ==================================================================================================
# dispatch
# ==================================================================================================
_CONV = {"tucker": tucker_conv, "tt": tt_conv, "tr": tr_conv}
_LINEAR = {"tucker": tucker_linear, "tt": tt_linear, "tr": tr_linear}
_FLOPS = {"tucker": tucker_flops, "tt": tt_flops, "tr": tr_flops}


def factorized_conv(x, factors, lay: LayerLayout, geom: Geometry, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The factorized conv, bias included; the result is in channels_last memory format."""
    return _CONV[lay.family](x, factors, lay, geom, bias)


def factorized_linear(x, factors, lay: LayerLayout) -> torch.Tensor:
    return _LINEAR[lay.family](x, factors, lay)


def factorized_flops(lay: LayerLayout, batch: int, hw_in: tuple[int, int] = (1, 1),
                     hw_out: tuple[int, int] = (1, 1)) -> int:
    """Forward FLOPs (2 × multiply-adds) of the factorized path, bias excluded."""
    return int(_FLOPS[lay.family](lay, batch, hw_in, hw_out))


_RECON_CACHE: dict[tuple, int] = {}


def reconstruction_flops(lay: LayerLayout) -> int:
    """FLOPs of the format's own ``reconstruct`` for this layout, counted once on meta tensors."""
    key = (lay.fmt, lay.tensor_shape, lay.ranks, lay.t)
    if key not in _RECON_CACHE:
        from torch.utils.flop_counter import FlopCounterMode

        fs = [torch.empty(s, device="meta") for s in lay.factor_shapes]
        with FlopCounterMode(display=False) as counter:
            lay.format.reconstruct(fs, lay.tensor_shape, lay.ranks, lay.t)
        _RECON_CACHE[key] = int(counter.get_total_flops())
    return _RECON_CACHE[key]


def reconstructed_flops(lay: LayerLayout, batch: int, hw_out: tuple[int, int] = (1, 1)) -> int:
    """Forward FLOPs of the reconstructed path: the kernel's reconstruction plus one dense conv / matmul."""
    dense = 2 * batch * math.prod(hw_out) * lay.dense_weight_params
    return reconstruction_flops(lay) + dense
