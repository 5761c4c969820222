"""Throughput of ``stsearch.training.fit`` against plain hand-written torch loops (images/s, medians).

Cases (batch 128, SGD momentum 0.9 nesterov, wd 5e-4, no augmentation on either side):

* LeNet-5 on Fashion-MNIST: the real training images from Debian's ``dataset-fashion-mnist`` package (falls back
  to synthetic 28x28 uint8 data of the same shape, and says so, if the package is absent);
* ResNet-20 on synthetic 32x32 RGB input (CIFAR-shaped).

Baselines, on the same model, data and batch size:

* ``plain``: a hand-written loop over pre-normalised float tensors, shuffled by ``randperm`` and indexed per
  batch, ``zero_grad()``, ``loss.item()`` and an accuracy ``.item()`` per batch (the typical tutorial loop);
* ``dataloader``: the same loop fed by ``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``.

Each measurement trains 2 epochs of N images and times the second (fit: between its epoch callbacks, with a
32-image validation split). Runs alternate fit / plain / dataloader, ``--repeats`` times; the table reports
medians, and ratios as the median of the per-round ratios. Throughput is counted per CPU-second of this
process (1 thread), which other tenants of a shared machine do not disturb, with wall-clock figures beside.

    .venv/bin/python benchmarks/training.py            # full run (~4 minutes on 2 shared CPU cores)
    .venv/bin/python benchmarks/training.py --smoke    # seconds
    .venv/bin/python benchmarks/training.py --device cuda --gpu-epoch   # one ResNet-20 CIFAR-sized epoch, AMP
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stsearch import data, models, training
from stsearch.data import Dataset, TensorSplit

HERE = Path(__file__).resolve().parent


def synthetic(name: str, n: int, shape: tuple[int, int, int], n_val: int = 32, seed: int = 0) -> Dataset:
    """A random uint8 image set (N, C, H, W) with random labels, held like the real in-memory datasets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n + n_val, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n + n_val,), generator=g)
    kw: dict[str, Any] = {"scale": 1 / 255, "mean": (0.5,) * shape[0], "std": (0.25,) * shape[0],
                          "augment": "crop_flip"}
    train = TensorSplit(x[:n], y[:n], name="train", **kw)
    val = TensorSplit(x[n:], y[n:], name="val", **kw)
    return Dataset(name, name, train, val, val, shape, 10)


def fashion(n: int) -> tuple[Dataset, str]:
    try:
        ds = data.load("fashion-mnist", data_root=data.DEBIAN_FASHION_MNIST)
    except ValueError:
        return synthetic("fashion-mnist-synthetic", n, (1, 28, 28)), (
            "synthetic 28x28 (Debian's dataset-fashion-mnist is not installed)")
    return ds.subset(train=n, val=32, seed=0), f"Fashion-MNIST ({data.DEBIAN_FASHION_MNIST}), {n} images"


def make_opt(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


class Clock:
    """Wall time and this process's CPU time. On a shared machine the CPU time (with 1 thread) measures the
    work done, unaffected by other processes taking the cores; wall time is reported beside it."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, n: int) -> tuple[float, float]:
        return n / (time.perf_counter() - self.wall), n / (time.process_time() - self.cpu)


def plain_loop(model_name: str, kwargs: dict, ds: Dataset, bs: int, device: torch.device,
               loader: bool) -> tuple[float, float]:
    """(wall, CPU) images/s of the second of two epochs of a hand-written loop."""
    torch.manual_seed(0)
    model = models.create(model_name, **kwargs).to(device)
    opt = make_opt(model)
    x_all, y_all = ds.train.tensors()
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(x_all)
    rates = (0.0, 0.0)
    for _epoch in range(2):
        model.train()
        running, correct = 0.0, 0
        clock = Clock()
        if loader:
            dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_all, y_all), batch_size=bs,
                                             shuffle=True)
            batches = iter(dl)
        else:
            perm = torch.randperm(n, device=device)
            batches = ((x_all[perm[i:i + bs]], y_all[perm[i:i + bs]]) for i in range(0, n, bs))
        for x, y in batches:
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates = clock.rates(n)
    return rates


def fit_rate(model_name: str, kwargs: dict, ds: Dataset, bs: int, device: torch.device, augment: bool = False,
             amp: bool = True, channels_last: bool | str = "auto") -> tuple[float, float]:
    """(wall, CPU) images/s of fit's second epoch, timed between epoch callbacks (the validation split is 32
    images, under 1% of the epoch)."""
    torch.manual_seed(0)
    model = models.create(model_name, **kwargs)
    recipe = training.Recipe(lr=0.01, epochs=2, batch_size=bs, augment=augment, amp=amp,
                             channels_last=channels_last)
    marks: list[Clock] = []
    res = training.fit(model, ds, recipe, device=device, seed=0, epoch_callback=lambda e, m: marks.append(Clock()))
    assert res.status == "ok", res.reason
    wall = marks[1].wall - marks[0].wall
    cpu = marks[1].cpu - marks[0].cpu
    n = len(ds.train)
    return n / wall, n / cpu


def run_case(label: str, model_name: str, kwargs: dict, ds: Dataset, bs: int, device: torch.device,
             repeats: int) -> dict:
    runs: dict[str, list[tuple[float, float]]] = {"fit": [], "fit_aug": [], "fit_nchw": [], "plain": [],
                                                  "dataloader": []}
    for r in range(repeats):
        new = {"fit": fit_rate(model_name, kwargs, ds, bs, device),
               "plain": plain_loop(model_name, kwargs, ds, bs, device, loader=False),
               "dataloader": plain_loop(model_name, kwargs, ds, bs, device, loader=True)}
        if r < max(1, repeats // 2):  # ablations, fewer rounds: augmentation cost, channels_last gain
            new["fit_aug"] = fit_rate(model_name, kwargs, ds, bs, device, augment=True)
            new["fit_nchw"] = fit_rate(model_name, kwargs, ds, bs, device, channels_last=False)
        for k, v in new.items():
            runs[k].append(v)
        print(f"  [{label}] round {r + 1}/{repeats} (wall/cpu img/s): " + ", ".join(
            f"{k} {v[0]:.0f}/{v[1]:.0f}" for k, v in new.items()), file=sys.stderr, flush=True)
    out: dict[str, Any] = {"case": label, "n_train": len(ds.train), "batch_size": bs}
    for i, clock in enumerate(("wall", "cpu")):
        out[clock] = {k: statistics.median(v[i] for v in vals) for k, vals in runs.items() if vals}
        for base in ("plain", "dataloader"):
            out[clock][f"fit/{base}"] = statistics.median(
                f[i] / b[i] for f, b in zip(runs["fit"], runs[base], strict=True))
    out["runs"] = runs
    return out


def gpu_epoch(device: torch.device, n: int) -> dict:
    """One ResNet-20 epoch of CIFAR-shaped synthetic data (N x 3 x 32 x 32) with AMP + channels_last."""
    ds = synthetic("cifar-synthetic", n, (3, 32, 32), n_val=1000)
    out = {}
    for fast in (True, False):
        torch.manual_seed(0)
        model = models.create("resnet20")
        recipe = training.Recipe(lr=0.1, epochs=3, batch_size=128, augment=True, amp=fast,
                                 channels_last="auto" if fast else False)
        res = training.fit(model, ds, recipe, device=device)
        out["amp_channels_last" if fast else "fp32_nchw"] = {
            "epoch_time_s": [round(h["train_time"], 3) for h in res.history],
            "images_per_s": [round(h["images_per_s"]) for h in res.history]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: finishes in seconds")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the 2-core machine is shared)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-epoch", action="store_true", help="also time a ResNet-20 CIFAR-sized epoch")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "training.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = training.resolve_device(args.device)
    n_lenet, n_resnet, repeats = (512, 128, 1) if args.smoke else (8192, 640, args.repeats)

    fds, fsource = fashion(n_lenet)
    rds = synthetic("resnet-synthetic", n_resnet, (3, 32, 32))
    results = {
        "device": str(device), "threads": args.threads, "torch": torch.__version__, "smoke": args.smoke,
        "cases": [
            dict(run_case("LeNet-5 / Fashion-MNIST", "lenet5", {}, fds, 128, device, repeats), data=fsource),
            dict(run_case("ResNet-20 / 32x32 synthetic", "resnet20", {}, rds, 128, device, repeats),
                 data=f"synthetic uint8 (N, 3, 32, 32), {n_resnet} images"),
        ],
    }
    if args.gpu_epoch:
        results["gpu_epoch"] = gpu_epoch(device, 5000 if args.smoke else 50000)

    print(f"\ndevice={device} threads={args.threads} torch={torch.__version__} repeats={repeats}; images/s per "
          "CPU-second (per wall-second in brackets), medians\n")
    print("| case | data | fit | fit, NCHW | fit + crop/flip aug | plain loop | DataLoader loop | fit / plain "
          "| fit / DataLoader |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in results["cases"]:
        cpu, wall = c["cpu"], c["wall"]

        def cell(k: str, cpu: dict = cpu, wall: dict = wall) -> str:
            return f"{cpu[k]:.0f} ({wall[k]:.0f})"

        def ratio(k: str, cpu: dict = cpu, wall: dict = wall) -> str:
            return f"{cpu[k]:.2f}x ({wall[k]:.2f}x)"

        print(f"| {c['case']} | {c['data']} | {cell('fit')} | {cell('fit_nchw')} | {cell('fit_aug')} | "
              f"{cell('plain')} | "
              f"{cell('dataloader')} | {ratio('fit/plain')} | {ratio('fit/dataloader')} |")
    if "gpu_epoch" in results:
        print("\nGPU epoch:", json.dumps(results["gpu_epoch"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
