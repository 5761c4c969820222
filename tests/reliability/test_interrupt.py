"""Interruption: Ctrl-C and SIGKILL of real ``stsearch search`` processes lose no finished trial, leave no trial
RUNNING, and the same command resumes to N."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from stsearch.cli import main
from stsearch.study.engine import HOST, fail_dead_trials
from stsearch.study.rundir import RunDir, resolve_storage

from ._common import (
    FAST,
    FINISHED,
    INTERRUPTED,
    SLOW,
    by_state,
    lost,
    popen,
    python_cmd,
    record,
    run,
    snapshot,
    stderr_lines,
    storage,
    stsearch_cmd,
    trials,
    wait_for,
    write_space,
)

N = 4


def _search(space: Path, runs: Path, study: str, *extra: str) -> list[str]:
    return stsearch_cmd("search", str(space), "--study", study, "--runs-dir", str(runs), "--trials", str(N), *extra)


def _resume(space: Path, runs: Path, study: str, *extra: str) -> str:
    """The same ``stsearch search`` command again (in this process, to skip the imports); its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_search(space, runs, study, *extra)[1:]) == 0
    return out.getvalue()


def _training_trial(run_dir: Path, pid: int, finished: int) -> optuna.trial.FrozenTrial | None:
    """The RUNNING trial of process ``pid`` once ``finished`` trials are done and it has reported 1 or 2 of its 4
    epochs (so that at least one epoch of training is left when the signal arrives)."""
    if not (run_dir / "study.db").exists():
        return None
    ts = trials(run_dir, storage(run_dir))
    if len(by_state(ts, *FINISHED)) < finished:
        return None
    return next((t for t in by_state(ts, TrialState.RUNNING)
                 if t.user_attrs.get("pid") == pid and 1 <= len(t.user_attrs.get("val_curve", [])) <= 2), None)


def _check_resumed(run_dir: Path, before: dict, n: int = N) -> list[optuna.trial.FrozenTrial]:
    after = trials(run_dir)
    assert [t.number for t in after] == list(range(len(after)))  # no trial number lost or duplicated
    assert len(by_state(after, *FINISHED)) == n == len(after), [(t.number, t.state) for t in after]  # none RUNNING
    assert lost(before, snapshot(run_dir, after)) == []
    assert (run_dir / "pareto.csv").is_file()
    return after


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_training_fails_the_trial_keeps_the_rest_and_resumes(runs: Path, tmp_path: Path,
                                                                           sig: signal.Signals) -> None:
    """Ctrl-C, and SIGTERM (kill, SLURM, Kubernetes, docker stop), fail the trial in training with its reason."""
    space = write_space(tmp_path / "space.yaml", SLOW)
    name = sig.name.lower()
    run_dir = runs / name
    with popen(_search(space, runs, name, "--quiet")) as proc:
        victim = wait_for(lambda: _training_trial(run_dir, proc.pid, finished=2), timeout=240, proc=proc,
                          what="a trial in training after 2 finished ones")
        before = snapshot(run_dir, trials(run_dir))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert stderr_lines(err) == [INTERRUPTED] and "Traceback" not in err + out
    ts = {t.number: t for t in trials(run_dir)}
    cut = ts[victim.number]
    assert cut.state == TrialState.FAIL and cut.user_attrs["reason"].startswith("interrupted"), cut.user_attrs
    metrics = json.loads((run_dir / "trials" / str(cut.number) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["reason"].startswith("interrupted")
    assert not by_state(list(ts.values()), TrialState.RUNNING, TrialState.WAITING)
    assert lost(before, snapshot(run_dir, list(ts.values()))) == []

    _resume(space, runs, name, "--quiet")
    after = _check_resumed(run_dir, before)
    record(fault=f"{sig.name} during training (external signal)", finished_before=len(before),
           trials_lost=len(lost(before, snapshot(run_dir, after))), interrupted_trial=cut.number,
           outcome="FAIL: " + cut.user_attrs["reason"], exit_code=130, resumed_to=len(after))


def test_sigkill_mid_trial_is_failed_at_the_next_start_and_the_search_resumes(runs: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", SLOW)
    run_dir = runs / "sigkill"
    with popen(_search(space, runs, "sigkill", "--quiet")) as proc:
        victim = wait_for(lambda: _training_trial(run_dir, proc.pid, finished=2), timeout=240, proc=proc,
                          what="a trial in training after 2 finished ones")
        before = snapshot(run_dir, trials(run_dir))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ts = {t.number: t for t in trials(run_dir)}
    assert ts[victim.number].state == TrialState.RUNNING  # nothing cleaned up: the worker died mid-trial
    restart = time.time()
    out = _resume(space, runs, "sigkill")  # not --quiet: prints what it failed
    assert f"marked 1 trial(s) whose worker is gone as failed: [{victim.number}]" in out
    after = _check_resumed(run_dir, before)
    dead = next(t for t in after if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["reason"] == (f"worker {HOST}:{proc.pid} is gone (killed or crashed); trial failed on "
                                         "restart")
    # failed at once: before the resumed run started its first trial. When the victim was the last of the N
    # (three trials had finished by the time the poll saw it train), the resume needs no new trial at all.
    new_starts = [t.datetime_start for t in after if t.number > max(ts)]
    assert not new_starts or dead.datetime_complete <= min(new_starts)
    assert dead.datetime_complete.timestamp() >= restart - 1
    metrics = json.loads((run_dir / "trials" / str(dead.number) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["reason"] == dead.user_attrs["reason"]
    record(fault="SIGKILL of the worker mid-trial", finished_before=len(before),
           trials_lost=len(lost(before, snapshot(run_dir, after))), killed_trial=dead.number,
           outcome="FAIL at next start: " + dead.user_attrs["reason"], resumed_to=len(after))


# Ctrl-C delivered (deterministically, by the process itself) while Optuna creates or records a trial.
_INJECT = """
import os, signal, sys
import optuna
import optuna.study._optimize as _opt
from stsearch.cli import main

where, at = sys.argv[1], int(sys.argv[2])
calls = [0]


def fire():
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGINT)


if where == "ask":
    real_ask = optuna.Study.ask

    def ask(self, *a, **k):
        trial = real_ask(self, *a, **k)
        fire()  # the trial exists and is RUNNING; the objective has not started
        return trial

    optuna.Study.ask = ask
else:
    real_tell = _opt._tell_with_warning

    def tell(*a, **k):
        fire()  # the objective returned; Optuna has not stored the result yet
        return real_tell(*a, **k)

    _opt._tell_with_warning = tell
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where", ["ask", "tell"])
def test_sigint_while_optuna_creates_or_records_a_trial(where: str, runs: Path, tmp_path: Path) -> None:
    """Before the fix, Ctrl-C in Optuna's tell left the trained trial RUNNING and crashed with a traceback
    (UnboundLocalError in optuna's _run_trial); in ask, it left a RUNNING trial with no worker PID that nothing
    ever failed. Now the signal is deferred until Optuna is done with the trial."""
    space = write_space(tmp_path / "space.yaml", FAST)
    study = f"defer-{where}"
    run_dir = runs / study
    cmd = python_cmd(_INJECT) + [where, "3"] + _search(space, runs, study, "--quiet")[1:]
    first = run(cmd)
    assert first.returncode == 130, first.stderr
    assert stderr_lines(first.stderr) == [INTERRUPTED]
    ts = trials(run_dir)
    assert not by_state(ts, TrialState.RUNNING, TrialState.WAITING), [(t.number, t.state) for t in ts]
    third = ts[2]
    if where == "tell":  # trained and kept
        assert third.state == TrialState.COMPLETE and len(ts) == 3
        assert json.loads((run_dir / "trials" / "2" / "metrics.json").read_text())["status"] == "complete"
    else:  # failed before training, with the reason
        assert third.state == TrialState.FAIL and len(ts) == 3
        assert third.user_attrs["reason"] == "interrupted (KeyboardInterrupt) before the trial started"
    before = snapshot(run_dir, ts)
    _resume(space, runs, study, "--quiet")
    after = _check_resumed(run_dir, before)
    record(fault=f"SIGINT inside Optuna's {where} (self-signal at the 3rd call)", finished_before=len(before),
           trials_lost=len(lost(before, snapshot(run_dir, after))), outcome=f"trial 2 {third.state.name}",
           exit_code=130, resumed_to=len(after))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_dead_workers_are_failed_with_a_reason_live_ones_are_left(tmp_path: Path) -> None:
    """Same host: a dead PID fails the trial. Elsewhere: a heartbeat older than the grace period does (RDB
    storages; here SQLite with a 1 s heartbeat and a 4 s grace period). Live workers are never touched."""
    run_dir = RunDir(tmp_path / "hb")
    store = resolve_storage(None, run_dir, heartbeat=1)
    study = optuna.create_study(study_name="hb", storage=store, directions=["maximize", "maximize"])
    dead_pid = _dead_pid()
    specs = {"dead-here": (HOST, dead_pid), "alive-here": (HOST, os.getppid()),
             "silent-elsewhere": ("node-b", 1234), "beating-elsewhere": ("node-c", 99)}
    ids = {}
    for name, (host, pid) in specs.items():
        t = study.ask()
        t.set_user_attr("host", host)
        t.set_user_attr("pid", pid)
        store.record_heartbeat(t._trial_id)
        ids[name] = t
    time.sleep(5)
    store.record_heartbeat(ids["beating-elsewhere"]._trial_id)
    store.record_heartbeat(ids["alive-here"]._trial_id)
    failed = fail_dead_trials(study, run_dir)
    assert sorted(failed) == sorted([ids["dead-here"].number, ids["silent-elsewhere"].number])
    got = {t.number: t for t in study.get_trials()}
    assert got[ids["dead-here"].number].user_attrs["reason"].startswith(f"worker {HOST}:{dead_pid} is gone")
    reason = got[ids["silent-elsewhere"].number].user_attrs["reason"]
    assert reason.startswith("worker node-b:1234 is gone (no heartbeat for more than 4 s")
    for name in ("alive-here", "beating-elsewhere"):
        assert got[ids[name].number].state == TrialState.RUNNING
    for name in ("dead-here", "silent-elsewhere"):
        m = json.loads((run_dir.trial_dir(ids[name].number) / "metrics.json").read_text())
        assert m["status"] == "failed" and m["reason"] == got[ids[name].number].user_attrs["reason"]
    assert fail_dead_trials(study, run_dir) == []  # idempotent


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid

