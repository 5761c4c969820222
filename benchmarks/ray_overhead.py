"""When does the Ray backend pay off? The same digits search, local Optuna (1 process) against Ray Tune.

Runs, on the embedded default space (``digits_cnn.yaml``: 3 fine-tuning epochs per trial) with N trials:

* ``local``: ``stsearch.search(..., backend="optuna")``: one process, torch using every core (its default);
* ``local-1t``: the same with one torch thread (on a busy 2-core machine, 2 intra-op threads often lose);
* ``ray``: ``stsearch.search(..., backend="ray", concurrency=2)``: a local Ray with 2 CPUs started and stopped by
  the search, 2 trials at once (1 CPU, 1 torch thread each);

and, on their own, Ray's fixed costs:

* start-up: ``ray.init`` of a local, loopback-only Ray, and ``ray.shutdown``;
* per-trial dispatch: for each Ray trial, the time from the driver's ask to the worker's tell, minus the time the
  trial's own work took (``metrics.json`` ``wall_time``: sampling replay, training, evaluation, files). It is
  what scheduling, the Tune actor (start-up or reuse), rebuilding the context from the object store and the
  storage round trips cost; the first trial of each actor carries the actor's start-up and imports.

The dense baseline is trained once beforehand (cached) and excluded from every figure. Results go to
``benchmarks/out/ray_overhead.json`` (``--smoke``: ``ray_overhead_smoke.json``); the table is printed as
Markdown (docs/_fragments/ray.md holds a copy).

    .venv/bin/python benchmarks/ray_overhead.py            # 12 trials (~4 minutes on 2 shared CPU cores)
    .venv/bin/python benchmarks/ray_overhead.py --smoke    # 4 trials of 1 epoch (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _space(smoke: bool) -> Any:
    from stsearch.study.space import default_space_path, load_space

    space = load_space(default_space_path())
    if smoke:
        d = space.to_dict()
        d["baseline"] = dict(d.get("baseline") or {}, epochs=3)
        d["recipe"] = dict(d.get("recipe") or {}, epochs=1)
        space = load_space(d)
    return space


def _trial_times(study: Any, run: Path) -> list[dict[str, Any]]:
    """Per finished trial: ask→tell seconds, the trial's own wall time, and their difference (dispatch)."""
    out = []
    for t in study.trials:
        if t.datetime_complete is None or t.datetime_start is None:
            continue
        span = (t.datetime_complete - t.datetime_start).total_seconds()
        m = run / "trials" / str(t.number) / "metrics.json"
        own = json.loads(m.read_text()).get("wall_time") if m.exists() else None
        out.append({"trial": t.number, "state": t.state.name, "pid": t.user_attrs.get("pid"), "span_s": span,
                    "own_s": own, "dispatch_s": None if own is None else span - float(own)})
    return out


def _summary(times: list[dict[str, Any]]) -> dict[str, Any]:
    first: set[int] = set()
    seen: set[Any] = set()
    for r in sorted(times, key=lambda r: r["trial"]):
        if r["pid"] not in seen:
            seen.add(r["pid"])
            first.add(r["trial"])
    d = [r["dispatch_s"] for r in times if r["dispatch_s"] is not None]
    later = [r["dispatch_s"] for r in times if r["dispatch_s"] is not None and r["trial"] not in first]
    firsts = [r["dispatch_s"] for r in times if r["dispatch_s"] is not None and r["trial"] in first]
    own = [r["own_s"] for r in times if r["own_s"] is not None]
    return {"trials": len(times), "workers": len(seen),
            "trial_work_s_sum": sum(own), "trial_work_s_median": statistics.median(own) if own else None,
            "dispatch_s_median": statistics.median(d) if d else None,
            "dispatch_s_first_per_worker_median": statistics.median(firsts) if firsts else None,
            "dispatch_s_later_median": statistics.median(later) if later else None}


def ray_startup(cpus: int) -> dict[str, float]:
    """Seconds for ``ray.init`` of a local loopback Ray with ``cpus`` CPUs, the first task, and ``ray.shutdown``."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR")
    t1 = time.perf_counter()
    ray.get(ray.remote(lambda: os.getpid()).remote())
    t2 = time.perf_counter()
    ray.shutdown()
    t3 = time.perf_counter()
    return {"init_s": t1 - t0, "first_task_s": t2 - t1, "shutdown_s": t3 - t2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="4 trials of 1 epoch (about a minute)")
    p.add_argument("--trials", type=int, help="trials per backend (default 12; 4 with --smoke)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", help="JSON results (default: benchmarks/out/ray_overhead[_smoke].json)")
    p.add_argument("--runs-dir", help="where the studies go (default: a temporary folder, removed); keep one to "
                   "reuse the cached baseline")
    a = p.parse_args(argv)
    for k, v in LOOPBACK.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from stsearch import search

    n = a.trials or (4 if a.smoke else 12)
    space = _space(a.smoke)
    runs = Path(a.runs_dir) if a.runs_dir else Path(tempfile.mkdtemp(prefix="stsearch-ray-bench-"))
    cpus = len(os.sched_getaffinity(0))
    try:
        t0 = time.perf_counter()
        # trains and caches the baseline, and warms this process up
        search(space, study=f"warmup-{time.time_ns()}", runs_dir=runs, trials=1, progress=False)
        warm = time.perf_counter() - t0
        print(f"baseline + 1 warm-up trial: {warm:.1f}s", file=sys.stderr)
        startup = ray_startup(a.concurrency)
        print(f"ray start-up: {startup}", file=sys.stderr)
        results: dict[str, Any] = {}
        stamp = time.strftime("%Y%m%d-%H%M%S")  # fresh studies; a kept --runs-dir only saves the baseline
        threads = torch.get_num_threads()
        for name, nthreads, kw in (
                ("local", threads, {"backend": "optuna"}),
                ("local-1t", 1, {"backend": "optuna"}),
                ("ray", threads, {"backend": "ray", "concurrency": a.concurrency, "num_cpus": a.concurrency})):
            torch.set_num_threads(nthreads)
            t0 = time.perf_counter()
            study = search(space, study=f"{name}-{stamp}", runs_dir=runs, trials=n, progress=False, **kw)
            wall = time.perf_counter() - t0
            torch.set_num_threads(threads)
            times = _trial_times(study, runs / f"{name}-{stamp}")
            results[name] = {"wall_s": wall, **_summary(times), "per_trial": times,
                             "complete": sum(r["state"] == "COMPLETE" for r in times)}
            print(f"{name}: {wall:.1f}s", file=sys.stderr)
    finally:
        if not a.runs_dir:
            shutil.rmtree(runs, ignore_errors=True)
    report = {"trials": n, "smoke": a.smoke, "concurrency": a.concurrency, "cpus": cpus,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "torch_threads_local": torch.get_num_threads(), "load_avg": os.getloadavg()},
              "ray_startup": startup, **results,
              "speedup": {k: results[k]["wall_s"] / results["ray"]["wall_s"] for k in ("local", "local-1t")}}
    out = Path(a.out or HERE / "out" / f"ray_overhead{'_smoke' if a.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(report))
    return 0


def table(r: dict[str, Any]) -> str:
    """The Markdown table of docs/_fragments/ray.md."""
    cols = [r["local"], r["local-1t"], r["ray"]]
    st = r["ray_startup"]

    def f(x: Any) -> str:
        return "—" if x is None else f"{x:.1f}"

    def row(label: str, key: str, ray_only: bool = False) -> str:
        return f"| {label} | " + " | ".join("—" if ray_only and c is not r["ray"] else f(c[key]) for c in cols) + " |"

    t = r["machine"]["torch_threads_local"]
    sp = r["speedup"]
    return "\n".join([
        f"| {r['trials']} trials | local, 1 process, {t} torch threads | local, 1 process, 1 thread | "
        f"Ray Tune, {r['concurrency']} trials at once (1 CPU each) |",
        "|---|---:|---:|---:|",
        row("wall time of `search()` (s)", "wall_s"),
        row("trials' own work, summed (s)", "trial_work_s_sum"),
        row("trial's own work, median (s)", "trial_work_s_median"),
        row("dispatch per trial, median (s)", "dispatch_s_median"),
        row("dispatch, first trial of a worker (s)", "dispatch_s_first_per_worker_median", ray_only=True),
        row("dispatch, later trials (s)", "dispatch_s_later_median", ray_only=True),
        f"| Ray start-up: `ray.init` + first task + `ray.shutdown` (s) | — | — | "
        f"{f(st['init_s'])} + {f(st['first_task_s'])} + {f(st['shutdown_s'])} |",
        f"| Ray's speed-up over this column (its wall / Ray's wall) | {sp['local']:.2f}× | {sp['local-1t']:.2f}× | 1 |",
    ])


if __name__ == "__main__":
    sys.exit(main())
