"""Concurrency: 3 ``stsearch search`` processes on one study (SQLite, and a JournalStorage file) asked for 12 trials
end with 12-14 finished trials (overshoot at most workers - 1), no duplicated or lost trial number, no plan
sampled twice, and a front equal to the brute-force non-dominated set of the complete trials."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from stsearch.pareto import front

from ._common import (
    FAST,
    FINISHED,
    by_state,
    non_dominated,
    popen,
    record,
    storage,
    stsearch_cmd,
    write_space,
)

WORKERS, N = 3, 12
STATUS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_three_workers_share_one_study(kind: str, runs: Path, tmp_path: Path) -> None:
    study = f"conc-{kind}"
    run_dir = runs / study
    space = write_space(tmp_path / "space.yaml", dict(FAST, trials=N))
    journal = run_dir / "journal.log"
    extra = ["--storage", f"journal:{journal}"] if kind == "journal" else []
    cmd = stsearch_cmd("search", str(space), "--study", study, "--runs-dir", str(runs), "--quiet", *extra)
    with popen(cmd) as a, popen(cmd) as b, popen(cmd) as c:
        outs = [p.communicate(timeout=600) for p in (a, b, c)]
        codes = [p.returncode for p in (a, b, c)]
    assert codes == [0] * WORKERS, outs
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        store = JournalStorage(JournalFileBackend(str(journal)))
        assert not (run_dir / "study.db").exists()
    else:
        store = storage(run_dir)
    ts = optuna.load_study(study_name=study, storage=store).get_trials(deepcopy=False)
    numbers = [t.number for t in ts]
    assert sorted(numbers) == list(range(len(ts)))  # no duplicated or lost trial number
    finished = by_state(ts, *FINISHED)
    assert len(finished) == len(ts) and N <= len(ts) <= N + WORKERS - 1, [(t.number, t.state) for t in ts]
    assert len({t.user_attrs["pid"] for t in ts}) == WORKERS  # every worker ran trials
    assert not [t for t in ts if "is gone" in str(t.user_attrs.get("reason"))]  # live workers are left alone
    params = [json.dumps(t.params, sort_keys=True) for t in ts]
    assert len(set(params)) == len(params), "two workers sampled the same plan"
    for t in ts:  # the trial directories agree with the study
        m = json.loads((run_dir / "trials" / str(t.number) / "metrics.json").read_text())
        assert m["status"] == STATUS[t.state], (t.number, m["status"], t.state)
        if t.state == TrialState.COMPLETE:
            assert m["accuracy"] == t.values[0] and m["compression_ratio"] == t.values[1]
            assert (run_dir / "trials" / str(t.number) / "model.pt").is_file()
    complete = {t.number: (t.values[0], t.values[1]) for t in by_state(ts, TrialState.COMPLETE)}
    assert complete
    assert set(front(run_dir)["trial"]) == non_dominated(complete)
    record(fault=f"{WORKERS} workers on one {kind} study, {N} trials asked", finished=len(finished),
           trials_lost=0, duplicate_numbers=len(numbers) - len(set(numbers)),
           duplicate_plans=len(params) - len(set(params)), front=sorted(non_dominated(complete)))



def _open_at_once(root: str, barrier: Any, errors: Any) -> None:
    from stsearch.study.rundir import RunDir, resolve_storage

    barrier.wait()
    try:
        resolve_storage(None, RunDir.of(root, "race"))
    except Exception as e:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(e).__name__}: {e}"[:300])


def test_workers_creating_a_new_sqlite_study_at_once_all_start(tmp_path: Path) -> None:
    """Before the fix, most of 6 workers started together on a new study died in every round tried: 'table
    studies already exists' or a duplicate alembic_version row while Optuna created the schema."""
    ctx = mp.get_context("fork")  # children start at once, with everything imported
    k, rounds = 6, 2
    for r in range(rounds):
        barrier, errors = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(str(tmp_path / str(r)), barrier, errors))
                 for _ in range(k)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert [p.exitcode for p in procs] == [0] * k and not failures, failures
    record(fault=f"{k} processes opening one new SQLite study at the same instant, {rounds} rounds",
           failed_to_start=0, trials_lost=0)
