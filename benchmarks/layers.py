"""Benchmark: factorized conv layers vs dense nn.Conv2d vs TensorLy-Torch, forward + backward on CPU.

Shapes: ResNet-20's 64→64 3×3 conv at 8×8 and its 16→16 3×3 conv at 32×32, batch 128, padding 1.
For every format and target CR (5×, 10×, 20×) the configuration (tensorization, ranks, t) is chosen
analytically with :func:`stsearch.layers.normalize_layer_spec` and the layer's FLOP count: among the specs
whose weight CR lies in [CR, 1.2·CR], the one with the fewest factorized FLOPs. Each is timed in both
implementations. TensorLy-Torch's ``FactorizedConv`` (Tucker with unfactored spatial modes, and TT) is timed
at the parameter count closest to each target, in both of its implementations.

Timing: one thread, input (B, C, H, W) NCHW with ``requires_grad`` (a hidden layer), a fixed random output
gradient in the output's memory format, forward + ``torch.autograd.grad`` of the input and all parameters.
Every variant runs twice per round and the second run is timed; rounds are interleaved so that load drifts
hit all variants alike; the median over rounds is reported, as a ratio to dense in the same run.
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (2 × multiply-adds).

    .venv/bin/python benchmarks/layers.py                 # full run, prints a markdown table
    .venv/bin/python benchmarks/layers.py --smoke         # seconds: tiny batch, one CR, 2 rounds
    .venv/bin/python benchmarks/layers.py --markdown docs/_fragments/layers.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stsearch.errors import StsearchError
from stsearch.formats import FORMATS, get_format
from stsearch.layers import FactorizedConv2d, normalize_layer_spec

SHAPES = [("64→64, 8×8", 64, 8), ("16→16, 32×32", 16, 32)]
FAMILY = {f: get_format(f).family for f in FORMATS}


@dataclass
class Variant:
    name: str
    family: str
    impl: str
    config: str
    module: nn.Module
    params: int
    cr_target: float | None
    times: list[float] = field(default_factory=list)
    fwd_flops: int = 0
    total_flops: int = 0

    @property
    def median(self) -> float:
        ts = sorted(self.times)
        return ts[len(ts) // 2]


# -- candidate specs ------------------------------------------------------------------------------------------
def _splits(n: int, depth: int) -> list[tuple[int, ...]]:
    """Ordered factorisations of n into ``depth`` factors, 1s allowed (TT pairs may be unbalanced)."""
    out = []
    for f in itertools.product([d for d in range(1, n + 1) if n % d == 0], repeat=depth):
        if math.prod(f) == n:
            out.append(f)
    return out


def _candidates(fmt: str, c: int) -> list[dict]:
    """Near-uniform ranks (bonds r or r + t; TT's spatial bond capped at kh·kw = 9, rounded down to a multiple
    of t), uniform t, and every tensorization of the layout: Tucker unsplit; TT all 2-pair splits (1s
    allowed); TR unsplit (ranks r or r + t per bond) or balanced 2-factor splits (uniform ranks)."""
    st = fmt.startswith("st")
    ts = (2, 4) if st else (1,)
    fam = FAMILY[fmt]
    out: list[dict] = []
    if fam == "tucker":
        for r, t in itertools.product(range(1, c + 1), ts):
            for ro, ri in {(r, r), (r, min(c, r + t)), (min(c, r + t), r)}:
                out.append(dict(rank=(ro, ri), t=t, in_shape=(c,), out_shape=(c,)))
    elif fam == "tt":
        for ins, outs in itertools.product(_splits(c, 2), _splits(c, 2)):
            for r, t in itertools.product(range(1, 2 * c + 1), ts):
                r1 = min(r, 9) // t * t
                if r1:
                    out.append(dict(rank=(r1, r), t=t, in_shape=ins, out_shape=outs))
    else:
        half = [f for f in _splits(c, 2) if 1 not in f]
        shapes = [((c,), (c,))] + [(a, a) for a in half if max(a) <= 2 * min(a)]
        for (ins, outs), r, t in itertools.product(shapes, range(1, 2 * c + 1), ts):
            n = len(ins) + len(outs) + 1
            steps = itertools.product((0, t), repeat=n) if n == 3 else [(0,) * n]
            for d in steps:
                out.append(dict(rank=tuple(r + e for e in d), t=t, in_shape=ins, out_shape=outs))
    return out


_SPECS: dict[tuple[str, int], list[tuple[dict, float]]] = {}


def _valid_specs(fmt: str, c: int) -> list[tuple[dict, float]]:
    """(spec, weight CR) for every valid candidate, validated once by normalize_layer_spec."""
    if (fmt, c) not in _SPECS:
        out = []
        for kw in _candidates(fmt, c):
            try:
                out.append((kw, normalize_layer_spec("conv", fmt, c, c, 3, **kw).compression_ratio))
            except StsearchError:
                continue
        _SPECS[fmt, c] = out
    return _SPECS[fmt, c]


def choose_spec(fmt: str, c: int, hw: int, batch: int, cr: float) -> dict | None:
    """The spec with weight CR in [cr, 1.2·cr] and the fewest factorized forward FLOPs."""
    best, best_flops = None, math.inf
    for kw, ratio in _valid_specs(fmt, c):
        if not cr <= ratio <= 1.2 * cr:
            continue
        layer = FactorizedConv2d(c, c, 3, padding=1, fmt=fmt, device="meta", implementation="factorized",
                                 _init=False, **kw)
        f = layer.flops((batch, c, hw, hw))
        if f < best_flops:
            best, best_flops = kw, f
    return best


def _describe(layer: FactorizedConv2d) -> str:
    t = f" t={layer.t[0]}" if layer.fmt.startswith("st") else ""
    shapes = "" if FAMILY[layer.fmt] == "tucker" else f" in{layer.in_shape} out{layer.out_shape}"
    ranks = tuple(r for r in layer.ranks if r is not None)
    return f"R={ranks}{t}{shapes}".replace(" ", "").replace("R=", "R=").replace("in(", " in(").replace(
        "out(", " out(").replace("t=", " t=")


# -- TensorLy-Torch peers -------------------------------------------------------------------------------------
def _tltorch_layer(kind: str, c: int, r: int, impl: str) -> nn.Module:
    import tltorch

    if kind == "tucker":
        kw = dict(factorization="tucker", rank=(r, r, 3, 3), fixed_rank_modes="spatial")
    else:
        kw = dict(factorization="tt", rank=(1, r, r, r, 1))
    layer = tltorch.FactorizedConv(c, c, 3, order=2, padding=1, bias=True, implementation=impl, **kw)
    layer.reset_parameters()
    with torch.no_grad():  # tltorch's reset draws N(0, 0.02) factors; rescale to a He-sized kernel
        for p in layer.weight.parameters():
            p.normal_(0, 1)
        w = layer.weight.to_tensor()
        scale = (math.sqrt(2 / (c * 9)) / float(w.pow(2).mean().sqrt())) ** (1 / len(list(
            layer.weight.parameters())))
        for p in layer.weight.parameters():
            p.mul_(scale)
    return layer


def _tltorch_rank(kind: str, c: int, target_params: float) -> tuple[int, int]:
    best = None
    for r in range(1, c + 1):
        if kind == "tucker":
            n = 9 * r * r + 2 * c * r + 18 + c
        else:
            n = c * r + 6 * r * r + c * r + c
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (r, n)
    assert best is not None
    return best


# -- timing ---------------------------------------------------------------------------------------------------
def _fwd_bwd(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    """Forward, then the gradients of the input and of every parameter (``autograd.grad``: no accumulation
    into ``.grad``, whose layout contract would add a copy for layers that return channels_last)."""
    y = module(x)
    torch.autograd.grad(y, [x, *module.parameters()], g)


def _count(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[int, int]:
    with FlopCounterMode(display=False) as fwd:
        module(x)
    with FlopCounterMode(display=False) as total:  # (its module hooks need .backward, not autograd.grad)
        module(x).backward(g)
    x.grad = None
    module.zero_grad(set_to_none=True)
    return int(fwd.get_total_flops()), int(total.get_total_flops())


def run_shape(label: str, c: int, hw: int, batch: int, crs: list[float], rounds: int, warmup: int,
              formats: list[str], peers: bool, log, channels_last: bool = False) -> dict:
    torch.manual_seed(0)
    fmt_in = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, c, hw, hw).contiguous(memory_format=fmt_in).requires_grad_(True)
    dense = nn.Conv2d(c, c, 3, padding=1)
    variants = [Variant("dense", "dense", "-", "nn.Conv2d", dense, sum(p.numel() for p in dense.parameters()),
                        None)]
    dense_w = c * c * 9
    for cr in crs:
        for fmt in formats:
            kw = choose_spec(fmt, c, hw, batch, cr)
            if kw is None:
                log(f"  {label}: {fmt} CR {cr:g}: no spec with CR in [{cr:g}, {1.2 * cr:g}]")
                continue
            for impl in ("factorized", "reconstructed"):
                layer = FactorizedConv2d(c, c, 3, padding=1, fmt=fmt, implementation=impl, **kw)
                variants.append(Variant(fmt, FAMILY[fmt], impl, _describe(layer), layer, layer.num_params, cr))
        if peers:  # the rank nearest the target count and its neighbours, so that ±10% parity exists
            for kind in ("tucker", "tt"):
                r0, _ = _tltorch_rank(kind, c, dense_w / cr)
                for r in (r0 - 1, r0, r0 + 1):
                    if r < 1:
                        continue
                    for impl in ("factorized", "reconstructed"):
                        layer = _tltorch_layer(kind, c, r, impl)
                        n = sum(p.numel() for p in layer.parameters())
                        variants.append(Variant(f"tltorch-{kind}", "tltorch", impl, f"rank {r}", layer, n, cr))
    grads = []
    for v in variants:
        y = v.module(x)
        g = torch.randn(y.shape).contiguous(memory_format=torch.channels_last
                                            if y.is_contiguous(memory_format=torch.channels_last)
                                            and not y.is_contiguous() else torch.contiguous_format)
        grads.append(g)
        v.fwd_flops, v.total_flops = _count(v.module, x, g)

    def step(v: Variant, g: torch.Tensor) -> float:
        _fwd_bwd(v.module, x, g)  # untimed: re-warm caches and the allocator after the previous variant
        t0 = time.perf_counter()
        _fwd_bwd(v.module, x, g)
        return time.perf_counter() - t0

    for _ in range(warmup):
        for v, g in zip(variants, grads):
            step(v, g)
    for r in range(rounds):
        for v, g in zip(variants, grads):
            v.times.append(step(v, g))
        log(f"  round {r + 1}/{rounds} done")
    d = variants[0].median
    rows = []
    for v in variants:
        rows.append(dict(layer=v.name, family=v.family, impl=v.impl, config=v.config, params=v.params,
                         cr=(dense_w + c) / v.params, cr_target=v.cr_target, fwd_mflop=v.fwd_flops / 1e6,
                         gflops=v.total_flops / v.median / 1e9, ms=v.median * 1e3, ratio=v.median / d))
    return dict(shape=label, channels=c, hw=hw, batch=batch, rows=rows)


# -- targets and output ----------------------------------------------------------------------------------------
def targets(result: dict) -> list[dict]:
    """At each CR ≥ 10: the best layer of each family vs dense, and vs the fastest tltorch layer (either
    factorization, either implementation) whose parameter count is within ±10% of it."""
    out = []
    rows = result["rows"]
    tl = [r for r in rows if r["family"] == "tltorch"]
    for cr in sorted({r["cr_target"] for r in rows if r["cr_target"] and r["cr_target"] >= 10}):
        for fam in ("tucker", "tt", "tr"):
            cands = [r for r in rows if r["family"] == fam and r["cr_target"] == cr]
            if not cands:
                continue
            best = min(cands, key=lambda r: r["ms"])
            peers = [r for r in tl if abs(r["params"] / best["params"] - 1) <= 0.10]
            peer = min(peers, key=lambda r: r["ms"]) if peers else None
            row = dict(shape=result["shape"], cr=cr, family=fam,
                       best=f"{best['layer']} {best['config']} ({best['impl']})",
                       ratio_dense=best["ratio"], ok_dense=best["ratio"] <= 1.0)
            if peer:
                row.update(peer=f"{peer['layer']} {peer['config']} ({peer['impl']})",
                           ratio_peer=best["ms"] / peer["ms"],
                           ok_peer=best["ms"] <= 0.5 * peer["ms"],
                           params_gap=best["params"] / peer["params"] - 1)
            out.append(row)
    return out


def markdown(results: list[dict], cmd: str, meta: dict) -> str:
    lines = ["## Layer benchmark", "", f"Command: `{cmd}`", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); batch "
             f"{meta['batch']}; input {meta['input_format']}; median of {meta['rounds']} interleaved rounds "
             f"(after {meta['warmup']} warm-up); "
             "forward + backward; times relative to dense in the same run. fwd MFLOP = forward FLOPs, "
             "GFLOP/s = forward + backward FLOPs (FlopCounterMode) / time.", ""]
    for res in results:
        lines += [f"### {res['shape']} (batch {res['batch']})", "",
                  "| layer | impl | config | params | CR | fwd MFLOP | GFLOP/s | ms | × dense |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            lines.append(f"| {r['layer']} | {r['impl']} | {r['config']} | {r['params']} | {r['cr']:.1f} | "
                         f"{r['fwd_mflop']:.1f} | {r['gflops']:.1f} | {r['ms']:.2f} | {r['ratio']:.2f} |")
        lines.append("")
    lines += ["### Targets (CR ≥ 10): best layer per family", "",
              "Peer = the fastest TensorLy-Torch layer (Tucker or TT, either implementation) with a parameter "
              "count within ±10% of the family's best.", "",
              "| shape | CR | family | best | × dense | ≤ dense | peer (±10% params) | × peer | ≤ 0.5× | "
              "params vs peer |", "|---|---:|---|---|---:|---|---|---:|---|---:|"]
    for res in results:
        for t in targets(res):
            lines.append(f"| {t['shape']} | {t['cr']:g} | {t['family']} | {t['best']} | {t['ratio_dense']:.2f} | "
                         f"{'yes' if t['ok_dense'] else 'no'} | {t.get('peer', '-')} | "
                         f"{t.get('ratio_peer', float('nan')):.2f} | {'yes' if t.get('ok_peer') else 'no'} | "
                         f"{100 * t.get('params_gap', float('nan')):+.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="seconds: batch 8, CR 10 only, 2 rounds")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crs", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--formats", nargs="+", default=list(FORMATS))
    p.add_argument("--no-tltorch", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="feed every layer a channels_last input")
    p.add_argument("--markdown", help="write the tables to this file")
    p.add_argument("--json", help="write the raw results to this file")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.warmup, args.crs = 8, 2, 1, [10]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    peers = not args.no_tltorch
    if peers:
        try:
            import tltorch  # noqa: F401
        except ImportError:
            print("tensorly-torch is not installed: skipping the peer", file=sys.stderr)
            peers = False

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = []
    for label, c, hw in SHAPES:
        log(f"{label}: building and counting")
        results.append(run_shape(label, c, hw, args.batch, args.crs, args.rounds, args.warmup, args.formats,
                                 peers, log, args.channels_last))
    meta = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores (shared)",
                torch=torch.__version__, threads=args.threads, batch=args.batch, rounds=args.rounds,
                warmup=args.warmup, input_format="channels_last" if args.channels_last else "NCHW")
    cmd = " ".join(["python benchmarks/layers.py", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(results, cmd, meta)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
