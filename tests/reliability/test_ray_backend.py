"""The Ray backend under the same faults (slow: each test starts a local Ray). Kill/interrupt/resume of Ray
searches is covered by tests/study/test_ray.py; here, diverging trials and a study where nothing completes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests._proc import descendants

from ._common import FAST, popen, record, stderr_lines, stsearch_cmd, trials, write_space

pytest.importorskip("ray")


@pytest.mark.slow
def test_every_trial_diverging_under_ray_is_recorded_and_one_line(runs: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "diverge.yaml", dict(FAST, recipe={"epochs": 1, "lr": 1.0e8, "batch_size": 64}))
    cmd = stsearch_cmd("search", str(space), "--study", "ray-diverge", "--runs-dir", str(runs), "--trials", "3",
                       "--backend", "ray", "--concurrency", "2", "--quiet")
    seen: set[int] = set()
    with popen(cmd) as proc:
        end = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < end:
            seen |= descendants(proc.pid)
            time.sleep(0.5)
        out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 30  # Ray's own processes exit after the driver
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in seen):
        time.sleep(0.5)
    for p in seen:
        if Path(f"/proc/{p}").exists():
            os.kill(p, signal.SIGKILL)
    assert proc.returncode == 2, (out, err)
    lines = [line for line in stderr_lines(err) if line.startswith("stsearch:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stsearch: error: study 'ray-diverge': no trial completed (3 failed")
    ts = trials(runs / "ray-diverge")
    assert len(ts) == 3 and all(t.state == TrialState.FAIL for t in ts), [(t.number, t.state) for t in ts]
    for t in ts:
        assert "status 'nan'" in t.user_attrs["reason"], t.user_attrs["reason"]
        m = json.loads((runs / "ray-diverge" / "trials" / str(t.number) / "metrics.json").read_text())
        assert m["status"] == "failed" and m["reason"] == t.user_attrs["reason"]
    assert not (runs / "ray-diverge" / "pareto.png").exists()
    record(fault="--backend ray, recipe lr=1e8 (every trial diverges)", trials=3, outcome=lines[0][:160],
           exit_code=proc.returncode, trials_lost=0)
