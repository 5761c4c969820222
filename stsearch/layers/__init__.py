"""Factorized layers in every registry format, and the layer-spec helpers the search uses.

* :class:`FactorizedConv2d`, :class:`FactorizedLinear`: drop-in layers with ``from_dense``, ``to_dense``,
  ``weight()``, ``num_params``, ``flops(input_shape)`` and three implementations (factorized, reconstructed,
  auto).
* :func:`normalize_layer_spec`: validate a spec and get its parameter count and CR without building a layer.
* :func:`layer_tensor_shape`, :func:`factorizations`: tensorizations for the search.

Layouts (which weight index goes to which tensor mode) are documented in :mod:`stsearch.layers._layout` and
``docs/theory.md`` ("Layers").
"""

from __future__ import annotations

from ._base import IMPLEMENTATIONS, FactorizedLayer
from ._layout import (
    LayerLayout,
    balanced_factorization,
    factorizations,
    layer_tensor_shape,
    normalize_layer_spec,
)
from .conv import FactorizedConv2d
from .linear import FactorizedLinear

__all__ = ["FactorizedConv2d", "FactorizedLinear", "FactorizedLayer", "LayerLayout", "IMPLEMENTATIONS",
           "factorizations", "balanced_factorization", "layer_tensor_shape", "normalize_layer_spec"]
