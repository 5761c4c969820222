"""Canonical plans (THEORY §4): one key per model, whatever name the plan gives its layers.

A layer spec whose format has a classical equivalent on the *same* tensorization (identity relayout) is that
classical spec: ``sttu``/``stt``/``str`` with t = 1 are ``tucker``/``tt``/``tr``, and ``str(R, t)`` with uniform
t is ``tr(R/t)``. Shapes, ranks and t are written out in full, so ``rank=8`` and ``rank=[8, 8]`` agree. The
implementation (factorized or reconstructed) does not change the model and is left out.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from ..plan import CompressionPlan, LayerSpec
from ..surgery import compressible_layers, layer_layout


def canonical_spec(layer: nn.Module, spec: LayerSpec) -> dict[str, Any] | None:
    """The canonical description of ``spec`` on ``layer`` (``None`` for dense)."""
    if spec.is_dense:
        return None
    lay = layer_layout(layer, spec)
    fmt, ranks, t = lay.fmt, tuple(lay.ranks), tuple(lay.t)
    eq = lay.format.equivalence(lay.tensor_shape, lay.ranks, lay.t)
    if eq is not None and eq.relayout.is_identity:
        fmt, ranks, t = eq.format, tuple(eq.ranks), (1,) * len(t)
    return {"format": fmt, "rank": list(ranks), "t": list(t), "in_shape": list(lay.in_shape),
            "out_shape": list(lay.out_shape)}


def canonical_plan(model: nn.Module, plan: CompressionPlan) -> CompressionPlan:
    """The plan with every layer spec in canonical form (dense entries dropped)."""
    layers = compressible_layers(model)
    out = {}
    for name, spec in plan.items():
        c = canonical_spec(layers[name], spec)
        if c is not None:
            out[name] = LayerSpec(c["format"], rank=c["rank"], t=c["t"], in_shape=c["in_shape"],
                                  out_shape=c["out_shape"])
    return CompressionPlan(out)


def canonical_key(model: nn.Module, plan: CompressionPlan) -> str:
    """A string equal for two plans exactly when they build the same model (same function class)."""
    layers = compressible_layers(model)
    d = {name: canonical_spec(layers[name], spec) for name, spec in plan.items() if not spec.is_dense}
    return json.dumps(d, sort_keys=True, separators=(",", ":"))
