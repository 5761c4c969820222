"""Benchmark: the fast semi-tensor product against its explicit Kronecker form.

For each size it times ``stsearch.stp`` (one einsum, THEORY §1) and the textbook form
``(A ⊗ I_{l/n}) (B ⊗ I_{l/p})`` built with ``torch.kron``, and reports the median time ratio, the FLOPs
(``FlopCounterMode``) and the peak bytes allocated by torch ops during one call (``torch.profiler`` with
``profile_memory=True``: a running sum of the top-level ops' allocations and frees). Prints a markdown table.

    python benchmarks/stp.py            # full (about a minute)
    python benchmarks/stp.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from stsearch import stp


def kron_form(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cheng's definition, explicitly: (A ⊗ I_{l/n}) (B ⊗ I_{l/p})."""
    n, p = a.shape[-1], b.shape[-2]
    lcm = math.lcm(n, p)
    ea, eb = lcm // n, lcm // p
    big_a = torch.kron(a, torch.eye(ea, dtype=a.dtype)) if ea > 1 else a
    big_b = torch.kron(b, torch.eye(eb, dtype=b.dtype)) if eb > 1 else b
    return big_a @ big_b


def median_time(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], torch.Tensor]) -> int:
    saved = os.dup(2)  # the profiler's C++ side logs to stderr; silence it for the call
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    events = sorted((e for e in prof.events() if e.cpu_parent is None), key=lambda e: e.time_range.start)
    cur = best = 0
    for e in events:
        best = max(best, cur + max(e.cpu_memory_usage, 0))
        cur += e.cpu_memory_usage
    return best


def flops(fn: Callable[[], torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mib(b: int) -> str:
    return f"{b / 2**20:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, few repeats (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # (form, m, n, p, q): n = t·p is "A (B ⊗ I_t)", p = t·n is "(A ⊗ I_t) B", else the lcm case
    if args.smoke:
        sizes = [("n = t·p", 16, 32, 8, 16), ("p = t·n", 16, 8, 32, 16), ("lcm", 8, 4, 6, 8)]
        repeats = 3
    else:
        sizes = []
        for t in (2, 4, 8, 16):
            sizes.append(("n = t·p", 256, 64 * t, 64, 256))
            sizes.append(("p = t·n", 256, 64, 64 * t, 256))
        sizes += [("n = t·p", 1024, 256 * 4, 256, 1024), ("lcm", 128, 64, 96, 128)]
        repeats = 15

    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, median of {repeats} repeats\n")
    print("| form | A | B | t | fast ms | Kronecker ms | time ratio | FLOP ratio | fast peak MiB "
          "| Kronecker peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for form, m, n, p, q in sizes:
        a, b = torch.randn(m, n), torch.randn(p, q)
        torch.testing.assert_close(stp(a, b), kron_form(a, b), rtol=1e-4, atol=1e-4)
        lcm = math.lcm(n, p)
        t = str(max(n, p) // min(n, p)) if form != "lcm" else f"l/n={lcm // n}, l/p={lcm // p}"
        tf = median_time(lambda a=a, b=b: stp(a, b), repeats)
        tk = median_time(lambda a=a, b=b: kron_form(a, b), repeats)
        ff, fk = flops(lambda a=a, b=b: stp(a, b)), flops(lambda a=a, b=b: kron_form(a, b))
        pf, pk = peak_bytes(lambda a=a, b=b: stp(a, b)), peak_bytes(lambda a=a, b=b: kron_form(a, b))
        print(f"| {form} | {m}×{n} | {p}×{q} | {t} | {tf * 1e3:.3f} | {tk * 1e3:.3f} | {tk / tf:.1f}× "
              f"| {fk / ff:.1f}× | {mib(pf)} | {mib(pk)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
