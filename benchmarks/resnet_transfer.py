"""Do the LeNet-5 findings carry over to a ResNet? TT vs STT and TR vs STR on ResNet-8 / Fashion-MNIST (issue 9).

The LeNet-5 sweep (compare_formats.py) found: a uniform-t ST format is the classical format of rank R/t at equal
parameters (STR(R, 2) *is* TR(R/2); STT(R, 2) is TT(R/2) on a relaid tensorization), and at equal rank ST just
stores fewer numbers and loses accuracy. This script asks the same two questions on a small CIFAR-style ResNet:
ResNet-8 (``CifarResNet`` with one BasicBlock per stage, width 16, ``in_channels=1``) on Fashion-MNIST 28×28.

Rows (cifar_paper.rows_for; every 3×3 conv of the three stages compressed, the stem conv and fc stay dense), per
family (TT/STT, TR/STR) and nominal rank r (``--ranks``, default 4 8 16), t = 2 only:

* ``classical(r)`` and ``ST(r, t=2)`` — the **equal-rank** comparison (the paper's);
* ``classical(r/2)`` — the **equal-parameter** control of ST(r, 2).

TT bonds that cannot carry r (the bond after the 3×3 spatial core carries at most 9) are lowered bond by bond
(cifar_paper.plan_for); the rows record the ranks built, and the tables the actual parameter ratio of each pair.
A plan that appears twice (TT(4) is the control of r = 8 and the equal-rank row of r = 4) is trained once and
shared: runs are keyed by the plan (its JSON, sorted keys), and ``rows.csv`` names the run each row uses.

Recipe: the dense ResNet-8 is trained once (SGD 0.05, momentum 0.9, wd 5e-4, batch 128, cosine,
``--baseline-epochs``; cached under OUT/baseline_cache); every compressed row is ``init=decompose`` (factor the
trained convs, fine-tune; ``--inits random`` trains from scratch too) with SGD 0.02, momentum 0.9, wd 5e-4,
batch 128, cosine, gradient clipping at norm 2, ``--epochs`` epochs, ``--seeds`` seeds. Validation accuracy
(6k images held out of the 60k training set) and test accuracy are both reported; nothing is selected.

    .venv/bin/python benchmarks/resnet_transfer.py --smoke         # seconds on CPU, SYNTHETIC data (tests run it)
    .venv/bin/python benchmarks/resnet_transfer.py --workers 2     # the real run: 3 ranks, 2 epochs, 2 seeds
    .venv/bin/python benchmarks/resnet_transfer.py --train-subset 5000 --epochs 1 --seeds 0 --ranks 8 \\
        --baseline-epochs 1 --out /tmp/rt_probe                      # a cheap probe of the epoch time

Outputs (``--out``, default benchmarks/out/resnet_transfer/; smoke: benchmarks/out/resnet_transfer_smoke/):
``runs.jsonl`` (one line per trained plan × init × seed; resumable, ``--aggregate-only`` rebuilds the tables
from it), ``rows.csv`` (one line per row, mean/std over seeds), ``pairs.csv`` (ST(r, 2) against its
equal-parameter and its equal-rank classical row), ``tables.md`` (the two labelled tables, printed at the end)
and ``summary.json`` (data, recipes, dense baseline, wall time, rows, pairs, which rows share a run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _evidence import (
    HERE,
    dense_baseline,
    fashion_or_synthetic,
    md_table,
    mean_std,
    read_jsonl,
    run_pool,
    train_plan,
    write_csv,
    write_tables,
)
from cifar_paper import rows_for, stage_convs
from compare_formats import predecompose

from stsearch import models
from stsearch.models import CifarResNet

MODEL = "resnet8"
INPUT_SHAPE = (1, 28, 28)
BASELINE_RECIPE = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                   "epochs": 4, "batch_size": 128, "schedule": "cosine", "augment": False}
"""The dense ResNet-8 every ``init=decompose`` row starts from (epochs from --baseline-epochs)."""
RECIPE = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
          "batch_size": 128, "schedule": "cosine", "augment": False, "grad_clip": 2.0}
"""One recipe for every compressed row and init (epochs from --epochs); the one compare_formats.py uses."""
PARAM_BAND = (0.8, 1.25)
"""ST/classical parameter ratios of an equal-parameter pair outside this band are flagged in the tables."""


def resnet8(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> CifarResNet:
    """ResNet-8 (one BasicBlock per stage; 75k params at width 16, 1 channel): (B, C, H, W) -> (B, num_classes)."""
    return CifarResNet(8, num_classes, in_channels, width)


models.register(MODEL, resnet8)  # so that dense_baseline / train_baseline can build and cache it by name


# ----------------------------------------------------------------------------------------------------------
# Rows and runs
# ----------------------------------------------------------------------------------------------------------
def plan_key(plan: dict[str, Any]) -> str:
    """The identity of a plan: a short hash of its JSON with sorted keys (two rows with one key share runs)."""
    return hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:10]


def build_rows(model: torch.nn.Module, ranks: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, plans): cifar_paper.rows_for's rows with an ``id`` and the ``run`` (plan id) each uses, and the
    distinct plans (``id``, ``plan``, ``label``, ``rows``: the row ids sharing it), in first-seen order."""
    rows = rows_for(model, ranks)
    plans: dict[str, dict[str, Any]] = {}
    for r in rows:
        r["id"] = f"r{r['nominal']}|{r['row']}"
        key = plan_key(r["plan"])
        if key not in plans:
            plans[key] = {"id": f"{r['row']}#{key}", "plan": r["plan"], "label": r["row"], "family": r["family"],
                          "kind": r["kind"], "rows": []}
        plans[key]["rows"].append(r["id"])
        r["run"] = plans[key]["id"]
    return rows, list(plans.values())


class _Setup:
    """The data and the dense baseline (trained once, cached on disk); the forked workers inherit them."""

    def __init__(self, smoke: bool, train_subset: int | None, width: int, cache: Path,
                 baseline_recipe: dict[str, Any]) -> None:
        self.smoke, self.train_subset, self.width = smoke, train_subset, width
        self.cache, self.baseline_recipe = cache, baseline_recipe

    def __call__(self) -> dict[str, Any]:
        ds, desc = fashion_or_synthetic(self.smoke, train_subset=self.train_subset)
        kw = {"width": self.width, "in_channels": INPUT_SHAPE[0], "num_classes": ds.num_classes}
        base, info = dense_baseline(MODEL, kw, ds, self.baseline_recipe, self.cache)
        return {"ds": ds, "base": base, "info": info, "desc": desc, "cache": {}}


def _job(state: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return train_plan(state["base"], state["ds"], job["plan"], job["init"], job["seed"], job["recipe"],
                      INPUT_SHAPE, cache=state["cache"])


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------
ROW_COLUMNS = ["family", "nominal_rank", "row", "comparison", "kind", "init", "rank", "ranks_built", "t",
               "params", "compression_ratio", "layer_compression_ratio", "val_mean", "val_std", "test_mean", "test_std",
               "n_seeds", "n_failed", "epoch_time_s", "train_images_per_s", "init_time_s", "epochs", "run",
               "shared_with"]
PAIR_COLUMNS = ["family", "init", "nominal_rank", "comparison", "st", "classical", "st_params",
                "classical_params", "param_ratio", "st_layer_cr", "classical_layer_cr", "st_test_mean",
                "st_test_std", "classical_test_mean", "classical_test_std", "test_diff_points",
                "test_diff_std_points", "val_diff_points", "n_paired_seeds"]
EQUAL_PARAMS = "equal parameters: ST(r,2) vs classical(r/2)"
EQUAL_RANK = "equal rank: ST(r,2) vs classical(r)"


def ranks_built(plan: dict[str, Any]) -> str:
    """The ranks the plan's layers carry (one value when all agree, else each distinct one, ' / '-joined)."""
    return " / ".join(dict.fromkeys(json.dumps(s["rank"]) for s in plan.values()))


def _ok(runs: list[dict[str, Any]], run_id: str, init: str) -> list[dict[str, Any]]:
    return [x for x in runs if x["plan_id"] == run_id and x["init"] == init and x.get("status") == "ok"]


def aggregate(rows: list[dict[str, Any]], plans: list[dict[str, Any]], runs: list[dict[str, Any]],
              inits: list[str]) -> list[dict[str, Any]]:
    """One record per row × init with mean/std over the seeds of the (possibly shared) run it uses."""
    shared = {p["id"]: p["rows"] for p in plans}
    out = []
    for init in inits:
        for g in rows:
            mine = [x for x in runs if x["plan_id"] == g["run"] and x["init"] == init]
            rs = _ok(runs, g["run"], init)
            vm, vs, n = mean_std(x["val_accuracy"] for x in rs)
            tm, ts, _ = mean_std(x["test_accuracy"] for x in rs)
            first = rs[0] if rs else (mine[0] if mine else {})
            out.append({"family": g["family"], "nominal_rank": g["nominal"], "row": g["row"],
                        "comparison": g["comparison"], "kind": g["kind"], "init": init, "rank": g["rank"],
                        "ranks_built": ranks_built(g["plan"]), "t": g["t"], "params": first.get("params", ""),
                        "compression_ratio": first.get("compression_ratio", math.nan),
                        "layer_compression_ratio": first.get("layer_compression_ratio", math.nan),
                        "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts, "n_seeds": n,
                        "n_failed": len(mine) - len(rs),
                        "epoch_time_s": mean_std(x["epoch_time"] for x in rs)[0],
                        "train_images_per_s": mean_std(x["images_per_s"] for x in rs)[0],
                        "init_time_s": mean_std(x["init_time"] for x in rs)[0],
                        "epochs": first.get("epochs", ""), "run": g["run"],
                        "shared_with": " ; ".join(r for r in shared[g["run"]] if r != g["id"]),
                        "_seeds": {x["seed"]: x for x in rs}})
    return out


def pairs(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ST(r, 2) against classical(r/2) (equal parameters) and against classical(r) (equal rank), per family,
    init and nominal rank. ``param_ratio`` = ST params / classical params; differences are ST − classical, in
    points, over the seeds both have (paired by seed)."""
    out = []
    for st in agg:
        if st["t"] != 2:
            continue
        same = [c for c in agg if c["family"] == st["family"] and c["init"] == st["init"]
                and c["nominal_rank"] == st["nominal_rank"] and c["t"] == 1]
        for comp, name in (("equal params (control)", EQUAL_PARAMS), ("equal rank", EQUAL_RANK)):
            cl = next((c for c in same if c["comparison"] == comp), None)
            if cl is None:
                continue
            seeds = sorted(set(st["_seeds"]) & set(cl["_seeds"]))
            d_test = [100 * (st["_seeds"][s]["test_accuracy"] - cl["_seeds"][s]["test_accuracy"]) for s in seeds]
            d_val = [100 * (st["_seeds"][s]["val_accuracy"] - cl["_seeds"][s]["val_accuracy"]) for s in seeds]
            dm, ds_, n = mean_std(d_test)
            ratio = (st["params"] / cl["params"]) if st["params"] and cl["params"] else math.nan
            out.append({"family": st["family"], "init": st["init"], "nominal_rank": st["nominal_rank"],
                        "comparison": name, "st": st["row"], "classical": cl["row"], "st_params": st["params"],
                        "classical_params": cl["params"], "param_ratio": ratio,
                        "st_layer_cr": st["layer_compression_ratio"],
                        "classical_layer_cr": cl["layer_compression_ratio"], "st_test_mean": st["test_mean"],
                        "st_test_std": st["test_std"], "classical_test_mean": cl["test_mean"],
                        "classical_test_std": cl["test_std"], "test_diff_points": dm, "test_diff_std_points": ds_,
                        "val_diff_points": mean_std(d_val)[0], "n_paired_seeds": n})
    return out


def _pm(mean: float, std: float) -> str:
    return "—" if not math.isfinite(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _f(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def tables(agg: list[dict[str, Any]], prs: list[dict[str, Any]]) -> list[str]:
    """The Markdown of the two labelled pair tables and the rows table."""
    def pair_rows(name: str) -> list[dict[str, Any]]:
        rs = []
        for p in prs:
            if p["comparison"] != name:
                continue
            flag = "" if name == EQUAL_RANK or PARAM_BAND[0] <= p["param_ratio"] <= PARAM_BAND[1] else " (!)"
            rs.append({**p, "params": f"{p['st_params']} / {p['classical_params']}",
                       "ratio": _f(p["param_ratio"], ".2f") + flag,
                       "lcr": f"{_f(p['st_layer_cr'], '.1f')} / {_f(p['classical_layer_cr'], '.1f')}",
                       "stt": _pm(p["st_test_mean"], p["st_test_std"]),
                       "clt": _pm(p["classical_test_mean"], p["classical_test_std"]),
                       "diff": _f(p["test_diff_points"], "+.2f") + " ± " + _f(p["test_diff_std_points"], ".2f"),
                       "vdiff": _f(p["val_diff_points"], "+.2f")})
        return rs

    pcols = [("family", "family"), ("init", "init"), ("nominal_rank", "r"), ("st", "ST row"),
             ("classical", "classical row"), ("params", "params ST / cl."), ("ratio", "param ratio ST/cl."),
             ("lcr", "layer CR ST / cl."), ("stt", "ST test %"), ("clt", "classical test %"),
             ("diff", "Δ test (pts, ST − cl.)"), ("vdiff", "Δ val (pts)"), ("n_paired_seeds", "seeds")]
    disp = [{**r, "cr": _f(r["compression_ratio"], ".1f"), "lcr": _f(r["layer_compression_ratio"], ".1f"),
             "val": _pm(r["val_mean"], r["val_std"]), "test": _pm(r["test_mean"], r["test_std"]),
             "et": _f(r["epoch_time_s"], ".1f"), "shared": r["shared_with"] or "—"} for r in agg]
    rcols = [("family", "family"), ("nominal_rank", "r"), ("row", "row"), ("comparison", "comparison"),
             ("kind", "kind"), ("init", "init"), ("ranks_built", "ranks built"), ("params", "params"),
             ("lcr", "layer CR"), ("cr", "model CR"), ("val", "val acc %"), ("test", "test acc %"),
             ("n_seeds", "seeds"), ("et", "s/epoch"), ("shared", "run shared with")]
    band = f"{PARAM_BAND[0]}–{PARAM_BAND[1]}"
    return [f"### {EQUAL_PARAMS[0].upper()}{EQUAL_PARAMS[1:]}", "",
            f"(!) marks a pair whose parameter ratio is outside {band}: not an equal-parameter pair.", "",
            md_table(pair_rows(EQUAL_PARAMS), pcols), "",
            f"### {EQUAL_RANK[0].upper()}{EQUAL_RANK[1:]}", "",
            md_table(pair_rows(EQUAL_RANK), pcols), "", "### All rows", "", md_table(disp, rcols)]


# ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="seconds on CPU: synthetic 28×28 data, width 8, rank 4, 1 epoch, 1 seed")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="nominal ranks r (default 4 8 16; smoke 4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each compressed row (smoke: 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="(smoke: 0)")
    p.add_argument("--inits", nargs="+", default=["decompose"], choices=["decompose", "random"])
    p.add_argument("--baseline-epochs", type=int, default=BASELINE_RECIPE["epochs"], help="(smoke: 1)")
    p.add_argument("--width", type=int, default=None, help="ResNet-8 base width (default 16; smoke 8)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N stratified training images")
    p.add_argument("--workers", type=int, default=1, help="processes (1 thread each); at most 2 here")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: build the tables from the runs already in OUT/runs.jsonl")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or (HERE / "out" / ("resnet_transfer_smoke" if a.smoke else "resnet_transfer"))
    out.mkdir(parents=True, exist_ok=True)
    ranks = a.ranks or ([4] if a.smoke else [4, 8, 16])
    width = a.width or (8 if a.smoke else 16)
    epochs = 1 if a.smoke else a.epochs
    seeds = [0] if a.smoke else a.seeds
    base_recipe = dict(BASELINE_RECIPE, epochs=1 if a.smoke else a.baseline_epochs,
                       batch_size=32 if a.smoke else BASELINE_RECIPE["batch_size"])
    recipe = dict(RECIPE, epochs=epochs, batch_size=32 if a.smoke else RECIPE["batch_size"])

    t0 = time.perf_counter()
    state = _Setup(a.smoke, None if a.smoke else a.train_subset, width, out / "baseline_cache", base_recipe)()
    info = state["info"]
    print(state["desc"])
    print(f"dense ResNet-8 (width {width}, {info['params']} params): val {info['val_accuracy']:.4f} "
          f"test {info['test_accuracy']:.4f} ({'cached' if info['cached'] else 'trained'}, "
          f"{_f(info['wall_time'], '.0f')} s)", flush=True)
    rows, plans = build_rows(state["base"], ranks)
    for g in plans:
        print(f"run {g['id']:34s} {g['kind']:14s} rows: {', '.join(g['rows'])}")
    # Jobs are keyed by plan, init, seed and a fingerprint of everything else that changes the result, so that a
    # changed setting never reuses stale lines of runs.jsonl.
    fp = hashlib.sha1(json.dumps({"width": width, "data": state["desc"], "recipe": recipe, "base": base_recipe},
                                 sort_keys=True).encode()).hexdigest()[:8]
    if "decompose" in a.inits and not a.aggregate_only:
        done = {r["id"] for r in read_jsonl(out / "runs.jsonl")}
        predecompose(state, [g for g in plans
                             if any(f"{g['id']}|decompose|s{s}|{fp}" not in done for s in seeds)])
    jobs = [{"id": f"{g['id']}|{init}|s{s}|{fp}", "plan_id": g["id"], "init": init, "seed": s, "plan": g["plan"],
             "recipe": recipe} for s in seeds for init in a.inits for g in plans]
    if a.aggregate_only:
        ids = {j["id"] for j in jobs}
        runs = [r for r in read_jsonl(out / "runs.jsonl") if r["id"] in ids]
    else:
        runs = run_pool(jobs, _job, state, out / "runs.jsonl", workers=1 if a.smoke else a.workers)
    for r in runs:
        print(f"  {r['id']}: {_f(r.get('epoch_time'), '.1f')} s/epoch, {_f(r.get('images_per_s'), '.0f')} img/s, "
              f"init {_f(r.get('init_time'), '.1f')} s, test {_f(r.get('test_accuracy'), '.4f')}")
    agg = aggregate(rows, plans, runs, a.inits)
    prs = pairs(agg)
    write_csv(out / "rows.csv", agg, ROW_COLUMNS)
    write_csv(out / "pairs.csv", prs, PAIR_COLUMNS)
    wall = time.perf_counter() - t0
    md = [f"Data: {state['desc']}.",
          f"Model: ResNet-8 (width {width}, in_channels 1); compressed: {', '.join(stage_convs(state['base']))}.",
          f"Dense ResNet-8: val {100 * info['val_accuracy']:.2f}%, test {100 * info['test_accuracy']:.2f}% "
          f"({base_recipe['epochs']} epoch(s)).",
          f"Recipe: {recipe}; inits {a.inits}; seeds {seeds}; {len(runs)} run(s) for {len(rows) * len(a.inits)} "
          f"row(s); wall time {wall / 60:.1f} min.", "", *tables(agg, prs)]
    summary = {"data": state["desc"], "smoke": a.smoke, "model": MODEL, "width": width,
               "train_subset": None if a.smoke else a.train_subset, "layers": stage_convs(state["base"]),
               "baseline": info, "baseline_recipe": base_recipe, "recipe": recipe, "epochs": epochs, "seeds": seeds,
               "inits": a.inits, "ranks": ranks, "fingerprint": fp, "n_runs": len(runs), "n_jobs": len(jobs),
               "wall_time_s": wall, "param_band": PARAM_BAND,
               "runs_shared": {g["id"]: g["rows"] for g in plans if len(g["rows"]) > 1},
               "decompose_time_s": {g["id"]: g.get("decompose_time_s") for g in plans},
               "rows": [{k: v for k, v in r.items() if k != "_seeds"} for r in agg], "pairs": prs}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_tables(out, md, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
