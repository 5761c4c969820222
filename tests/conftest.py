"""Shared test settings: loopback-only Ray, no hypothesis deadlines, deterministic torch."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("stsearch", deadline=None, max_examples=50)
settings.load_profile("stsearch")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
