"""Decomposition algorithms: HOSVD + HOOI (Tucker), TT-SVD, TR-SVD + ALS, and ALS for mixed-t ST cores.

All work in float64 internally and return factors in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .base import Format


def _unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """r leading left singular vectors of m (rows, cols); completed to an orthonormal set if r > cols."""
    u, _, _ = torch.linalg.svd(m, full_matrices=r > min(m.shape))
    return u[:, :r]


def _truncated_svd(c: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c ≈ u @ v with u: (rows, r), v: (r, cols), padding with zeros when c has fewer than r singular values."""
    u, s, vh = torch.linalg.svd(c, full_matrices=False)
    k = min(r, s.numel())
    u, v = u[:, :k], s[:k, None] * vh[:k]
    if k < r:
        u = torch.cat([u, u.new_zeros(u.shape[0], r - k)], dim=1)
        v = torch.cat([v, v.new_zeros(r - k, v.shape[1])], dim=0)
    return u, v


def hooi(x: torch.Tensor, ranks: Sequence[int | None], n_iter: int = 25, tol: float = 1e-12,
         **_: object) -> list[torch.Tensor]:
    """(Partial) Tucker by HOSVD initialisation and HOOI refinement.

    x: (I_1..I_N), ranks: one per mode, ``None`` = unfactored. Returns [core, U_n for factored modes].
    """
    dtype = x.dtype
    x = x.double()
    modes = [m for m, r in enumerate(ranks) if r is not None]
    us = {m: _leading(_unfold(x, m), ranks[m]) for m in modes}  # type: ignore[arg-type]

    def project(skip: int | None) -> torch.Tensor:
        y = x
        for j in modes:
            if j != skip:
                y = torch.tensordot(us[j].T, y.movedim(j, 0), dims=1).movedim(0, j)
        return y

    prev = -1.0
    for _ in range(n_iter if len(modes) > 1 else 0):
        for m in modes:
            us[m] = _leading(_unfold(project(m), m), ranks[m])  # type: ignore[arg-type]
        norm = float(project(None).norm())
        if abs(norm - prev) <= tol * max(norm, 1e-300):
            break
        prev = norm
    core = project(None)
    return [core.to(dtype)] + [us[m].to(dtype) for m in modes]


def tt_svd(x: torch.Tensor, ranks: Sequence[int], **_: object) -> list[torch.Tensor]:
    """TT-SVD (Oseledets 2011) at prescribed ranks. x: (I_1..I_N) -> cores (R_{k-1}, I_k, R_k), R_0 = R_N = 1."""
    dtype = x.dtype
    shape = x.shape
    c = x.double().reshape(shape[0], -1)
    cores, r_prev = [], 1
    for k, r in enumerate(ranks):
        c = c.reshape(r_prev * shape[k], -1)
        u, c = _truncated_svd(c, r)
        cores.append(u.reshape(r_prev, shape[k], r))
        r_prev = r
    cores.append(c.reshape(r_prev, shape[-1], 1))
    return [g.to(dtype) for g in cores]


def _ring_chain(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Product of TR cores (R_a, I, R_b) in order -> (R_first_left, ∏I, R_last_right)."""
    p = cores[0]
    for g in cores[1:]:
        p = torch.einsum("amr,rib->amib", p, g).reshape(p.shape[0], -1, g.shape[2])
    return p


def tr_svd(x: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """TR-SVD (Zhao et al. 2016). ranks = (R_0, ..., R_{N-1}); cores (R_{k-1}, I_k, R_k) with R_N = R_0."""
    shape = x.shape
    r0, r1 = ranks[0], ranks[1 % len(ranks)]
    u, c = _truncated_svd(x.reshape(shape[0], -1), r0 * r1)
    first = u.reshape(shape[0], r0, r1).permute(1, 0, 2)
    if len(shape) == 1:
        return [first]
    rest = c.reshape(r0, r1, -1).permute(1, 2, 0)  # (R_1, I_2..I_N, R_0)
    cores, r_prev = [first], r1
    c = rest.reshape(r1, *shape[1:], r0)
    for k in range(1, len(shape) - 1):
        u, c = _truncated_svd(c.reshape(r_prev * shape[k], -1), ranks[k + 1])
        cores.append(u.reshape(r_prev, shape[k], ranks[k + 1]))
        r_prev = ranks[k + 1]
    cores.append(c.reshape(r_prev, shape[-1], r0))
    return cores


def tr_als(x: torch.Tensor, cores: list[torch.Tensor], n_iter: int = 300, ridge: float = 1.0,
           decay: float = 0.9) -> tuple[list[torch.Tensor], float]:
    """Refine TR cores by alternating least squares; returns (cores, relative error).

    Each core solves its exact linear subproblem with a Tikhonov term ``ridge · decay^sweep`` (relative to the
    Gram matrix's mean diagonal), which steers ALS out of the swamps plain TR-ALS is known for and vanishes
    as the sweeps go on.
    """
    n = len(cores)
    norm = float(x.norm()) or 1.0
    best, best_err, prev = [c.clone() for c in cores], _tr_err(x, cores) / norm, math.inf
    for sweep in range(n_iter):
        lam = ridge * decay**sweep
        for k in range(n):
            order = [(k + j) % n for j in range(1, n)]
            q = _ring_chain([cores[j] for j in order])  # (R_k, M, R_{k-1})
            xk = x.permute(k, *order).reshape(x.shape[k], -1)  # (I_k, M)
            a = q.permute(1, 2, 0).reshape(q.shape[1], -1)  # (M, R_{k-1} R_k)
            ata = a.T @ a
            scale = float(ata.diagonal().mean()) or 1.0
            ata = ata + (lam + 1e-13) * scale * torch.eye(ata.shape[0], dtype=ata.dtype)
            sol = torch.linalg.solve(ata, a.T @ xk.T)  # (R_{k-1} R_k, I_k)
            rk1, rk = cores[k].shape[0], cores[k].shape[2]
            cores[k] = sol.T.reshape(x.shape[k], rk1, rk).permute(1, 0, 2).contiguous()
        err = _tr_err(x, cores) / norm
        if err < best_err:
            best, best_err = [c.clone() for c in cores], err
        if err < 1e-13 or (lam < 1e-8 and prev - err <= 1e-15):
            break
        prev = err
    return best, best_err


def tr_decompose(x: torch.Tensor, ranks: Sequence[int], n_iter: int = 300, restarts: int = 4, seed: int = 0,
                 **_: object) -> list[torch.Tensor]:
    """TR-SVD and ``restarts`` random starts, each refined by regularised ALS; the best fit is kept.

    Never worse than TR-SVD alone (its result is one of the candidates).
    """
    dtype = x.dtype
    xd = x.double()
    norm = float(xd.norm()) or 1.0
    svd = tr_svd(xd, ranks)
    best, best_err = svd, _tr_err(xd, svd) / norm
    if best_err < 1e-12:  # TR-SVD is already exact: ALS (whose ridge starts large) cannot improve it
        return [g.to(dtype) for g in svd]
    starts = [[c.clone() for c in svd]]
    rms = float(xd.pow(2).mean().sqrt()) or 1.0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(restarts):
        fs = [torch.randn(c.shape, generator=gen, dtype=torch.float64) for c in svd]
        cur = float(torch.einsum("ama->m", _ring_chain(fs)).pow(2).mean().sqrt()) or 1.0
        starts.append([f * (rms / cur) ** (1 / len(fs)) for f in fs])
    for start in starts:
        cores, err = tr_als(xd, start, n_iter=n_iter)
        if err < best_err:
            best, best_err = cores, err
        if best_err < 1e-12:
            break
    return [g.to(dtype) for g in best]


def _tr_err(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> float:
    return float((torch.einsum("ama->m", _ring_chain(cores)).reshape(x.shape) - x).norm())


def _columns(fn, like: torch.Tensor, chunk: int):
    """Yield (start, block) where block[:, j] = fn(e_{start+j}) for a linear ``fn`` of a tensor like ``like``."""
    size = like.numel()
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        basis = torch.zeros(stop - start, size, dtype=like.dtype, device=like.device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        block = torch.func.vmap(lambda e: fn(e.reshape(like.shape)).reshape(-1))(basis)
        yield start, block.T


def linear_map_matrix(fn, like: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The matrix of a linear map ``fn`` (tensor like ``like`` -> tensor), shape (numel(out), numel(like))."""
    blocks = [b for _, b in _columns(fn, like, chunk)]
    return torch.cat(blocks, dim=1)


EXPLICIT_MAX_ENTRIES = 4_000_000
"""Above this many entries (numel(x) × numel(core)), an ALS step solves its normal equations matrix-free by
conjugate gradients instead of assembling the linear map's matrix (whose Gram product would cost
numel(x)·numel(core)² flops: minutes per sweep for a 400×120 weight with 2,000-parameter cores)."""


def _gram_scale(fn, like: torch.Tensor, probes: int = 8, seed: int = 0) -> float:
    """Mean diagonal of AᵀA for the linear map A = ``fn``, i.e. ‖A‖_F² / numel(like), by Hutchinson probes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((probes, *like.shape), generator=g, dtype=like.dtype)
    az = torch.func.vmap(lambda v: fn(v).reshape(-1))(z)
    return float(az.pow(2).sum() / (probes * like.numel())) or 1.0


def _cg_core(fn, start: torch.Tensor, target: torch.Tensor, damping: float, max_iter: int,
             rtol: float = 1e-10) -> torch.Tensor:
    """argmin_f ‖fn(f) − target‖² + damping·‖f‖² by conjugate gradients on the normal equations, from ``start``.

    ``fn`` is linear (one core → the reconstruction, flattened to target's shape); AᵀA·v costs one forward and
    one vector-Jacobian product, so no matrix of shape (numel(target), numel(start)) is ever built.
    """
    def normal(v: torch.Tensor) -> torch.Tensor:
        out, vjp = torch.func.vjp(lambda f: fn(f).reshape(-1), v)
        return vjp(out)[0] + damping * v

    _, vjp_b = torch.func.vjp(lambda f: fn(f).reshape(-1), start)
    rhs = vjp_b(target)[0]
    x = start.clone()
    r = rhs - normal(x)
    p = r.clone()
    rs = float((r * r).sum())
    stop = (rtol * float(rhs.norm())) ** 2
    for _ in range(max_iter):
        if rs <= stop:
            break
        ap = normal(p)
        alpha = rs / (float((p * ap).sum()) or 1e-300)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def als_fit(fmt: Format, x: torch.Tensor, ranks: tuple, t: tuple[int, ...], n_iter: int = 300,
            tol: float = 1e-13, seed: int = 0, restarts: int = 3, ridge: float = 1.0, decay: float = 0.8,
            solver: str = "auto", cg_iter: int = 50, **_: object) -> list[torch.Tensor]:
    """Fit the stored cores of any format by alternating least squares.

    The reconstruction is linear in each core, so each step solves a least-squares problem. As in
    :func:`tr_als`, a Tikhonov term ``ridge · decay^sweep`` (relative to the Gram matrix's mean diagonal) steers
    ALS out of the swamps of ring-like topologies and vanishes as the sweeps go on. Used for the mixed-t
    topologies that have no classical equivalent. Keeps the best iterate of ``restarts`` random starts.

    solver: ``explicit`` assembles each core's normal equations (column chunks) and solves them exactly;
    ``cg`` solves them matrix-free by at most ``cg_iter`` warm-started conjugate-gradient steps; ``auto``
    (default) uses ``explicit`` while numel(x)·numel(core) ≤ :data:`EXPLICIT_MAX_ENTRIES`, else ``cg``.
    """
    if solver not in ("auto", "explicit", "cg"):
        raise ValueError(f"als_fit: solver must be 'auto', 'explicit' or 'cg', got {solver!r}")
    dtype = x.dtype
    xd = x.double()
    shape = tuple(x.shape)
    target = xd.reshape(-1)
    norm = float(target.norm()) or 1.0
    best, best_err = None, math.inf
    for r in range(max(1, restarts)):
        gen = torch.Generator().manual_seed(seed + r)
        fs = fmt.random_factors(shape, ranks, t, generator=gen, dtype=torch.float64,
                                std=float(xd.pow(2).mean().sqrt()) or 1.0)
        prev = math.inf
        for sweep in range(n_iter):
            lam = ridge * decay**sweep
            for k in range(len(fs)):
                def fn(f, k=k, fs=fs):
                    return fmt.reconstruct([*fs[:k], f, *fs[k + 1:]], shape, ranks, t)

                use_cg = solver == "cg" or (solver == "auto" and target.numel() * fs[k].numel() > EXPLICIT_MAX_ENTRIES)
                if use_cg:
                    scale = _gram_scale(fn, fs[k], seed=seed + sweep)
                    fs[k] = _cg_core(fn, fs[k], target, (lam + 1e-14) * scale, max_iter=min(cg_iter, fs[k].numel()))
                    continue
                a = linear_map_matrix(fn, fs[k])
                ata = a.T @ a
                scale = float(ata.diagonal().mean().abs()) or 1.0
                ata = ata + (lam + 1e-14) * scale * torch.eye(ata.shape[0], dtype=ata.dtype)
                sol = torch.linalg.solve(ata, a.T @ target)
                fs[k] = sol.reshape(fs[k].shape)
            err = float((fmt.reconstruct(fs, shape, ranks, t).reshape(-1) - target).norm()) / norm
            if err < best_err:
                best, best_err = [f.clone() for f in fs], err
            if err < 1e-13 or (lam < 1e-8 and prev - err <= tol):
                break
            prev = err
        if best_err < 1e-8:
            break
    assert best is not None
    return [f.to(dtype) for f in best]
