"""Search quality and cost: hypervolume of TPE, NSGA-II and random search on the same space and budget.

Also reports trials per hour, the share of trials stopped early / reused / rejected by a constraint, and the
training time each of those saved (estimated from the mean cost of a trained trial in the same run).

    .venv/bin/python benchmarks/search.py                      # digits_cnn.yaml, 40 trials x 5 seeds x 3 samplers
    .venv/bin/python benchmarks/search.py --trials 20 --seeds 3
    .venv/bin/python benchmarks/search.py --smoke              # seconds: 3 trials x 1 seed, 1-epoch recipe
    # a harder problem on a budget: fashion_lenet5.yaml on a 5k-image training subset, one t per layer
    .venv/bin/python benchmarks/search.py --space fashion_lenet5 --subset 5000 --epochs 2 --uniform-t --seeds 3

``--subset N`` writes a stratified subset of N images of the space's *training* split (plus its test split,
which the search never reads) to ``OUT/subset-N.npz`` and searches on ``npz:`` that file; the search then holds
out its usual validation fraction of those N images.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

import stsearch
from stsearch.pareto import hypervolume
from stsearch.study.space import load_space


def run_one(space, sampler: str, seed: int, trials: int, runs: Path) -> dict:
    name = f"{sampler}-s{seed}"
    t0 = time.perf_counter()
    study = stsearch.search(space, study=name, runs_dir=runs, trials=trials, sampler=sampler, seed=seed,
                            progress=False)
    wall = time.perf_counter() - t0
    ts = [t for t in study.trials if t.state != TrialState.RUNNING]
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    trained = [t for t in done if t.user_attrs.get("reused_from") is None]
    cost = statistics.mean(float(t.user_attrs.get("metrics", {}).get("train_time", 0.0)) for t in trained) \
        if trained else 0.0
    epochs = max(1, int(space.recipe.get("epochs", 1)))
    early = [t for t in ts if "early stop" in str(t.user_attrs.get("reason", ""))]
    constraint = [t for t in ts if str(t.user_attrs.get("reason", "")).startswith("constraint")]
    reused = [t for t in done if t.user_attrs.get("reused_from") is not None]
    return {
        "sampler": sampler, "seed": seed, "run": str(runs / name), "wall_s": wall, "finished": len(ts),
        "complete": len(done), "failed": sum(t.state == TrialState.FAIL for t in ts),
        "early_stopped": len(early), "reused": len(reused), "constraint_rejected": len(constraint),
        "saved_early_s": sum(t.user_attrs.get("epochs_saved", 0) for t in early) * cost / epochs,
        "saved_reuse_s": len(reused) * cost, "trials_per_hour": 3600 * len(ts) / wall,
        "max_log10_cr": max((math.log10(t.values[1]) for t in done), default=0.0),
    }


def subset_npz(space, n: int, out: Path) -> str:
    """Write a stratified subset of n training images of the space's dataset to an npz file; return its spec."""
    import numpy as np

    from stsearch import data as st_data

    ds = space.dataset
    full = st_data.load(ds.name, data_root=ds.data_root, download=ds.download, val_fraction=0.0, seed=0)
    tr = full.train.subset(n, seed=0)
    x_tr, y_tr = tr.tensors(normalized=False)
    x_te, y_te = full.test.tensors(normalized=False)
    path = out / f"subset-{n}.npz"
    np.savez(path, x_train=x_tr.numpy(), y_train=y_tr.numpy(), x_test=x_te.numpy(), y_test=y_te.numpy())
    return f"npz:{path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="digits_cnn")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samplers", default="tpe,nsga2,random")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--subset", type=int, default=None, help="search on N training images (see above)")
    ap.add_argument("--epochs", type=int, default=None, help="override the space's trial recipe epochs")
    ap.add_argument("--init", choices=["decompose", "random"], default=None, help="override the space's init")
    ap.add_argument("--uniform-t", action="store_true",
                    help="one t per layer (mixed: false in every group): no generic-ALS fits of new topologies")
    ap.add_argument("--out", type=Path, default=None, help="runs directory (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    space = load_space(a.space)
    if a.smoke:
        a.trials, a.seeds = 3, 1
        space = load_space({**space.to_dict(), "recipe": {**space.recipe, "epochs": 1},
                            "baseline": {**space.baseline, "epochs": 5}}, name=space.name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs = a.out or Path(tempfile.mkdtemp(prefix="stsearch-bench-"))
    runs.mkdir(parents=True, exist_ok=True)
    over: dict = {}
    if a.subset:
        over["dataset"] = subset_npz(space, a.subset, runs)
    if a.epochs:
        over["recipe"] = {**space.recipe, "epochs": a.epochs}
    if a.init:
        over["init"] = a.init
    if a.uniform_t:
        over["layers"] = [{**g, "t": {**g["t"], "mixed": False}} for g in space.to_dict()["layers"]]
    if over:
        space = load_space({**space.to_dict(), **over}, name=space.name)
    rows = [run_one(space, s, seed, a.trials, runs) for seed in range(a.seeds) for s in a.samplers.split(",")]
    upper = max(2.0, max(r["max_log10_cr"] for r in rows))  # one box for every run
    for r in rows:
        r["hypervolume"] = hypervolume(r["run"], upper_log10_cr=upper)
    print(f"\nspace {a.space}, {a.trials} trials x {a.seeds} seeds; hypervolume box upper log10 CR = {upper:.3f}\n")
    print("| sampler | HV mean | HV std | wall s (mean) | trials/h | early-stopped | reused | constraint-rejected "
          "| saved by early stop s | saved by reuse s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in a.samplers.split(","):
        rs = [r for r in rows if r["sampler"] == s]
        hv = [r["hypervolume"] for r in rs]
        n = sum(r["finished"] for r in rs)
        wall = statistics.mean(r["wall_s"] for r in rs)
        tph = statistics.mean(r["trials_per_hour"] for r in rs)
        print(f"| {s} | {statistics.mean(hv):.4f} | {statistics.stdev(hv) if len(hv) > 1 else 0.0:.4f} "
              f"| {wall:.0f} | {tph:.0f} "
              f"| {sum(r['early_stopped'] for r in rs) / n:.0%} | {sum(r['reused'] for r in rs) / n:.0%} "
              f"| {sum(r['constraint_rejected'] for r in rs) / n:.0%} "
              f"| {sum(r['saved_early_s'] for r in rs):.0f} | {sum(r['saved_reuse_s'] for r in rs):.0f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
