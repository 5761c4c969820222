"""The semi-tensor product and the semi-tensor mode product, against the explicit Kronecker definition."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import stsearch
import stsearch._stp as stp_module
from stsearch import mode_product, stp
from stsearch.errors import ShapeError


def kron_eye(m: torch.Tensor, t: int) -> torch.Tensor:
    return torch.kron(m, torch.eye(t, dtype=m.dtype))


def stp_oracle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cheng's definition: A ⋉ B = (A ⊗ I_{l/n}) (B ⊗ I_{l/p}), l = lcm(n, p)."""
    n, p = a.shape[-1], b.shape[-2]
    lcm = math.lcm(n, p)
    return kron_eye(a, lcm // n) @ kron_eye(b, lcm // p)


# (m, n, p, q): ordinary, n = t·p, p = t·n, and two non-divisible lcm cases
CASES = [(3, 4, 4, 5), (3, 6, 2, 5), (2, 12, 3, 4), (3, 2, 6, 4), (2, 3, 12, 5), (3, 4, 6, 5), (2, 3, 2, 4)]


@pytest.mark.parametrize(("m", "n", "p", "q"), CASES)
def test_stp_matches_definition(m, n, p, q) -> None:
    a = torch.randn(m, n, dtype=torch.float64)
    b = torch.randn(p, q, dtype=torch.float64)
    out = stp(a, b)
    lcm = math.lcm(n, p)
    assert out.shape == (m * lcm // n, q * lcm // p)
    torch.testing.assert_close(out, stp_oracle(a, b), rtol=1e-13, atol=1e-13)


def test_special_cases() -> None:
    a, b = torch.randn(3, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(stp(a, b), a @ kron_eye(b, 3))  # n = t·p: A (B ⊗ I_t)
    c = torch.randn(3, 2, dtype=torch.float64)
    d = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(stp(c, d), kron_eye(c, 3) @ d)  # p = t·n: (A ⊗ I_t) B
    e = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(stp(a, e), a @ e)  # n = p: ordinary product


def test_fast_forms_interleave_index() -> None:
    """The interleaved index c·t + s of THEORY §1.

    n = t·p: (A ⋉ B)[i, j·t + s] = Σ_c A[i, c·t + s] B[c, j];  p = t·n: (A ⋉ B)[i·t + s, j] = Σ_c A[i, c] B[c·t + s, j].
    """
    m, p, q, t = 2, 3, 4, 2
    a = torch.randn(m, p * t, dtype=torch.float64)
    b = torch.randn(p, q, dtype=torch.float64)
    out = stp(a, b)
    for i in range(m):
        for j in range(q):
            for s in range(t):
                want = sum(a[i, c * t + s] * b[c, j] for c in range(p))
                assert abs(float(out[i, j * t + s] - want)) < 1e-12
    a2 = torch.randn(m, p, dtype=torch.float64)
    b2 = torch.randn(p * t, q, dtype=torch.float64)
    out2 = stp(a2, b2)
    for i in range(m):
        for j in range(q):
            for s in range(t):
                want = sum(a2[i, c] * b2[c * t + s, j] for c in range(p))
                assert abs(float(out2[i * t + s, j] - want)) < 1e-12


@st.composite
def stp_pair(draw):
    kind = draw(st.sampled_from(["equal", "a_wider", "b_taller", "lcm"]))
    m, q = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    base, t = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    if kind == "equal":
        n = p = base
    elif kind == "a_wider":
        n, p = base * t, base
    elif kind == "b_taller":
        n, p = base, base * t
    else:
        n, p = draw(st.sampled_from([(2, 3), (4, 6), (6, 4), (3, 2), (6, 9), (10, 4)]))
    batch_a = draw(st.sampled_from([(), (2,), (1, 3), (2, 1)]))
    batch_b = draw(st.sampled_from([(), (1,), (3,), (2, 3)]))
    return m, n, p, q, batch_a, batch_b


@given(stp_pair())
def test_stp_random_shapes_batched(args) -> None:
    """Random shapes in every divisibility case, with leading batch dimensions broadcast."""
    m, n, p, q, batch_a, batch_b = args
    a = torch.randn(*batch_a, m, n, dtype=torch.float64)
    b = torch.randn(*batch_b, p, q, dtype=torch.float64)
    try:
        batch = torch.broadcast_shapes(batch_a, batch_b)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            stp(a, b)
        return
    out = stp(a, b)
    lcm = math.lcm(n, p)
    assert out.shape == (*batch, m * lcm // n, q * lcm // p)
    ab = a.expand(*batch, m, n).reshape(-1, m, n)
    bb = b.expand(*batch, p, q).reshape(-1, p, q)
    want = torch.stack([stp_oracle(x, y) for x, y in zip(ab, bb)]).reshape(out.shape)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("m", "n", "p", "q"), CASES)
def test_stp_gradcheck(m, n, p, q) -> None:
    a = torch.randn(2, m, n, dtype=torch.float64, requires_grad=True)
    b = torch.randn(p, q, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stp, (a, b))


@pytest.mark.parametrize(("m", "n", "p", "q"), [(3, 6, 2, 5), (3, 2, 6, 4), (2, 3, 12, 5)])
def test_fast_forms_never_build_kron(m, n, p, q, monkeypatch) -> None:
    def forbidden(*_args, **_kw):
        raise AssertionError("X ⊗ I_t was built")

    monkeypatch.setattr(stp_module, "kron_identity", forbidden)
    a, b = torch.randn(m, n, dtype=torch.float64), torch.randn(p, q, dtype=torch.float64)
    torch.testing.assert_close(stp(a, b), stp_oracle(a, b))


def flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("t", [2, 4, 8])
def test_fast_form_costs_t_times_fewer_flops(t) -> None:
    m, c, q = 16, 12, 10
    # n = t·p: A (m, c·t), B (c, q); Kronecker form A @ (B ⊗ I_t)
    a, b = torch.randn(m, c * t), torch.randn(c, q)
    fast, kron = flops(stp, a, b), flops(lambda x, y: x @ kron_eye(y, t), a, b)
    assert fast > 0 and kron == t * fast
    # p = t·n: A (m, c), B (c·t, q); Kronecker form (A ⊗ I_t) @ B
    a, b = torch.randn(m, c), torch.randn(c * t, q)
    fast, kron = flops(stp, a, b), flops(lambda x, y: kron_eye(x, t) @ y, a, b)
    assert fast > 0 and kron == t * fast
    assert fast == 2 * m * c * t * q


def test_stp_needs_matrices() -> None:
    with pytest.raises(ShapeError, match=r"at least 2 dimensions, got a.shape=\(3,\), b.shape=\(3, 2\)"):
        stp(torch.randn(3), torch.randn(3, 2))


# -- the semi-tensor mode product ------------------------------------------------------------------------
def unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def fold(m: torch.Tensor, mode: int, shape) -> torch.Tensor:
    rest = [s for j, s in enumerate(shape) if j != mode]
    return m.reshape(m.shape[0], *rest).movedim(0, mode)


@pytest.mark.parametrize("mode", [0, 1, 2, -1])
def test_mode_product_classical(mode) -> None:
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    size = x.shape[mode]
    u = torch.randn(5, size, dtype=torch.float64)
    shape = list(x.shape)
    shape[mode] = 5
    want = fold(u @ unfold(x, mode % 3), mode % 3, shape)
    out = mode_product(x, u, mode)
    assert out.shape == tuple(shape)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize(("mode", "t"), [(0, 2), (1, 3), (2, 4), (2, 8), (-2, 6)])
def test_mode_product_semi_tensor(mode, t) -> None:
    """I_mode = t·K: Y_(n) = U ⋉ X_(n) = (U ⊗ I_t) X_(n); the mode becomes J·t."""
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    k = x.shape[mode] // t
    u = torch.randn(3, k, dtype=torch.float64)
    m = mode % 3
    shape = list(x.shape)
    shape[m] = 3 * t
    want = fold(kron_eye(u, t) @ unfold(x, m), m, shape)
    out = mode_product(x, u, mode)
    assert out.shape == tuple(shape)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(unfold(out, m), stp(u, unfold(x, m)))
    assert stsearch.mode_product is mode_product


@pytest.mark.parametrize(("u_shape", "mode", "pattern"), [
    ((3, 5), 1, r"u.shape\[1\]=5 must equal or divide x.shape\[1\]=6"),
    ((3, 12), 1, r"u.shape\[1\]=12 must equal or divide x.shape\[1\]=6"),
    ((3, 2), 3, r"mode=3 is out of range for a tensor of order 3"),
    ((3, 2), -4, r"mode=-4 is out of range"),
    ((3, 2, 1), 0, r"u must be a matrix, got u.shape=\(3, 2, 1\)"),
])
def test_mode_product_errors(u_shape, mode, pattern) -> None:
    x = torch.randn(4, 6, 8)
    with pytest.raises(ShapeError, match=pattern):
        mode_product(x, torch.randn(*u_shape), mode)
    with pytest.raises(ValueError):
        mode_product(x, torch.randn(*u_shape), mode)


def test_mode_product_gradcheck() -> None:
    x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mode_product(a, b, 1), (x, u))
