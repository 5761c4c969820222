"""Shared pieces of the reliability suite: tiny digits spaces, CLI subprocesses, study polling, fault records.

Every search here runs on the embedded digits data with a 1-epoch trial recipe (or a slightly longer one where
a signal must land inside training) and a 2-epoch dense baseline. The baseline is trained once per session
(``baseline_cache`` in ``conftest.py``) and copied into each module's runs directory.

Set ``STSEARCH_RELIABILITY_LOG=PATH`` to append one JSON line per injected fault (what was injected, trials
finished before and after, trials lost); ``docs/reliability.md`` quotes these records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tests._proc import sigint_default

BASELINE: dict[str, Any] = {"epochs": 2, "lr": 0.05, "batch_size": 64}
LAYERS: list[dict[str, Any]] = [{"match": ["conv2", "conv3", "fc"], "formats": ["tucker", "tt", "stt", "tr", "str"],
                                 "rank": {"min": 2, "max": 6}, "t": [1, 2]}]
FAST: dict[str, Any] = {
    "model": "digits_cnn",
    "dataset": "digits",
    "baseline": BASELINE,
    "recipe": {"epochs": 1, "lr": 0.01, "batch_size": 64, "grad_clip": 5.0},
    "layers": LAYERS,
    "early_stopping": {"enabled": False},
    "sampler": {"name": "random", "seed": 3},
    "trials": 4,
}
"""A 4-trial search: about 0.5 s per trial on one core."""

SLOW: dict[str, Any] = dict(FAST, recipe={"epochs": 4, "lr": 0.01, "batch_size": 16, "grad_clip": 5.0})
"""The same plans (same sampler and seed) trained 4 short epochs (2-5 s per trial), so a signal sent once the
first epoch is reported lands inside training."""

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED = "stsearch: interrupted; finished trials are kept, run the same command to resume"


def write_space(path: Path, space: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def stsearch_cmd(*args: str) -> list[str]:
    """The ``stsearch`` console script of this interpreter (``python -m stsearch.cli`` if it is missing)."""
    exe = Path(sys.executable).with_name("stsearch")
    return [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "stsearch.cli", *args]


def env() -> dict[str, str]:
    """Subprocess environment: no progress bars, one OpenMP thread, loopback-only Ray."""
    return dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def python_cmd(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run(cmd: Sequence[str], timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env(), cwd=cwd,
                          preexec_fn=sigint_default)


def storage(run_dir: Path) -> optuna.storages.RDBStorage:
    """A reader of ``<run>/study.db`` that waits for a busy writer instead of failing."""
    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'study.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def trials(run_dir: Path, store: Any = None) -> list[FrozenTrial]:
    study = optuna.load_study(study_name=run_dir.name, storage=store or storage(run_dir))
    return study.get_trials(deepcopy=False)


def by_state(ts: Sequence[FrozenTrial], *states: TrialState) -> list[FrozenTrial]:
    return [t for t in ts if t.state in states]


def snapshot(run_dir: Path, ts: Sequence[FrozenTrial]) -> dict[int, tuple[Any, ...]]:
    """(state, values, bytes of every file in trials/<n>/) of the finished trials: what must never change."""
    out = {}
    for t in by_state(ts, *FINISHED):
        d = run_dir / "trials" / str(t.number)
        files = {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.is_dir() else {}
        out[t.number] = (t.state, t.values, files)
    return out


def lost(before: dict[int, tuple[Any, ...]], after: dict[int, tuple[Any, ...]]) -> list[int]:
    """Finished trials of ``before`` that are missing or changed in ``after``."""
    return [n for n, v in before.items() if after.get(n) != v]


def wait_for(cond: Callable[[], Any], *, timeout: float, what: str, proc: subprocess.Popen | None = None,
             every: float = 0.25) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` (and the process output) on timeout or
    when ``proc`` exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = cond()
        except Exception:  # noqa: BLE001 - the study is being created or is busy
            got = None
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def popen(cmd: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    """A subprocess that is killed (never left behind) when the test fails."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=sigint_default)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def copy_cache(src_runs: Path, dest_runs: Path) -> Path:
    """``dest_runs`` with the session's baseline cache in it."""
    dest_runs.mkdir(parents=True, exist_ok=True)
    if (src_runs / ".cache").is_dir():
        shutil.copytree(src_runs / ".cache", dest_runs / ".cache", dirs_exist_ok=True)
    return dest_runs


def non_dominated(points: dict[int, tuple[float, float]]) -> set[int]:
    """Brute force: the trials no other trial dominates (both objectives maximised)."""
    return {n for n, (a, c) in points.items()
            if not any(a2 >= a and c2 >= c and (a2 > a or c2 > c) for a2, c2 in points.values())}


def record(**fields: Any) -> None:
    """Append one fault-injection record to ``$STSEARCH_RELIABILITY_LOG`` (when set)."""
    path = os.environ.get("STSEARCH_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(fields, default=str) + "\n")


@contextlib.contextmanager
def no_hang(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than ``seconds`` (SIGALRM; main thread)."""

    def boom(signum: int, frame: Any) -> None:
        raise TimeoutError(f"hung: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
