"""Do semi-tensor formats beat classical ones at equal parameter count? A format sweep on LeNet-5.

Grid (LeNet-5; conv2, fc1 and fc2 compressed — 60,480 of its 61,706 weights; conv1 and fc3 stay dense):

* three families: Tucker/STTu, TT/STT, TR/STR; each at three parameter budgets, set by the classical rank r
  (``FAMILIES[...]["ranks"]``);
* per budget: the classical format at rank r; the **uniform t = 2** ST format at rank 2r (STR(2r, 2) is exactly
  TR(r): same function class, same parameter count, so it is the control; STT(2r, 2) is TT(r) on a relaid
  tensorization, STTu a partial Tucker); at the middle budget also **t = 4** (rank 4r) where the shapes allow
  it; and one **mixed-t** row: STT t = (2, 4, 1) on fc1/fc2 and STR t = (2, 4, 2) on fc1/fc2 with
  (2, 4, 2, 2) on conv2 are genuinely new topologies (4-5 cores, THEORY §4: a wire ending mid-chain, a
  chord); STTu with t = (4, 2) is still a partial Tucker (every STTu is), and the table says so. The mixed
  row's rank is the one whose parameter count is closest to the classical row's;
* each row with ``init=decompose`` (factor the trained dense LeNet-5, then fine-tune) and ``init=random``
  (train the factorized net from scratch), the same recipe, epochs and seeds for every row.

The paper's **equal-rank** comparison (ST(R, t) against classical at the same R, t² fewer parameters) falls out
of the grid: ST(2r, 2) at budget k and the classical rank 2r at budget k+1; the script prints those pairs in a
separate, labelled table.

Selection uses validation accuracy only (the 6k images held out of the 60k training set): the fronts along
which the CR at a 0.5/1/2-point drop is interpolated are chosen on mean validation accuracy; the drops
themselves are then read off the front members' mean *test* accuracy against the dense model's test accuracy
(the rule is in benchmarks/_evidence.py). Nothing is tuned on the test split.

    .venv/bin/python benchmarks/compare_formats.py --smoke            # seconds, synthetic data (tests run it)
    .venv/bin/python benchmarks/compare_formats.py --epochs 1 --seeds 0 1 --workers 2   # the reduced run (28 min)
    .venv/bin/python benchmarks/compare_formats.py --workers 2 --als-max-budget 2   # full: 5 epochs, 3 seeds

Outputs (``--out``, default benchmarks/out/compare_formats/): ``runs.jsonl`` (one line per run; resumable),
``rows.csv`` (one line per row, mean/std over seeds), ``cr_at_drop.csv``, ``equal_rank.csv``,
``summary.json`` and ``tables.md``; plots to ``--img`` (default docs/img/compare_<family>.png).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _evidence import (
    DROPS,
    HERE,
    ROOT,
    classify,
    cr_at_drop,
    dense_baseline,
    estimate,
    fashion_or_synthetic,
    fit_spec,
    fmt_cr,
    front_indices,
    md_table,
    mean_std,
    plot_family,
    read_jsonl,
    run_pool,
    train_plan,
    valid_layout,
    write_csv,
    write_tables,
)

from stsearch import models
from stsearch.surgery import compressible_layers

MODEL = "lenet5"
LAYERS = ("conv2", "fc1", "fc2")
INPUT_SHAPE = (1, 28, 28)
BASELINE_RECIPE = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 8,
                   "batch_size": 128, "schedule": "cosine", "augment": False}
"""The dense LeNet-5 every ``init=decompose`` row starts from, and the reference for accuracy drops."""
RECIPE = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
          "schedule": "cosine", "augment": False, "grad_clip": 2.0}
"""One recipe for every compressed row, both inits (epochs from --epochs). Gradient clipping (norm 2) is
needed: without it, fine-tuning the TR-ALS-decomposed layers diverged (NaN loss) in the first epoch."""

# Channel factorisations: TT pairs (in_k, out_k) chosen so the last pair's mode is divisible by 4 (t on the
# last core); TR rings of 4 cores on fc1/fc2 and the default 5-core ring (2, 3 | 25 | 4, 4) on conv2.
SHAPES: dict[str, dict[str, dict[str, list[int]]]] = {
    "tt": {"fc1": {"in_shape": [5, 5, 4, 4], "out_shape": [5, 3, 2, 4]},
           "fc2": {"in_shape": [5, 3, 2, 4], "out_shape": [7, 3, 2, 2]}, "conv2": {}},
    "tr": {"fc1": {"in_shape": [20, 20], "out_shape": [10, 12]},
           "fc2": {"in_shape": [10, 12], "out_shape": [7, 12]}, "conv2": {}},
    "tucker": {"fc1": {}, "fc2": {}, "conv2": {}},
}
FAMILIES: dict[str, dict[str, Any]] = {
    "tucker": {"classical": "tucker", "st": "sttu", "ranks": (2, 4, 8, 12), "t4": False,
               "mixed": {"fc1": [4, 2], "fc2": [4, 2], "conv2": [4, 2]}},
    "tt": {"classical": "tt", "st": "stt", "ranks": (4, 8, 12, 16), "t4": True, "als_control": True,
           "mixed": {"fc1": [2, 4, 1], "fc2": [2, 4, 1], "conv2": [2, 2]}},
    "tr": {"classical": "tr", "st": "str", "ranks": (2, 4, 6, 8), "t4": True,
           "mixed": {"fc1": [2, 4, 2], "fc2": [2, 4, 2], "conv2": [2, 4, 2, 2]}},
}
SMOKE_FAMILIES = {k: dict(v, ranks=v["ranks"][:2], t4=False) for k, v in FAMILIES.items()}
ALS_FIT = "classical (ALS fit)"
"""The control row of the mixed-t STT lead: classical TT at the same rank, its decomposed start fitted by the same
generic ALS (same sweep budget, random start) as the new topologies instead of by TT-SVD. ``init=decompose`` only."""


# ----------------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------------
def _tucker_rank(layer: torch.nn.Module, r: int, t: Any) -> list[int]:
    """Per-channel-mode Tucker ranks (out, in) ≤ the mode sizes and divisible by that mode's t."""
    cout = layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
    cin = layer.in_channels if isinstance(layer, torch.nn.Conv2d) else layer.in_features
    to, ti = (t, t) if isinstance(t, int) else t
    ro = max(to, min(r, cout) // to * to)
    ri = max(ti, min(r, cin) // ti * ti)
    return [ro, ri]


def layer_spec(family: str, fmt: str, name: str, layer: torch.nn.Module, r: int, t: Any) -> dict[str, Any]:
    """One layer's spec in ``fmt`` at nominal rank ``r`` (lowered where a bond bound forbids it)."""
    spec: dict[str, Any] = {"format": fmt, "t": t, **SHAPES[family][name]}
    if family == "tucker":
        spec["rank"] = _tucker_rank(layer, r, t)
        return spec if valid_layout(layer, spec) is not None else {}
    step = max(t) if isinstance(t, list) else t
    spec["rank"] = r
    if family == "tt":
        spec["rank"] = _tt_bond_ranks(layer, spec, r, step)
        if valid_layout(layer, spec) is not None:
            return spec
        spec["rank"] = r
    fitted = fit_spec(layer, spec, step=step)
    return fitted or {}


def _tt_bond_ranks(layer: torch.nn.Module, spec: dict[str, Any], r: int, step: int) -> list[int]:
    """TT/STT bond ranks min(r, bond bound), rounded down to a multiple of ``step``: a bond that cannot carry r
    (R_k ≤ min(∏_{j≤k} I_j, ∏_{j>k} I_j)) is lowered alone instead of lowering the whole layer's rank."""
    lay = valid_layout(layer, {**spec, "format": "tt", "rank": 1, "t": 1})
    shape = list(lay.tensor_shape)
    out = []
    for k in range(1, len(shape)):
        bound = min(math.prod(shape[:k]), math.prod(shape[k:]))
        out.append(max(step, min(r, bound) // step * step))
    return out


def make_plan(model: torch.nn.Module, family: str, fmt: str, r: int, t: Any) -> dict[str, Any] | None:
    """The plan compressing conv2/fc1/fc2 with ``fmt``; ``t`` an int or a per-layer dict; None if invalid."""
    layers = compressible_layers(model)
    plan = {}
    for name in LAYERS:
        tl = t[name] if isinstance(t, dict) else t
        spec = layer_spec(family, fmt, name, layers[name], r, tl)
        if not spec:
            return None
        plan[name] = spec
    return plan


def _params(model: torch.nn.Module, plan: dict[str, Any]) -> int:
    return int(estimate(model, plan)["params"])


def _matched(model: torch.nn.Module, family: str, fmt: str, t: Any, target: int, step: int,
             r_max: int) -> tuple[int, dict[str, Any]] | None:
    """The rank (a multiple of ``step``) whose plan's parameter count is closest to ``target`` (log scale)."""
    best = None
    for r in range(step, r_max + 1, step):
        plan = make_plan(model, family, fmt, r, t)
        if plan is None:
            continue
        gap = abs(math.log(_params(model, plan) / target))
        if best is None or gap < best[0]:
            best = (gap, r, plan)
    return None if best is None else (best[1], best[2])


def build_grid(model: torch.nn.Module, families: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of the sweep (without init/seed): family, budget, variant, label, plan, classification."""
    rows: list[dict[str, Any]] = []
    for fam, cfg in families.items():
        ranks = cfg["ranks"]
        for b, r in enumerate(ranks):
            cplan = make_plan(model, fam, cfg["classical"], r, 1)
            if cplan is None:
                raise ValueError(f"{fam}: classical rank {r} is invalid")
            target = _params(model, cplan)
            variants: list[tuple[str, str, dict[str, Any], int, Any]] = [
                ("classical", f"{cfg['classical'].upper()}(r={r})", cplan, r, 1)]
            for t in ((2, 4) if (cfg["t4"] and b == len(ranks) // 2) else (2,)):
                if fam == "tucker":
                    got = _matched(model, fam, cfg["st"], t, target, t, 8 * r)
                    if got is None:
                        continue
                    rr, plan = got
                else:
                    rr, plan = t * r, make_plan(model, fam, cfg["st"], t * r, t)
                    if plan is None:
                        continue
                variants.append((f"uniform t={t}", f"{cfg['st'].upper()}(R={rr}, t={t})", plan, rr, t))
            mixed = cfg["mixed"]
            step = max(max(v) for v in mixed.values())
            got = _matched(model, fam, cfg["st"], mixed, target, step, 8 * r)
            if got is not None:
                rr, plan = got
                tl = "/".join(f"{k}:{tuple(v)}" for k, v in mixed.items())
                variants.append(("mixed t", f"{cfg['st'].upper()}(R={rr}, t={tl})", plan, rr, mixed))
            if cfg.get("als_control"):
                variants.append((ALS_FIT, f"{cfg['classical'].upper()}(r={r}), ALS fit", cplan, r, 1))
            for variant, label, plan, rr, t in variants:
                est = estimate(model, plan)
                rows.append({"family": fam, "budget": b, "classical_rank": r, "variant": variant, "label": label,
                             "rank": rr, "t": json.dumps(t), "kind": classify(model, plan), "plan": plan,
                             "params": int(est["params"]), "compression_ratio": est["compression_ratio"],
                             "layer_compression_ratio": est["layer_compression_ratio"]})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------
class _Setup:
    """Per-process state: the data and the dense baseline (trained once, cached on disk)."""

    def __init__(self, smoke: bool, cache: Path, baseline_recipe: dict[str, Any]):
        self.smoke, self.cache, self.baseline_recipe = smoke, cache, baseline_recipe

    def __call__(self) -> dict[str, Any]:
        ds, desc = fashion_or_synthetic(self.smoke)
        base, info = dense_baseline(MODEL, {}, ds, self.baseline_recipe, self.cache)
        return {"ds": ds, "base": base, "info": info, "desc": desc, "cache": {}, "cache_als": {}}


def _job(state: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    cache = state["cache_als" if job.get("variant") == ALS_FIT else "cache"]  # filled by predecompose
    return train_plan(state["base"], state["ds"], job["plan"], job["init"], job["seed"], job["recipe"],
                      INPUT_SHAPE, cache=cache)


def predecompose(state: dict[str, Any], grid: list[dict[str, Any]], log: Any = print) -> None:
    """Decompose every ``init=decompose`` row once (torch seed 0) into the shared cache before the workers
    fork, so all seeds of a row start from the same decomposition and no worker repeats a slow ALS fit."""
    import stsearch.surgery as surgery
    from stsearch import compress

    budget = surgery.DECOMPOSE_BUDGET
    for g in grid:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        als = g.get("variant") == ALS_FIT
        surgery.DECOMPOSE_BUDGET = {**budget, "method": "als"} if als else budget
        try:
            compress(state["base"], g["plan"], init="decompose", cache=state["cache_als" if als else "cache"])
        finally:
            surgery.DECOMPOSE_BUDGET = budget
        dt = time.perf_counter() - t0
        g["decompose_time_s"] = dt
        if dt > 5:
            log(f"decomposed {g['id']} in {dt:.0f} s")


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------
ROW_COLUMNS = ["family", "budget", "variant", "label", "kind", "init", "rank", "t", "params", "compression_ratio",
               "layer_compression_ratio", "val_mean", "val_std", "test_mean", "test_std", "n_seeds",
               "test_drop_points", "epoch_time_s", "train_images_per_s", "init_time_s", "epochs"]
DROP_COLUMNS = ["family", "init", "series", "n_points", *[f"layer_cr_at_{d}" for d in DROPS],
                *[f"model_cr_at_{d}" for d in DROPS], "epoch_time_s"]
EQUAL_RANK_COLUMNS = ["family", "init", "rank", "classical", "st", "classical_params", "st_params",
                      "classical_layer_cr", "st_layer_cr", "classical_test", "st_test", "param_ratio"]


def aggregate(grid: list[dict[str, Any]], runs: list[dict[str, Any]], inits: list[str],
              base_test: float) -> list[dict[str, Any]]:
    out = []
    for g in grid:
        for init in inits:
            rs = [r for r in runs if r["row"] == g["id"] and r["init"] == init and r.get("status") == "ok"]
            if not rs:
                continue
            vm, vs, n = mean_std(r["val_accuracy"] for r in rs)
            tm, ts, _ = mean_std(r["test_accuracy"] for r in rs)
            et, _, _ = mean_std(r["epoch_time"] for r in rs)
            ips, _, _ = mean_std(r["images_per_s"] for r in rs)
            it, _, _ = mean_std(r["init_time"] for r in rs)
            out.append({**{k: g[k] for k in ("family", "budget", "variant", "label", "kind", "rank", "t")},
                        "init": init, "params": rs[0]["params"], "compression_ratio": rs[0]["compression_ratio"],
                        "layer_compression_ratio": rs[0]["layer_compression_ratio"], "val_mean": vm,
                        "val_std": vs, "test_mean": tm, "test_std": ts, "n_seeds": n,
                        "test_drop_points": 100 * (base_test - tm), "epoch_time_s": et,
                        "train_images_per_s": ips, "init_time_s": it, "epochs": rs[0].get("epochs")})
    return out


def series_of(row: dict[str, Any]) -> str:
    return "classical" if row["variant"] == "classical" else row["variant"]


def cr_table(rows: list[dict[str, Any]], base_val: float, base_test: float) -> list[dict[str, Any]]:
    """CR at each drop along each (family, init, series) front, plus 'all ST rows' and 'all rows'."""
    out = []
    keys = sorted({(r["family"], r["init"]) for r in rows})
    for fam, init in keys:
        fr = [r for r in rows if r["family"] == fam and r["init"] == init]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in fr:
            groups.setdefault(series_of(r), []).append(r)
        groups["all ST rows"] = [r for r in fr if not r["variant"].startswith("classical")]
        groups["all rows"] = fr
        for name, pts in groups.items():
            if not pts:
                continue
            idx = front_indices([p["val_mean"] for p in pts], [p["layer_compression_ratio"] for p in pts])
            f = [pts[i] for i in idx]
            rec: dict[str, Any] = {"family": fam, "init": init, "series": name, "n_points": len(pts)}
            for d in DROPS:
                drops = [100 * (base_test - p["test_mean"]) for p in f]
                rec[f"layer_cr_at_{d}"] = fmt_cr(*cr_at_drop([p["layer_compression_ratio"] for p in f], drops, d))
                rec[f"model_cr_at_{d}"] = fmt_cr(*cr_at_drop([p["compression_ratio"] for p in f], drops, d))
            rec["epoch_time_s"] = f"{mean_std(p['epoch_time_s'] for p in pts)[0]:.1f}"
            out.append(rec)
    return out


def equal_rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's comparison: ST(R, t=2) against classical at the same R (not equal parameters)."""
    out = []
    for st in rows:
        if st["variant"] != "uniform t=2":
            continue
        for c in rows:
            if (c["variant"] == "classical" and c["family"] == st["family"] and c["init"] == st["init"]
                    and c["rank"] == st["rank"]):
                out.append({"family": st["family"], "init": st["init"], "rank": st["rank"], "classical": c["label"],
                            "st": st["label"], "classical_params": c["params"], "st_params": st["params"],
                            "classical_layer_cr": f"{c['layer_compression_ratio']:.1f}",
                            "st_layer_cr": f"{st['layer_compression_ratio']:.1f}",
                            "classical_test": _pm(c), "st_test": _pm(st),
                            "param_ratio": f"{c['params'] / st['params']:.2f}"})
    return out


def _pm(r: dict[str, Any]) -> str:
    return f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}"


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "cr": f"{r['compression_ratio']:.1f}", "lcr": f"{r['layer_compression_ratio']:.1f}",
             "val": f"{100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f}", "test": _pm(r),
             "drop": f"{r['test_drop_points']:+.2f}", "et": f"{r['epoch_time_s']:.1f}",
             "ips": f"{r['train_images_per_s']:.0f}"} for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="seconds on CPU: synthetic data, 2 budgets, 1 epoch")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--inits", nargs="+", default=["decompose", "random"], choices=["decompose", "random"])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--workers", type=int, default=1, help="processes (1 thread each); at most 2 here")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--img", type=Path, default=None, help="plot folder (default docs/img; smoke: OUT)")
    p.add_argument("--list", action="store_true", help="print the grid and exit")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: build the tables from the runs already in OUT/runs.jsonl")
    p.add_argument("--als-max-budget", type=int, default=None,
                   help="run init=decompose for mixed-t rows only up to this budget index (their generic ALS "
                        "fit takes minutes per layer at large ranks on a CPU; default 1, smoke 0, -1: none)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or (HERE / "out" / ("compare_formats_smoke" if a.smoke else "compare_formats"))
    img = a.img or (out if a.smoke else ROOT / "docs" / "img")
    families = {k: (SMOKE_FAMILIES if a.smoke else FAMILIES)[k] for k in a.families}
    epochs = 1 if a.smoke else a.epochs
    seeds = [0] if a.smoke else a.seeds
    inits = a.inits
    base_recipe = dict(BASELINE_RECIPE, epochs=2) if a.smoke else BASELINE_RECIPE
    recipe = dict(RECIPE, epochs=epochs, batch_size=64 if a.smoke else RECIPE["batch_size"])
    model = models.create(MODEL)
    grid = build_grid(model, families)
    for g in grid:
        g["id"] = f"{g['family']}|b{g['budget']}|{g['variant']}"
    if a.list:
        for g in grid:
            print(f"{g['id']:28s} {g['label']:60s} {g['kind']:14s} params={g['params']:6d} "
                  f"CR={g['compression_ratio']:.1f} layerCR={g['layer_compression_ratio']:.1f}")
        return 0
    als_max = a.als_max_budget if a.als_max_budget is not None else (0 if a.smoke else 1)
    if a.smoke:  # fewer ALS sweeps for the new topologies so that the smoke run takes seconds
        import stsearch.surgery as surgery

        surgery.DECOMPOSE_BUDGET = {"n_iter": 2, "restarts": 0}
    t0 = time.perf_counter()
    setup = _Setup(a.smoke, out / "baseline_cache", base_recipe)
    state = setup()  # trains (or loads) the baseline once; the forked workers inherit it
    print(state["desc"])
    print(f"dense baseline: val {state['info']['val_accuracy']:.4f} test {state['info']['test_accuracy']:.4f}")

    def runs_init(g: dict[str, Any], init: str) -> bool:
        if g["variant"] == ALS_FIT:
            return init == "decompose"
        return not (init == "decompose" and g["kind"] == "new topology" and g["budget"] > als_max)

    skipped = [f"{g['id']}|decompose" for g in grid if not runs_init(g, "decompose") and "decompose" in inits]
    if "decompose" in inits and not a.aggregate_only:
        predecompose(state, [g for g in grid if runs_init(g, "decompose")])
    # Seed-major order: every row gets its first seed before any row gets a second one.
    jobs = [{"id": f"{g['id']}|{init}|s{s}", "row": g["id"], "init": init, "seed": s, "plan": g["plan"],
             "variant": g["variant"],
             "recipe": recipe} for s in seeds for init in inits for g in grid if runs_init(g, init)]
    if a.aggregate_only:
        ids = {j["id"] for j in jobs}
        runs = [r for r in read_jsonl(out / "runs.jsonl") if r["id"] in ids]
    else:
        runs = run_pool(jobs, _job, state, out / "runs.jsonl", workers=1 if a.smoke else a.workers)
    base_val, base_test = state["info"]["val_accuracy"], state["info"]["test_accuracy"]
    rows = aggregate(grid, runs, inits, base_test)
    crs = cr_table(rows, base_val, base_test)
    eqr = equal_rank(rows)
    write_csv(out / "rows.csv", rows, ROW_COLUMNS)
    write_csv(out / "cr_at_drop.csv", crs, DROP_COLUMNS)
    write_csv(out / "equal_rank.csv", eqr, EQUAL_RANK_COLUMNS)
    plots = []
    for fam in families:
        series: dict[str, list[tuple[float, float, float]]] = {}
        for r in rows:
            if r["family"] == fam:
                series.setdefault(f"{series_of(r)} / {r['init']}", []).append(
                    (r["layer_compression_ratio"], r["test_mean"], r["test_std"]))
        if series:
            plots.append(str(plot_family(img / f"compare_{fam}.png",
                                         f"LeNet-5 / {state['ds'].name}: {fam.upper()} family, {epochs} epoch(s), "
                                         f"{len(seeds)} seed(s)", series, base_test)))
    wall = time.perf_counter() - t0
    summary = {"data": state["desc"], "smoke": a.smoke, "model": MODEL, "layers": list(LAYERS),
               "baseline": state["info"], "recipe": recipe, "epochs": epochs, "seeds": seeds, "inits": inits,
               "families": {k: {kk: vv for kk, vv in v.items()} for k, v in families.items()},
               "n_runs": len(runs), "n_jobs": len(jobs), "skipped": skipped,
               "decompose_time_s": {g["id"]: g.get("decompose_time_s") for g in grid},
               "wall_time_s": wall, "plots": plots,
               "rows": rows, "cr_at_drop": crs, "equal_rank": eqr,
               "drop_rule": "front on mean validation accuracy; drops from mean test accuracy vs dense test "
                            "accuracy; linear interpolation in log10(CR); see benchmarks/_evidence.py"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    cols = [("family", "family"), ("budget", "budget"), ("label", "row"), ("kind", "kind"), ("init", "init"),
            ("params", "params"), ("lcr", "layer CR"), ("cr", "model CR"), ("val", "val acc %"),
            ("test", "test acc %"), ("drop", "drop (pts)"), ("et", "s/epoch"), ("ips", "img/s")]
    md = [f"Data: {state['desc']}. Dense LeNet-5: val {100 * base_val:.2f}%, test {100 * base_test:.2f}%.",
          f"Recipe: {recipe}; seeds {seeds}; wall time {wall / 60:.1f} min.",
          f"Not run (generic ALS too slow on CPU at this rank): {', '.join(skipped) or 'none'}.", "",
          md_table(display_rows(rows), cols), "", "CR at a drop of d points (layer CR / whole-model CR):", "",
          md_table(crs, [(c, c) for c in DROP_COLUMNS]), "", "Equal rank (the paper's comparison):", "",
          md_table(eqr, [(c, c) for c in EQUAL_RANK_COLUMNS])]
    write_tables(out, md, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
