"""What an export buys: file size on disk and CPU inference latency of compressed models against dense ones.

Cases:

* ResNet-20 (CIFAR-shaped input, 3×32×32) with every residual-stage conv compressed by one spec (TT, Tucker-2,
  STT, STR; the stem conv and the classifier stay dense), at compression ratios from about 6× to 23×;
* digits_cnn (1×8×8): the best trial of a real search run when ``--run RUN`` is given (through
  ``stsearch.export.export``), else one STT plan.

Size and latency do not depend on the weights' values, so the ResNet cases use random factors (no training).
Every compressed model is written exactly as ``stsearch export`` writes it: ``model.pt`` is the state dict
(``stsearch._io.save_torch``), ``model.onnx`` comes from :func:`stsearch.export.export_onnx` (factorized graph,
dynamic batch, checked against PyTorch to 1e-4). The dense model is written the same way.

Sizes: ``state-dict data ×`` is dense ÷ compressed bytes of tensor data (parameters and BatchNorm buffers);
``.pt file ×`` and ``.onnx file ×`` are the files' size ratios. A torch.save file adds a record of a few hundred
bytes per tensor, and a factorized model has several tensors per layer, so on small models the file ratio stays
below the data ratio. The ONNX exporter folds weight-only subexpressions (e.g. merged first TT cores) into
constants, which can make a factorized .onnx larger than its .pt.

Latency: CPU, one intra-op thread (``torch.set_num_threads(1)`` in a context that restores it; ORT
``intra_op_num_threads=1``), batch 1 and batch 128, median of repeats after warm-up; the PyTorch model is the
one ``stsearch.load`` returns (each factorized layer picks its cheaper path per input shape). Compressed and
dense are timed alternately for 3 rounds (each a median of repeats); the table shows the medians and, in
brackets, the median of the per-round dense ÷ compressed ratios, so > 1 means the compressed model is faster.

    .venv/bin/python benchmarks/export.py                      # full run (~7 minutes on 2 shared cores)
    .venv/bin/python benchmarks/export.py --run runs/digits_cnn
    .venv/bin/python benchmarks/export.py --smoke              # seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stsearch import _io, models  # noqa: E402
from stsearch.export import export, export_onnx, load  # noqa: E402
from stsearch.study.reports import latency_ms, onnx_latency_ms, run_input_shape  # noqa: E402
from stsearch.surgery import compress, compressible_layers, profile  # noqa: E402

RESNET_SPECS = {
    "tt r8": {"format": "tt", "rank": 8},
    "tucker [8,8]": {"format": "tucker", "rank": [8, 8]},
    "stt r8 t2": {"format": "stt", "rank": 8, "t": 2},
    "str r8 t2": {"format": "str", "rank": 8, "t": 2},
}
DIGITS_PLAN = {"conv2": {"format": "stt", "rank": 4, "t": 2}, "conv3": {"format": "stt", "rank": 4, "t": 2},
               "fc": {"format": "tt", "rank": 4}}


def _dense(name: str, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create(name, **kw).eval()


def cases(smoke: bool) -> list[dict[str, Any]]:
    """(label, model name, input shape, dense model, compressed model) for every synthetic case."""
    out = []
    digits = _dense("digits_cnn", num_classes=10, in_channels=1)
    out.append({"model": "digits_cnn", "plan": "stt r4 t2 ×2, tt r4 (random)", "input_shape": (1, 8, 8),
                "dense": digits, "compressed": compress(digits, DIGITS_PLAN, init="random", seed=0).eval()})
    if smoke:
        return out
    net = _dense("resnet20", num_classes=10)
    stages = [n for n in compressible_layers(net) if n.startswith("layer")]
    for label, spec in RESNET_SPECS.items():
        out.append({"model": "resnet20", "plan": f"{label} ×{len(stages)} (random)", "input_shape": (3, 32, 32),
                    "dense": net, "compressed": compress(net, {n: spec for n in stages}, init="random",
                                                         seed=0).eval()})
    return out


def measure(case: dict[str, Any], work: Path, batches: tuple[int, ...], smoke: bool,
            files: dict[str, Path] | None = None) -> dict[str, Any]:
    """Sizes and latencies of one case; ``files`` are an export's own model.pt / model.onnx when given."""
    shape = tuple(case["input_shape"])
    dense, comp = case["dense"], case["compressed"]
    d = work / f"{case['model']}-{abs(hash(case['plan']))}"
    d.mkdir(parents=True, exist_ok=True)
    paths = dict(files or {})
    _io.save_torch(d / "dense.pt", dense.state_dict())
    export_onnx(dense, d / "dense.onnx", shape)
    if "pt" not in paths:
        _io.save_torch(d / "model.pt", {k: v.contiguous() for k, v in comp.state_dict().items()})
        paths["pt"] = d / "model.pt"
    if "onnx" not in paths:
        export_onnx(comp, d / "model.onnx", shape)
        paths["onnx"] = d / "model.onnx"
    prof = profile(comp, shape)
    row: dict[str, Any] = {
        "model": case["model"], "plan": case["plan"], "params": prof.params, "dense_params": prof.dense_params,
        "cr": prof.compression_ratio,
        "pt_bytes": paths["pt"].stat().st_size, "dense_pt_bytes": (d / "dense.pt").stat().st_size,
        "onnx_bytes": paths["onnx"].stat().st_size, "dense_onnx_bytes": (d / "dense.onnx").stat().st_size,
    }
    row["pt_size_ratio"] = row["dense_pt_bytes"] / row["pt_bytes"]
    row["onnx_size_ratio"] = row["dense_onnx_bytes"] / row["onnx_bytes"]
    row["pt_payload_ratio"] = _payload(dense) / _payload(comp)
    rounds = 1 if smoke else 3
    for b in batches:
        reps = {"repeats": 3 if smoke else (10 if b == 1 else 3), "warmup": 1, "min_time": 0.0}
        for backend, (c_arg, d_arg) in {"torch": (comp, dense), "ort": (paths["onnx"], d / "dense.onnx")}.items():
            timer = latency_ms if backend == "torch" else onnx_latency_ms
            c_ms, d_ms = [], []
            for _ in range(rounds):  # alternate, so that load from other tenants hits both alike
                c_ms.append(timer(c_arg, shape, batch=b, **reps))
                d_ms.append(timer(d_arg, shape, batch=b, **reps))
            row[f"{backend}_b{b}_ms"] = statistics.median(c_ms)
            row[f"dense_{backend}_b{b}_ms"] = statistics.median(d_ms)
            row[f"{backend}_b{b}_speedup"] = statistics.median(dm / cm for cm, dm in zip(c_ms, d_ms))
    return row


def _payload(model: torch.nn.Module) -> int:
    """Bytes of tensor data in the state dict (what the file holds besides the container's per-tensor records)."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def from_run(run: Path, work: Path) -> dict[str, Any]:
    """The real export of a run's best trial (highest CR within the space's allowed drop)."""
    res = export(run, work / "export", latency=False)
    rec = json.loads((res.out / "plan.json").read_text())
    dense = models.create(rec["model"]["name"], **rec["model"]["kwargs"])
    dense.load_state_dict(torch.load(run / "baseline.pt", weights_only=True))
    return {"model": rec["model"]["name"], "plan": f"trial {res.trial} of {run.name} (trained, exported)",
            "input_shape": run_input_shape(run), "dense": dense.eval(), "compressed": load(res.out),
            "files": {"pt": res.out / "model.pt", "onnx": res.out / "model.onnx"}}


def table(rows: list[dict[str, Any]], batches: tuple[int, ...]) -> str:
    head = ["model", "plan", "CR", "state-dict data ×", ".pt file ×", ".onnx file ×"]
    for b in batches:
        head += [f"torch b{b} ms (×)", f"ORT b{b} ms (×)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["plan"], f"{r['cr']:.2f}×", f"{r['pt_payload_ratio']:.2f}×",
                 f"{r['pt_size_ratio']:.2f}× ({r['pt_bytes'] / 1024:.0f} KiB)",
                 f"{r['onnx_size_ratio']:.2f}× ({r['onnx_bytes'] / 1024:.0f} KiB)"]
        for b in batches:
            cells += [f"{r[f'torch_b{b}_ms']:.3f} vs {r[f'dense_torch_b{b}_ms']:.3f} ({r[f'torch_b{b}_speedup']:.2f}×)",
                      f"{r[f'ort_b{b}_ms']:.3f} vs {r[f'dense_ort_b{b}_ms']:.3f} ({r[f'ort_b{b}_speedup']:.2f}×)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="digits_cnn only, few repeats (seconds)")
    ap.add_argument("--run", type=Path, help="also benchmark the real export of this run's best trial")
    ap.add_argument("--out", type=Path, help="JSON results (default: benchmarks/out/export.json; none in --smoke)")
    a = ap.parse_args(argv)
    batches = (1, 128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = cases(a.smoke)
        if a.run is not None:
            todo.insert(0, from_run(a.run, work))
        for c in todo:
            rows.append(measure(c, work, batches, a.smoke, c.get("files")))
            print(f"measured {c['model']} / {c['plan']}", file=sys.stderr, flush=True)
    md = table(rows, batches)
    print(md)
    import onnxruntime

    meta = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "threads": 1, "smoke": a.smoke,
            "command": "python benchmarks/export.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = a.out if a.out is not None else (None if a.smoke else HERE / "out" / "export.json")
    if out is not None:
        _io.write_json(out, {"meta": meta, "rows": rows, "table": md})
        print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
