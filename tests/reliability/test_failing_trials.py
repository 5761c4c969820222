"""Failing trials: NaN or diverging loss, out-of-memory, a broken data pipeline. Each gives a FAILED trial with the
reason in its user attributes and ``metrics.json``; the search goes on. A study where nothing completes ends with
one clear line (CLI exit 2), not an empty plot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import stsearch.surgery
import stsearch.training
from stsearch import search
from stsearch.cli import main
from stsearch.errors import RunError
from stsearch.pareto import front

from ._common import FAST, FINISHED, by_state, non_dominated, record, stderr_lines, write_space

OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (simulated by a forward hook)"
BROKEN = "simulated: truncated image file in the data pipeline"


class _BrokenSplit:
    """A training split whose batch iterator dies after two batches (as a loader hitting a corrupt file)."""

    def __init__(self, split: Any):
        self._split = split

    def __getattr__(self, name: str) -> Any:
        return getattr(self._split, name)

    def __len__(self) -> int:
        return len(self._split)

    def batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for i, batch in enumerate(self._split.batches(*args, **kwargs)):
            if i == 2:
                raise OSError(BROKEN)
            yield batch


class _BrokenData:
    def __init__(self, data: Any):
        self._data = data
        self.train = _BrokenSplit(data.train)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


def _oom_hook(module: nn.Module, args: Any, output: Any) -> Any:
    if module.training:
        raise torch.OutOfMemoryError(OOM)
    return None


def _nan_hook(module: nn.Module, args: Any, output: torch.Tensor) -> Any:
    if module.training:
        return output * float("nan")
    return None


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    """``{trial number: fault}``; the Objective seeds compress() and fit() with the trial number."""
    plan: dict[int, str] = {}
    real_compress, real_fit = stsearch.surgery.compress, stsearch.training.fit

    def compress(model: nn.Module, p: Any, *args: Any, **kwargs: Any) -> nn.Module:
        m = real_compress(model, p, *args, **kwargs)
        fault = plan.get(kwargs.get("seed"))
        if fault == "oom":
            m.register_forward_hook(_oom_hook)
        elif fault == "nan":
            m.register_forward_hook(_nan_hook)
        return m

    def fit(model: nn.Module, data: Any, *args: Any, **kwargs: Any) -> Any:
        if plan.get(kwargs.get("seed")) == "data":
            data = _BrokenData(data)
        return real_fit(model, data, *args, **kwargs)

    monkeypatch.setattr(stsearch.surgery, "compress", compress)
    monkeypatch.setattr(stsearch.training, "fit", fit)
    return plan


def test_oom_nan_and_data_faults_fail_their_trial_and_the_search_goes_on(runs: Path,
                                                                          faults: dict[int, str]) -> None:
    faults.update({1: "oom", 2: "nan", 3: "data"})
    study = search(dict(FAST, trials=6), study="faults", runs_dir=runs, progress=False)
    ts = {t.number: t for t in study.trials}
    assert sorted(ts) == list(range(6)) and all(t.state in FINISHED for t in ts.values())
    expected = {1: f"OutOfMemoryError: {OOM}",
                2: "TrialFailed: training stopped with status 'nan': training loss became nan at epoch 1",
                3: f"OSError: {BROKEN}"}
    for n, reason in expected.items():
        t = ts[n]
        assert t.state == TrialState.FAIL, (n, t.state)
        assert t.user_attrs["reason"].startswith(reason), t.user_attrs["reason"]
        d = runs / "faults" / "trials" / str(n)
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "failed" and metrics["reason"] == t.user_attrs["reason"]
        assert (d / "plan.json").is_file() and not (d / "model.pt").exists()  # no weights from a failed trial
        record(fault={"oom": "torch.OutOfMemoryError raised by a forward hook", "nan": "NaN loss (forward hook)",
                      "data": "OSError inside the training batch iterator"}[faults[n]],
               trial=n, outcome="FAIL: " + t.user_attrs["reason"][:120], trials_lost=0)
    complete = by_state(list(ts.values()), TrialState.COMPLETE)
    assert {t.number for t in complete} == {0, 4, 5}  # the search went on after each failure
    points = {t.number: (t.values[0], t.values[1]) for t in complete}
    assert set(front(runs / "faults")["trial"]) == non_dominated(points)


def test_a_huge_learning_rate_diverges_and_every_trial_failing_is_one_clear_line(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path / "diverge.yaml", dict(FAST, recipe={"epochs": 1, "lr": 1.0e8, "batch_size": 64}))
    code = main(["search", str(space), "--study", "diverge", "--runs-dir", str(runs), "--trials", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    lines = stderr_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stsearch: error: study 'diverge': no trial completed (3 failed")
    assert "training loss became" in lines[0] and "lower recipe.lr" in lines[0]
    run_dir = runs / "diverge"
    assert not (run_dir / "pareto.png").exists() and not (run_dir / "pareto.csv").exists()
    for n in range(3):
        m = json.loads((run_dir / "trials" / str(n) / "metrics.json").read_text())
        assert m["status"] == "failed" and "status 'nan'" in m["reason"]
    record(fault="recipe lr=1e8 (every trial diverges)", trials=3, outcome=lines[0][:160], exit_code=code,
           trials_lost=0)


def test_every_trial_pruned_names_the_pruning_reason(runs: Path) -> None:
    """Before the fix: 'no trial completed (0 failed; first reason: no trial ran)' although 3 trials ran."""
    space = dict(FAST, constraints={"min_compression_ratio": 1000})
    with pytest.raises(RunError) as e:
        search(space, study="all-pruned", runs_dir=runs, trials=3, progress=False)
    msg = str(e.value)
    assert msg.startswith("study 'all-pruned': no trial completed (3 pruned")
    assert "min_compression_ratio 1000" in msg and "no trial ran" not in msg
    assert not (runs / "all-pruned" / "pareto.png").exists()


def test_no_trial_at_all_says_so(runs: Path) -> None:
    with pytest.raises(RunError, match=r"no trial completed \(no trial ran"):
        search(FAST, study="none-ran", runs_dir=runs, trials=3, timeout=1e-9, progress=False)
