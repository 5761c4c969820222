"""A tiny real search on digits, built once per test session and shared by the export/report/CLI tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SPACE = {
    "model": "digits_cnn",
    "dataset": "digits",
    "baseline": {"epochs": 4, "lr": 0.05, "batch_size": 64},
    "recipe": {"epochs": 1, "lr": 0.01, "batch_size": 64, "grad_clip": 5.0},
    "layers": [{"match": ["conv2", "conv3", "fc"], "formats": ["tucker", "tt", "stt", "tr", "str"],
                "rank": {"min": 2, "max": 6}, "t": [1, 2]}],
    "constraints": {"max_accuracy_drop": 0.5},
    "early_stopping": {"enabled": False},
    "sampler": {"name": "random", "seed": 3},
    "trials": 4,
}
STUDY = "tiny"
_CACHE: dict[str, Path] = {}


def tiny_run(factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/runs/tiny``: a finished 4-trial search (at least one complete trial). Do not modify it; use
    :func:`copy_run`."""
    if "run" not in _CACHE:
        from stsearch import search

        runs = factory.mktemp("runs")
        search(SPACE, study=STUDY, runs_dir=runs, progress=False)  # one thread: tests/conftest.py
        _CACHE["run"] = runs / STUDY
    return _CACHE["run"]


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run directory (its SQLite study included) to damage in a test."""
    shutil.copytree(run, dest)
    return dest
