"""Reproducibility: the same space and seed on the same CPU give the same sampled plans and the same front, in two
separate runs directories (each trains its own baseline), and a resumed study does not replay earlier plans."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

import stsearch
from stsearch import models, search
from stsearch.pareto import front
from stsearch.study.sampling import suggest_plan
from stsearch.study.space import load_space

from ._common import FAST, popen, record, stsearch_cmd, trials, write_space

SPACE = dict(FAST, sampler={"name": "tpe", "n_startup_trials": 3}, trials=6)
"""TPE after 3 random start-up trials: the model-based part is compared too."""


def test_same_space_seed_and_cpu_give_the_same_plans_and_front(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", SPACE)
    dirs = [tmp_path / "a", tmp_path / "b"]
    cmds = [stsearch_cmd("search", str(space), "--study", "repro", "--runs-dir", str(d), "--seed", "5", "--quiet")
            for d in dirs]
    with popen(cmds[0]) as p, popen(cmds[1]) as q:  # at the same time: reproducible under load as well
        outs = [p.communicate(timeout=600), q.communicate(timeout=600)]
    assert [p.returncode, q.returncode] == [0, 0], outs
    runs = [d / "repro" for d in dirs]
    a, b = (trials(r) for r in runs)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert (x.number, x.state, x.params) == (y.number, y.state, y.params)
        assert x.user_attrs.get("plan") == y.user_attrs.get("plan")
        assert x.values == y.values  # bit for bit
    assert json.loads((runs[0] / "baseline.json").read_text())["accuracy"] == \
        json.loads((runs[1] / "baseline.json").read_text())["accuracy"]
    fa, fb = (front(r)[["trial", "accuracy", "compression_ratio"]] for r in runs)
    assert fa.equals(fb) and len(fa) >= 1
    for n in fa["trial"]:
        sa, sb = (stsearch.load(r / "trials" / str(n)).state_dict() for r in runs)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    record(fault="same space, seed 5, two runs dirs at once", trials=len(a), identical_plans=len(a),
           identical_values=sum(x.values == y.values for x, y in zip(a, b)), front=list(fa["trial"]))


def test_another_seed_samples_other_plans() -> None:
    """Control for the test above: the plans do depend on the seed."""
    sp = load_space(SPACE)
    ctx = SimpleNamespace(space=sp, baseline_model=models.create("digits_cnn"))

    def plans(seed: int) -> list[dict]:
        study = optuna.create_study(directions=sp.directions, sampler=sp.make_sampler(seed))
        out = []
        for _ in range(3):
            trial = study.ask()
            out.append(suggest_plan(trial, ctx).to_dict())
            study.tell(trial, [0.5, 2.0])
        return out

    assert plans(5) == plans(5) and plans(5) != plans(6)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_does_not_replay_the_seeds_first_plans(sampler: str, runs: Path) -> None:
    """Before the fix, a seeded sampler restarted on a study drew its first samples again: a resumed random
    search re-ran the plans it had (all reused, no new information), and TPE's start-up trials repeated."""
    space = dict(FAST, sampler={"name": sampler, "seed": 3, **({"n_startup_trials": 10} if sampler == "tpe" else {})})
    study = f"resume-{sampler}"
    search(space, study=study, runs_dir=runs, trials=3, progress=False)
    search(space, study=study, runs_dir=runs, trials=6, progress=False)
    ts = trials(runs / study)
    params = [json.dumps(t.params, sort_keys=True) for t in ts]
    assert len(set(params)) == 6, [t.user_attrs.get("reused_from") for t in ts]
    assert not [t for t in ts if t.user_attrs.get("reused_from") is not None and t.state == TrialState.COMPLETE]
    record(fault=f"resume of a seeded {sampler} search (3 then 6 trials)", trials=6,
           distinct_plans=len(set(params)), trials_lost=0)
