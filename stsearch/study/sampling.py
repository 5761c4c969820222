"""Turn an Optuna trial into a valid :class:`~stsearch.plan.CompressionPlan`.

Every parameter name has one fixed distribution, as Optuna requires; conditional parameters carry the
format in their name. For each unit (a layer, or a layer group with ``share: true``)::

    <unit>.format                  categorical over the group's formats
    <unit>.<fmt>.shape             tensorization depth (auto / depth) or index of an explicit shape
    <unit>.<fmt>.t                 uniform STP factor (ST formats)
    <unit>.<fmt>.t_mode, .t<k>     with ``t: {mixed: true}``: uniform or one t per core
    <unit>.<fmt>.rank              the rank (int range, step/log, or choices)

The sample is an *intent*; each layer turns it into a valid spec by asking only the format registry: the
first shape (sampled depth, then the nearest others) and t (the sampled pattern, then uniform divisors of its
smallest value, down to 1) for which :meth:`Format.feasible_ranks` finds ranks, which caps every bond at its
limit and rounds it down to a multiple of the t that shrink it. A layer with no valid spec prunes the trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import StsearchError
from ..formats import get_format
from ..layers import balanced_factorization, layer_tensor_shape
from ..plan import CompressionPlan, LayerSpec
from ..surgery import compressible_layers, layer_layout

AUTO_DEPTHS = (1, 2, 3)


@dataclass(frozen=True)
class Unit:
    """What one set of parameters decides: a layer, or every layer of a shared group."""

    label: str
    group: Any
    layers: tuple[tuple[str, nn.Module], ...]


def units(space: Any, model: nn.Module) -> list[Unit]:
    """Layers matched by the space's groups (first match wins), as sampling units."""
    layers = compressible_layers(model)
    by_group: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in layers.items():
        g = space.group_for(name)
        if g is not None:
            by_group.setdefault(g.index, []).append((name, m))
    out = []
    for g in space.layer_groups:
        members = by_group.get(g.index, [])
        if not members:
            continue
        if g.share:
            out.append(Unit(f"group{g.index}", g, tuple(members)))
        else:
            out += [Unit(name, g, ((name, m),)) for name, m in members]
    return out


def _depths(group: Any) -> tuple[int, ...]:
    return group.shapes.depths if group.shapes.mode == "depth" else AUTO_DEPTHS


def _suggest_rank(trial: Any, name: str, spec: Any) -> int:
    if spec.choices is not None:
        return int(trial.suggest_categorical(name, list(spec.choices)))
    if spec.log:
        return int(trial.suggest_int(name, spec.min, spec.max, log=True))
    return int(trial.suggest_int(name, spec.min, spec.max, step=spec.step))


def _kind(m: nn.Module) -> tuple[str, int, int, tuple[int, ...] | None]:
    if isinstance(m, nn.Conv2d):
        return "conv", m.in_channels, m.out_channels, tuple(m.kernel_size)
    return "linear", m.in_features, m.out_features, None


def _shape_candidates(m: nn.Module, group: Any, choice: Any) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    _, cin, cout, _ = _kind(m)
    if group.shapes.mode == "explicit":
        order = sorted(range(len(group.shapes.choices)), key=lambda i: (abs(i - choice), i))
        return [(c.in_shape, c.out_shape) for c in (group.shapes.choices[i] for i in order)]
    depths = sorted(_depths(group), key=lambda d: (abs(d - choice), d))
    out = []
    for d in depths:
        cand = (balanced_factorization(cin, d), balanced_factorization(cout, d))
        if cand not in out:
            out.append(cand)
    return out


def _t_candidates(t_req: int | list[int], n: int) -> list[list[int]]:
    """The sampled pattern first, then uniform t over the divisors of its smallest value, largest first."""
    pattern = [t_req] * n if isinstance(t_req, int) else list(t_req[:n]) + [1] * max(0, n - len(t_req))
    if n == 0:
        return []
    out = [pattern]
    low = min(pattern)
    for d in range(low, 0, -1):
        if low % d == 0 and [d] * n not in out:
            out.append([d] * n)
    return out


def layer_spec(m: nn.Module, fmt: str, group: Any, shape_choice: Any, t_req: int | list[int],
               rank: int) -> LayerSpec | None:
    """The valid spec nearest to the sampled intent for one layer, or ``None``."""
    f = get_format(fmt)
    kind, cin, cout, ks = _kind(m)
    for ins, outs in _shape_candidates(m, group, shape_choice):
        try:
            shape = layer_tensor_shape(kind, fmt, cin, cout, ks, ins, outs)
        except StsearchError:
            continue
        if f.family == "tucker":
            n_ch = len(ins) + len(outs)
            extra = len(shape) - n_ch
            t_lists = [t + [1] * extra for t in _t_candidates(t_req, n_ch)]
            rank_arg: list[int | None] = [rank] * n_ch + [None] * extra
        else:
            t_lists = _t_candidates(t_req, f.n_t(shape))
            if not t_lists:
                continue
            rank_arg = [rank] * len(f.bond_divisors(shape, tuple(t_lists[0])))
        if not f.semi_tensor:
            t_lists = [[1] * len(t_lists[0])]
        for t in t_lists:
            try:
                ranks = f.feasible_ranks(shape, rank_arg, t)
            except StsearchError:
                ranks = None
            if ranks is None:
                continue
            spec = LayerSpec(fmt, rank=list(ranks), t=t, in_shape=ins, out_shape=outs)
            try:
                layer_layout(m, spec)
            except StsearchError:
                continue
            return spec
    return None


def suggest_plan(trial: Any, ctx: Any) -> CompressionPlan:
    """Sample one plan for ``ctx.baseline_model`` from ``ctx.space`` (see the module docstring)."""
    import optuna

    cache = ctx.__dict__.setdefault("_units", None)
    if cache is None:
        cache = units(ctx.space, ctx.baseline_model)
        ctx.__dict__["_units"] = cache
    specs: dict[str, LayerSpec] = {}
    for u in cache:
        g = u.group
        fmt = trial.suggest_categorical(f"{u.label}.format", list(g.formats))
        if fmt == "dense":
            specs.update({name: LayerSpec("dense") for name, _ in u.layers})
            continue
        if g.shapes.mode == "explicit":
            choice = trial.suggest_categorical(f"{u.label}.{fmt}.shape", list(range(len(g.shapes.choices))))
        else:
            choice = trial.suggest_categorical(f"{u.label}.{fmt}.shape", list(_depths(g)))
        t_req: int | list[int] = 1
        if get_format(fmt).semi_tensor:
            values = list(g.t.values)
            mixed = g.t.mixed and trial.suggest_categorical(f"{u.label}.{fmt}.t_mode", ["uniform", "mixed"]) == "mixed"
            if mixed:
                n = _max_t_count(u, fmt, g, choice)
                t_req = [int(trial.suggest_categorical(f"{u.label}.{fmt}.t{k}", values)) for k in range(n)]
            else:
                t_req = int(trial.suggest_categorical(f"{u.label}.{fmt}.t", values))
        rank = _suggest_rank(trial, f"{u.label}.{fmt}.rank", g.rank)
        for name, m in u.layers:
            spec = layer_spec(m, fmt, g, choice, t_req, rank)
            if spec is None:
                raise optuna.TrialPruned(f"no valid {fmt} spec for layer {name!r} near shape choice {choice}, "
                                         f"t={t_req}, rank={rank}")
            specs[name] = spec
    return CompressionPlan(specs)


def _max_t_count(u: Unit, fmt: str, group: Any, choice: Any) -> int:
    """How many per-core t values the unit's layers need at the chosen shape (the largest over its layers)."""
    f = get_format(fmt)
    n = 1
    for _, m in u.layers:
        kind, cin, cout, ks = _kind(m)
        ins, outs = _shape_candidates(m, group, choice)[0]
        try:
            shape = layer_tensor_shape(kind, fmt, cin, cout, ks, ins, outs)
        except StsearchError:
            continue
        n = max(n, len(ins) + len(outs) if f.family == "tucker" else f.n_t(shape))
    return n
