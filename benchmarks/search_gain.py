"""What does the search add? Its front against the best uniform plans, at the same training budget.

On LeNet-5 / Fashion-MNIST (conv2, fc1, fc2 compressed, as in compare_formats.py; conv1 and fc3 dense):

* **search**: ``stsearch.search`` over every format (Tucker/TT/TR and STTu/STT/STR), per-layer shapes, ranks and
  t (mixed t per core allowed), TPE, a fixed number of trials, canonicalisation and early stopping on
  (the library defaults). Each trial fine-tunes the decomposed dense baseline with ``RECIPE`` for E epochs.
* **uniform plans**: one format, rank and t for all three layers (the grid ``uniform_grid``: 6 formats ×
  ranks {2, 4, 8, 16} × t ∈ {2, 4} for ST formats), in a fixed shuffled order (seed 0), each trained with the
  same recipe and init, until they have used as many training epochs as the search actually used. Uniform
  plans that are canonically identical to one already run (e.g. STR(2r, 2) ≡ TR(r)) are skipped for free.

Both are scored the same way: the front is chosen on validation accuracy; the CR at drops of 0.5/1/2 points is
read off the front members' *test* accuracy against the dense test accuracy (interpolated in log CR; the rule
is in benchmarks/_evidence.py); hypervolume is stsearch.pareto's (validation accuracy, log10 CR) box from
10 points below the dense validation accuracy to a common upper CR. The report also gives the share of
trials that canonicalisation (a reused result) and early stopping saved, in trials and in epochs.

    .venv/bin/python benchmarks/search_gain.py --smoke                 # seconds, synthetic data (tests run it)
    .venv/bin/python benchmarks/search_gain.py --trials 16 --epochs 1 --timeout 600   # the reduced run
    .venv/bin/python benchmarks/search_gain.py                         # full: 60 trials, 5 epochs

Outputs (``--out``, default benchmarks/out/search_gain/): ``points.csv`` (every trained plan of both arms),
``summary.csv`` (one line per arm), ``summary.json``, ``tables.md``, the study's run directory and
``docs/img/search_gain.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _evidence import (
    DROPS,
    HERE,
    ROOT,
    cr_at_drop,
    dense_baseline,
    fashion_or_synthetic,
    fmt_cr,
    front_indices,
    hypervolume,
    md_table,
    plot_family,
    train_plan,
    write_csv,
    write_tables,
)
from compare_formats import BASELINE_RECIPE, INPUT_SHAPE, MODEL, RECIPE, make_plan

from stsearch import models

FORMATS = ("tucker", "tt", "tr", "sttu", "stt", "str")
FAMILY = {"tucker": "tucker", "sttu": "tucker", "tt": "tt", "stt": "tt", "tr": "tr", "str": "tr"}
DECOMPOSE_BUDGET = {"n_iter": 3, "restarts": 0}
"""ALS sweeps when a layer with no classical equivalent is initialised from the trained weights (both arms):
with the library default (15), and even with 5, one mixed-t trial on a 6-core ring took over 5 minutes here."""


def space_dict(dataset: str, trials: int, epochs: int, smoke: bool) -> dict[str, Any]:
    """The mixed-format search space (a dict, the same keys as search_spaces/*.yaml)."""
    return {
        "model": MODEL,
        "dataset": {"name": dataset, "val_fraction": 0.1},
        "baseline": dict(BASELINE_RECIPE, epochs=2 if smoke else BASELINE_RECIPE["epochs"]),
        "recipe": dict(RECIPE, epochs=epochs),
        "init": "decompose",
        "layers": [
            {"match": ["conv2"], "formats": list(FORMATS), "shapes": "auto", "rank": {"min": 2, "max": 16},
             "t": {"values": [1, 2, 4], "mixed": True}, "share": False},
            {"match": ["fc1", "fc2"], "formats": list(FORMATS), "shapes": {"depth": [2]},
             "rank": {"min": 2, "max": 16}, "t": {"values": [1, 2, 4], "mixed": True}, "share": False},
        ],
        "objectives": ["accuracy", "compression_ratio"],
        "constraints": {"min_compression_ratio": 3},
        "sampler": {"name": "tpe", "n_startup_trials": max(2, trials // 3)},
        "trials": trials,
        "early_stopping": {"enabled": True, "after_epoch": 1, "margin": 0.05},
        "seed": 0,
    }


def uniform_grid(model: torch.nn.Module, seed: int = 0) -> list[dict[str, Any]]:
    """Every valid uniform plan (one format, rank and t on conv2/fc1/fc2), shuffled with ``seed``."""
    from stsearch.plan import CompressionPlan
    from stsearch.study.canonical import canonical_key

    out, seen = [], set()
    for fmt in FORMATS:
        for r in (2, 4, 8, 16):
            for t in ((1,) if fmt in ("tucker", "tt", "tr") else (2, 4)):
                rank = r * t if fmt != "sttu" else r
                plan = make_plan(model, FAMILY[fmt], fmt, rank, t)
                if plan is None:
                    continue
                key = canonical_key(model, CompressionPlan.from_dict(plan))
                out.append({"label": f"{fmt.upper()}(R={rank}, t={t})", "plan": plan, "key": key,
                            "duplicate": key in seen})
                seen.add(key)
    random.Random(seed).shuffle(out)
    return out


def _npz(ds: Any, path: Path) -> str:
    """Write a dataset's splits as an npz (so the search reads exactly the smoke data) and return its spec."""
    tr_x, tr_y = ds.train.tensors(normalized=False)
    va_x, va_y = ds.val.tensors(normalized=False)
    te_x, te_y = ds.test.tensors(normalized=False)
    np.savez(path, x_train=torch.cat([tr_x, va_x]).numpy(), y_train=torch.cat([tr_y, va_y]).numpy(),
             x_test=te_x.numpy(), y_test=te_y.numpy())
    return f"npz:{path}"


def search_arm(space: dict[str, Any], run_root: Path, study: str, ds: Any, base_test: float,
               timeout: float | None = None) -> dict[str, Any]:
    """Run the search; return its trial points (val; test for front members) and its savings."""
    import optuna

    from stsearch import search
    from stsearch.export import load
    from stsearch.training import evaluate

    t0 = time.perf_counter()
    st = search(space, runs_dir=run_root, study=study, progress=False, timeout=timeout)
    wall = time.perf_counter() - t0
    epochs_full = int(space["recipe"]["epochs"])
    pts, n = [], {"trials": 0, "complete": 0, "reused": 0, "early_stopped": 0, "constraint_pruned": 0,
                  "failed": 0}
    epochs_used = epochs_saved_es = epochs_saved_canon = 0
    for t in st.trials:
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                           optuna.trial.TrialState.FAIL):
            continue
        n["trials"] += 1
        ua = t.user_attrs
        if t.state == optuna.trial.TrialState.FAIL:
            n["failed"] += 1
            epochs_used += len(ua.get("val_curve", []))
            continue
        if t.state == optuna.trial.TrialState.PRUNED:
            if "early_stopped_epoch" in ua:
                n["early_stopped"] += 1
                epochs_used += int(ua["early_stopped_epoch"])
                epochs_saved_es += epochs_full - int(ua["early_stopped_epoch"])
            else:
                n["constraint_pruned"] += 1
            continue
        if ua.get("reused_from") is not None:
            n["reused"] += 1
            epochs_saved_canon += epochs_full
            continue
        n["complete"] += 1
        epochs_used += epochs_full
        m = ua.get("metrics", {})
        pts.append({"arm": "search", "label": f"trial {t.number}", "trial": t.number,
                    "formats": json.dumps(ua.get("formats", {})), "val_accuracy": float(t.values[0]),
                    "compression_ratio": float(t.values[1]),
                    "layer_compression_ratio": float(m.get("layer_compression_ratio", math.nan)),
                    "params": m.get("params"), "test_accuracy": math.nan,
                    "train_time": m.get("train_time")})
    # Test accuracy for the validation front only (the models are reloaded from the trial directories).
    for i in front_indices([p["val_accuracy"] for p in pts], [p["compression_ratio"] for p in pts]):
        p = pts[i]
        model = load(run_root / study / "trials" / str(p["trial"]))
        p["test_accuracy"] = evaluate(model, ds.test, device="cpu")["accuracy"]
        p["on_front"] = True
    return {"points": pts, "counts": n, "epochs_used": epochs_used, "epochs_saved_early_stop": epochs_saved_es,
            "epochs_saved_canonical": epochs_saved_canon, "wall_time_s": wall,
            "epochs_nominal": n["trials"] * epochs_full}


def uniform_arm(base: torch.nn.Module, ds: Any, grid: list[dict[str, Any]], recipe: dict[str, Any],
                epoch_budget: int) -> dict[str, Any]:
    """Train uniform plans in ``grid`` order until ``epoch_budget`` epochs are used (duplicates are free)."""
    t0 = time.perf_counter()
    pts, used, skipped = [], 0, 0
    cache: dict = {}
    for g in grid:
        if used >= epoch_budget:
            break
        if g["duplicate"]:
            skipped += 1
            continue
        r = train_plan(base, ds, g["plan"], "decompose", 0, recipe, INPUT_SHAPE, cache=cache)
        used += int(recipe["epochs"])
        pts.append({"arm": "uniform", "label": g["label"], "trial": len(pts), "formats": g["label"],
                    "val_accuracy": r.get("val_accuracy", math.nan), "compression_ratio": r["compression_ratio"],
                    "layer_compression_ratio": r["layer_compression_ratio"], "params": r["params"],
                    "test_accuracy": r.get("test_accuracy", math.nan), "train_time": r.get("epoch_time")})
        print(f"uniform {g['label']}: val {pts[-1]['val_accuracy']:.4f} CR {r['compression_ratio']:.1f} "
              f"({used}/{epoch_budget} epochs)", flush=True)
    return {"points": pts, "epochs_used": used, "duplicates_skipped": skipped,
            "wall_time_s": time.perf_counter() - t0}


def score(points: list[dict[str, Any]], base_val: float, base_test: float, upper: float) -> dict[str, Any]:
    """CR at each drop (val-chosen front, test drops) and hypervolume (val, and test of the front)."""
    idx = front_indices([p["val_accuracy"] for p in points], [p["compression_ratio"] for p in points])
    f = [points[i] for i in idx]
    for p in f:
        p["on_front"] = True
    out: dict[str, Any] = {"n_trained": len(points), "front_size": len(f)}
    drops = [100 * (base_test - p["test_accuracy"]) for p in f]
    for d in DROPS:
        out[f"model_cr_at_{d}"] = fmt_cr(*cr_at_drop([p["compression_ratio"] for p in f], drops, d))
        out[f"layer_cr_at_{d}"] = fmt_cr(*cr_at_drop([p["layer_compression_ratio"] for p in f], drops, d))
    out["hypervolume_val"] = hypervolume([p["val_accuracy"] for p in points],
                                         [p["compression_ratio"] for p in points], base_val, upper)
    out["hypervolume_test_front"] = hypervolume([p["test_accuracy"] for p in f],
                                                [p["compression_ratio"] for p in f], base_test, upper)
    return out


SUMMARY_COLUMNS = ["arm", "n_trained", "front_size", "epochs_used", *[f"model_cr_at_{d}" for d in DROPS],
                   *[f"layer_cr_at_{d}" for d in DROPS], "hypervolume_val", "hypervolume_test_front", "wall_time_s"]
POINT_COLUMNS = ["arm", "label", "trial", "formats", "params", "compression_ratio", "layer_compression_ratio",
                 "val_accuracy", "test_accuracy", "on_front", "train_time"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="seconds on CPU: synthetic data, 4 trials, 1 epoch")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--img", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=None, help="stop the search after this many seconds")
    p.add_argument("--study", default=None, help="study name (resume an earlier run: same name, more trials)")
    p.add_argument("--baseline-cache", type=Path, default=HERE / "out" / "compare_formats" / "baseline_cache",
                   help="train_baseline cache shared with compare_formats.py (same dense model)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import stsearch.surgery as surgery

    surgery.DECOMPOSE_BUDGET = dict(DECOMPOSE_BUDGET, n_iter=1) if a.smoke else dict(DECOMPOSE_BUDGET)
    out = a.out or (HERE / "out" / ("search_gain_smoke" if a.smoke else "search_gain"))
    out.mkdir(parents=True, exist_ok=True)
    img = a.img or (out if a.smoke else ROOT / "docs" / "img")
    trials, epochs = (4, 1) if a.smoke else (a.trials, a.epochs)
    t0 = time.perf_counter()
    ds, desc = fashion_or_synthetic(a.smoke)
    if a.smoke:
        spec = _npz(ds, out / "synthetic.npz")
        from stsearch import data as st_data

        ds = st_data.load(spec, val_fraction=0.1, seed=0)  # exactly the split the search will see
    else:
        spec = "fashion-mnist"
    space = space_dict(spec, trials, epochs, a.smoke)
    cache_dir = out / "baseline_cache" if a.smoke else a.baseline_cache
    base, info = dense_baseline(MODEL, {}, ds, space["baseline"], cache_dir)
    base_pt = out / "baseline.pt"
    torch.save(base.state_dict(), base_pt)
    space["baseline"] = {"checkpoint": str(base_pt)}
    print(desc)
    print(f"dense baseline: val {info['val_accuracy']:.4f} test {info['test_accuracy']:.4f}")
    run_root = out / "runs"
    study = a.study or f"search_gain_{'smoke' if a.smoke else f'{trials}x{epochs}'}"
    # The uniform arm runs in a second process while the search runs, for the nominal budget (trials × epochs)
    # in its fixed order; afterwards it is cut to the epochs the search actually used. Same result as running
    # it afterwards with that budget, in half the wall time.
    grid = uniform_grid(models.create(MODEL))
    pool = mp.get_context("fork").Pool(1, initializer=torch.set_num_threads, initargs=(1,))
    pending = pool.apply_async(uniform_arm, (base, ds, grid, space["recipe"], trials * epochs))
    s = search_arm(space, run_root, study, ds, info["test_accuracy"], timeout=a.timeout)
    print(f"search: {s['counts']}, epochs used {s['epochs_used']}", flush=True)
    u = pending.get()
    pool.close()
    pool.join()
    budget = max(s["epochs_used"], epochs)
    u["points"] = u["points"][:budget // epochs]
    u["epochs_used"] = len(u["points"]) * epochs
    all_cr = [p["compression_ratio"] for p in s["points"] + u["points"] if math.isfinite(p["compression_ratio"])]
    upper = max(2.0, math.log10(max(all_cr))) if all_cr else 2.0
    rows = []
    for arm, res in (("search (mixed formats)", s), ("best uniform plans", u)):
        sc = score(res["points"], info["val_accuracy"], info["test_accuracy"], upper)
        rows.append({"arm": arm, **sc, "epochs_used": res["epochs_used"], "wall_time_s": f"{res['wall_time_s']:.0f}"})
    for r in rows:
        for k in ("hypervolume_val", "hypervolume_test_front"):
            r[k] = f"{r[k]:.4f}"
    c = s["counts"]
    savings = {
        "trials_finished": c["trials"],
        "reused_by_canonicalisation": c["reused"],
        "share_trials_saved_canonical": c["reused"] / max(1, c["trials"]),
        "early_stopped": c["early_stopped"],
        "share_trials_early_stopped": c["early_stopped"] / max(1, c["trials"]),
        "epochs_nominal": s["epochs_nominal"],
        "epochs_saved_canonical": s["epochs_saved_canonical"],
        "epochs_saved_early_stop": s["epochs_saved_early_stop"],
        "share_epochs_saved_canonical": s["epochs_saved_canonical"] / max(1, s["epochs_nominal"]),
        "share_epochs_saved_early_stop": s["epochs_saved_early_stop"] / max(1, s["epochs_nominal"]),
        "constraint_pruned_untrained": c["constraint_pruned"],
        "failed": c["failed"],
        "uniform_duplicates_skipped": u["duplicates_skipped"],
    }
    points = s["points"] + u["points"]
    write_csv(out / "points.csv", points, POINT_COLUMNS)
    write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS)
    series = {arm: [(p["compression_ratio"], p["test_accuracy"], 0.0) for p in pts if p.get("on_front")]
              for arm, pts in (("search front (val-chosen)", s["points"]), ("uniform front (val-chosen)",
                                                                            u["points"]))}
    plot = plot_family(img / "search_gain.png", f"LeNet-5 / {ds.name}: search ({trials} trials) vs uniform plans, "
                       f"{epochs} epoch(s)", series, info["test_accuracy"], xlabel="whole-model CR (log)")
    wall = time.perf_counter() - t0
    summary = {"data": desc, "smoke": a.smoke, "baseline": info, "space": space, "trials": trials, "epochs": epochs,
               "decompose_budget": surgery.DECOMPOSE_BUDGET, "summary": rows, "savings": savings,
               "hv_upper_log10_cr": upper, "wall_time_s": wall, "plot": str(plot), "points": points}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    md = [f"Data: {desc}. Dense LeNet-5: val {100 * info['val_accuracy']:.2f}%, test "
          f"{100 * info['test_accuracy']:.2f}%. {trials} trials × {epochs} epoch(s); wall {wall / 60:.1f} min.",
          "", md_table(rows, [(k, k) for k in SUMMARY_COLUMNS]), "",
          md_table([{"what": k, "value": (f"{v:.3f}" if isinstance(v, float) else v)} for k, v in savings.items()],
                   [("what", "what"), ("value", "value")])]
    write_tables(out, md, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
