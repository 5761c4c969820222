"""Benchmark: relative reconstruction error against parameter count, per format, on a trained conv kernel.

A tiny CNN (conv 1→16→32, 3×3) is trained on scikit-learn's digits for a few seconds; its second kernel
W (32×16×3×3, 4608 numbers) is decomposed by ``stsearch.decompose`` in every format at a few ranks, uniform
and mixed t, and compared with a Gaussian tensor of the same shape (which has no structure to find).

Tensorizations (one per family, shared by the classical and ST formats of that family):

* Tucker / STTu: W as (C_out, C_in, k_h·k_w) = (32, 16, 9), Tucker-2 (the spatial mode unfactored);
* TT / STT and TR / STR: W as (k_h·k_w, C_in, C_out/8, 8) = (9, 16, 4, 8): a spatial core, then channels.

    python benchmarks/format_errors.py            # full (about 2 minutes of CPU)
    python benchmarks/format_errors.py --smoke    # seconds
    python benchmarks/format_errors.py --large    # also the STR rank-12 chord (several minutes more)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

import stsearch
from stsearch.formats import get_format, num_params

KERNEL = (32, 16, 3, 3)


def train_kernel(seconds: float, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Train conv 1→16→32 (3×3) + linear on digits for ``seconds``; return (conv2 kernel, test accuracy)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:1500], perm[1500:]
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for idx in torch.randperm(len(tr)).split(64):
            b = tr[idx]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(x[te]).argmax(1) == y[te]).float().mean())
    return model[2].weight.detach().double().clone(), acc


@dataclass
class Config:
    fmt: str
    rank: tuple
    t: object
    label: str  # "classical", "uniform t", "mixed t (≡ TT)", "mixed t (new)", …


def tensorize(w: torch.Tensor, family: str) -> torch.Tensor:
    if family == "tucker":
        return w.reshape(32, 16, 9)
    return w.permute(2, 3, 1, 0).reshape(9, 16, 4, 8)


def configs(smoke: bool, large: bool = False) -> list[Config]:
    out: list[Config] = []
    tk = [4, 8, 16] if smoke else [4, 8, 12, 16, 24]
    for r in tk:
        out.append(Config("tucker", (r, r // 2, None), 1, "classical"))
        out.append(Config("sttu", (r, r // 2, None), (2, 2, 1), "uniform t"))
        out.append(Config("sttu", (r, r // 2, None), (4, 2, 1), "mixed t"))
    for r in ([2, 4] if smoke else [2, 3, 4, 6, 8]):
        out.append(Config("tt", (r, 2 * r, r), 1, "classical"))
    for r in ([4] if smoke else [2, 4, 6, 8]):
        out.append(Config("stt", (r, 2 * r, r), 2, "uniform t"))
    for r in ([4] if smoke else [4, 8]):
        out.append(Config("stt", (r, 2 * r, r), (2, 2, 4), "mixed t"))
        out.append(Config("stt", (r, 2 * r, r), (4, 4, 2), "mixed t"))
        out.append(Config("stt", (r, 2 * r, r), (2, 4, 2), "mixed t"))
        out.append(Config("stt", (r, 2 * r, r), (2, 4, 1), "mixed t"))
    for r in ([2, 3] if smoke else [2, 3, 4, 5, 6]):
        out.append(Config("tr", (r,) * 4, 1, "classical"))
    for r in ([4] if smoke else [4, 6, 8, 12]):
        out.append(Config("str", (r,) * 4, 2, "uniform t"))
    for r in ([4] if smoke else [4, 8, 12]):
        out.append(Config("str", (r,) * 4, (4, 4, 2), "mixed t"))
        if r < 12 or large:  # the r = 12 chord takes minutes of generic ALS
            out.append(Config("str", (r,) * 4, (2, 4, 2), "mixed t"))
    return out


def describe(cfg: Config, shape: tuple[int, ...]) -> str:
    f = get_format(cfg.fmt)
    ranks, ts = f.normalize(shape, cfg.rank, cfg.t)
    if not f.semi_tensor:
        return "classical"
    eq = f.equivalence(shape, ranks, ts)
    kind = "uniform t" if len(set(ts) - {1} if f.family == "tucker" else set(ts)) == 1 else "mixed t"
    if eq is None:
        return f"{kind}, new topology"
    return f"{kind}, ≡ {eq.format.upper()}{tuple(eq.ranks)}".replace("None", "–")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="1 s of training, few ranks, short fits")
    ap.add_argument("--seconds", type=float, default=None, help="training time (default 1 smoke, 8 full)")
    ap.add_argument("--large", action="store_true", help="also the STR rank-12 chord (several minutes)")
    ap.add_argument("--als-iter", type=int, default=None, help="ALS / TR-ALS sweeps (default 10 smoke, 40 full)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny problems: one thread is fastest, and the CPU may be shared
    seconds = args.seconds if args.seconds is not None else (1.0 if args.smoke else 8.0)
    t_start = time.perf_counter()
    w, acc = train_kernel(seconds)
    noise = torch.randn(KERNEL, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fit_kw = {"n_iter": args.als_iter or (10 if args.smoke else 40), "restarts": 1}
    print(f"Trained {seconds:.0f} s on digits: test accuracy {acc:.3f}. Kernel {KERNEL}, "
          f"{w.numel()} numbers. ALS/TR-ALS settings: {fit_kw}.\n")
    rows = []
    for cfg in configs(args.smoke, args.large):
        family = get_format(cfg.fmt).family
        xw, xn = tensorize(w, family), tensorize(noise, family)
        shape = tuple(xw.shape)
        params = num_params(shape, cfg.fmt, cfg.rank, cfg.t)
        t0 = time.perf_counter()
        ew = rel(stsearch.decompose(xw, cfg.fmt, cfg.rank, cfg.t, **fit_kw).to_tensor(), xw)
        en = rel(stsearch.decompose(xn, cfg.fmt, cfg.rank, cfg.t, **fit_kw).to_tensor(), xn)
        rows.append((cfg, shape, params, ew, en, describe(cfg, shape), time.perf_counter() - t0))

    print("| format | tensor | ranks | t | kind | params | CR | error (trained W) | error (Gaussian) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cfg, shape, params, ew, en, kind, dt in rows:
        rank = str(cfg.rank).replace("None", "–").replace(" ", "")
        print(f"| {cfg.fmt} | {'×'.join(map(str, shape))} | {rank} | {str(cfg.t).replace(' ', '')} | {kind} "
              f"| {params} | {w.numel() / params:.1f} | {ew:.4f} | {en:.4f} | {dt:.1f} |")

    # Does a mixed-t configuration beat the uniform-t / classical frontier at equal parameters?
    base = sorted((r for r in rows if not r[5].startswith("mixed")), key=lambda r: r[2])
    frontier = []
    for r in base:
        if not frontier or r[3] < frontier[-1][3]:
            frontier.append(r)
    print("\nMixed t against the uniform-t/classical Pareto frontier (all formats), interpolated linearly in "
          "log(params) between its neighbouring points:\n")
    print("| mixed-t config | kind | params | error | frontier error at these params | mixed t wins? |")
    print("|---|---|---|---|---|---|")
    wins = []
    for cfg, _shape, params, ew, _en, kind, _dt in rows:
        if not kind.startswith("mixed"):
            continue
        left = [r for r in frontier if r[2] <= params]
        right = [r for r in frontier if r[2] > params]
        if not left:
            ref, note = right[0][3], f"below the frontier's range; cheapest {right[0][2]} params"
        elif not right:
            ref, note = left[-1][3], f"{left[-1][0].fmt} at {left[-1][2]} params"
        else:
            a, b = left[-1], right[0]
            w = math.log(params / a[2]) / math.log(b[2] / a[2])
            ref = a[3] + w * (b[3] - a[3])
            note = f"between {a[0].fmt} {a[2]} and {b[0].fmt} {b[2]}"
        win = bool(left) and ew < ref
        if win:
            wins.append(f"{cfg.fmt} t={cfg.t} at {params} params ({(ref - ew) / ref:.1%} lower error)")
        name = f"{cfg.fmt} {str(cfg.rank).replace(' ', '').replace('None', '–')} t={str(cfg.t).replace(' ', '')}"
        print(f"| {name} | {kind} | {params} | {ew:.4f} | {ref:.4f} ({note}) | {'yes' if win else 'no'} |")
    print(f"\nMixed t below the frontier: {'; '.join(wins) if wins else 'never'}. "
          f"Total time {time.perf_counter() - t_start:.0f} s.")


if __name__ == "__main__":
    main()
