"""One search: the context shared by all trials, the objective of one trial, and the optimize loop."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import _io
from ..plan import CompressionPlan
from .early_stop import EarlyStopping
from .rundir import PLAN_SCHEMA_VERSION, RunDir

HOST = socket.gethostname()


class TrialFailed(Exception):
    """A trial that ran but produced no usable result (NaN loss, invalid plan …); the reason is its message."""


@dataclass
class SearchContext:
    """Everything a trial needs, built once per worker process."""

    space: Any
    run: RunDir
    data: Any
    model_name: str
    model_kwargs: dict[str, Any]
    baseline_model: nn.Module
    baseline: dict[str, Any]
    recipe: Any
    init: str
    device: str
    early: EarlyStopping
    layer_cache: dict = field(default_factory=dict)
    threads: int | None = None
    progress: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.input_shape)


def _version() -> str:
    from .. import __version__

    return __version__


def _objective_names(space: Any) -> list[str]:
    return list(space.objectives)


def directions(space: Any) -> list[str]:
    return ["minimize" if o == "flops" else "maximize" for o in _objective_names(space)]


def _values(space: Any, metrics: dict[str, Any]) -> list[float]:
    return [float(metrics[o]) for o in _objective_names(space)]


def trial_files(ctx: SearchContext, number: int, plan: CompressionPlan, model: nn.Module | None,
                metrics: dict[str, Any], curve: list[dict[str, Any]] | None) -> None:
    """Write a trial's directory atomically (same schema as an export)."""
    d = ctx.run.trial_dir(number)
    d.mkdir(parents=True, exist_ok=True)
    _io.write_json(d / "plan.json", plan_record(ctx.model_name, ctx.model_kwargs, plan, ctx.space.init))
    if model is not None:
        _io.save_torch(d / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if curve is not None:
        _io.write_text(d / "curve.csv", _curve_csv(curve))
    _io.write_json(d / "metrics.json", metrics)


def plan_record(model_name: str, model_kwargs: dict[str, Any], plan: CompressionPlan, init: str) -> dict:
    return {"model": {"name": model_name, "kwargs": model_kwargs}, "plan": plan.to_dict(), "init": init,
            "schema": PLAN_SCHEMA_VERSION, "stsearch_version": _version()}


def _curve_csv(curve: list[dict[str, Any]]) -> str:
    if not curve:
        return "epoch\n"
    keys = list(curve[0])
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in curve]
    return "\n".join(lines) + "\n"


class Objective:
    """One trial: sample a plan, reuse or train it, record everything. Returns the objective values."""

    def __init__(self, ctx: SearchContext):
        self.ctx = ctx

    def __call__(self, trial: Any) -> list[float]:
        import optuna

        from ..surgery import compress, profile
        from ..training import evaluate, fit
        from .canonical import canonical_key
        from .sampling import suggest_plan

        ctx = self.ctx
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        t0 = time.perf_counter()
        plan: CompressionPlan | None = None
        metrics: dict[str, Any] = {"trial": trial.number, "status": "running"}
        try:
            plan = suggest_plan(trial, ctx)
            trial.set_user_attr("plan", plan.to_dict())
            trial.set_user_attr("formats", dict(plan.format_counts()))
            key = canonical_key(ctx.baseline_model, plan)
            trial.set_user_attr("canonical_key", key)
            est = estimate(ctx, plan)
            metrics.update(est)
            trial.set_user_attr("compression_ratio", est["compression_ratio"])
            violated = constraint_violation(ctx, est)
            if violated:
                why, amount = violated
                trial.set_user_attr("reason", why)
                trial.set_user_attr("constraint_violation", amount)
                # Recorded as an Optuna constraint (> 0: infeasible), so TPE and NSGA-II learn to avoid the
                # infeasible region instead of sampling it again.
                trial.set_constraint("space_constraints", amount)
                metrics.update(status="pruned", reason=why, wall_time=time.perf_counter() - t0)
                trial_files(ctx, trial.number, plan, None, metrics, None)
                raise optuna.TrialPruned(why)
            source = _find_reusable(trial, key)
            if source is not None:
                return self._reuse(trial, plan, source, metrics, t0)
            model = compress(ctx.baseline_model, plan, init=ctx.init, seed=trial.number, cache=ctx.layer_cache)
            prof = profile(model, ctx.input_shape)
            metrics.update(prof.to_dict())
            metrics["formats"] = dict(plan.format_counts())
            callback = self._epoch_callback(trial, prof.compression_ratio)
            result = fit(model, ctx.data, ctx.recipe, device=ctx.device, seed=trial.number,
                         progress=False, epoch_callback=callback, num_threads=ctx.threads)
            curve = list(result.history)
            if result.status == "interrupted":
                raise KeyboardInterrupt(result.reason or "interrupted")
            if result.status != "ok":
                raise TrialFailed(f"training stopped with status {result.status!r}: {result.reason}")
            val = evaluate(model, ctx.data.val, device=ctx.device)
            metrics.update(status="complete", reason=None, accuracy=val["accuracy"], loss=val["loss"],
                           epochs=result.epochs, train_time=result.wall_time,
                           accuracy_drop=ctx.baseline["accuracy"] - val["accuracy"],
                           wall_time=time.perf_counter() - t0, reused_from=None, canonical_key=key)
            trial.set_user_attr("val_curve", [float(r["val_accuracy"]) for r in curve])
            trial.set_user_attr("metrics", _scalars(metrics))
            trial_files(ctx, trial.number, plan, model, metrics, curve)
            return _values(ctx.space, metrics)
        except optuna.TrialPruned as e:
            reason = str(e) or "pruned"
            trial.set_user_attr("reason", reason)
            if metrics.get("status") != "pruned" and plan is not None:
                metrics.update(status="pruned", reason=reason, wall_time=time.perf_counter() - t0)
                trial_files(ctx, trial.number, plan, None, metrics, None)
            raise
        except (KeyboardInterrupt, SystemExit) as e:
            self._record_failure(trial, plan, metrics, f"interrupted ({type(e).__name__})", t0)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is recorded with its reason
            reason = f"{type(e).__name__}: {e}"
            self._record_failure(trial, plan, metrics, reason, t0)
            raise

    def _record_failure(self, trial: Any, plan: CompressionPlan | None, metrics: dict[str, Any], reason: str,
                        t0: float) -> None:
        with contextlib.suppress(Exception):
            trial.set_user_attr("reason", reason[:2000])
        if plan is not None:
            metrics.update(status="failed", reason=reason, wall_time=time.perf_counter() - t0)
            with contextlib.suppress(Exception):
                trial_files(self.ctx, trial.number, plan, None, metrics, None)

    def _epoch_callback(self, trial: Any, cr: float) -> Callable[[int, dict[str, Any]], None]:
        import optuna

        ctx = self.ctx
        curve: list[float] = []

        def callback(epoch: int, m: dict[str, Any]) -> None:
            acc = float(m["val_accuracy"])
            curve.append(acc)
            trial.set_user_attr("val_curve", list(curve))
            if ctx.early.enabled and epoch >= ctx.early.after_epoch:
                others = [(float(t.user_attrs.get("compression_ratio", 0.0)), t.user_attrs.get("val_curve", []))
                          for t in trial.study.get_trials(deepcopy=False,
                                                          states=(optuna.trial.TrialState.COMPLETE,))
                          if t.user_attrs.get("reused_from") is None]
                why = ctx.early.verdict(epoch, acc, cr, others)
                if why is not None:
                    trial.set_user_attr("early_stopped_epoch", epoch)
                    trial.set_user_attr("epochs_saved", max(0, int(ctx.recipe.epochs) - epoch))
                    raise optuna.TrialPruned(why)

        return callback

    def _reuse(self, trial: Any, plan: CompressionPlan, source: Any, metrics: dict[str, Any],
               t0: float) -> list[float]:
        """Complete ``trial`` with the result of an earlier trial that trained the same canonical model."""
        ctx = self.ctx
        src_dir = ctx.run.trial_dir(source.number)
        src_metrics = dict(source.user_attrs.get("metrics", {}))
        metrics.update(src_metrics)
        metrics.update(trial=trial.number, status="complete", reason=None, reused_from=source.number,
                       wall_time=time.perf_counter() - t0, train_time=0.0)
        trial.set_user_attr("reused_from", source.number)
        trial.set_user_attr("val_curve", source.user_attrs.get("val_curve", []))
        trial.set_user_attr("metrics", _scalars(metrics))
        d = ctx.run.trial_dir(trial.number)
        d.mkdir(parents=True, exist_ok=True)
        # The trained model is the source's; its plan.json is the one whose weights model.pt holds.
        src_plan = CompressionPlan.from_dict(source.user_attrs["plan"])
        trial_files(ctx, trial.number, src_plan, None, metrics, None)
        for name in ("model.pt", "curve.csv"):
            if (src_dir / name).exists():
                with _io.atomic_open(d / name, "wb") as f:
                    f.write((src_dir / name).read_bytes())
        metrics_requested = dict(metrics, requested_plan=plan.to_dict())
        _io.write_json(d / "metrics.json", metrics_requested)
        return [float(v) for v in source.values]


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, dict, type(None)))}


def _find_reusable(trial: Any, key: str) -> Any:
    import optuna

    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("canonical_key") == key and t.user_attrs.get("reused_from") is None:
            return t
    return None


def estimate(ctx: SearchContext, plan: CompressionPlan) -> dict[str, Any]:
    """Parameter counts and compression ratios of ``plan`` on the baseline model, computed analytically."""
    from ..surgery import estimate_params

    return estimate_params(ctx.baseline_model, plan)


def constraint_violation(ctx: SearchContext, est: dict[str, Any]) -> tuple[str, float] | None:
    """(reason, amount > 0) when the analytic estimate breaks a constraint of the space, else ``None``."""
    c = ctx.space.constraints
    if c.min_compression_ratio is not None and est["compression_ratio"] < c.min_compression_ratio:
        return (f"constraint: compression ratio {est['compression_ratio']:.3f} < min_compression_ratio "
                f"{c.min_compression_ratio} (no training spent)",
                math.log(c.min_compression_ratio / est["compression_ratio"]))
    if c.max_params is not None and est["params"] > c.max_params:
        return (f"constraint: params {est['params']} > max_params {c.max_params} (no training spent)",
                math.log(est["params"] / c.max_params))
    return None


# -- stale trials ---------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_trial_ids(study: Any) -> set[int]:
    """Trial ids whose storage heartbeat is older than the grace period (RDB storages with a heartbeat)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    try:
        if not is_heartbeat_enabled(storage):
            return set()
        return set(storage._get_stale_trial_ids(study._study_id))
    except Exception:  # noqa: BLE001 - a storage without (or with another) heartbeat API: nothing is stale
        return set()


def fail_dead_trials(study: Any, run: RunDir | None = None) -> list[int]:
    """Fail RUNNING trials whose worker is gone, recording why; returns their numbers.

    A worker on this host is gone when its PID is dead. A worker elsewhere is gone when the storage heartbeat
    (RDB storages: PostgreSQL, MySQL, SQLite) is older than the grace period; JournalStorage has no heartbeat,
    so only same-host workers are detected there. With ``run``, the trial's ``metrics.json`` says so too.
    """
    import optuna

    failed = []
    stale = _stale_trial_ids(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == HOST and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
            reason = f"worker {host}:{pid} is gone (killed or crashed); trial failed on restart"
        elif t._trial_id in stale:
            backend = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
            grace = getattr(backend, "grace_period", None) or "the grace period"
            reason = (f"worker {host or '?'}:{pid or '?'} is gone (no heartbeat for more than {grace} s: killed, "
                      "crashed or cut off); trial failed")
        else:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except Exception:  # noqa: BLE001 - another process failed (or finished) it first
            continue
        failed.append(t.number)
        if run is not None:
            with contextlib.suppress(Exception):
                _record_dead(run, t.number, reason)
    return failed


def _record_dead(run: RunDir, number: int, reason: str) -> None:
    """Mark ``trials/<n>/metrics.json`` failed (keeping what a half-finished trial wrote there)."""
    import json

    path = run.trial_dir(number) / "metrics.json"
    metrics: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(path.read_text())
            metrics = old if isinstance(old, dict) else {}
    metrics.update(trial=number, status="failed", reason=reason)
    _io.write_json(path, metrics)


def finished_count(study: Any) -> int:
    import optuna

    s = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(s.COMPLETE, s.PRUNED, s.FAIL)))


def remaining_trials(study: Any, n_trials: int, *, progress: bool = False) -> int:
    """How many more trials this worker should run to reach ``n_trials`` finished ones (both backends)."""
    remaining = n_trials - finished_count(study)
    if remaining <= 0 and progress:
        print(f"study {study.study_name!r} already has {n_trials - remaining} finished trials "
              f"(asked for {n_trials}); nothing to run")
    return remaining
