"""stsearch: compress neural networks with (semi-)tensor decompositions and search the best compression.

The public surface is small; everything else lives in submodules (``stsearch.formats``, ``stsearch.layers``,
``stsearch.data``, ``stsearch.training``, ``stsearch.pareto``, ``stsearch.models``). Heavy pieces (Optuna, the
search, export) are imported lazily so that ``import stsearch`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._stp import mode_product, stp
from .errors import StsearchError
from .formats import FORMATS, decompose, random_tensor

__version__ = "0.1.0"

_LAZY = {
    "FactorizedConv2d": "stsearch.layers",
    "FactorizedLinear": "stsearch.layers",
    "LayerSpec": "stsearch.plan",
    "CompressionPlan": "stsearch.plan",
    "compress": "stsearch.surgery",
    "profile": "stsearch.surgery",
    "search": "stsearch.study",
    "load": "stsearch.export",
}

__all__ = [
    "stp", "mode_product", "FORMATS", "random_tensor", "decompose", "StsearchError", "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
