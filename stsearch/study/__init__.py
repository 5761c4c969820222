"""The search: YAML spaces, sampling, one trial's objective, the local and Ray backends.

Only :func:`search` is public at the top level (``stsearch.search``).
"""

from __future__ import annotations

from .runner import search

__all__ = ["search"]
