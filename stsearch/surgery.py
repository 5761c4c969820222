"""Model surgery: apply a :class:`~stsearch.plan.CompressionPlan` to a model, and profile the result.

>>> small = compress(model, plan, init="decompose")      # the original model is left untouched
>>> rep = profile(small, (1, 8, 8))
>>> rep.params, rep.compression_ratio, rep.layers.head()
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from .errors import ConfigError, StsearchError
from .plan import CompressionPlan, LayerSpec

__all__ = ["compress", "profile", "Profile", "compressible_layers", "validate_plan", "densify", "estimate_params",
           "layer_layout"]


def _factorized_types() -> tuple[type, type]:
    from .layers import FactorizedConv2d, FactorizedLinear

    return FactorizedConv2d, FactorizedLinear


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules a plan may name: every ``nn.Conv2d`` (groups=1) and ``nn.Linear``, by qualified name."""
    out = {}
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear):
            out[name] = m
    return out


def _as_plan(plan: CompressionPlan | Mapping[str, Any]) -> CompressionPlan:
    return plan if isinstance(plan, CompressionPlan) else CompressionPlan(plan)


def layer_layout(layer: nn.Module, spec: LayerSpec) -> Any:
    """The validated tensorization (:class:`~stsearch.layers.LayerLayout`) of ``spec`` on ``layer``."""
    from .layers import normalize_layer_spec

    if isinstance(layer, nn.Conv2d):
        return normalize_layer_spec("conv", spec.format, layer.in_channels, layer.out_channels,
                                    layer.kernel_size, rank=_arg(spec.rank), t=_arg(spec.t),
                                    in_shape=spec.in_shape, out_shape=spec.out_shape)
    return normalize_layer_spec("linear", spec.format, layer.in_features, layer.out_features, rank=_arg(spec.rank),
                                t=_arg(spec.t), in_shape=spec.in_shape, out_shape=spec.out_shape)


def _arg(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def validate_plan(model: nn.Module, plan: CompressionPlan | Mapping[str, Any]) -> CompressionPlan:
    """Check every named module exists and is compressible, and every spec fits its layer.

    Raises :class:`~stsearch.errors.ConfigError` naming the module; builds nothing.
    """
    plan = _as_plan(plan)
    layers = compressible_layers(model)
    modules = dict(model.named_modules())
    for name, spec in plan.items():
        if name not in layers:
            if name in modules:
                kind = type(modules[name]).__name__
                raise ConfigError(f"plan[{name!r}]: module is a {kind}; only Conv2d (groups=1) and Linear "
                                  f"layers can be compressed")
            sample = ", ".join(list(layers)[:8])
            raise ConfigError(f"plan[{name!r}]: no such module in {type(model).__name__} "
                              f"(compressible layers: {sample}{', …' if len(layers) > 8 else ''})")
        if spec.is_dense:
            continue
        try:
            layer_layout(layers[name], spec)
        except StsearchError as e:
            raise ConfigError(f"plan[{name!r}]: {e}") from None
    return plan


def estimate_params(model: nn.Module, plan: CompressionPlan | Mapping[str, Any]) -> dict[str, Any]:
    """Parameter counts and compression ratios of ``compress(model, plan)``, computed without building it.

    Uses the formats' exact counts; agrees with :func:`profile` of the built model.
    """
    plan = validate_plan(model, plan)
    layers = compressible_layers(model)
    dense = sum(p.numel() for p in model.parameters())
    params, fw, dw = dense, 0, 0
    for name, spec in plan.items():
        if spec.is_dense:
            continue
        lay = layer_layout(layers[name], spec)
        params += lay.weight_params - lay.dense_weight_params
        fw += lay.weight_params
        dw += lay.dense_weight_params
    return {"params": params, "dense_params": dense, "compression_ratio": dense / params,
            "layer_compression_ratio": dw / fw if fw else 1.0}


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


DECOMPOSE_BUDGET: dict[str, Any] = {"n_iter": 15, "restarts": 0}
"""Iteration budget of the iterative fits (TR-ALS, mixed-t ALS) when a layer is initialised from trained
weights. Fine-tuning follows, so a moderate fit is enough; HOOI, TT-SVD and TR-SVD are unaffected."""


def _build(layer: nn.Module, spec: LayerSpec, init: str, generator: torch.Generator | None) -> nn.Module:
    FactorizedConv2d, FactorizedLinear = _factorized_types()
    kw = dict(fmt=spec.format, rank=_arg(spec.rank), t=_arg(spec.t), in_shape=spec.in_shape,
              out_shape=spec.out_shape, implementation=spec.implementation)
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        if init == "decompose":
            return FactorizedConv2d.from_dense(layer, decompose_kwargs=DECOMPOSE_BUDGET, **kw)
        return FactorizedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                padding=layer.padding, dilation=layer.dilation, bias=layer.bias is not None,
                                generator=generator, device=w.device, dtype=w.dtype, **kw)
    if init == "decompose":
        return FactorizedLinear.from_dense(layer, decompose_kwargs=DECOMPOSE_BUDGET, **kw)
    return FactorizedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                            generator=generator, device=w.device, dtype=w.dtype, **kw)


def compress(model: nn.Module, plan: CompressionPlan | Mapping[str, Any], init: str = "decompose",
             seed: int | None = None, cache: dict | None = None) -> nn.Module:
    """A compressed copy of ``model``: each layer named in ``plan`` becomes a factorized layer.

    init: ``decompose`` (factor the trained weights; the usual fine-tuning start) or ``random``
    (variance-preserving random factors, to train from scratch). The original model is not modified.
    cache: an optional dict that memoises decomposed layers by (module name, spec) — valid only while
    ``model``'s weights do not change (the search keeps one per baseline).
    """
    if init not in ("decompose", "random"):
        raise ConfigError(f"compress: init must be 'decompose' or 'random' (got {init!r})")
    plan = validate_plan(model, plan)
    new = copy.deepcopy(model)
    layers = compressible_layers(new)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for name, spec in plan.items():
        if spec.is_dense:
            continue
        key = (name, json.dumps(spec.to_dict(), sort_keys=True))
        with torch.no_grad():
            if init == "decompose" and cache is not None and key in cache:
                built = copy.deepcopy(cache[key])
            else:
                built = _build(layers[name], spec, init, gen)
                if init == "decompose" and cache is not None:
                    cache[key] = copy.deepcopy(built)
            _set_module(new, name, built)
    return new


@dataclass
class Profile:
    """Cost report of a (possibly compressed) model.

    params / dense_params: all stored numbers of the model / of its dense equivalent (BN, biases and
    uncompressed layers included); compression_ratio = dense_params / params. layer_compression_ratio counts
    only the factorized layers' weights (the figure papers usually quote). flops: FlopCounterMode count of
    one forward pass at batch 1. layers: one row per Conv2d/Linear/factorized layer.
    """

    params: int
    dense_params: int
    flops: int
    dense_flops: int
    layer_weight_params: int
    layer_dense_weight_params: int
    layers: pd.DataFrame

    @property
    def compression_ratio(self) -> float:
        return self.dense_params / max(self.params, 1)

    @property
    def layer_compression_ratio(self) -> float:
        if self.layer_weight_params == 0:
            return 1.0
        return self.layer_dense_weight_params / self.layer_weight_params

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "dense_params": self.dense_params, "flops": self.flops,
                "dense_flops": self.dense_flops, "compression_ratio": self.compression_ratio,
                "layer_compression_ratio": self.layer_compression_ratio}


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every factorized layer replaced by its dense equivalent (``to_dense()``)."""
    factorized = _factorized_types()
    new = copy.deepcopy(model)
    for name, m in list(new.named_modules()):
        if isinstance(m, factorized):
            _set_module(new, name, m.to_dense())
    return new


def _count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Warm-up: a factorized layer's first call per input shape makes its "auto" choice, which counts
            # the FLOPs of its candidate paths; that one-off work must not be charged to the forward pass.
            model(x)
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """Parameters, FLOPs and compression ratios of ``model`` for inputs of shape ``input_shape`` (C, H, W).

    The dense equivalent is the same model with each factorized layer replaced by ``to_dense()``. FLOPs are
    counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass at batch 1.
    """
    factorized = _factorized_types()
    dense = densify(model)
    params = sum(p.numel() for p in model.parameters())
    dense_params = sum(p.numel() for p in dense.parameters())
    rows, fw, dw = [], 0, 0
    for name, m in model.named_modules():
        if isinstance(m, factorized):
            bias = 0 if m.bias is None else m.bias.numel()
            stored, dense_w = m.num_params, m.dense_weight_params
            fw += stored - bias
            dw += dense_w
            rows.append(dict(layer=name, type=type(m).__name__, format=m.fmt, ranks=str(m.ranks), t=str(m.t),
                             in_shape=str(m.in_shape), out_shape=str(m.out_shape), params=stored,
                             dense_params=dense_w + bias, compression_ratio=(dense_w + bias) / stored))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            n = sum(p.numel() for p in m.parameters(recurse=False))
            rows.append(dict(layer=name, type=type(m).__name__, format="dense", ranks="", t="", in_shape="",
                             out_shape="", params=n, dense_params=n, compression_ratio=1.0))
    df = pd.DataFrame(rows, columns=["layer", "type", "format", "ranks", "t", "in_shape", "out_shape", "params",
                                     "dense_params", "compression_ratio"])
    return Profile(params=params, dense_params=dense_params, flops=_count_flops(model, input_shape),
                   dense_flops=_count_flops(dense, input_shape), layer_weight_params=fw,
                   layer_dense_weight_params=dw, layers=df)
