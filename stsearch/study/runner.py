"""``stsearch.search``: build the context once, then run trials until the study has N finished ones."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _io
from ..errors import ConfigError, RunError
from .early_stop import EarlyStopping
from .engine import Objective, SearchContext, directions, fail_dead_trials, finished_count, remaining_trials
from .rundir import RunDir, resolve_storage


def derived_seed(space: Any, n: int) -> int:
    """The sampler seed for a worker whose next trial is number ``n``: the space's seed for ``n == 0``, else a
    hash of (seed, n). A seeded sampler restarted on a study that already has trials (a resume), or sharing it
    with other workers, would otherwise draw the same plans again."""
    seed = space.sampler_seed
    if n == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:4], "little")


def _space_fingerprint(space: Any) -> str:
    d = space.to_dict()
    # What decides the parameter distributions; trials/sampler/seed may change on resume.
    keep = {k: d.get(k) for k in ("model", "dataset", "layers", "objectives", "init", "recipe")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_context(space: Any, run: RunDir, *, runs_dir: Path, device: str = "auto",
                  baseline_path: str | None = None, progress: bool = False) -> SearchContext:
    """Load the data, the model and the dense baseline (trained once and cached, or ``--baseline PATH``)."""
    from .. import models
    from ..data import load as load_data
    from ..surgery import profile
    from ..training import Recipe, evaluate, load_checkpoint, resolve_device, train_baseline

    ds = space.dataset
    data = load_data(ds.name, data_root=ds.data_root, download=ds.download, val_fraction=ds.val_fraction,
                     seed=space.seed)
    kwargs = dict(space.model.kwargs)
    kwargs.setdefault("num_classes", data.num_classes)
    if not space.model.name.startswith("torchvision:"):
        kwargs.setdefault("in_channels", data.input_shape[0])
    default = data.default_recipe().to_dict()
    base_cfg = dict(space.baseline or {})
    checkpoint = baseline_path or base_cfg.pop("checkpoint", None)
    if checkpoint is not None:
        model = models.create(space.model.name, **kwargs)
        load_checkpoint(checkpoint, model)
        source = str(checkpoint)
    else:
        recipe = Recipe.from_dict({**default, **base_cfg})
        model, _info = train_baseline(space.model.name, kwargs, data, recipe,
                                      cache_dir=Path(runs_dir) / ".cache" / "baselines", device=device,
                                      seed=space.seed, progress=progress)
        source = "trained (cached)"
    model = model.cpu().eval()
    val = evaluate(model, data.val, device=device)
    test = evaluate(model, data.test, device=device)
    prof = profile(model, tuple(data.input_shape))
    baseline = {"accuracy": val["accuracy"], "loss": val["loss"], "test_accuracy": test["accuracy"],
                "params": prof.params, "flops": prof.flops, "source": source,
                "model": {"name": space.model.name, "kwargs": kwargs}, "input_shape": list(data.input_shape)}
    run.root.mkdir(parents=True, exist_ok=True)
    _io.save_torch(run.baseline_pt, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    _io.write_json(run.baseline_json, baseline)
    recipe = Recipe.from_dict({**default, **dict(space.recipe or {})})
    es = space.early_stopping
    # Trials train small models: on the CPU one thread per worker beats OpenMP oversubscription by a wide
    # margin; scale out with more workers (processes or Ray) instead.
    threads = 1 if resolve_device(device).type == "cpu" else None
    return SearchContext(space=space, run=run, data=data, model_name=space.model.name, model_kwargs=kwargs,
                         baseline_model=model, baseline=baseline, recipe=recipe, init=space.init, device=device,
                         early=EarlyStopping(es.enabled, es.after_epoch, es.margin), progress=progress,
                         threads=threads)


def open_study(space: Any, run: RunDir, storage: str | None, seed: int | None = None, verbose: bool = False) -> Any:
    """Create or load the study, checking that a resumed study was made from the same space."""
    import optuna

    # Failed trials keep their reason in the study and in metrics.json; Optuna's own per-trial warnings
    # (with tracebacks) are shown only with --verbose.
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    store = resolve_storage(storage, run)
    if storage is not None:
        _io.write_json(run.storage_file, {"storage": storage})
    study = optuna.create_study(study_name=run.name, storage=store, directions=directions(space),
                                sampler=space.make_sampler(seed), load_if_exists=True)
    fp = _space_fingerprint(space)
    old = study.user_attrs.get("space_fingerprint")
    if old is None:
        study.set_user_attr("space_fingerprint", fp)
        study.set_user_attr("objectives", list(space.objectives))
        study.set_user_attr("run_dir", str(run.root.resolve()))
    elif old != fp:
        raise RunError(f"study {run.name!r} in {run.root} was made from a different search space "
                       f"(fingerprint {old} ≠ {fp}); use another --study name or the original space")
    n = len(study.get_trials(deepcopy=False))
    if n:  # resuming: go on from where the study is instead of replaying the seed's first samples
        study.sampler = space.make_sampler(derived_seed(space, n))
    return study


def search(space: Any = None, *, trials: int | None = None, study: str | None = None,
           runs_dir: str | Path = "runs", storage: str | None = None, sampler: str | None = None,
           seed: int | None = None, timeout: float | None = None, dataset: str | None = None,
           data_root: str | None = None, download: bool | None = None, baseline: str | None = None,
           device: str = "auto", backend: str = "optuna", progress: bool = True, verbose: bool = False,
           **backend_options: Any) -> Any:
    """Run (or resume) a search and return the Optuna study.

    space: a YAML path, a shipped space name (``digits_cnn``, ``fashion_lenet5``, …), a dict, or ``None`` for
    the embedded default. Keyword arguments mirror the CLI; ``trials`` counts *finished* trials (complete,
    pruned or failed), so re-running resumes until there are N. Results land in ``<runs_dir>/<study>/``.
    """
    from .space import SearchSpace, default_space_path, load_space

    sp = space if isinstance(space, SearchSpace) else load_space(space if space is not None
                                                                 else default_space_path())
    overrides = {k: v for k, v in dict(trials=trials, sampler=sampler, seed=seed, dataset=dataset,
                                       data_root=data_root, download=download).items() if v is not None}
    if overrides:
        sp = sp.with_overrides(**overrides)
    if backend not in ("optuna", "ray"):
        raise ConfigError(f"--backend: must be 'optuna' or 'ray' (got {backend!r})")
    check_timeout(timeout)
    run = RunDir.of(runs_dir, check_study_name(study or sp.name))
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        _io.write_text(run.space_yaml, sp.to_yaml())
    except OSError as e:
        raise RunError(f"--runs-dir: cannot create the run directory {run.root}: {e.strerror or e}") from None
    ost = open_study(sp, run, storage, seed, verbose=verbose)
    gone = fail_dead_trials(ost, run)
    if gone and progress:
        print(f"marked {len(gone)} trial(s) whose worker is gone as failed: {gone}")
    ctx = build_context(sp, run, runs_dir=Path(runs_dir), device=device, baseline_path=baseline,
                        progress=progress and verbose)
    if backend == "ray":
        from .ray_backend import run_ray

        run_ray(ost, ctx, n_trials=sp.trials, timeout=timeout, storage=storage, verbose=verbose,
                progress=progress, **backend_options)
    else:
        if backend_options:
            raise ConfigError(f"options {sorted(backend_options)} need --backend ray")
        run_local(ost, ctx, n_trials=sp.trials, timeout=timeout, progress=progress)
    finish(run, ost, progress=progress)
    return ost


def check_study_name(name: Any) -> str:
    """``name`` if it can name ``<runs-dir>/<study>`` (one path component), else ConfigError."""
    if (not isinstance(name, str) or not name.strip() or name in (".", "..")
            or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name)):
        raise ConfigError(f"--study: {name!r} is not a study name; it names the folder <runs-dir>/<study>, so it "
                          "must be non-empty, not '.' or '..', and hold no '/', '\\' or control characters")
    return name


def check_timeout(timeout: Any) -> None:
    """ConfigError unless ``timeout`` is ``None`` or a positive, finite number of seconds."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout: must be a positive number of seconds (got {timeout!r})")


class _Interrupt:
    """SIGINT (Ctrl-C) and SIGTERM handling of the local optimize loop (both alike).

    During a trial's objective, Ctrl-C raises KeyboardInterrupt at once (the trial is recorded as failed). While
    Optuna creates or records a trial, it is deferred until that step is done, then the loop stops: otherwise the
    trial is left RUNNING (a trained one is lost) and Optuna itself fails with an UnboundLocalError. A second
    Ctrl-C always interrupts at once.
    """

    def __init__(self, study: Any):
        self.study = study
        self.inside = False
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.inside or self.count > 1:
            raise KeyboardInterrupt
        try:
            self.study.stop()
        except RuntimeError:  # not inside the optimize loop
            raise KeyboardInterrupt from None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handler for SIGINT and SIGTERM (what ``kill``, SLURM, Kubernetes and ``docker stop`` send),
        in the main thread only, and only over the default handlers (an application's own handler wins)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        old = {sig: signal.getsignal(sig) for sig in defaults}
        mine = [sig for sig, h in defaults.items() if old[sig] is h]
        for sig in mine:
            signal.signal(sig, self)
        try:
            yield
        finally:
            for sig in mine:
                signal.signal(sig, old[sig])


class _Guarded:
    """The objective, run with :class:`_Interrupt` told that a trial is in progress.

    When the trial's number is not the one a lone worker would have got next (other workers share the study),
    the sampler is reseeded from the trial number first, so that workers started with the same seed do not
    sample the same plans. A lone worker keeps one seeded stream: the same space and seed give the same plans.
    """

    def __init__(self, objective: Any, guard: _Interrupt, space: Any, expected: int):
        self.objective = objective
        self.guard = guard
        self.space = space
        self.expected = expected

    def __call__(self, trial: Any) -> Any:
        if self.guard.count:  # Ctrl-C while Optuna created this trial: fail it before it starts
            reason = "interrupted (KeyboardInterrupt) before the trial started"
            with contextlib.suppress(Exception):
                trial.set_user_attr("reason", reason)
            raise KeyboardInterrupt(reason)
        if trial.number != self.expected:
            trial.study.sampler = self.space.make_sampler(derived_seed(self.space, trial.number))
        self.expected = trial.number + 1
        self.guard.inside = True
        try:
            return self.objective(trial)
        finally:
            self.guard.inside = False


def run_local(study: Any, ctx: SearchContext, *, n_trials: int, timeout: float | None, progress: bool) -> None:
    """Optimise in this process until the study has ``n_trials`` finished trials."""
    import optuna
    from optuna.trial import TrialState

    remaining = remaining_trials(study, n_trials, progress=progress)
    if remaining <= 0:
        return
    callbacks: list[Any] = [optuna.study.MaxTrialsCallback(
        n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)),
        # Fail other workers' dead trials (with the reason) before Optuna's heartbeat check fails them without one.
        lambda st, _t: fail_dead_trials(st, ctx.run)]
    bar = Progress(study, ctx, n_trials) if progress else None
    if bar is not None:
        callbacks.append(bar)
    guard = _Interrupt(study)
    expected = len(study.get_trials(deepcopy=False))
    study.sampler = ctx.space.make_sampler(derived_seed(ctx.space, expected))
    objective = _Guarded(Objective(ctx), guard, ctx.space, expected=expected)
    try:
        with guard.installed():
            study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(Exception,), callbacks=callbacks)
    finally:
        if bar is not None:
            bar.close()
    if guard.count:
        raise KeyboardInterrupt("interrupted between trials")


class Progress:
    """A one-line display: finished trials, front size, best CR within the allowed accuracy drop."""

    def __init__(self, study: Any, ctx: SearchContext, total: int):
        from tqdm.auto import tqdm

        self.ctx = ctx
        self.max_drop = ctx.space.constraints.max_accuracy_drop
        if self.max_drop is None:
            self.max_drop = 0.01
        self.bar = tqdm(total=total, initial=min(total, finished_count(study)), desc=f"search {study.study_name}",
                        unit="trial", dynamic_ncols=True)
        self._update(study)

    def __call__(self, study: Any, trial: Any) -> None:
        self.bar.update(1)
        self._update(study)

    def _update(self, study: Any) -> None:
        summary = front_summary(study, self.ctx.baseline["accuracy"], self.max_drop)
        self.bar.set_postfix_str(summary)

    def close(self) -> None:
        self.bar.close()


def front_summary(study: Any, baseline_acc: float, max_drop: float) -> str:
    from optuna.trial import TrialState

    from ..pareto import pareto_mask

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "front 0"
    acc = [t.values[0] for t in done]
    cr = [t.values[1] for t in done]
    mask = pareto_mask(acc, cr)
    ok = [c for a, c in zip(acc, cr) if a >= baseline_acc - max_drop]
    best = f"{max(ok):.2f}×" if ok else "—"
    return f"front {int(sum(mask))} | best CR within {100 * max_drop:.1f} pts: {best}"


def finish(run: RunDir, study: Any, *, progress: bool = True) -> None:
    """Write pareto.csv / pareto.png / pareto.html and print the front (when any trial completed)."""
    from optuna.trial import TrialState

    from ..pareto import front, write_reports

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        counts = ", ".join(f"{len(ts)} {what}" for ts, what in ((failed, "failed"), (pruned, "pruned")) if ts)
        first = min(failed + pruned, key=lambda t: t.number, default=None)
        why = "no trial ran" if first is None else (
            f"{counts}; first reason: {first.user_attrs.get('reason', 'unknown')}")
        raise RunError(f"study {study.study_name!r}: no trial completed ({why}); nothing to plot")
    write_reports(run.root)
    if progress:
        df = front(run.root)
        print(f"\nPareto front of {study.study_name!r} ({len(df)} trials; baseline validation accuracy "
              f"{run.baseline()['accuracy']:.4f}):")
        print(df.to_string(index=False))
        print(f"\nwrote {run.root / 'pareto.csv'}, {run.root / 'pareto.png'}, {run.root / 'pareto.html'}")
