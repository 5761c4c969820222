"""Reading runs from outside the search: resolve_run, status (also while a trial runs), dashboard, latency."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from stsearch.errors import RunError
from stsearch.pareto import front
from stsearch.study.reports import (
    _union_seconds,
    dashboard_server,
    format_status,
    format_status_table,
    latency_ms,
    list_status,
    median_ms,
    open_storage,
    resolve_run,
    run_input_shape,
    status,
    torch_threads,
)
from tests._runs import STUDY, copy_run, tiny_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ resolve_run
def test_resolve_run_by_path_name_and_storage(run: Path, tmp_path: Path) -> None:
    assert resolve_run(run) == run
    assert resolve_run(STUDY, runs_dir=run.parent) == run.parent / STUDY
    url = f"sqlite:///{run / 'study.db'}"
    assert resolve_run(STUDY, runs_dir=tmp_path, storage=url) == run.resolve()  # via the study's run_dir
    with pytest.raises(RunError, match=rf"run 'other' not found: no directory other or {tmp_path}/other, and no "
                                       rf"study 'other' in {url} \(studies: {STUDY}\)"):
        resolve_run("other", runs_dir=tmp_path, storage=url)


def test_resolve_run_errors_name_what_was_looked_for(run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match=rf"run 'nope' not found: no directory nope or {tmp_path}/nope$"):
        resolve_run("nope", runs_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=rf"{tmp_path}/empty is an empty run: no study.db"):
        resolve_run(tmp_path / "empty")
    with pytest.raises(RunError, match=rf"{run.parent} is a runs directory, not a run; pass one of its studies: "
                                       rf"{STUDY}"):
        resolve_run(run.parent)
    with pytest.raises(RunError, match="RUN: give a run directory"):
        resolve_run("")
    with pytest.raises(RunError, match=rf"study database {tmp_path}/x.db does not exist"):
        open_storage(f"sqlite:///{tmp_path}/x.db")
    assert not (tmp_path / "x.db").exists()  # never created


# ------------------------------------------------------------------------------------------------ status
def test_status_of_a_finished_run_reads_without_writing(run: Path) -> None:
    before = _digest(run / "study.db")
    st = status(run)
    assert _digest(run / "study.db") == before
    assert st.study == STUDY and st.source == "storage" and st.state == "done" and st.target == 4
    assert st.counts == {"complete": 4, "pruned": 0, "failed": 0, "running": 0} and st.finished == 4
    assert st.front_size == len(front(run)) and st.max_drop == 0.5 and st.eta_s == 0.0
    assert st.elapsed_s is not None and st.elapsed_s > 0
    base = json.loads((run / "baseline.json").read_text())["accuracy"]
    recs = [json.loads((run / "trials" / str(n) / "metrics.json").read_text()) for n in range(4)]
    ok = [r for r in recs if r["accuracy"] >= base - 0.5]
    best = max(ok, key=lambda r: (r["compression_ratio"], r["accuracy"]))
    assert st.best_cr == pytest.approx(best["compression_ratio"]) and st.best_trial == best["trial"]
    text = format_status(st)
    assert "done" in text and "4 of 4 finished: 4 complete" in text and f"(trial {best['trial']})" in text
    assert json.loads(json.dumps(st.to_dict(), default=str))["finished"] == 4


def test_status_with_a_trial_left_running(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / STUDY)
    space = yaml.safe_load((r / "space.yaml").read_text())
    (r / "space.yaml").write_text(yaml.safe_dump(dict(space, trials=8)))
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{r / 'study.db'}")
    study.ask()  # a worker that started a trial and is still on it
    st = status(r)
    assert st.counts["running"] == 1 and st.counts["complete"] == 4 and st.state == "running"
    assert st.target == 8 and st.eta_s is not None and st.eta_s > 0
    # ETA = remaining trials at the finished-trial throughput over the active time
    assert st.eta_s == pytest.approx(4 * st.elapsed_s / 4, rel=0.05)
    assert "running" in format_status(st) and "1 running" in format_status(st)


def test_status_of_a_stopped_run_and_one_without_storage(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / STUDY)
    space = yaml.safe_load((r / "space.yaml").read_text())
    (r / "space.yaml").write_text(yaml.safe_dump(dict(space, trials=6)))
    st = status(r)
    assert st.state == "stopped" and st.eta_s is None and "run the same search to resume" in st.note
    (r / "study.db").unlink()
    st = status(r)
    assert st.source == "files" and st.counts["complete"] == 4 and st.front_size == len(front(run))


def test_list_status_of_a_runs_dir_with_two_studies(run: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    copy_run(run, runs / STUDY)
    other = copy_run(run, runs / "other")
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{other / 'study.db'}")
    optuna.copy_study(from_study_name=STUDY, from_storage=study._storage, to_storage=study._storage,
                      to_study_name="other")
    (runs / ".cache").mkdir()  # the baseline cache is not a study
    (runs / "notes").mkdir()  # nor is an unrelated folder
    sts = list_status(runs)
    assert [s.study for s in sts] == ["other", STUDY]
    assert all(s.counts["complete"] == 4 and s.state == "done" for s in sts)
    table = format_status_table(sts)
    assert "other" in table and STUDY in table and "4/4" in table
    (runs / "broken").mkdir()
    (runs / "broken" / "study.db").write_bytes(b"garbage")
    sts = list_status(runs)
    broken = next(s for s in sts if s.study == "broken")
    assert broken.state == "error" and "broken" in broken.note
    assert "error" in format_status_table(sts)


def test_list_status_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=rf"runs directory {tmp_path}/none not found"):
        list_status(tmp_path / "none")
    with pytest.raises(RunError, match=rf"runs directory {tmp_path} holds no study"):
        list_status(tmp_path)


def test_union_of_trial_intervals() -> None:
    t = dt.datetime(2024, 1, 1)
    s = dt.timedelta(seconds=1)
    spans = [(t, t + 10 * s), (t + 5 * s, t + 12 * s), (t + 100 * s, t + 101 * s)]
    assert _union_seconds(spans) == 13.0 and _union_seconds([]) == 0.0


def test_input_shape_comes_from_the_baseline_record_or_the_dataset(run: Path, tmp_path: Path) -> None:
    assert run_input_shape(run) == (1, 8, 8)
    r = copy_run(run, tmp_path / "r")
    base = json.loads((r / "baseline.json").read_text())
    base.pop("input_shape", None)
    (r / "baseline.json").write_text(json.dumps(base))
    assert run_input_shape(r) == (1, 8, 8)


# ------------------------------------------------------------------------------------------------ dashboard
def test_dashboard_serves_http_200_on_loopback_then_stops(run: Path) -> None:
    before = _digest(run / "study.db")
    server, url = dashboard_server(run, port=0)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard/")
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        with urllib.request.urlopen(url.rstrip("/"), timeout=30) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
        with urllib.request.urlopen(url.replace("/dashboard/", "/api/studies"), timeout=30) as resp:
            assert resp.status == 200 and STUDY in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        th.join(10)
    assert not th.is_alive()
    assert _digest(run / "study.db") == before


def test_dashboard_errors(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / "r")
    (r / "study.db").unlink()
    with pytest.raises(RunError, match=rf"{r}: no study storage"):
        dashboard_server(r, port=0)
    server, url = dashboard_server(run, port=0)
    try:
        with pytest.raises(RunError, match=rf"--host/--port: cannot listen on 127.0.0.1:{server.server_port}"):
            dashboard_server(run, port=server.server_port)
    finally:
        server.server_close()


# ------------------------------------------------------------------------------------------------ latency
def test_latency_helpers_restore_the_thread_count() -> None:
    old = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    calls = []
    ms = median_ms(lambda: calls.append(1), repeats=7, warmup=2, min_time=0.0)
    assert ms >= 0 and len(calls) == 9
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).train()
    assert latency_ms(net, (1, 8, 8), batch=3, repeats=5, min_time=0.0) > 0
    assert net.training and torch.get_num_threads() == old
