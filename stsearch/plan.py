"""Compression plans: which layer gets which format, ranks, t and tensorization.

A plan is plain data (JSON round-trip) and is validated against a model before anything is built::

    plan = CompressionPlan({
        "features.3": LayerSpec("stt", rank=8, t=2, in_shape=(4, 4), out_shape=(4, 8)),
        "classifier": {"format": "tucker", "rank": [8, 8]},
        "features.0": "dense",
    })
    compressed = stsearch.compress(model, plan)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, StsearchError
from .formats import FORMATS

PLAN_FORMATS: tuple[str, ...] = ("dense", *FORMATS)
IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")


def _int_or_list(value: Any, where: str, allow_none_items: bool = False) -> int | tuple | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: must be a positive int or a list of positive ints (got {value!r})")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: must be a positive int (got {value!r})")
        return value
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            if v is None and allow_none_items:
                out.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}[{i}]: must be a positive int (got {v!r})")
            out.append(v)
        if not out:
            raise ConfigError(f"{where}: must not be empty (got {value!r})")
        return tuple(out)
    raise ConfigError(f"{where}: must be a positive int or a list of positive ints (got {value!r})")


@dataclass(frozen=True)
class LayerSpec:
    """How to compress one layer.

    format: ``dense`` or a registry format; rank: int or one per bond (order in docs/theory.md);
    t: int or one per STP-joined factor; in_shape/out_shape: factorisations of the channel counts
    (``None``: the layout's default); implementation: ``auto | factorized | reconstructed``.
    """

    format: str
    rank: int | tuple | None = None
    t: int | tuple = 1
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    implementation: str = "auto"

    def __post_init__(self) -> None:
        where = "LayerSpec"
        if self.format not in PLAN_FORMATS:
            raise ConfigError(f"{where}.format: unknown format {self.format!r}; choose one of {list(PLAN_FORMATS)}")
        object.__setattr__(self, "rank", _int_or_list(self.rank, f"{where}.rank", allow_none_items=True))
        t = _int_or_list(self.t, f"{where}.t")
        object.__setattr__(self, "t", 1 if t is None else t)
        for key in ("in_shape", "out_shape"):
            v = getattr(self, key)
            if v is not None:
                v = _int_or_list(list(v) if isinstance(v, (list, tuple)) else v, f"{where}.{key}")
                object.__setattr__(self, key, (v,) if isinstance(v, int) else v)
        if self.implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"{where}.implementation: must be one of {list(IMPLEMENTATIONS)} "
                              f"(got {self.implementation!r})")
        if self.format != "dense" and self.rank is None:
            raise ConfigError(f"{where}.rank: format {self.format!r} needs a rank (got None)")

    @property
    def is_dense(self) -> bool:
        return self.format == "dense"

    def to_dict(self) -> dict[str, Any]:
        if self.is_dense:
            return {"format": "dense"}
        d: dict[str, Any] = {"format": self.format, "rank": _jsonable(self.rank), "t": _jsonable(self.t)}
        if self.in_shape is not None:
            d["in_shape"] = list(self.in_shape)
        if self.out_shape is not None:
            d["out_shape"] = list(self.out_shape)
        if self.implementation != "auto":
            d["implementation"] = self.implementation
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str, where: str = "LayerSpec") -> LayerSpec:
        """Build from a dict (or the string ``"dense"``); unknown keys are errors naming ``where``."""
        if isinstance(d, str):
            d = {"format": d}
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: must be a mapping with a 'format' key (got {d!r})")
        allowed = {"format", "rank", "t", "in_shape", "out_shape", "implementation"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")
        if "format" not in d:
            raise ConfigError(f"{where}.format: missing")
        try:
            return cls(**dict(d))
        except ConfigError as e:
            raise ConfigError(str(e).replace("LayerSpec", where, 1)) from None


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclass
class CompressionPlan(Mapping[str, LayerSpec]):
    """A mapping ``module name -> LayerSpec``; modules not named stay as they are."""

    layers: dict[str, LayerSpec] = field(default_factory=dict)

    def __init__(self, layers: Mapping[str, LayerSpec | Mapping[str, Any] | str] | None = None):
        self.layers = {}
        for name, spec in (layers or {}).items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"plan: module names must be non-empty strings (got {name!r})")
            self.layers[name] = spec if isinstance(spec, LayerSpec) else LayerSpec.from_dict(
                spec, where=f"plan[{name!r}]")

    def __getitem__(self, key: str) -> LayerSpec:
        return self.layers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: spec.to_dict() for name, spec in self.layers.items()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionPlan:
        if not isinstance(d, Mapping):
            raise ConfigError(f"plan: must be a mapping of module name to layer spec (got {type(d).__name__})")
        return cls(d)

    @classmethod
    def from_json(cls, s: str) -> CompressionPlan:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"plan: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(d)

    def format_counts(self) -> Counter[str]:
        """How many layers use each format, e.g. ``Counter({'stt': 9, 'tt': 4, 'dense': 2})``."""
        return Counter(spec.format for spec in self.layers.values())

    def summary(self) -> str:
        """Compact summary such as ``stt×9 tt×4 dense×2``."""
        return " ".join(f"{k}×{v}" for k, v in sorted(self.format_counts().items(), key=lambda kv: (-kv[1], kv[0])))

    def __repr__(self) -> str:
        return f"CompressionPlan({self.to_dict()!r})"


__all__ = ["LayerSpec", "CompressionPlan", "PLAN_FORMATS", "StsearchError"]
