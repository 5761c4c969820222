"""Reading a run from outside the search: find it, summarise its progress, serve its dashboard, time models.

>>> root = resolve_run("digits_cnn", runs_dir="runs")      # a run directory, or a study name
>>> print(format_status(status(root)))                      # counts, front, best CR, elapsed, ETA
>>> print(format_status_table(list_status("runs")))         # every study under runs/
>>> latency_ms(model, (1, 8, 8))                            # median ms, batch 1, one thread

Everything here reads: the Optuna storage is opened without creating tables (SQLite read-only), so ``status``
is safe while workers are writing. Latency is only ever measured here (pareto, export, benchmarks), never
during a search, where trials share the cores.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError
from .rundir import RunDir

__all__ = ["resolve_run", "is_run_dir", "run_storage_url", "open_storage", "run_input_shape", "allowed_drop",
           "RunStatus", "status", "list_status", "format_status", "format_status_table", "dashboard_server",
           "torch_threads", "median_ms", "latency_ms", "onnx_latency_ms"]

DEFAULT_MAX_DROP = 0.01
"""Allowed accuracy drop (a fraction: 1 point) when the space sets no ``constraints.max_accuracy_drop``."""
_RUN_MARKERS = ("study.db", "storage.json", "baseline.json", "space.yaml", "trials")


# --------------------------------------------------------------------------------------------------------------
# Finding a run
# --------------------------------------------------------------------------------------------------------------
def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding any part of a run (study.db, storage.json, baseline.json,
    space.yaml or trials/)."""
    p = Path(path)
    return p.is_dir() and any((p / m).exists() for m in _RUN_MARKERS)


def _child_runs(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(c.name for c in path.iterdir() if not c.name.startswith(".") and is_run_dir(c))


def resolve_run(run: str | os.PathLike[str], *, runs_dir: str | os.PathLike[str] = "runs",
                storage: str | None = None) -> Path:
    """The run directory that ``run`` names: a directory path, or a study name under ``runs_dir``, or (with
    ``storage``) a study in that storage, whose directory the search recorded in the study's ``run_dir``.

    Raises RunError naming what was looked for when nothing is found, or when the directory is empty (not a run).
    """
    if run is None or str(run).strip() == "":
        raise RunError("RUN: give a run directory or a study name (got an empty string)")
    direct, named = Path(run), Path(runs_dir) / str(run)
    tried = [direct] if direct == named else [direct, named]
    for p in tried:
        if p.is_dir():
            if is_run_dir(p):
                return p
            inner = _child_runs(p)
            if inner:
                raise RunError(f"{p} is a runs directory, not a run; pass one of its studies: {', '.join(inner)}")
            raise RunError(f"{p} is an empty run: no study.db, storage.json, baseline.json, space.yaml or "
                           f"trials/ (has `stsearch search` been run with this --runs-dir?)")
    if storage is not None:
        store = open_storage(storage)
        names = _study_names(store, storage)
        if str(run) in names:
            sid = store.get_study_id_from_name(str(run))
            recorded = store.get_study_user_attrs(sid).get("run_dir")
            for p in ([Path(recorded)] if recorded else []) + [named]:
                if is_run_dir(p):
                    return p
            raise RunError(f"study {str(run)!r} is in {storage} but its run directory is missing "
                           f"(looked at {recorded or '(none recorded)'} and {named})")
        raise RunError(f"run {str(run)!r} not found: no directory {' or '.join(map(str, tried))}, and no study "
                       f"{str(run)!r} in {storage} (studies: {', '.join(names) or 'none'})")
    raise RunError(f"run {str(run)!r} not found: no directory {' or '.join(map(str, tried))}")


def run_storage_url(root: str | os.PathLike[str], storage: str | None = None) -> str | None:
    """The run's storage URL: ``storage`` if given, else ``storage.json``, else its ``study.db`` (``None``
    when the run has no storage at all)."""
    if storage is not None:
        return storage
    rd = RunDir(Path(root))
    if rd.storage_file.exists():
        try:
            return str(json.loads(rd.storage_file.read_text())["storage"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{rd.storage_file}: corrupt storage record ({e})") from None
    if rd.study_db.is_file():
        return f"sqlite:///{rd.study_db.resolve()}"
    return None


def open_storage(url: str, *, readonly: bool = True) -> Any:
    """An Optuna storage for ``url`` that never creates anything: a missing SQLite file or journal is a
    RunError. SQLite opens read-only when ``readonly`` (safe while a search writes)."""
    import optuna

    if not isinstance(url, str) or not url:
        raise RunError(f"--storage: must be an Optuna RDB URL or journal:PATH (got {url!r})")
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):])
        if not path.is_file():
            raise RunError(f"--storage: journal file {path} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise RunError(f"--storage: {url!r} is neither an RDB URL (e.g. sqlite:///x.db) nor journal:PATH")
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):].split("?", 1)[0])
        if not path.is_file():
            raise RunError(f"study database {path} does not exist")
        engine = {"connect_args": {"timeout": 30}}
        if readonly:
            url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, skip_compatibility_check=readonly,
                                          skip_table_creation=True)
    except Exception as e:  # noqa: BLE001 - any driver error, reported with the URL
        raise RunError(f"cannot open storage {url!r}: {type(e).__name__}: {e}") from None


def _study_names(store: Any, url: str) -> list[str]:
    try:
        return sorted(s.study_name for s in store.get_all_studies())
    except Exception as e:  # noqa: BLE001
        raise RunError(f"cannot read studies from {url!r}: {type(e).__name__}: {e}") from None


def _space_dict(root: Path) -> dict[str, Any]:
    import yaml

    p = root / "space.yaml"
    if not p.is_file():
        return {}
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunError(f"{p}: unreadable search space ({e})") from None
    return d if isinstance(d, dict) else {}


def allowed_drop(root: str | os.PathLike[str]) -> float:
    """The space's ``constraints.max_accuracy_drop`` (a fraction), or :data:`DEFAULT_MAX_DROP` (1 point)."""
    c = _space_dict(Path(root)).get("constraints") or {}
    v = c.get("max_accuracy_drop") if isinstance(c, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else DEFAULT_MAX_DROP


def run_input_shape(root: str | os.PathLike[str], data_root: str | None = None) -> tuple[int, ...]:
    """The model input (C, H, W): ``baseline.json``'s ``input_shape``, else the space's dataset (loaded)."""
    root = Path(root)
    try:
        shape = RunDir(root).baseline().get("input_shape")
    except RunError:
        shape = None
    if isinstance(shape, list) and shape and all(isinstance(s, int) for s in shape):
        return tuple(shape)
    return tuple(load_run_data(root, data_root).input_shape)


def load_run_data(root: str | os.PathLike[str], data_root: str | None = None) -> Any:
    """The run's dataset, split exactly as the search split it (same spec, validation fraction and seed)."""
    from ..data import load as load_data
    from .space import load_space

    root = Path(root)
    if not (root / "space.yaml").is_file():
        raise RunError(f"{root}: no space.yaml, so the run's dataset is unknown")
    sp = load_space(root / "space.yaml")
    ds = sp.dataset
    return load_data(ds.name, data_root=data_root or ds.data_root, download=False, val_fraction=ds.val_fraction,
                     seed=sp.seed)


# --------------------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    """Progress of one study. ``max_drop`` and accuracies are fractions; times are seconds.

    state: ``running`` (some trial is RUNNING), ``done`` (finished >= target), ``stopped`` (neither; resume with
    the same ``stsearch search`` command), ``empty`` (no trial yet) or ``error`` (see ``note``).
    elapsed_s: time during which at least one trial ran (pauses between resumes excluded); eta_s: the remaining
    trials at the finished-trial throughput over that time (running searches only).
    """

    study: str
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    target: int | None = None
    front_size: int = 0
    best_cr: float | None = None
    best_trial: int | None = None
    best_accuracy: float | None = None
    max_drop: float = DEFAULT_MAX_DROP
    baseline_accuracy: float | None = None
    reused: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    state: str = "empty"
    source: str = "storage"
    note: str = ""

    @property
    def finished(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("complete", "pruned", "failed"))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        d["finished"] = self.finished
        return d


_STATE_KEYS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def status(run: str | os.PathLike[str], *, runs_dir: str | os.PathLike[str] = "runs",
           storage: str | None = None) -> RunStatus:
    """The progress of one run (see :class:`RunStatus`), from its Optuna storage (read-only), or from its
    trial directories when it has no storage. Works while a search is writing."""
    root = resolve_run(run, runs_dir=runs_dir, storage=storage)
    name = root.name
    st = RunStatus(study=name, path=root, max_drop=allowed_drop(root))
    space = _space_dict(root)
    t = space.get("trials")
    st.target = t if isinstance(t, int) and not isinstance(t, bool) else None
    with contextlib.suppress(RunError, TypeError, ValueError):
        acc = RunDir(root).baseline().get("accuracy")
        st.baseline_accuracy = float(acc) if acc is not None else None
    url = run_storage_url(root, storage)
    rows = _storage_rows(url, name) if url is not None else None
    if rows is None:
        st.source = "files"
        rows = _file_rows(root)
    _summarise(st, rows)
    return st


def _storage_rows(url: str, name: str) -> list[dict[str, Any]]:
    store = open_storage(url)
    try:
        sid = store.get_study_id_from_name(name)
    except KeyError:
        raise RunError(f"study {name!r} not found in {url} (studies: "
                       f"{', '.join(_study_names(store, url)) or 'none'})") from None
    try:
        attrs = store.get_study_user_attrs(sid)
        trials = store.get_all_trials(sid, deepcopy=False)
    except Exception as e:  # noqa: BLE001 - a busy or damaged database
        raise RunError(f"cannot read study {name!r} from {url}: {type(e).__name__}: {e}") from None
    objectives = list(attrs.get("objectives") or ["accuracy", "compression_ratio"])
    ia = objectives.index("accuracy") if "accuracy" in objectives else 0
    ic = objectives.index("compression_ratio") if "compression_ratio" in objectives else 1
    rows = []
    for tr in trials:
        state = _STATE_KEYS.get(tr.state.name, tr.state.name.lower())
        vals = tr.values or []
        rows.append({"trial": tr.number, "status": state,
                     "accuracy": vals[ia] if len(vals) > ia else None,
                     "compression_ratio": vals[ic] if len(vals) > ic else None,
                     "reused": tr.user_attrs.get("reused_from") is not None,
                     "start": tr.datetime_start, "end": tr.datetime_complete})
    return rows


def _file_rows(root: Path) -> list[dict[str, Any]]:
    from ..pareto import trials_frame

    df = trials_frame(root)
    rows = []
    for r in df.to_dict("records"):
        reused = r.get("reused_from")
        rows.append({"trial": int(r["trial"]), "status": r["status"], "accuracy": r["accuracy"],
                     "compression_ratio": r["compression_ratio"],
                     "reused": reused is not None and not (isinstance(reused, float) and math.isnan(reused)),
                     "start": None, "end": None})
    return rows


def _summarise(st: RunStatus, rows: list[dict[str, Any]]) -> None:
    from ..pareto import pareto_mask

    counts = {k: 0 for k in ("complete", "pruned", "failed", "running")}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    st.counts = counts
    done = [r for r in rows if r["status"] == "complete" and _finite(r["accuracy"]) and _finite(r["compression_ratio"])]
    st.reused = sum(1 for r in rows if r["reused"])
    if done:
        st.front_size = int(pareto_mask([r["accuracy"] for r in done], [r["compression_ratio"] for r in done]).sum())
        if st.baseline_accuracy is not None:
            ok = [r for r in done if r["accuracy"] >= st.baseline_accuracy - st.max_drop - 1e-12]
            if ok:
                best = max(ok, key=lambda r: (r["compression_ratio"], r["accuracy"]))
                st.best_cr, st.best_trial, st.best_accuracy = (float(best["compression_ratio"]), int(best["trial"]),
                                                               float(best["accuracy"]))
    running = counts.get("running", 0) + counts.get("waiting", 0)
    if not rows:
        st.state = "empty"
    elif running:
        st.state = "running"
    elif st.target is not None and st.finished >= st.target:
        st.state = "done"
    else:
        st.state = "stopped"
    now = _dt.datetime.now()
    spans = [(r["start"], r["end"] or now) for r in rows if r["start"] is not None
             and (r["end"] is not None or r["status"] == "running")]
    if spans:
        st.elapsed_s = _union_seconds(spans)
    if st.state == "done":
        st.eta_s = 0.0
    elif st.state == "running" and st.target is not None and st.elapsed_s is not None:
        remaining = max(0, st.target - st.finished)
        if remaining == 0:
            st.eta_s = 0.0
        elif st.finished and st.elapsed_s > 0:
            st.eta_s = remaining * st.elapsed_s / st.finished
    if st.state == "stopped" and st.target is not None:
        st.note = f"not running: {st.finished} of {st.target} trials finished; run the same search to resume"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _union_seconds(spans: Sequence[tuple[_dt.datetime, _dt.datetime]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += (cur_e - cur_s).total_seconds()
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += (cur_e - cur_s).total_seconds()
    return total


def list_status(runs_dir: str | os.PathLike[str] = "runs", *, storage: str | None = None) -> list[RunStatus]:
    """The status of every study under ``runs_dir`` (hidden folders such as ``.cache`` skipped); a run that
    cannot be read is listed with state ``error`` and the reason in ``note``. Raises RunError when
    ``runs_dir`` is missing or holds no study."""
    rd = Path(runs_dir)
    if not rd.is_dir():
        raise RunError(f"runs directory {rd} not found (pass --runs-dir DIR or a RUN)")
    names = _child_runs(rd)
    if not names:
        raise RunError(f"runs directory {rd} holds no study (no sub-directory with study.db, baseline.json or "
                       f"trials/)")
    out = []
    for n in names:
        try:
            out.append(status(rd / n, runs_dir=rd, storage=storage))
        except RunError as e:
            out.append(RunStatus(study=n, path=rd / n, state="error", note=str(e)))
    return out


def _duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _best(st: RunStatus) -> str:
    if st.best_cr is None:
        return "—"
    return f"{st.best_cr:.2f}× (trial {st.best_trial})"


def format_status(st: RunStatus) -> str:
    """A few lines for one run."""
    c = st.counts
    target = f" of {st.target}" if st.target is not None else ""
    lines = [f"study {st.study!r} ({st.path}): {st.state}" + (f", {st.note}" if st.note and st.state != "error"
                                                             else ""),
             f"  trials:   {st.finished}{target} finished: {c.get('complete', 0)} complete ({st.reused} reused), "
             f"{c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed; {c.get('running', 0)} running",
             f"  front:    {st.front_size} trials; best CR within {100 * st.max_drop:.1f} points of the baseline"
             + (f" {100 * st.baseline_accuracy:.2f}%" if st.baseline_accuracy is not None else "")
             + f": {_best(st)}",
             f"  time:     elapsed {_duration(st.elapsed_s)}, ETA {_duration(st.eta_s)}"]
    if st.state == "error":
        lines = [f"study {st.study!r} ({st.path}): error: {st.note}"]
    return "\n".join(lines)


def format_status_table(sts: Sequence[RunStatus]) -> str:
    """One line per study: counts, front size, best CR within the allowed drop, elapsed, ETA."""
    import pandas as pd

    rows = []
    for s in sts:
        c = s.counts
        rows.append({"study": s.study, "state": s.state,
                     "finished": f"{s.finished}/{s.target}" if s.target is not None else str(s.finished),
                     "complete": c.get("complete", 0), "pruned": c.get("pruned", 0), "failed": c.get("failed", 0),
                     "running": c.get("running", 0), "front": s.front_size,
                     "best CR (drop ≤)": "—" if s.best_cr is None else f"{s.best_cr:.2f}× ({100 * s.max_drop:.1f} pts)",
                     "elapsed": _duration(s.elapsed_s), "ETA": _duration(s.eta_s),
                     "note": s.note if s.state == "error" else ""})
    df = pd.DataFrame(rows)
    if not df["note"].astype(bool).any():
        df = df.drop(columns="note")
    return df.to_string(index=False)


# --------------------------------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------------------------------
def dashboard_server(run: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8080,
                     runs_dir: str | os.PathLike[str] = "runs", storage: str | None = None) -> tuple[Any, str]:
    """A (not yet serving) optuna-dashboard WSGI server on the run's storage, and its URL.

    Call ``server.serve_forever()`` to serve and ``server.shutdown()`` from another thread to stop. ``port=0``
    picks a free port (the URL has the real one). Bound to 127.0.0.1 by default: the dashboard has no login.
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from optuna_dashboard import wsgi

    root = resolve_run(run, runs_dir=runs_dir, storage=storage)
    url = run_storage_url(root, storage)
    if url is None:
        raise RunError(f"{root}: no study storage (no study.db or storage.json) for the dashboard to read")
    app = wsgi(open_storage(url, readonly=False))

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

    class _Server(WSGIServer):
        allow_reuse_address = True

    try:
        server = make_server(host, int(port), app, server_class=_Server, handler_class=_Quiet)
    except OSError as e:
        raise RunError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{server.server_port}/dashboard/"


# --------------------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous setting is restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median_ms(fn: Callable[[], Any], *, repeats: int = 30, warmup: int = 3, min_time: float = 0.2,
              max_time: float = 5.0) -> float:
    """Median wall time of ``fn()`` in milliseconds: ``warmup`` untimed calls, then at least ``repeats`` timed
    calls, continuing up to ``min_time`` seconds in total, stopping at ``max_time``."""
    for _ in range(max(0, warmup)):
        fn()
    times: list[float] = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_start
        if (len(times) >= repeats and spent >= min_time) or spent >= max_time:
            break
    return 1e3 * statistics.median(times)


def latency_ms(model: Any, input_shape: Sequence[int], *, batch: int = 1, threads: int = 1,
               **kw: Any) -> float:
    """Median CPU forward time (ms) of ``model`` in eval mode under ``torch.inference_mode`` for a random batch
    of ``batch`` inputs of shape ``input_shape``, with ``threads`` intra-op threads (restored afterwards)."""
    import torch

    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            return median_ms(lambda: model(x), **kw)
    finally:
        model.train(was_training)


def onnx_latency_ms(path: str | os.PathLike[str], input_shape: Sequence[int], *, batch: int = 1,
                    threads: int = 1, **kw: Any) -> float:
    """Median ONNX Runtime (CPU) run time (ms) of the model file at ``path`` for a batch of ``batch``."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    return median_ms(lambda: sess.run(None, {name: x}), **kw)
