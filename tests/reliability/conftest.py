"""Fixtures of the reliability suite: the dense baseline is trained once per session and shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._common import FAST, copy_cache


@pytest.fixture(scope="session")
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs directory whose ``.cache/baselines`` holds the digits baseline every space here uses."""
    from stsearch import search

    runs = tmp_path_factory.mktemp("baseline-runs")
    search(dict(FAST, trials=1), study="warm", runs_dir=runs, progress=False)
    return runs


@pytest.fixture(scope="module")
def runs(baseline_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs directory per test module, with the baseline cache already warm."""
    return copy_cache(baseline_cache, tmp_path_factory.mktemp("runs"))
