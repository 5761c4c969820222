"""The Ray Tune backend: the local search's trials, scheduled by Ray, recorded in the same Optuna study.

How one search runs (``stsearch search SPACE --backend ray``)::

    driver (this process)                               Ray workers (one Tune trial each)
    ───────────────────────────────────────────         ──────────────────────────────────────────────
    OptunaSearch(define-by-run = suggest_plan,    ──►   trial = optuna.Trial(study, trial_id) on the same
      sampler = the study's sampler,               cfg   storage; Objective(ctx)(trial) replays the sampled
      storage = the study's storage)                     parameters, applies constraints, canonical reuse and
    asks trial n; suggest_plan samples its plan          early stopping, writes trials/<n>/, then tells
                                                          Optuna its state (COMPLETE, PRUNED or FAIL)
    on_trial_complete: count, progress display    ◄──   tune.report({objectives..., state, reason})
    Ray failure (exception, worker killed, OOM):         (a worker that dies tells nothing: the driver
      the driver fails the Optuna trial with Ray's        records the failure and Ray's reason)
      reason and the search goes on

The sampling runs on the driver, so a search with ``--concurrency 1`` asks the sampler exactly as the local
backend does. The worker finishes its own Optuna trial (like a local worker), so a finished trial is never lost
when the driver dies; a trial left RUNNING by a dead driver or worker is failed on the next start (host and pid
of the local backend, or the storage heartbeat for other hosts). The dataset arrays and the baseline weights
travel once through Ray's object store (``tune.with_parameters``); each worker rebuilds its
:class:`~stsearch.study.engine.SearchContext` once and keeps it for the trials it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import shutil
import tempfile
import time
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from .. import _io
from ..errors import ConfigError, RunError
from .engine import (
    HOST,
    Objective,
    SearchContext,
    _objective_names,
    directions,
    remaining_trials,
    trial_files,
)
from .rundir import RunDir

TRIAL_NUMBER = "trial_number"
"""Config key (from the define-by-run function) naming the Optuna trial a Tune trial evaluates."""
TRIAL_ID = "optuna_trial_id"
"""Config key with the storage's id of that trial."""

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
"""Set (unless already set) while a *local* Ray runs: it binds to 127.0.0.1 only, with no auth token."""
RUN_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0"}
"""Set (unless already set) during every Ray search: no usage reporting, Ctrl+C raises KeyboardInterrupt as in
the local backend, and Tune's classic reporter (silent at ``verbose=0``)."""
QUIET_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
"""Also set unless verbose: no per-trial JSON/CSV/TensorBoard files from Tune (the run directory has them)."""


# --------------------------------------------------------------------------------------------------- driver
def run_ray(study: Any, ctx: SearchContext, *, n_trials: int, timeout: float | None, storage: str | None,
            verbose: bool = False, progress: bool = True, address: str | None = None,
            cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
            concurrency: int | None = None, num_cpus: int | None = None,
            runtime_env: dict[str, Any] | None = None) -> None:
    """Run trials on Ray Tune until ``study`` has ``n_trials`` finished trials (complete, pruned or failed).

    address: ``None`` starts a local Ray bound to 127.0.0.1 (``num_cpus`` CPUs, default: this machine's) and
    stops it at the end; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins an existing cluster. When this
    process already called ``ray.init``, that Ray is used and left running. cpus_per_trial / gpus_per_trial:
    the resources of each trial (default 1 CPU, 0 GPUs). concurrency: trials running at once (default: as
    many as the cluster's resources allow). timeout: stop starting trials after this many seconds.
    runtime_env: passed to ``ray.init`` (for example ``{"pip": [...]}`` or ``{"env_vars": {...}}``).
    """
    cpus = 1.0 if cpus_per_trial is None else float(cpus_per_trial)
    gpus = 0.0 if gpus_per_trial is None else float(gpus_per_trial)
    if not cpus > 0 or gpus < 0 or not math.isfinite(cpus + gpus):
        raise ConfigError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0 (got {cpus_per_trial!r}, "
                          f"{gpus_per_trial!r})")
    if concurrency is not None and (isinstance(concurrency, bool) or int(concurrency) < 1):
        raise ConfigError(f"--concurrency must be a positive integer (got {concurrency!r})")
    remaining = remaining_trials(study, n_trials, progress=progress)
    if remaining <= 0:
        return
    env = {**RUN_ENV, **({} if verbose else QUIET_ENV), **(LOOPBACK_ENV if address is None else {})}
    with _environ(env), _quiet(verbose):
        import ray

        owned = not ray.is_initialized()
        if owned:
            _start_ray(address, num_cpus=num_cpus, verbose=verbose, runtime_env=runtime_env)
        elif address is not None:
            warnings.warn(f"Ray is already initialised in this process; --address {address} is ignored",
                          stacklevel=2)
        try:
            _run(study, ctx, n_trials=n_trials, remaining=remaining, timeout=timeout, storage=storage,
                 verbose=verbose, progress=progress, cpus=cpus, gpus=gpus, concurrency=concurrency)
        finally:
            if owned:
                ray.shutdown()


def _run(study: Any, ctx: SearchContext, *, n_trials: int, remaining: int, timeout: float | None,
         storage: str | None, verbose: bool, progress: bool, cpus: float, gpus: float,
         concurrency: int | None) -> None:
    scratch = _scratch_dir()
    searcher: Any = None
    try:
        limit = concurrency or _default_concurrency(cpus, gpus)
        searcher = _ray_classes().StudySearcher(study, ctx, timeout=timeout)
        if progress:
            from .runner import Progress

            searcher.progress = Progress(study, ctx, n_trials)
        _fit(searcher, ctx, study, storage, remaining=remaining, cpus=cpus, gpus=gpus, limit=limit,
             scratch=scratch, verbose=verbose)
    finally:
        if searcher is not None:
            searcher.abandon("the Ray search stopped before this trial finished (interrupted or crashed)")
            if searcher.progress is not None:
                searcher.progress.close()
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH_PREFIX = "stsearch-tune-"


def _scratch_dir() -> Path:
    """A new temporary folder for Tune's own files, named by this process; those of dead processes (a driver
    killed with SIGKILL cannot clean up) are removed first."""
    from .engine import _pid_alive

    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = old.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


def _start_ray(address: str | None, *, num_cpus: int | None, verbose: bool,
               runtime_env: dict[str, Any] | None) -> None:
    import ray

    level = logging.INFO if verbose else logging.CRITICAL
    common: dict[str, Any] = dict(log_to_driver=verbose, logging_level=level, runtime_env=runtime_env)
    if address is None:
        cpus = num_cpus if num_cpus is not None else len(os.sched_getaffinity(0))
        ray.init(address="local", num_cpus=int(cpus), include_dashboard=False, _node_ip_address="127.0.0.1",
                 **common)
    else:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RunError(f"--address {address}: cannot connect to Ray ({e}); start a cluster with "
                           f"`ray start --head` or leave --address out for a local Ray") from None


RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air", "ray.data")


@contextlib.contextmanager
def _environ(defaults: dict[str, str]) -> Iterator[None]:
    """Set the variables of ``defaults`` that are not set yet, for the duration of the block."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Unless verbose: Ray's loggers off, and the driver's copy of worker-death messages dropped (the progress
    display reports each failed trial with Ray's reason instead)."""
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)

    def no_raylet_errors(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if data.get("pid") != "raylet" and printer is not None:
            printer(data, *args, **kwargs)

    if printer is not None:
        ray_worker.print_to_stdstream = no_raylet_errors
    try:
        yield
    finally:
        if printer is not None:
            ray_worker.print_to_stdstream = printer
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _default_concurrency(cpus: float, gpus: float) -> int:
    """As many trials as the cluster's CPUs (and GPUs, when trials ask for some) can hold at once."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus)
    if gpus > 0:
        n = min(n, int(res.get("GPU", 0) // gpus))
        if n < 1:
            raise ConfigError(f"--gpus-per-trial {gpus}: the Ray cluster has {res.get('GPU', 0)} GPU(s)")
    return max(1, n)


def _fit(searcher: Any, ctx: SearchContext, study: Any, storage: str | None, *, remaining: int,
         cpus: float, gpus: float, limit: int, scratch: Path, verbose: bool) -> None:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    job = WorkerJob(key=uuid.uuid4().hex, study_name=study.study_name,
                    storage=absolute_storage(storage, ctx.run), ctx=_portable(ctx),
                    threads=max(1, int(cpus)))
    data_shell, arrays = pack_dataset(ctx.data)
    weights = pack_state(ctx.baseline_model.state_dict())
    trainable = tune.with_parameters(_trainable, job=job, data_shell=data_shell, arrays=arrays, weights=weights)
    trainable = tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit), num_samples=remaining,
            reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"stsearch-{study.study_name}", storage_path=str(scratch), verbose=2 if verbose else 0,
            callbacks=[_ray_classes().Failures(searcher)], failure_config=tune.FailureConfig(max_failures=0),
            log_to_file=False),
    )
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        tuner.fit()


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config.get(TRIAL_NUMBER, trial.trial_id)}"


def absolute_storage(storage: str | None, run: RunDir) -> str:
    """The storage URL with file paths made absolute (Ray workers run in other directories)."""
    if storage is None:
        return f"sqlite:///{run.study_db.resolve()}"
    if storage.startswith("journal:"):
        return "journal:" + str(Path(storage[len("journal:"):]).resolve())
    m = re.match(r"^(sqlite(?:\+\w+)?):///(?!/)(.+)$", storage)
    if m and m.group(2) != ":memory:":
        return f"{m.group(1)}:///{Path(m.group(2)).resolve()}"
    return storage


def _portable(ctx: SearchContext) -> SearchContext:
    """The context without its data and baseline model (they travel through the object store)."""
    return dataclasses.replace(ctx, data=None, baseline_model=None, layer_cache={}, progress=False,
                               run=RunDir(ctx.run.root.resolve()))


def ray_error_reason(trial: Any) -> str:
    """A one-paragraph reason for a Tune trial's error: the exception's type and the start of its message.

    Read from the trial's local error files (written before the callbacks run); the copies in Tune's storage
    appear only after the next sync.
    """
    err: Any = None
    for path, load in ((getattr(trial, "pickled_error_file", None), _load_pickle),
                       (getattr(trial, "error_file", None), _load_text)):
        if err is None and path and os.path.exists(path):
            with contextlib.suppress(Exception):
                err = load(path)
    if err is None:
        return "Ray: the trial failed (Ray recorded no error)"
    if isinstance(err, BaseException):
        cause = getattr(err, "cause", None)  # RayTaskError wraps the exception raised in the task
        err = cause if isinstance(cause, BaseException) else err
        text = f"{type(err).__name__}: {err}"
    else:
        text = re.sub(r"^Failure # \d+ \(occurred at [^)]*\)", "", str(err)).strip()
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r" (class_name|actor_id|namespace): \S+", "", text)  # identifiers nobody can act on
    return "Ray: " + (text[:600] + " …" if len(text) > 600 else text)


def _load_pickle(path: str) -> Any:
    from ray import cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def _load_text(path: str) -> str:
    return Path(path).read_text(errors="replace")


class _SpaceFunction:
    """The define-by-run space: ``suggest_plan`` on the driver, plus the trial's number and storage id.

    It holds only the space and the baseline model (whose layer shapes the sampling reads), never the data.
    A plan that cannot be sampled (no valid spec) is left to the worker, whose replay prunes it the same way.
    """

    def __init__(self, ctx: SearchContext) -> None:
        self.view = SearchContext(space=ctx.space, run=ctx.run, data=None, model_name=ctx.model_name,
                                  model_kwargs=ctx.model_kwargs, baseline_model=ctx.baseline_model,
                                  baseline={}, recipe=None, init=ctx.init, device="cpu", early=ctx.early)

    def __call__(self, trial: Any) -> dict[str, Any]:
        from .sampling import suggest_plan

        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("backend", "ray")
        with contextlib.suppress(optuna.TrialPruned, Exception):
            suggest_plan(trial, self.view)
        return {TRIAL_NUMBER: trial.number, TRIAL_ID: trial._trial_id}


def _failure_files(ctx: SearchContext | None, frozen: Any, reason: str) -> None:
    """trials/<n>/plan.json + metrics.json for a trial Ray failed after its plan was sampled."""
    from ..plan import CompressionPlan

    plan = frozen.user_attrs.get("plan")
    if ctx is None or plan is None or (ctx.run.trial_dir(frozen.number) / "metrics.json").exists():
        return
    with contextlib.suppress(Exception):
        metrics = {"trial": frozen.number, "status": "failed", "reason": reason,
                   "compression_ratio": frozen.user_attrs.get("compression_ratio")}
        trial_files(ctx, frozen.number, CompressionPlan.from_dict(plan), None, metrics, None)


def _fail_stale(study: Any) -> None:
    """Fail trials whose storage heartbeat stopped (workers on other hosts that died), as ``optimize`` does."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        if is_heartbeat_enabled(study._storage):
            optuna.storages.fail_stale_trials(study)


# --------------------------------------------------------------------------------------------------- worker
@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What every trial of one search needs besides the data and the weights (small; pickled per trial)."""

    key: str
    study_name: str
    storage: str
    ctx: SearchContext
    threads: int = 1


def pack_dataset(data: Any) -> tuple[Any, dict[str, Any]]:
    """(the dataset without its in-memory arrays, {split: (x, y) numpy arrays}) for ``ray.put``.

    Numpy arrays are read zero-copy from Ray's object store, so trials on one node share one copy. Splits that
    are not in memory (image folders) travel as they are (a list of file paths).
    """
    from ..data import TensorSplit

    arrays: dict[str, Any] = {}
    splits = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if isinstance(split, TensorSplit):
            state = split.__getstate__()
            x, y = state.pop("x"), state.pop("y")
            arrays[name] = (x.numpy(), y.numpy())
            splits[name] = ("arrays", state)
        else:
            splits[name] = ("object", split)
    shell = dataclasses.replace(data, train=splits["train"], val=splits["val"], test=splits["test"])
    return shell, arrays


def unpack_dataset(shell: Any, arrays: dict[str, Any]) -> Any:
    """Inverse of :func:`pack_dataset` (tensors share the object store's read-only memory)."""
    import torch

    from ..data import TensorSplit

    splits = {}
    for name in ("train", "val", "test"):
        kind, payload = getattr(shell, name)
        if kind == "object":
            splits[name] = payload
            continue
        x, y = arrays[name]
        split = TensorSplit.__new__(TensorSplit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only buffers; splits never write to x / y
            split.__dict__.update(payload, x=torch.from_numpy(x), y=torch.from_numpy(y))
        splits[name] = split
    return dataclasses.replace(shell, **splits)


def pack_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict as numpy arrays (zero-copy through the object store); other dtypes stay tensors."""
    import torch

    return {k: v.detach().cpu().numpy() if v.dtype != torch.bfloat16 else v.detach().cpu()
            for k, v in state.items()}


_WORKER: dict[str, Any] = {}
"""Per worker process: the rebuilt context and the opened study of the current search (``WorkerJob.key``)."""


def _worker_setup(job: WorkerJob, data_shell: Any, arrays: dict[str, Any],
                  weights: dict[str, Any]) -> tuple[SearchContext, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(job.threads)
    if _WORKER.get("key") == job.key:
        return _WORKER["ctx"], _WORKER["study"]
    from .. import models

    model = models.create(job.ctx.model_name, **job.ctx.model_kwargs)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
                           for k, v in weights.items()})
    ctx = dataclasses.replace(job.ctx, data=unpack_dataset(data_shell, arrays), baseline_model=model.cpu().eval(),
                              layer_cache={})
    study = open_worker_study(job.study_name, job.storage, ctx)
    _WORKER.clear()
    _WORKER.update(key=job.key, ctx=ctx, study=study)
    return ctx, study


def _trainable(config: dict[str, Any], *, job: WorkerJob, data_shell: Any, arrays: dict[str, Any],
               weights: dict[str, Any]) -> None:
    """The Tune function trainable: evaluate the Optuna trial named in ``config`` and report its outcome."""
    from ray import tune

    t0 = time.perf_counter()
    ctx, study = _worker_setup(job, data_shell, arrays, weights)
    result = run_trial(ctx, study, int(config[TRIAL_ID]))
    result["worker_overhead_s"] = time.perf_counter() - t0 - result["objective_s"]
    tune.report(result)


def open_worker_study(study_name: str, storage: str, ctx: SearchContext) -> Any:
    """The study on ``storage`` with a sampler that only replays the driver's samples."""
    from .rundir import resolve_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = resolve_storage(storage, ctx.run)
        return optuna.load_study(study_name=study_name, storage=store, sampler=ReplaySampler(ctx.space))


def run_trial(ctx: SearchContext, study: Any, trial_id: int) -> dict[str, Any]:
    """Run the local backend's :class:`~stsearch.study.engine.Objective` on stored trial ``trial_id``, finish
    the trial in the study and return what the worker reports to Tune."""
    State = optuna.trial.TrialState
    trial = optuna.trial.Trial(study, trial_id)
    t0 = time.perf_counter()
    values: list[float] | None = None
    with _heartbeat(trial_id, study._storage):
        try:
            values = list(Objective(ctx)(trial))
            state, reason = State.COMPLETE, ""
        except optuna.TrialPruned as e:
            state, reason = State.PRUNED, str(e) or "pruned"
        except Exception as e:  # noqa: BLE001 - the Objective recorded it; the search goes on
            state, reason = State.FAIL, f"{type(e).__name__}: {e}"
    objective_s = time.perf_counter() - t0
    if state == State.COMPLETE and not all(math.isfinite(v) for v in values or []):
        state, reason = State.FAIL, f"objective values {values} are not finite"
        with contextlib.suppress(Exception):
            trial.set_user_attr("reason", reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.tell(trial, values if state == State.COMPLETE else None, state=state, skip_if_finished=True)
    names = _objective_names(ctx.space)
    out: dict[str, Any] = {n: (float(v) if state == State.COMPLETE else math.nan)
                           for n, v in zip(names, values or [math.nan] * len(names))}
    out.update({"state": state.name, "reason": reason, "objective_s": objective_s, "pid": os.getpid()})
    return out


@contextlib.contextmanager
def _heartbeat(trial_id: int, storage: Any) -> Iterator[None]:
    """Optuna's storage heartbeat for a running trial (as ``optimize`` keeps one), when the storage has one."""
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # pragma: no cover - private Optuna API moved
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thread = get_heartbeat_thread(trial_id, storage)
    with thread:
        yield


class ReplaySampler(optuna.samplers.BaseSampler):
    """A worker's sampler: every parameter was sampled by the driver, so sampling here is a bug.

    ``after_trial`` is the space's own sampler's (it records the constraint violation that TPE and NSGA-II
    read), so a trial the worker finishes is stored exactly as the local backend stores it.
    """

    def __init__(self, space: Any) -> None:
        self._real = space.make_sampler()

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        raise RuntimeError(f"trial {trial.number}: parameter {param_name!r} was not sampled by the driver "
                           f"(the worker's space differs from the driver's)")

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._real.after_trial(study, trial, state, values)


# ------------------------------------------------------------------------------------ Ray classes (lazy)
@functools.cache
def _ray_classes() -> Any:
    """The Tune searcher and callback classes, defined on first use: importing Ray reads its environment
    (loopback or cluster), which :func:`run_ray` sets first."""
    import inspect

    from ray.tune import Callback
    from ray.tune.search.optuna import OptunaSearch

    if "storage" not in inspect.signature(OptunaSearch.__init__).parameters:
        import ray

        raise RunError(f"--backend ray needs ray[tune] >= 2.40 (OptunaSearch with an Optuna storage); "
                       f"this is Ray {ray.__version__}")

    class StudySearcher(OptunaSearch):
        """``OptunaSearch`` on the study's storage and sampler; workers finish their trials, the driver counts.

        Differences from the stock searcher: a trial its worker already told is not told again; a Ray failure
        becomes a failed trial with Ray's reason (:meth:`fail`); ``timeout`` stops new suggestions; Tune's
        experiment checkpoints do not pickle the study (the Optuna storage is what a resumed search reads).
        """

        def __init__(self, study: Any, ctx: SearchContext, *, timeout: float | None = None) -> None:
            modes = ["min" if d == "minimize" else "max" for d in directions(ctx.space)]
            super().__init__(space=_SpaceFunction(ctx), metric=_objective_names(ctx.space), mode=modes,
                             sampler=study.sampler, study_name=study.study_name, storage=study._storage)
            self.study = study
            self.ctx: SearchContext | None = ctx
            self.deadline = None if timeout is None else time.monotonic() + float(timeout)
            self.progress: Any = None
            self.done: set[str] = set()

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if self.deadline is not None and time.monotonic() > self.deadline:
                return self.FINISHED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # define-by-run timing, experimental sampler options
                config = super().suggest(trial_id)
            with contextlib.suppress(Exception):
                self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            """Intermediate values are the worker's to write (it holds the live Optuna trial)."""

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if error:
                return  # the Failures callback follows at once with Ray's reason
            self._finish(trial_id, "the trial ended without finishing its Optuna trial", result or {})

        def fail(self, trial_id: str, reason: str) -> None:
            """Fail the Optuna trial of Tune trial ``trial_id`` with ``reason`` (unless it is finished)."""
            self._finish(trial_id, reason, {})

        def abandon(self, reason: str) -> None:
            """Fail every trial this searcher asked for that is not finished yet (not shown as progress)."""
            for trial_id in list(self._ot_trials):
                self._finish(trial_id, reason, {}, count=False)

        def _finish(self, trial_id: str, reason: str, result: dict[str, Any], *, count: bool = True) -> None:
            if trial_id in self.done or trial_id not in self._ot_trials:
                return
            self.done.add(trial_id)
            ot_trial = self._ot_trials[trial_id]
            storage = self._ot_study._storage
            frozen = storage.get_trial(ot_trial._trial_id)
            if not frozen.state.is_finished():
                self._tell(ot_trial, frozen, reason, result)
                frozen = storage.get_trial(ot_trial._trial_id)
            _fail_stale(self.study)
            if self.progress is not None and count:
                if frozen.state == optuna.trial.TrialState.FAIL:
                    why = str(frozen.user_attrs.get("reason", reason))
                    self.progress.bar.write(f"trial {frozen.number} failed: {why[:200]}")
                self.progress(self.study, frozen)

        def _tell(self, ot_trial: Any, frozen: Any, reason: str, result: dict[str, Any]) -> None:
            """Finish a trial its worker could not: with the reported values if any, else as failed."""
            State = optuna.trial.TrialState
            names = _objective_names(self.ctx.space) if self.ctx is not None else []
            values = [result.get(n) for n in names]
            with warnings.catch_warnings(), contextlib.suppress(Exception):
                warnings.simplefilter("ignore")
                if result.get("state") == "COMPLETE" and names and all(
                        isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                    self._ot_study.tell(ot_trial, values, skip_if_finished=True)
                    return
                self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "reason", reason[:2000])
                _failure_files(self.ctx, frozen, reason)
                self._ot_study.tell(ot_trial, state=State.FAIL, skip_if_finished=True)

        def save(self, checkpoint_path: str) -> None:
            """Tune's experiment checkpoint: nothing to keep, the Optuna storage holds the search's state."""
            _io.write_json(checkpoint_path, {"study": self._study_name})

        def restore(self, checkpoint_path: str) -> None:
            """A search resumes from its Optuna study (run ``stsearch search`` again), not from Tune."""

        def __getstate__(self) -> dict[str, Any]:
            state = self.__dict__.copy()
            state.update(progress=None, ctx=None)  # driver-only: a terminal display, the data and weights
            return state

    class Failures(Callback):
        """A Tune trial that Ray failed (exception, worker killed, out of memory) fails in Optuna."""

        def __init__(self, searcher: StudySearcher) -> None:
            self.searcher = searcher

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.searcher.fail(trial.trial_id, ray_error_reason(trial))

    for cls in (StudySearcher, Failures):
        cls.__qualname__ = cls.__name__  # pickled by reference: module __getattr__ below defines it on load
    return types.SimpleNamespace(StudySearcher=StudySearcher, Failures=Failures)


def __getattr__(name: str) -> Any:
    if name in ("StudySearcher", "Failures"):
        return getattr(_ray_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
