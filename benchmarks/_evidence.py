"""Shared helpers of the evidence benchmarks (compare_formats.py, search_gain.py, cifar_paper.py).

Data (real or a synthetic stand-in that says so), the dense baseline, one training run of a plan with every
number the tables need, the classification of a plan as classical / equivalent / genuinely new (THEORY §4),
Pareto fronts and the "CR at an accuracy drop of d points" rule, a small resumable process pool, and plots.

The CR-at-drop rule (used by every table): take the front (points sorted by CR ascending), express each
point's accuracy as a drop in points below the dense baseline, and find the largest CR whose drop is ≤ d. If a
front point with a larger CR has a drop > d, interpolate linearly in log10(CR) between the last point within d
and the next point beyond it, at drop = d. If every front point is within d, the answer is the largest CR
tested, marked as a lower bound (``ge``). If no point is within d, the answer is ``NaN`` ("not reached").
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from stsearch import data as st_data  # noqa: E402
from stsearch.data import Dataset, TensorSplit  # noqa: E402

DROPS = (0.5, 1.0, 2.0)
"""Accuracy drops (points below the dense baseline) at which the tables report the reachable CR."""


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def synthetic(name: str, shape: tuple[int, int, int], n_train: int, n_val: int, n_test: int,
              num_classes: int = 10, seed: int = 0) -> Dataset:
    """A learnable synthetic image set: one random uint8 template per class plus noise (labels are real)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand((num_classes, *shape), generator=g) * 255
    n = n_train + n_val + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = (0.6 * templates[y] + 0.4 * torch.rand((n, *shape), generator=g) * 255).clamp(0, 255).to(torch.uint8)
    kw: dict[str, Any] = {"scale": 1 / 255, "mean": (0.5,) * shape[0], "std": (0.25,) * shape[0],
                          "augment": "crop_flip" if shape[0] == 3 else "none"}
    tr = TensorSplit(x[:n_train], y[:n_train], name="train", **kw)
    va = TensorSplit(x[n_train:n_train + n_val], y[n_train:n_train + n_val], name="val", **kw)
    te = TensorSplit(x[n_train + n_val:], y[n_train + n_val:], name="test", **kw)
    return Dataset(name, name, tr, va, te, shape, num_classes)


def fashion_or_synthetic(smoke: bool, train_subset: int | None = None) -> tuple[Dataset, str]:
    """Fashion-MNIST (60k/10k; 54k train, 6k stratified validation, seed 0) or, in smoke mode or when the
    Debian package is missing, a small synthetic 28×28 set. Returns (dataset, a sentence naming the data)."""
    if not smoke:
        try:
            ds = st_data.load("fashion-mnist", val_fraction=0.1, seed=0)
        except ValueError as e:
            raise SystemExit(f"Fashion-MNIST not found ({e}); install dataset-fashion-mnist or run --smoke") from None
        if train_subset:
            ds = ds.subset(train=train_subset, seed=0)
        return ds, (f"Fashion-MNIST: {len(ds.train)} train / {len(ds.val)} validation (held out of the 60k "
                    f"training set, stratified, seed 0) / {len(ds.test)} test (official)")
    ds = synthetic("synthetic-28x28", (1, 28, 28), 384, 128, 256)
    return ds, ("SYNTHETIC 28×28 data (smoke mode: 384 train / 128 val / 256 test, class templates + noise); "
                "not Fashion-MNIST, numbers mean nothing")


# ----------------------------------------------------------------------------------------------------------
# Plans: rank fitting and classification
# ----------------------------------------------------------------------------------------------------------
def layer_kind(m: torch.nn.Module) -> tuple[str, int, int, int | None]:
    if isinstance(m, torch.nn.Conv2d):
        return "conv", m.in_channels, m.out_channels, m.kernel_size[0]
    return "linear", m.in_features, m.out_features, None


def valid_layout(m: torch.nn.Module, spec: Mapping[str, Any]) -> Any | None:
    """The LayerLayout of ``spec`` on module ``m`` or ``None`` when the spec is invalid."""
    from stsearch.layers import normalize_layer_spec

    kind, cin, cout, k = layer_kind(m)
    try:
        return normalize_layer_spec(kind, spec["format"], cin, cout, k, rank=spec.get("rank"),
                                    t=spec.get("t", 1), in_shape=spec.get("in_shape"),
                                    out_shape=spec.get("out_shape"))
    except ValueError:
        return None


def fit_spec(m: torch.nn.Module, spec: Mapping[str, Any], step: int = 1) -> dict[str, Any] | None:
    """``spec`` with its (int) rank lowered in steps of ``step`` until it is valid on ``m``; ``None`` if never.

    Only used where a bond bound (e.g. TT's first bond ≤ kh·kw) makes the family's nominal rank impossible;
    the rows record the ranks that were actually built.
    """
    spec = dict(spec)
    r = spec["rank"]
    if not isinstance(r, int):
        return spec if valid_layout(m, spec) is not None else None
    while r >= 1:
        spec["rank"] = r
        if valid_layout(m, spec) is not None:
            return spec
        r -= step
    return None


def classify(model: torch.nn.Module, plan: Mapping[str, Mapping[str, Any]]) -> str:
    """``classical``, ``≡ classical`` (an ST layer with an exact classical equivalent) or ``new`` (some layer is
    a genuinely new topology: no single TT/TR/Tucker equals it), per THEORY §4, from each layer's
    ``Format.equivalence``."""
    from stsearch.surgery import compressible_layers

    layers = compressible_layers(model)
    kinds = []
    for name, spec in plan.items():
        if spec.get("format", "dense") == "dense":
            continue
        lay = valid_layout(layers[name], spec)
        if lay is None:
            raise ValueError(f"invalid spec for {name}: {spec}")
        if lay.fmt in ("tucker", "tt", "tr"):
            kinds.append("classical")
            continue
        eq = lay.format.equivalence(lay.tensor_shape, lay.ranks, lay.t)
        kinds.append("equivalent" if eq is not None else "new")
    if "new" in kinds:
        return "new topology"
    if "equivalent" in kinds:
        return "≡ classical"
    return "classical"


def estimate(model: torch.nn.Module, plan: Mapping[str, Any]) -> dict[str, Any]:
    from stsearch.surgery import estimate_params

    return estimate_params(model, plan)


# ----------------------------------------------------------------------------------------------------------
# One training run
# ----------------------------------------------------------------------------------------------------------
def dense_baseline(model_name: str, model_kwargs: Mapping[str, Any], ds: Dataset, recipe: Mapping[str, Any],
                   cache_dir: Path, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The dense model trained once (cached by stsearch.training.train_baseline), with val/test accuracy."""
    from stsearch.training import Recipe, evaluate, train_baseline

    torch.set_num_threads(1)
    model, info = train_baseline(model_name, dict(model_kwargs), ds, Recipe.from_dict(dict(recipe)),
                                 cache_dir=cache_dir, device="cpu", seed=seed)
    model = model.cpu().eval()
    val = evaluate(model, ds.val, device="cpu")
    test = evaluate(model, ds.test, device="cpu")
    params = sum(p.numel() for p in model.parameters())
    return model, {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "params": params,
                   "wall_time": info.get("wall_time"), "cached": bool(info.get("cached")),
                   "recipe": dict(recipe), "seed": seed}


def train_plan(base: torch.nn.Module, ds: Dataset, plan: Mapping[str, Any], init: str, seed: int,
               recipe: Mapping[str, Any], input_shape: tuple[int, ...], device: str = "cpu",
               cache: dict | None = None) -> dict[str, Any]:
    """Compress ``base`` with ``plan`` (init decompose|random, seeded), train with ``recipe``, evaluate.

    ``cache``: compress()'s memo of decomposed layers (a decomposition is then shared by all seeds).
    Returns params, both CRs, validation accuracy (what any selection may use) and test accuracy (reported
    only), mean epoch time / training throughput and the decomposition time.
    """
    from stsearch import compress, profile
    from stsearch.training import Recipe, evaluate, fit

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = compress(base, dict(plan), init=init, seed=seed, cache=cache)
    t_init = time.perf_counter() - t0
    prof = profile(model, input_shape)
    res = fit(model, ds, Recipe.from_dict(dict(recipe)), device=device, seed=seed, progress=False,
              num_threads=1 if device == "cpu" else None)
    out: dict[str, Any] = {"params": prof.params, "dense_params": prof.dense_params,
                           "compression_ratio": prof.compression_ratio,
                           "layer_compression_ratio": prof.layer_compression_ratio, "flops": prof.flops,
                           "init_time": t_init, "status": res.status}
    if res.status != "ok":
        out.update(val_accuracy=math.nan, test_accuracy=math.nan, epoch_time=math.nan, images_per_s=math.nan)
        return out
    hist = res.history
    out["epoch_time"] = statistics.mean(h["epoch_time"] for h in hist)
    out["train_time_per_epoch"] = statistics.mean(h["train_time"] for h in hist)
    out["images_per_s"] = statistics.mean(h["images_per_s"] for h in hist)
    out["val_accuracy"] = evaluate(model, ds.val, device=device)["accuracy"]
    out["test_accuracy"] = evaluate(model, ds.test, device=device)["accuracy"]
    out["epochs"] = res.epochs
    return out


# ----------------------------------------------------------------------------------------------------------
# Fronts and the CR-at-drop rule
# ----------------------------------------------------------------------------------------------------------
def front_indices(acc: Sequence[float], cr: Sequence[float]) -> list[int]:
    """Indices of the Pareto front (maximise accuracy and CR), sorted by CR ascending."""
    from stsearch.pareto import pareto_mask

    a, c = np.asarray(acc, float), np.asarray(cr, float)
    ok = np.isfinite(a) & np.isfinite(c)
    idx = np.flatnonzero(ok)
    if not idx.size:
        return []
    mask = pareto_mask(a[idx], c[idx])
    keep = idx[mask]
    return [int(i) for i in keep[np.argsort(c[keep], kind="stable")]]


def cr_at_drop(cr: Sequence[float], drop: Sequence[float], d: float) -> tuple[float, str]:
    """The CR reached at an accuracy drop of ``d`` points along a front (the module docstring's rule).

    ``cr``/``drop``: the front's points (any order). Returns (CR, flag) with flag ``""`` (interpolated or a
    point), ``"ge"`` (every point within d: a lower bound) or ``"none"`` (no point within d; CR is NaN).
    """
    pts = sorted((float(c), float(x)) for c, x in zip(cr, drop, strict=True) if math.isfinite(c) and math.isfinite(x))
    within = [i for i, (_, x) in enumerate(pts) if x <= d]
    if not within:
        return math.nan, "none"
    i = max(within, key=lambda k: pts[k][0])
    later = [k for k in range(len(pts)) if pts[k][0] > pts[i][0] and pts[k][1] > d]
    if not later:
        return pts[i][0], ("ge" if i == len(pts) - 1 else "")
    j = min(later, key=lambda k: pts[k][0])
    (c0, x0), (c1, x1) = pts[i], pts[j]
    f = (d - x0) / (x1 - x0) if x1 != x0 else 0.0
    return float(10 ** (math.log10(c0) + f * (math.log10(c1) - math.log10(c0)))), ""


def fmt_cr(value: float, flag: str) -> str:
    if flag == "none" or not math.isfinite(value):
        return "not reached"
    return ("≥ " if flag == "ge" else "") + f"{value:.1f}×"


def hypervolume(acc: Sequence[float], cr: Sequence[float], baseline_acc: float, upper_log10_cr: float) -> float:
    """stsearch.pareto.hypervolume on plain (accuracy, CR) points, with one common upper CR bound."""
    from stsearch.pareto import hypervolume as hv

    recs = [{"trial": i, "status": "complete", "accuracy": a, "compression_ratio": c}
            for i, (a, c) in enumerate(zip(acc, cr, strict=True))]
    return float(hv(recs, baseline=baseline_acc, upper_log10_cr=upper_log10_cr))


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, 0
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


# ----------------------------------------------------------------------------------------------------------
# A small resumable pool: each job is a dict with a unique "id"; results append to a JSONL file
# ----------------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the job reruns
    return out


_WORKER: dict[str, Any] = {}


def _init_worker(setup: Callable[[], Any] | None) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if setup is not None:
        _WORKER["state"] = setup()


def _call(args: tuple[Callable[[Any, dict], dict], dict]) -> dict[str, Any]:
    fn, job = args
    t0 = time.perf_counter()
    try:
        res = fn(_WORKER["state"], job)
    except Exception as e:  # noqa: BLE001 - recorded, the table says which job failed and why
        res = {"status": f"error: {type(e).__name__}: {e}"}
    return {**job, **res, "job_wall_time": time.perf_counter() - t0}


def run_pool(jobs: list[dict[str, Any]], fn: Callable[[Any, dict], dict], state: Any, out: Path,
             workers: int = 1, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``fn(state, job)`` for every job not yet in ``out`` (JSONL), ``workers`` processes (1 thread each).

    ``state`` (data, baseline, decomposition cache) is built once by the caller and inherited by the forked
    workers. Returns every finished record (old and new), in job order.
    """
    done = {r["id"]: r for r in read_jsonl(out)}
    todo = [j for j in jobs if j["id"] not in done]
    log(f"{len(done)} job(s) already in {out.name}; running {len(todo)} with {workers} worker(s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _WORKER["state"] = state
    if workers <= 1:
        _init_worker(None)
        it: Iterable[dict[str, Any]] = (_call((fn, j)) for j in todo)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(None,))
        it = pool.imap(_call, [(fn, j) for j in todo])
    try:
        for k, rec in enumerate(it, 1):
            with out.open("a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            done[rec["id"]] = rec
            acc = rec.get("test_accuracy", math.nan)
            log(f"[{k}/{len(todo)} {time.perf_counter() - t0:.0f}s] {rec['id']}: status={rec.get('status')} "
                f"test={acc:.4f} CR={rec.get('compression_ratio', math.nan):.2f}")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return [done[j["id"]] for j in jobs if j["id"] in done]


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------
def write_tables(out: Path, lines: Sequence[str], wall: float) -> None:
    """Write ``OUT/tables.md`` (the markdown lines), print it, and say where the outputs went and how long it took."""
    text = "\n".join(lines)
    (out / "tables.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out} ({wall:.0f} s)")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` = (key, header); floats are written as they are already formatted."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_family(path: Path, title: str, series: Mapping[str, Sequence[tuple[float, float, float]]],
                baseline_acc: float, xlabel: str = "layer compression ratio (log)") -> Path:
    """Test accuracy (mean ± std over seeds) against CR on a log axis; one line style per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    markers = "os^Dv<>P*X"
    for k, (label, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if math.isfinite(p[1]))
        if not pts:
            continue
        x, y, e = zip(*pts, strict=True)
        ax.errorbar(x, [100 * v for v in y], yerr=[100 * v for v in e], marker=markers[k % len(markers)],
                    capsize=2, lw=1, ms=4, label=label)
    ax.axhline(100 * baseline_acc, color="k", ls="--", lw=0.8, label=f"dense ({100 * baseline_acc:.2f}%)")
    for d in DROPS:
        ax.axhline(100 * baseline_acc - d, color="grey", ls=":", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
