"""End-to-end searches on the embedded digits data (CPU, small recipes)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from stsearch import compress, models, search
from stsearch.pareto import front
from stsearch.study.early_stop import EarlyStopping

BASE = {
    "model": "digits_cnn",
    "dataset": "digits",
    "baseline": {"epochs": 8, "lr": 0.05, "batch_size": 64},
    "recipe": {"epochs": 1, "lr": 0.01, "batch_size": 64, "grad_clip": 5.0},
    "layers": [{"match": "conv*", "formats": ["dense", "tucker", "tt", "tr", "sttu", "stt", "str"],
                "rank": {"min": 2, "max": 8}, "t": [1, 2]}],
    "early_stopping": {"enabled": False},
    "trials": 5,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


def test_search_front_is_non_dominated_and_trials_load(runs: Path) -> None:
    study = search(BASE, study="front", runs_dir=runs, trials=5, progress=False)
    assert len(_finished(study)) == 5
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done, [t.user_attrs.get("reason") for t in study.trials]
    df = front(runs / "front")
    assert len(df) >= 1
    pts = [(t.values[0], t.values[1]) for t in done]
    on_front = set(df["trial"])
    for t in done:
        a, c = t.values
        dominated = any((a2 >= a and c2 >= c) and (a2 > a or c2 > c) for a2, c2 in pts)
        assert (t.number in on_front) == (not dominated), t.number
    # every complete trial directory rebuilds its trained model without the study
    for t in done:
        d = runs / "front" / "trials" / str(t.number)
        rec = json.loads((d / "plan.json").read_text())
        m = compress(models.create(rec["model"]["name"], **rec["model"]["kwargs"]), rec["plan"], init="random")
        m.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "complete" and metrics["compression_ratio"] == pytest.approx(t.values[1])
    for name in ("pareto.csv", "pareto.png", "pareto.html", "space.yaml", "baseline.pt", "baseline.json"):
        assert (runs / "front" / name).stat().st_size > 0


def test_resume_reaches_exactly_n(runs: Path) -> None:
    s = search(BASE, study="resume", runs_dir=runs, trials=2, progress=False)
    assert len(_finished(s)) == 2
    s = search(BASE, study="resume", runs_dir=runs, trials=4, progress=False)
    assert len(_finished(s)) == 4
    s = search(BASE, study="resume", runs_dir=runs, trials=4, progress=False)
    assert len(_finished(s)) == 4  # nothing more to do


def test_two_processes_share_one_sqlite_study(runs: Path, tmp_path: Path) -> None:
    search(BASE, study="warm", runs_dir=runs, trials=1, progress=False)  # baseline cache is now warm
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(BASE))
    code = textwrap.dedent(f"""
        import stsearch
        stsearch.search({str(space)!r}, study="conc", runs_dir={str(runs)!r}, trials=6, progress=False)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    study = optuna.load_study(study_name="conc", storage=f"sqlite:///{runs / 'conc' / 'study.db'}")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicated or lost numbers
    assert 6 <= len(_finished(study)) <= 7  # documented overshoot: at most workers - 1
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_early_stopping_rule() -> None:
    rule = EarlyStopping(enabled=True, after_epoch=1, margin=0.05)
    front_curves = [(10.0, [0.90, 0.95]), (2.0, [0.99, 0.99])]
    assert rule.verdict(1, 0.80, 5.0, front_curves) is not None  # 0.80 < 0.90 - 0.05 at CR 10 ≥ 5
    assert rule.verdict(1, 0.86, 5.0, front_curves) is None
    assert rule.verdict(1, 0.80, 20.0, front_curves) is None  # nothing at a CR this high
    assert EarlyStopping(enabled=False).verdict(1, 0.0, 1.0, front_curves) is None
    assert EarlyStopping(after_epoch=2).verdict(1, 0.0, 1.0, front_curves) is None


def test_early_stopping_fires_on_a_planted_hopeless_trial(runs: Path) -> None:
    space = dict(BASE, recipe=dict(BASE["recipe"], epochs=3),
                 early_stopping={"enabled": True, "after_epoch": 1, "margin": 0.0})
    search(space, study="early", runs_dir=runs, trials=1, progress=False)
    study = optuna.load_study(study_name="early", storage=f"sqlite:///{runs / 'early' / 'study.db'}")
    # Plant a front member that reached 100% validation accuracy at every epoch at an enormous CR.
    study.add_trial(optuna.trial.create_trial(values=[1.0, 1e6], params={}, distributions={},
                                              user_attrs={"compression_ratio": 1e6, "val_curve": [1.0, 1.0, 1.0]}))
    study.enqueue_trial({"conv1.format": "tt", "conv1.tt.shape": 1, "conv1.tt.rank": 2,
                         "conv2.format": "tt", "conv2.tt.shape": 1, "conv2.tt.rank": 2,
                         "conv3.format": "tt", "conv3.tt.shape": 1, "conv3.tt.rank": 2})
    search(space, study="early", runs_dir=runs, trials=3, progress=False)
    hopeless = study.trials[-1]
    assert hopeless.state == TrialState.PRUNED
    assert hopeless.user_attrs["reason"].startswith("early stop after epoch 1")
    assert hopeless.user_attrs["epochs_saved"] == 2
    metrics = json.loads((runs / "early" / "trials" / str(hopeless.number) / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and "early stop" in metrics["reason"]


def test_canonical_plans_are_trained_once(runs: Path) -> None:
    space = dict(BASE, layers=[{"match": "conv3", "formats": ["tr", "str", "tt", "stt"], "shapes": {"depth": [2]},
                                "rank": {"choices": [4, 8]}, "t": [1, 2]}])
    search(space, study="canon", runs_dir=runs, trials=1, progress=False)
    study = optuna.load_study(study_name="canon", storage=f"sqlite:///{runs / 'canon' / 'study.db'}")
    first = len(study.trials)
    planted = [
        {"conv3.format": "str", "conv3.str.shape": 2, "conv3.str.t": 2, "conv3.str.rank": 8},  # STR(8, t=2)
        {"conv3.format": "tr", "conv3.tr.shape": 2, "conv3.tr.rank": 4},  # = TR(8/2)
        {"conv3.format": "stt", "conv3.stt.shape": 2, "conv3.stt.t": 1, "conv3.stt.rank": 8},  # STT with t = 1
        {"conv3.format": "tt", "conv3.tt.shape": 2, "conv3.tt.rank": 8},  # = TT
    ]
    for p in planted:
        study.enqueue_trial(p)
    search(space, study="canon", runs_dir=runs, trials=first + 4, progress=False)
    t = {tr.number: tr for tr in optuna.load_study(study_name="canon",
                                                   storage=f"sqlite:///{runs / 'canon' / 'study.db'}").trials}
    a, b, c, d = (t[first + i] for i in range(4))
    assert a.user_attrs["plan"]["conv3"]["format"] == "str" and b.user_attrs["plan"]["conv3"]["format"] == "tr"

    def source(tr: optuna.trial.FrozenTrial) -> int:
        r = tr.user_attrs.get("reused_from")
        return tr.number if r is None else r

    # The classical twin reuses the training of its ST name (or of an earlier trial of the same model).
    assert b.user_attrs.get("reused_from") == source(a) and b.values == a.values
    assert d.user_attrs.get("reused_from") == source(c) and d.values == c.values
    assert a.user_attrs["canonical_key"] == b.user_attrs["canonical_key"] != c.user_attrs["canonical_key"]
    trained = runs / "canon" / "trials" / str(source(a)) / "model.pt"
    reused_dir = runs / "canon" / "trials" / str(b.number)
    assert json.loads((reused_dir / "metrics.json").read_text())["reused_from"] == source(a)
    assert (reused_dir / "model.pt").read_bytes() == trained.read_bytes()
