"""The left semi-tensor product (Cheng) and the semi-tensor mode product.

For ``A`` of shape (m, n) and ``B`` of shape (p, q), with ``l = lcm(n, p)``::

    A ⋉ B = (A ⊗ I_{l/n}) (B ⊗ I_{l/p})          shape (m·l/n, q·l/p)

When one inner size divides the other, the product is a single einsum that never builds ``X ⊗ I_t``
(row-major, with the *interleaved* index ``c·t + s``):

* ``n = t·p``: view A as (m, p, t); ``(A ⋉ B)[i, j·t+s] = Σ_c A[i, c, s] B[c, j]``;
* ``p = t·n``: view B as (n, t, q); ``(A ⋉ B)[i·t+s, j] = Σ_c A[i, c] B[c, s, j]``.
"""

from __future__ import annotations

import math

import torch

from .errors import ShapeError

__all__ = ["stp", "mode_product", "kron_identity"]


def kron_identity(x: torch.Tensor, t: int) -> torch.Tensor:
    """``x ⊗ I_t`` over the last two dimensions: (..., m, n) -> (..., m·t, n·t).

    Explicit and memory-hungry; used for the general lcm case of :func:`stp` and by test oracles.
    """
    if t == 1:
        return x
    eye = torch.eye(t, dtype=x.dtype, device=x.device)
    *batch, m, n = x.shape
    out = x[..., :, None, :, None] * eye[:, None, :]
    return out.reshape(*batch, m * t, n * t)


def stp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Left semi-tensor product of the last two dimensions, batch dimensions broadcast.

    a: (..., m, n), b: (..., p, q) -> (..., m·l/n, q·l/p) with l = lcm(n, p).

    >>> stp(torch.ones(2, 4), torch.ones(2, 3)).shape   # n = 2·p
    torch.Size([2, 6])
    """
    if a.dim() < 2 or b.dim() < 2:
        raise ShapeError(f"stp needs tensors with at least 2 dimensions, got a.shape={tuple(a.shape)}, "
                         f"b.shape={tuple(b.shape)}")
    m, n = a.shape[-2:]
    p, q = b.shape[-2:]
    if n == p:
        return a @ b
    if n % p == 0:
        t = n // p
        a3 = a.reshape(*a.shape[:-1], p, t)
        out = torch.einsum("...ics,...cj->...ijs", a3, b)
        return out.reshape(*out.shape[:-2], q * t)
    if p % n == 0:
        t = p // n
        b3 = b.reshape(*b.shape[:-2], n, t, q)
        out = torch.einsum("...ic,...csj->...isj", a, b3)
        return out.reshape(*out.shape[:-3], m * t, q)
    # General case: expand A to inner size lcm(n, p), then the first fast form applies.
    l = math.lcm(n, p)
    return stp(kron_identity(a, l // n), b)


def mode_product(x: torch.Tensor, u: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` product of ``x`` with the matrix ``u`` of shape (J, K).

    * ``K == I_mode``: classical, ``Y_(n) = U X_(n)``; the mode becomes J.
    * ``I_mode == t·K``: semi-tensor, ``Y_(n) = U ⋉ X_(n) = (U ⊗ I_t) X_(n)``; the mode becomes J·t.

    x: (I_0, ..., I_mode, ..., I_{N-1}), u: (J, K) -> (I_0, ..., J·t, ..., I_{N-1})
    """
    if u.dim() != 2:
        raise ShapeError(f"mode_product: u must be a matrix, got u.shape={tuple(u.shape)}")
    nd = x.dim()
    if not -nd <= mode < nd:
        raise ShapeError(f"mode_product: mode={mode} is out of range for a tensor of order {nd}")
    mode %= nd
    size = x.shape[mode]
    j, k = u.shape
    if size % k != 0:
        raise ShapeError(
            f"mode_product: u.shape[1]={k} must equal or divide x.shape[{mode}]={size}")
    t = size // k
    xm = x.movedim(mode, 0)
    rest = xm.shape[1:]
    # View mode index as (c, s) with c·t + s, contract over c.
    y = torch.einsum("jc,cs...->js...", u, xm.reshape(k, t, *rest))
    return y.reshape(j * t, *rest).movedim(0, mode)
