"""The paper's setting: CIFAR-10 ResNet-20/32, TT vs STT and TR vs STR at rank 14 and 16 (meant for a GPU).

Rows per model and rank R (every 3×3 conv of the three stages compressed; the stem conv and fc stay dense):

* ``TT(R)`` and ``STT(R, t=2)`` — the paper's **equal-rank** comparison (STT stores ~t² fewer numbers);
* ``TT(R/2)`` — the **equal-parameter** control: STT(R, 2) is exactly a TT of rank R/2 on a relaid
  tensorization (docs/theory.md §4), so this row separates "ST" from "lower rank";
* the same three for TR/STR, where STR(R, 2) and TR(R/2) are *the same function class on the same tensor*
  (only initialisation/optimisation can differ).

TT bonds that cannot carry R (the first bond after the 3×3 spatial core carries at most 9) are lowered bond by
bond; the rows record the ranks built. Literature recipe (He et al. 2016 / the TT- and TR-ResNet papers):
SGD 0.1, momentum 0.9 (Nesterov), weight decay 5e-4, batch 128, cosine over 200 epochs, random crop + flip,
training from scratch (``init=random``). Selection: none; the last epoch's test accuracy is reported.

    .venv/bin/python benchmarks/cifar_paper.py --smoke          # seconds on CPU, synthetic CIFAR-shaped data
    .venv/bin/python benchmarks/cifar_paper.py --data-root ~/data --device cuda            # full (GPU hours)
    .venv/bin/python benchmarks/cifar_paper.py --data-root ~/data --device cuda --epochs 1 --models resnet20 \\
        --ranks 16 --timing-only      # one epoch per row: epoch time and throughput (docs/benchmarks.md)

Outputs (``--out``, default benchmarks/out/cifar_paper/): ``rows.csv`` and ``summary.json`` (same schema in
smoke mode).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _evidence import HERE, classify, fit_spec, synthetic, train_plan, valid_layout, write_csv

from stsearch import models
from stsearch.surgery import compressible_layers

RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
          "batch_size": 128, "schedule": "cosine", "epochs": 200, "augment": True}
COLUMNS = ["model", "family", "row", "comparison", "kind", "rank", "t", "params", "compression_ratio",
           "layer_compression_ratio", "val_accuracy", "test_accuracy", "epochs", "epoch_time_s",
           "train_images_per_s", "device", "seed", "status"]


def stage_convs(model: torch.nn.Module) -> list[str]:
    """The 3×3 convs of layer1..layer3 (the stem ``conv1`` and ``fc`` stay dense)."""
    return [n for n, m in compressible_layers(model).items()
            if isinstance(m, torch.nn.Conv2d) and n.startswith("layer")]


def _tt_ranks(layer: torch.nn.Module, spec: dict[str, Any], r: int, step: int) -> list[int]:
    import math

    lay = valid_layout(layer, {**spec, "format": "tt", "rank": 1, "t": 1})
    shape = list(lay.tensor_shape)
    return [max(step, min(r, min(math.prod(shape[:k]), math.prod(shape[k:]))) // step * step)
            for k in range(1, len(shape))]


def plan_for(model: torch.nn.Module, fmt: str, r: int, t: int) -> dict[str, Any] | None:
    layers = compressible_layers(model)
    plan = {}
    for name in stage_convs(model):
        spec: dict[str, Any] = {"format": fmt, "rank": r, "t": t}
        if fmt in ("tt", "stt"):
            spec["rank"] = _tt_ranks(layers[name], spec, r, t)
            if valid_layout(layers[name], spec) is None:
                spec["rank"] = r
                spec = fit_spec(layers[name], spec, step=t) or {}
        else:
            spec = fit_spec(layers[name], spec, step=t) or {}
        if not spec:
            return None
        plan[name] = spec
    return plan


def control_plan(st_plan: dict[str, Any], classical: str, t: int) -> dict[str, Any]:
    """The equal-parameter control of a uniform-t ST plan: the classical format, same shapes, every bond rank / t.

    That is the classical equivalent of THEORY §4 (exactly, for STR; for STT up to the relaid tensorization), so
    the pair has (about) the same parameter count even where a bond of the ST plan was lowered.
    """
    out = {}
    for name, spec in st_plan.items():
        rank = spec["rank"]
        rank = [max(1, r // t) for r in rank] if isinstance(rank, list) else max(1, rank // t)
        out[name] = {**spec, "format": classical, "rank": rank, "t": 1}
    return out


def rows_for(model: torch.nn.Module, ranks: list[int]) -> list[dict[str, Any]]:
    """Per nominal rank r and family: classical(r), ST(r, 2) (equal rank) and the control of ST(r, 2)."""
    out = []
    for r in ranks:
        for cl, st in (("tt", "stt"), ("tr", "str")):
            rows = [(cl, r, 1, "equal rank", plan_for(model, cl, r, 1)),
                    (st, r, 2, "equal rank", plan_for(model, st, r, 2))]
            if rows[1][4] is not None:
                rows.append((cl, f"{r}/2", 1, "equal params (control)", control_plan(rows[1][4], cl, 2)))
            for fmt, rr, t, comp, plan in rows:
                if plan is None:
                    continue
                out.append({"family": cl, "row": f"{fmt.upper()}(R={rr}, t={t})", "comparison": comp,
                            "kind": classify(model, plan), "rank": rr, "t": t, "plan": plan, "nominal": r})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="seconds on CPU: synthetic 32×32 data, tiny ResNet-20")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py/")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet32"])
    p.add_argument("--ranks", type=int, nargs="+", default=[14, 16])
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--init", default="random", choices=["random", "decompose"])
    p.add_argument("--device", default="auto")
    p.add_argument("--timing-only", action="store_true", help="report epoch time/throughput, skip the dense ref")
    p.add_argument("--synthetic", type=int, default=0, help="use N synthetic CIFAR-shaped training images")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    out = a.out or (HERE / "out" / ("cifar_paper_smoke" if a.smoke else "cifar_paper"))
    out.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        torch.set_num_threads(1)
        ds = synthetic("synthetic-cifar", (3, 32, 32), 64, 32, 64)
        desc = "SYNTHETIC CIFAR-shaped data (smoke: 64 train / 32 val / 64 test); numbers mean nothing"
        model_names, ranks, epochs, kw, device = ["resnet20"], [2], 1, {"width": 8}, "cpu"
    else:
        if a.synthetic:
            ds = synthetic("synthetic-cifar", (3, 32, 32), a.synthetic, 1000, 1000)
            desc = f"SYNTHETIC CIFAR-shaped data ({a.synthetic} train images): timings only"
        else:
            from stsearch import data as st_data

            ds = st_data.load("cifar10", data_root=a.data_root, val_fraction=0.1, seed=0)
            desc = f"CIFAR-10 ({len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test)"
        model_names, ranks, epochs, kw, device = a.models, a.ranks, a.epochs, {}, a.device
    recipe = dict(RECIPE, epochs=epochs, batch_size=32 if a.smoke else RECIPE["batch_size"])
    from stsearch.training import resolve_device

    dev = str(resolve_device(device))
    print(desc, "| device", dev)
    t0 = time.perf_counter()
    results = []
    for name in model_names:
        base = models.create(name, **kw)
        for row in rows_for(base, ranks):
            for seed in ([0] if a.smoke else a.seeds):
                torch.manual_seed(seed)
                r = train_plan(base, ds, row["plan"], a.init, seed, recipe, (3, 32, 32), device=dev)
                rec = {**{k: v for k, v in row.items() if k != "plan"}, **r, "model": name, "seed": seed,
                       "device": dev, "epoch_time_s": r.get("epoch_time"),
                       "train_images_per_s": r.get("images_per_s")}
                results.append(rec)
                print(f"{name} {row['row']:24s} {row['comparison']:24s} params {r['params']:7d} "
                      f"layerCR {r['layer_compression_ratio']:6.1f} test {r.get('test_accuracy', float('nan')):.4f} "
                      f"{r.get('epoch_time', float('nan')):.2f} s/epoch", flush=True)
    write_csv(out / "rows.csv", results, COLUMNS)
    summary = {"data": desc, "smoke": a.smoke, "recipe": recipe, "init": a.init, "device": dev,
               "wall_time_s": time.perf_counter() - t0, "rows": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out} ({summary['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
