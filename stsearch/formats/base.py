"""The common interface of all tensor formats, the factorized-tensor object and the registry.

A :class:`Format` is a *definition*: given a tensor shape, ranks and STP factors ``t`` it knows

* the shapes of its stored factors (:meth:`Format.factor_shapes`),
* how to contract them into the full tensor (:meth:`Format.reconstruct`),
* its exact parameter count (:meth:`Format.num_params`),
* its classical twin and, where one exists, its classical equivalent (THEORY §4),
* how to decompose a given tensor into it.

Layers, the search's compression estimate, decomposition and canonicalisation all ask the format; none keeps a
copy of this knowledge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ShapeError

Shape = tuple[int, ...]
RankArg = int | Sequence[int | None]
TArg = int | Sequence[int]


@dataclass(frozen=True)
class Relayout:
    """A reshape → permute → reshape that maps a tensor's entries onto another tensorization.

    ``apply(x)``: x of shape ``src`` -> ``x.reshape(split).permute(perm).reshape(dst)``.
    """

    src: Shape
    split: Shape
    perm: tuple[int, ...]
    dst: Shape

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.split).permute(self.perm).reshape(self.dst)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        permuted = tuple(self.split[p] for p in self.perm)
        return y.reshape(permuted).permute(inv).reshape(self.src)

    @property
    def is_identity(self) -> bool:
        return self.src == self.dst and self.perm == tuple(range(len(self.perm)))

    @staticmethod
    def identity(shape: Shape) -> Relayout:
        return Relayout(tuple(shape), tuple(shape), tuple(range(len(shape))), tuple(shape))


class Format(ABC):
    """Definition of one tensor format. Subclasses are stateless singletons held in the registry."""

    name: str
    family: str
    classical: str
    semi_tensor: bool

    # -- definition --------------------------------------------------------------------------------
    @abstractmethod
    def normalize(self, shape: Shape, rank: RankArg, t: TArg) -> tuple[tuple, tuple[int, ...]]:
        """Validate and expand ``rank`` and ``t`` into one value per bond / per factor.

        Raises :class:`~stsearch.errors.ShapeError` (a ``ValueError``) naming the argument and numbers.
        """

    @abstractmethod
    def factor_shapes(self, shape: Shape, ranks: tuple, t: tuple[int, ...]) -> list[Shape]:
        """Shapes of the stored factors, in storage order."""

    @abstractmethod
    def reconstruct(self, factors: Sequence[torch.Tensor], shape: Shape, ranks: tuple,
                    t: tuple[int, ...]) -> torch.Tensor:
        """Contract the stored factors into the full tensor of shape ``shape``."""

    def num_params(self, shape: Shape, ranks: tuple, t: tuple[int, ...]) -> int:
        """Exact number of stored numbers (the sum of the factor sizes)."""
        return sum(math.prod(s) for s in self.factor_shapes(shape, ranks, t))

    @abstractmethod
    def classical_factors(self, factors: Sequence[torch.Tensor], shape: Shape, ranks: tuple,
                          t: tuple[int, ...]) -> list[torch.Tensor]:
        """Factors of the classical twin at the same ranks: each STP factor expanded by ``⊗ I_t``."""

    @abstractmethod
    def equivalence(self, shape: Shape, ranks: tuple, t: tuple[int, ...]) -> Equivalence | None:
        """The classical equivalent on a re-tensorization (THEORY §4), or ``None``."""

    @abstractmethod
    def no_equivalent_reason(self, shape: Shape, ranks: tuple, t: tuple[int, ...]) -> str | None:
        """Why no single classical format equals this configuration (``None`` when one does)."""

    @abstractmethod
    def decompose_classical(self, x: torch.Tensor, ranks: tuple, **kw) -> list[torch.Tensor]:
        """Classical decomposition (t = 1) of ``x`` at the given ranks."""

    def bond_limits(self, shape: Shape) -> list[int | None]:
        """Largest rank each bond may take on ``shape`` (``None``: no per-bond limit)."""
        return [None] * len(self.bond_divisors(shape, (1,) * self.n_t(shape)))

    @abstractmethod
    def bond_divisors(self, shape: Shape, t: tuple[int, ...]) -> list[int]:
        """The number each bond's rank must be a multiple of, given ``t`` (the lcm of the t that shrink it)."""

    def n_t(self, shape: Shape) -> int:
        """How many t values the format takes on a tensor of order ``len(shape)``."""
        return len(shape) if self.family == "tucker" else len(shape) - 1

    def feasible_ranks(self, shape: Shape, rank: RankArg, t: TArg) -> tuple | None:
        """The ranks nearest below ``rank`` (per bond) that are valid with ``t`` on ``shape``, or ``None``.

        Each bond is capped at :meth:`bond_limits` and rounded down to a multiple of :meth:`bond_divisors`
        (but never below one multiple). Used by the search to turn a sampled rank into a valid plan; user input
        is never repaired this way (``normalize`` refuses it).
        """
        shape = tuple(shape)
        ts = as_list(t, self.n_t(shape), "t", self.name)
        divs = self.bond_divisors(shape, tuple(ts))
        limits = self.bond_limits(shape)
        want = as_list(rank, len(divs), "rank", self.name, allow_none=True)
        out: list[int | None] = []
        for r, d, lim in zip(want, divs, limits):
            if r is None:
                out.append(None)
                continue
            if lim is not None:
                r = min(r, lim)
            r = max(d, r // d * d)
            if lim is not None and r > lim:
                return None
            out.append(r)
        try:
            ranks, _ = self.normalize(shape, out, ts)
        except ValueError:
            return None
        return ranks

    # -- shared machinery --------------------------------------------------------------------------
    def check_t(self, t: tuple[int, ...]) -> None:
        if not self.semi_tensor and any(v != 1 for v in t):
            raise ShapeError(f"{self.name}: t={list(t)} but the classical format takes t=1; "
                             f"use the semi-tensor format instead")

    def decompose(self, x: torch.Tensor, ranks: tuple, t: tuple[int, ...], **kw) -> list[torch.Tensor]:
        """Decompose ``x`` into this format's stored factors.

        With a classical equivalent: run the classical algorithm on it and map the factors back (same error).
        Without one (mixed-t topologies), or with ``method="als"`` (a control that fits any format the same way
        as the new topologies): alternating least squares on the small cores.
        """
        shape = tuple(x.shape)
        method = kw.pop("method", "auto")
        if method not in ("auto", "als"):
            raise ValueError(f"{self.name}.decompose: method must be 'auto' or 'als', got {method!r}")
        eq = None if method == "als" else self.equivalence(shape, ranks, t)
        if eq is not None:
            cls_fmt = get_format(eq.format)
            eq_factors = cls_fmt.decompose_classical(eq.relayout.apply(x), eq.ranks, **kw)
            return eq.from_equivalent(eq_factors)
        from ._decomp import als_fit

        return als_fit(self, x, ranks, t, **kw)

    def random_factors(self, shape: Shape, ranks: tuple, t: tuple[int, ...], *,
                       generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None, std: float = 1.0) -> list[torch.Tensor]:
        """Gaussian factors, scaled together so that the reconstruction has root-mean-square ``std``."""
        shapes = self.factor_shapes(shape, ranks, t)
        fs = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        rms = float(self.reconstruct(fs, shape, ranks, t).pow(2).mean().sqrt())
        scale = (std / rms) ** (1.0 / len(fs)) if rms > 0 else 1.0
        return [(f * scale).to(dtype=dtype, device=device) for f in fs]

    def __repr__(self) -> str:
        return f"<format {self.name}>"


@dataclass
class Equivalence:
    """How an ST configuration equals a classical one (THEORY §4).

    ``relayout.apply(st_tensor) == classical_tensor`` entrywise; ``to_equivalent`` / ``from_equivalent`` map
    the stored factors both ways (pure reshapes, permutations and one scalar), so the parameter count is kept.
    """

    format: str
    shape: Shape
    ranks: tuple
    relayout: Relayout
    to_eq: object = field(repr=False)
    from_eq: object = field(repr=False)

    def to_equivalent(self, factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.to_eq(list(factors)))  # type: ignore[operator]

    def from_equivalent(self, factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.from_eq(list(factors)))  # type: ignore[operator]


class FactorizedTensor:
    """A tensor stored as the factors of one format.

    >>> ft = random_tensor((4, 6, 8), "stt", rank=4, t=2)
    >>> ft.to_tensor().shape, ft.num_params
    (torch.Size([4, 6, 8]), 48)
    """

    def __init__(self, fmt: str | Format, shape: Sequence[int], ranks: tuple, t: tuple[int, ...],
                 factors: Sequence[torch.Tensor]):
        self._fmt = get_format(fmt) if isinstance(fmt, str) else fmt
        self.shape: Shape = tuple(int(s) for s in shape)
        self.ranks = tuple(ranks)
        self.t = tuple(t)
        self.factors = list(factors)
        want = self._fmt.factor_shapes(self.shape, self.ranks, self.t)
        got = [tuple(f.shape) for f in self.factors]
        if got != [tuple(w) for w in want]:
            raise ShapeError(f"{self.format}: factor shapes {got} do not match the definition {want}")

    @property
    def format(self) -> str:
        return self._fmt.name

    @property
    def definition(self) -> Format:
        return self._fmt

    @property
    def num_params(self) -> int:
        return self._fmt.num_params(self.shape, self.ranks, self.t)

    def to_tensor(self) -> torch.Tensor:
        return self._fmt.reconstruct(self.factors, self.shape, self.ranks, self.t)

    def to_classical(self) -> FactorizedTensor:
        """The classical twin at the *same* ranks: every STP factor expanded by ``⊗ I_t`` (more parameters)."""
        facs = self._fmt.classical_factors(self.factors, self.shape, self.ranks, self.t)
        return FactorizedTensor(self._fmt.classical, self.shape, self.ranks, (1,) * len(self.t), facs)

    def equivalent(self) -> FactorizedTensor | None:
        """The classical format on the re-tensorization of THEORY §4, with the same parameter count.

        Its ``to_tensor()`` equals ``self.equivalent_relayout().apply(self.to_tensor())``. ``None`` where no
        single classical format exists; :meth:`no_equivalent_reason` says why.
        """
        eq = self._fmt.equivalence(self.shape, self.ranks, self.t)
        if eq is None:
            return None
        cls_fmt = get_format(eq.format)
        out = FactorizedTensor(cls_fmt, eq.shape, eq.ranks, (1,) * _n_t(cls_fmt, eq.shape),
                               eq.to_equivalent(self.factors))
        out.relayout = eq.relayout  # type: ignore[attr-defined]
        return out

    def equivalent_relayout(self) -> Relayout | None:
        eq = self._fmt.equivalence(self.shape, self.ranks, self.t)
        return None if eq is None else eq.relayout

    def no_equivalent_reason(self) -> str | None:
        return self._fmt.no_equivalent_reason(self.shape, self.ranks, self.t)

    def __repr__(self) -> str:
        return (f"FactorizedTensor(format={self.format!r}, shape={self.shape}, ranks={self.ranks}, "
                f"t={self.t}, num_params={self.num_params})")


def _n_t(fmt: Format, shape: Shape) -> int:
    return len(shape) if fmt.family == "tucker" else len(shape) - 1


# -- registry ---------------------------------------------------------------------------------------
_REGISTRY: dict[str, Format] = {}


def balance_factors(factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Rescale factors to equal Frobenius norms without changing the tensor they represent.

    Every format here reconstructs a tensor that is linear in each factor (each appears once in the contraction),
    so multiplying factor k by c_k with ∏ c_k = 1 is a gauge change. Decompositions can leave the scale spread
    very unevenly (a TR-ALS fit of a 10×128 weight: core norms 0.07 to 244); SGD then takes steps on the small
    cores that are huge relative to them, and training diverges. Balancing removes that. Factors with a zero
    norm are left as they are (nothing to balance).
    """
    norms = [float(f.norm()) for f in factors]
    if not factors or min(norms) <= 0.0 or not all(math.isfinite(n) for n in norms):
        return list(factors)
    target = math.exp(sum(math.log(n) for n in norms) / len(norms))
    return [f * (target / n) for f, n in zip(factors, norms)]


def register(fmt: Format) -> Format:
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    """The registered :class:`Format` called ``name`` (``tucker, tt, tr, sttu, stt, str``)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ShapeError(f"unknown format {name!r}; known formats: {sorted(_REGISTRY)}") from None


# -- validation helpers -----------------------------------------------------------------------------
def as_list(value: int | Sequence, n: int, what: str, fmt: str, allow_none: bool = False) -> list:
    """Expand an int to ``n`` copies, or check a sequence has length ``n`` and positive int entries."""
    if isinstance(value, bool):
        raise ShapeError(f"{fmt}: {what}={value!r} must be an int or a list of ints")
    if isinstance(value, int):
        vals = [value] * n
    else:
        try:
            vals = list(value)
        except TypeError:
            raise ShapeError(f"{fmt}: {what}={value!r} must be an int or a list of ints") from None
        if len(vals) != n:
            raise ShapeError(f"{fmt}: {what}={vals} has {len(vals)} entries; expected {n}")
    for i, v in enumerate(vals):
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ShapeError(f"{fmt}: {what}[{i}]={v!r} must be a positive int")
    return vals


def check_shape(shape: Sequence[int], fmt: str, min_order: int) -> Shape:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{fmt}: shape={shape!r} must be a sequence of positive ints") from None
    if len(shape) < min_order or any(s < 1 for s in shape):
        raise ShapeError(f"{fmt}: shape={list(shape)} must have at least {min_order} positive dimensions")
    return shape


def nested(values: Sequence[int]) -> bool:
    """True when of any two values one divides the other."""
    vs = sorted(set(values))
    return all(vs[i + 1] % vs[i] == 0 for i in range(len(vs) - 1))
