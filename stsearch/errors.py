"""The project's own error types.

Every error raised on bad user input is a :class:`StsearchError`. It subclasses :class:`ValueError`, so code
that already catches ``ValueError`` keeps working, and its message names the offending field and value.
"""

from __future__ import annotations


class StsearchError(ValueError):
    """Base class of every error stsearch raises on bad input."""


class ConfigError(StsearchError):
    """A search space, plan or CLI argument is malformed. The message names the field and the value."""


class ShapeError(StsearchError):
    """Shapes, ranks or STP factors that do not fit together."""


class RunError(StsearchError):
    """A run directory, trial, checkpoint or study is missing, corrupt or incompatible."""


class DataError(StsearchError):
    """A dataset is missing or corrupt. The message says where stsearch looked and how to fix it."""
