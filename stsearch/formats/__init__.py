"""The format registry: one definition per format, used by the math, the layers and the search.

>>> x = random_tensor((8, 8, 9), "str", rank=4, t=2)
>>> x.format, x.ranks, x.t, x.num_params
('str', (4, 4, 4), (2, 2), 100)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import ring, tt, tucker  # noqa: F401  (registers the formats)
from .base import _REGISTRY as _registry
from .base import Equivalence, FactorizedTensor, Format, Relayout, get_format

FORMATS: tuple[str, ...] = ("tucker", "tt", "tr", "sttu", "stt", "str")
"""Registered tensor formats. A layer plan may also say ``"dense"`` (keep the layer as it is)."""

assert set(_registry) == set(FORMATS)

__all__ = ["FORMATS", "FactorizedTensor", "Format", "Equivalence", "Relayout", "get_format", "random_tensor",
           "decompose", "num_params"]


def random_tensor(shape: Sequence[int], fmt: str, rank, t=1, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> FactorizedTensor:
    """A random tensor in format ``fmt``: Gaussian factors scaled so that ``to_tensor()`` has unit RMS.

    shape: (I_1, …, I_N); rank: int or one per bond; t: int or one per STP-joined factor.
    """
    f = get_format(fmt)
    ranks, ts = f.normalize(shape, rank, t)
    shape = tuple(int(s) for s in shape)
    return FactorizedTensor(f, shape, ranks, ts, f.random_factors(shape, ranks, ts, generator=generator,
                                                                   dtype=dtype))


def decompose(x: torch.Tensor, fmt: str, rank, t=1, **kw) -> FactorizedTensor:
    """Decompose ``x`` (I_1, …, I_N) into format ``fmt`` at the given ranks and t.

    Classical formats: HOSVD + HOOI, TT-SVD, TR-SVD + ALS. ST formats with a classical equivalent run that
    algorithm on the equivalent and map back (same error); mixed-t topologies are fitted by ALS.
    """
    f = get_format(fmt)
    ranks, ts = f.normalize(tuple(x.shape), rank, t)
    return FactorizedTensor(f, tuple(x.shape), ranks, ts, f.decompose(x, ranks, ts, **kw))


def num_params(shape: Sequence[int], fmt: str, rank, t=1) -> int:
    """Parameter count of ``fmt`` on ``shape`` without building anything (validates the arguments)."""
    f = get_format(fmt)
    ranks, ts = f.normalize(shape, rank, t)
    return f.num_params(tuple(shape), ranks, ts)
