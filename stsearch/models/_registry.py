"""The name -> builder registry behind :func:`stsearch.models.create`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

TORCHVISION_PREFIX = "torchvision:"

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}

# torchvision models whose weights=None defaults need a nudge to behave like plain classifiers.
_TV_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def register(name: str, builder: Builder | None = None) -> Any:
    """Register ``builder`` under ``name``; usable as ``register("x", fn)`` or as ``@register("x")``.

    Every parameter of ``builder`` must have a default, so that ``create(name)`` always works.
    """

    def deco(fn: Builder) -> Builder:
        if not name or ":" in name:
            raise ConfigError(f"model name {name!r} must be non-empty and contain no ':'")
        missing = [p.name for p in inspect.signature(fn).parameters.values()
                   if p.default is inspect.Parameter.empty
                   and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if missing:
            raise ConfigError(f"model builder for {name!r}: parameters {missing} need defaults")
        _REGISTRY[name] = fn
        return fn

    return deco if builder is None else deco(builder)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available(include_torchvision: bool = False) -> list[str]:
    """Registered model names (sorted); with ``include_torchvision`` also every ``torchvision:NAME``."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    return names


def model_kwargs(name: str) -> dict[str, Any]:
    """The keywords a built-in model takes, with their defaults (``{}`` for torchvision models)."""
    if name.startswith(TORCHVISION_PREFIX):
        return {}
    builder = _lookup(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _lookup(name: str) -> Builder:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {type(name).__name__} {name!r}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Available: {', '.join(available())}, or "
            f"'{TORCHVISION_PREFIX}NAME' for any torchvision classifier (e.g. '{TORCHVISION_PREFIX}resnet18'; "
            f"stsearch.models.available(include_torchvision=True) lists them)."
        )
    return _REGISTRY[name]


def _check_positive_int(model: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {model!r}: {key} must be a positive integer, got {value!r}")


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``kwargs`` (all optional); ``torchvision:NAME`` builds a torchvision classifier.

    Example: ``create("lenet5", num_classes=10)`` maps (B, 1, 28, 28) -> (B, 10).
    """
    for key in ("num_classes", "in_channels"):
        if key in kwargs:
            _check_positive_int(name, key, kwargs[key])
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX):], kwargs)
    builder = _lookup(name)
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params]
    if unknown and not takes_any:
        accepted = ", ".join(f"{k}={v!r}" for k, v in model_kwargs(name).items())
        raise ConfigError(
            f"model {name!r}: unknown keyword(s) {', '.join(map(repr, unknown))}; it accepts: {accepted}"
        )
    return builder(**kwargs)


def _create_torchvision(tv_name: str, kwargs: dict[str, Any]) -> nn.Module:
    names = _torchvision_names()
    if tv_name not in names:
        close = difflib.get_close_matches(tv_name, names, n=3)
        hint = f" Did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown torchvision classification model {tv_name!r}.{hint} "
            f"Available: {', '.join(names)}"
        )
    import torchvision

    kwargs = dict(kwargs)
    in_channels = kwargs.pop("in_channels", 3)
    if "weights" in kwargs and kwargs["weights"] is not None:
        raise ConfigError(
            f"model '{TORCHVISION_PREFIX}{tv_name}': weights={kwargs['weights']!r} is not supported "
            "(nothing is downloaded); load your own checkpoint with --baseline PATH instead"
        )
    kwargs.pop("weights", None)
    config: dict[str, Any] = {"num_classes": 10, **_TV_DEFAULTS.get(tv_name, {}), **kwargs}
    try:
        model = torchvision.models.get_model(tv_name, weights=None, **config)
    except TypeError as e:
        raise ConfigError(f"model '{TORCHVISION_PREFIX}{tv_name}': bad keyword: {e}") from e
    except ValueError as e:
        raise ConfigError(f"model '{TORCHVISION_PREFIX}{tv_name}': {e}") from e
    if in_channels != 3:
        _replace_first_conv(model, in_channels, f"{TORCHVISION_PREFIX}{tv_name}")
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, label: str) -> None:
    """Swap the first ``nn.Conv2d`` for one taking ``in_channels`` inputs (same geometry, fresh weights)."""
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(
                in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=1 if mod.groups == mod.in_channels else mod.groups,
                bias=mod.bias is not None, padding_mode=mod.padding_mode,
            )
            parent_name, _, attr = qual.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ConfigError(f"model {label!r}: in_channels is set but the model has no Conv2d to adapt")
