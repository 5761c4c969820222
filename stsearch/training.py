"""The training engine: recipes, a fast ``fit`` loop, ``evaluate``, and cached dense baselines.

>>> from stsearch import data, models, training
>>> ds = data.load("digits")
>>> net = models.create("digits_cnn")
>>> result = training.fit(net, ds)                       # ds.default_recipe(), device auto-selected
>>> training.evaluate(net, ds.test)                      # {'accuracy': 0.97.., 'loss': 0.09..}

``fit`` keeps the loop lean: in-memory data arrives as device tensors (no DataLoader), loss and accuracy are
accumulated on the device (no per-batch ``.item()`` sync outside the CPU), gradients are dropped with
``set_to_none``, optimisers use their fused kernels where torch has them, and on CUDA it trains in bf16
autocast (fp16 + GradScaler where bf16 is missing); conv nets run channels_last (on the CPU too, for models
built from known modules). On the CPU the same seed gives the same history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._io import save_torch, write_json
from .errors import ConfigError, RunError

__all__ = [
    "Recipe", "FitResult", "default_recipe", "fit", "evaluate", "resolve_device", "train_baseline",
    "load_checkpoint", "baseline_key", "OPTIMIZERS", "SCHEDULES",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant", "onecycle")


# --------------------------------------------------------------------------------------------------- recipe


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Recipe:
    """How to train: optimiser, learning rate and schedule, epochs, regularisation, batch size, AMP.

    ``schedule`` is applied per step: ``cosine`` anneals to 0, ``step`` multiplies by ``gamma`` at each epoch in
    ``milestones`` (default: 50% and 75% of ``epochs``), ``constant`` keeps ``lr``, ``onecycle`` ramps from
    lr/25 to lr over the first 30% (or ``warmup_epochs``) and anneals to lr/25e4. ``warmup_epochs`` ramps
    linearly from 0 for the other schedules. ``amp`` applies on CUDA only; ``channels_last`` is
    ``'auto'`` (conv nets on CUDA; on the CPU too when built from torch/torchvision/stsearch.models modules,
    where oneDNN's NHWC kernels are faster), True or False. ``augment`` turns on the dataset's own augmentation
    (crop + flip for CIFAR, none for digits/MNIST/npz). A NaN ``lr`` is accepted on purpose: such a run ends
    with status ``'nan'``, which tests the divergence path.
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    epochs: int = 10
    batch_size: int = 128
    label_smoothing: float = 0.0
    warmup_epochs: float = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool | str = "auto"
    augment: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, want: str) -> ConfigError:
            return ConfigError(f"recipe.{name} = {value!r} is invalid: {want}")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, f"use one of {', '.join(SCHEDULES)}")
        if not (_is_num(self.lr) and (math.isnan(self.lr) or 0 < self.lr < math.inf)):
            raise bad("lr", self.lr, "use a positive number such as 0.05")
        for name, lo, hi, hi_open in (("momentum", 0.0, 1.0, True), ("label_smoothing", 0.0, 1.0, True),
                                      ("gamma", 0.0, 1.0, False)):
            v = getattr(self, name)
            if not _is_num(v) or not (lo <= v < hi if hi_open else lo < v <= hi):
                rng = f"[{lo}, {hi})" if hi_open else f"({lo}, {hi}]"
                raise bad(name, v, f"use a number in {rng}")
        if not _is_num(self.weight_decay) or not (0 <= self.weight_decay < math.inf):
            raise bad("weight_decay", self.weight_decay, "use a number >= 0 such as 5e-4")
        if not _is_int(self.epochs) or self.epochs < 0:
            raise bad("epochs", self.epochs, "use an integer >= 0")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "use a positive integer such as 128")
        if not _is_num(self.warmup_epochs) or not (0 <= self.warmup_epochs <= max(self.epochs, 0)):
            raise bad("warmup_epochs", self.warmup_epochs, f"use a number in [0, epochs={self.epochs}]")
        ms = self.milestones
        if isinstance(ms, (str, bytes)) or not isinstance(ms, (list, tuple)) or not all(_is_int(m) for m in ms):
            raise bad("milestones", ms, "use a list of epoch numbers such as [100, 150]")
        if any(m < 1 for m in ms) or list(ms) != sorted(set(ms)):
            raise bad("milestones", ms, "epochs must be >= 1, increasing and distinct")
        self.milestones = tuple(ms)
        if self.grad_clip is not None and (not _is_num(self.grad_clip) or not 0 < self.grad_clip < math.inf):
            raise bad("grad_clip", self.grad_clip, "use a positive number (max gradient norm) or null")
        for name in ("nesterov", "amp", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "use true or false")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "auto"):
            raise bad("channels_last", self.channels_last, "use 'auto', true or false")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing", "gamma", "warmup_epochs"):
            setattr(self, name, float(getattr(self, name)))
        if self.grad_clip is not None:
            self.grad_clip = float(self.grad_clip)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Recipe:
        """Build from a mapping (e.g. a YAML section); unknown or bad fields raise ConfigError ``recipe.<field>``.

        Numeric strings are accepted for float fields (YAML 1.1 loads ``1e-3`` as a string).
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"recipe must be a mapping of fields, got {type(d).__name__} {d!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ConfigError(f"recipe.{unknown[0]} is not a recipe field (value {d[unknown[0]]!r}); "
                              f"fields: {', '.join(names)}")
        values = dict(d)
        for name in _FLOAT_FIELDS:  # YAML 1.1 reads '1e-3' (no dot) as a string
            v = values.get(name)
            if isinstance(v, str):
                try:
                    values[name] = float(v)
                except ValueError:
                    raise ConfigError(f"recipe.{name} = {v!r} is invalid: use a number") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``Recipe.from_dict(r.to_dict()) == r``."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    def replace(self, **kw: Any) -> Recipe:
        """A copy with some fields changed (validated)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = [k for k in kw if k not in names]
        if unknown:
            raise ConfigError(f"recipe.{unknown[0]} is not a recipe field; fields: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **kw)


_FLOAT_FIELDS = ("lr", "momentum", "weight_decay", "label_smoothing", "warmup_epochs", "gamma", "grad_clip")

_DEFAULT_RECIPES: dict[str, dict[str, Any]] = {
    # He et al. (2016) / the common CIFAR ResNet recipe with cosine annealing.
    "cifar10": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128, "epochs": 200},
    "cifar100": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128, "epochs": 200},
    "mnist": {"lr": 0.05, "batch_size": 128, "epochs": 10},
    "fashion-mnist": {"lr": 0.05, "batch_size": 128, "epochs": 15},
    # 1.3k training images: small batches and a short cosine run reach >= 95% test accuracy in seconds.
    "digits": {"lr": 0.05, "batch_size": 32, "epochs": 8},
    # User data of unknown difficulty: one warm-up epoch, then cosine.
    "npz": {"lr": 0.05, "batch_size": 64, "epochs": 20, "warmup_epochs": 1},
    "imagefolder": {"lr": 0.05, "batch_size": 64, "epochs": 30, "warmup_epochs": 1},
}


def default_recipe(dataset_name: str) -> Recipe:
    """The recipe suited to a dataset name or spec (``'cifar10'``, ``'digits'``, ``'npz:/x.npz'``, ...)."""
    key = str(dataset_name).split(":", 1)[0].lower() if ":" in str(dataset_name) else str(dataset_name).lower()
    key = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}.get(key, key)
    if key not in _DEFAULT_RECIPES:
        raise ConfigError(f"dataset {dataset_name!r} has no default recipe; known: {', '.join(_DEFAULT_RECIPES)}")
    return Recipe(**_DEFAULT_RECIPES[key])


def _lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimisation step ``step`` (0-based), per the schedule."""
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "onecycle":
        up = max(1, round((recipe.warmup_epochs * steps_per_epoch) if recipe.warmup_epochs else 0.3 * total))
        lo, end = 1 / 25, 1 / 25e4
        if step < up:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * step / up))
        p = min(1.0, (step - up) / max(1, total - up))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p))
    warm = int(round(recipe.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if recipe.schedule == "cosine":
        p = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * p))
    if recipe.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        ms = recipe.milestones or tuple(m for m in (recipe.epochs // 2, recipe.epochs * 3 // 4) if m > 0)
        return recipe.gamma ** sum(1 for m in ms if epoch >= m)
    return 1.0


# --------------------------------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` -> cuda if available, else mps, else cpu; anything else is checked and returned."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available here; use --device cpu or auto")
    return dev


def _amp_dtype(dev: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


_CL_SAFE_PACKAGES = ("torch.nn.", "torchvision.models.", "torchvision.ops.", "stsearch.models.")


def _channels_last_safe(model: nn.Module) -> bool:
    """True if every module is torch's, torchvision's or stsearch.models' own (or its class sets
    ``channels_last_safe = True``): code known not to ``.view()`` activations in a way NHWC strides break."""
    return all(type(m).__module__.startswith(_CL_SAFE_PACKAGES) or getattr(m, "channels_last_safe", False)
               for m in model.modules())


def _use_channels_last(model: nn.Module, recipe: Recipe, dev: torch.device) -> bool:
    """``'auto'``: on CUDA for any conv net; on the CPU for conv nets built from known-safe modules, where
    oneDNN's NHWC kernels measured 1.3-1.4x faster (LeNet-5, ResNet-20, digits_cnn; 1 thread)."""
    if isinstance(recipe.channels_last, bool):
        return recipe.channels_last
    if not _has_conv(model):
        return False
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and _channels_last_safe(model)


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------- evaluate


def evaluate(model: nn.Module, split: Any, *, device: str | torch.device = "auto", batch_size: int = 1024,
             amp: bool = False) -> dict[str, float]:
    """Accuracy in [0, 1] and mean cross-entropy of ``model`` on ``split`` (eval mode; the mode is restored).

    Moves ``model`` to ``device``. ``amp`` evaluates under CUDA autocast. An empty split gives NaNs.
    """
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    try:
        with torch.inference_mode(), _autocast(dev, _amp_dtype(dev, amp)):
            for x, y in split.batches(batch_size, device=dev):
                out = model(x).float()
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
                n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": correct.item() / n, "loss": loss_sum.item() / n}


# --------------------------------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """What ``fit`` returns: per-epoch ``history``, ``status`` ('ok' | 'nan' | 'interrupted') and timing."""

    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    wall_time: float = 0.0
    epochs: int = 0
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def last(self) -> dict[str, Any]:
        """The last completed epoch's metrics ({} if none)."""
        return self.history[-1] if self.history else {}

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy after the last completed epoch (NaN if none)."""
        v = self.last.get("val_accuracy")
        return float("nan") if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make_optimizer(model: nn.Module, recipe: Recipe, dev: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model has no trainable parameters")
    lr = recipe.lr if not math.isnan(recipe.lr) else 0.0  # NaN is written into the groups below
    kw: dict[str, Any] = {"lr": lr, "weight_decay": recipe.weight_decay}
    if recipe.optimizer == "sgd":
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kw.update(momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)
    elif recipe.optimizer == "adam":
        cls = torch.optim.Adam
    else:
        cls = torch.optim.AdamW
    opt = None
    if dev.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params):
        try:
            opt = cls(params, fused=True, **kw)  # one kernel for all parameters
        except (RuntimeError, TypeError, ValueError):
            opt = None
    if opt is None:
        opt = cls(params, **kw)
    for group in opt.param_groups:
        group["lr"] = recipe.lr
    return opt


def fit(model: nn.Module, data: Any, recipe: Recipe | Mapping[str, Any] | None = None, *,
        device: str | torch.device = "auto", seed: int = 0, progress: bool = False,
        epoch_callback: Callable[[int, dict[str, Any]], None] | None = None,
        max_epochs: int | None = None, num_threads: int | None = None) -> FitResult:
    """Train ``model`` in place on ``data.train``, validating on ``data.val`` after every epoch.

    Args:
        data: a :class:`stsearch.data.Dataset` (anything with ``.train`` and ``.val`` splits).
        recipe: a :class:`Recipe` or dict (default: ``data.default_recipe()``).
        seed: seeds torch's global RNG, the shuffling and the augmentation; the same seed on the CPU gives the
            same history.
        epoch_callback: ``f(epoch, metrics)`` after each epoch's validation (epochs count from 1); whatever it
            raises (e.g. ``optuna.TrialPruned``) propagates.
        max_epochs: stop after this many epochs; the LR schedule still spans ``recipe.epochs``, so the run is a
            prefix of the full one (use ``recipe.replace(epochs=k)`` for a complete shorter schedule).
        num_threads: CPU threads for this run (restored afterwards); default: torch's current setting. On a
            busy or shared machine, 1 avoids OpenMP oversubscription, which can slow small models 10x or more.

    Returns a :class:`FitResult`. A non-finite loss stops the run with status ``'nan'``; Ctrl-C stops it with
    status ``'interrupted'``; both keep the completed epochs' history.
    """
    if recipe is None:
        recipe = data.default_recipe() if hasattr(data, "default_recipe") else Recipe()
    elif isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a Recipe or a dict, got {type(recipe).__name__}")
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < 0):
        raise ConfigError(f"max_epochs must be an integer >= 0, got {max_epochs!r}")
    if not _is_int(seed):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if num_threads is not None and (not _is_int(num_threads) or num_threads < 1):
        raise ConfigError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    dev = resolve_device(device)
    train, val = data.train, data.val
    bs = recipe.batch_size
    n_train = len(train)
    if n_train == 0:
        raise ConfigError("the training split is empty")
    drop_last = n_train % bs == 1 and n_train > 1  # a lone image would break batch norm
    steps_per_epoch = train.num_batches(bs, drop_last=drop_last)
    epochs = recipe.epochs if max_epochs is None else min(recipe.epochs, max_epochs)

    torch.manual_seed(seed)
    model.to(dev)
    use_cl = _use_channels_last(model, recipe, dev)
    mem_fmt = torch.channels_last if use_cl else torch.contiguous_format
    amp_dtype = _amp_dtype(dev, recipe.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    opt = _make_optimizer(model, recipe, dev)
    groups = opt.param_groups
    params = [p for g in groups for p in g["params"]]
    ls = recipe.label_smoothing
    clip = recipe.grad_clip
    check_every = 1 if dev.type == "cpu" else 32  # a host sync costs nothing on the CPU

    result = FitResult(device=str(dev))
    was_training = model.training
    t_start = time.perf_counter()
    step = 0
    bar = _progress_bar(epochs * steps_per_epoch, progress)
    cudnn_bench = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    epoch = 0
    try:
        if use_cl:  # parameters change layout in place, so the optimizer keeps them
            model.to(memory_format=torch.channels_last)
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            seen = 0
            lr_now = recipe.lr
            t0 = time.perf_counter()
            batches = train.batches(bs, shuffle=True, seed=_epoch_seed(seed, epoch), augment=recipe.augment,
                                    device=dev, drop_last=drop_last)
            for x, y in batches:
                lr_now = recipe.lr * _lr_factor(recipe, step, steps_per_epoch)
                for g in groups:
                    g["lr"] = lr_now
                x = x.contiguous(memory_format=mem_fmt)
                with _autocast(dev, amp_dtype):
                    out = model(x)
                    loss = F.cross_entropy(out, y, label_smoothing=ls)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if clip is not None:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    opt.step()
                with torch.no_grad():
                    loss_sum += loss.detach().float() * len(y)
                    correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                step += 1
                if step % check_every == 0 or seen == n_train:
                    mean_loss = loss_sum.item() / seen
                    if not math.isfinite(mean_loss):
                        result.status = "nan"
                        result.reason = (f"training loss became {mean_loss} at epoch {epoch}, step {step} "
                                         f"(lr={lr_now:g}); lower recipe.lr or set recipe.grad_clip")
                        return result
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}",
                                        acc=f"{correct.item() / seen:.3f}", img_s=f"{seen / max(dt, 1e-9):.0f}")
                if bar is not None:
                    bar.update(1)
            train_loss = loss_sum.item() / max(seen, 1)
            train_acc = correct.item() / max(seen, 1)
            train_time = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                result.status = "nan"
                result.reason = (f"training loss became {train_loss} at epoch {epoch}; lower recipe.lr or set "
                                 "recipe.grad_clip")
                return result
            v = evaluate(model, val, device=dev, batch_size=max(1024, bs), amp=recipe.amp) if len(val) else None
            metrics: dict[str, Any] = {
                "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": v["loss"] if v else None, "val_accuracy": v["accuracy"] if v else None,
                "lr": lr_now, "epoch_time": time.perf_counter() - t0, "train_time": train_time,
                "images_per_s": seen / max(train_time, 1e-9),
            }
            if v is not None and not math.isfinite(v["loss"]):
                result.status = "nan"
                result.reason = f"validation loss became {v['loss']} after epoch {epoch}; lower recipe.lr"
                return result
            result.history.append(metrics)
            result.epochs = epoch
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", val_acc=f"{metrics['val_accuracy']}",
                                img_s=f"{metrics['images_per_s']:.0f}")
            if epoch_callback is not None:
                epoch_callback(epoch, dict(metrics))
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.reason = f"interrupted (KeyboardInterrupt) during epoch {epoch}; {result.epochs} epoch(s) completed"
    finally:
        result.wall_time = time.perf_counter() - t_start
        model.train(was_training)
        if use_cl:  # hand the model back in the default layout: callers may .view() its weights
            model.to(memory_format=torch.contiguous_format)
        torch.backends.cudnn.benchmark = cudnn_bench
        if num_threads is not None:
            torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    return result


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------------------------------- baselines


def load_checkpoint(path: str | Path, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Load a ``state_dict`` checkpoint into ``model`` (in place) with ``torch.load(weights_only=True)``.

    Accepts a bare state dict, or a dict holding one under ``state_dict``/``model_state_dict``/``model``; a
    ``module.`` prefix (DataParallel) is stripped. Missing, corrupt or mismatched files raise RunError.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist; pass the path of a file saved with "
                       "torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        glob = re.search(r"GLOBAL (\S+)", text)
        if glob:
            why = (f"it holds Python objects ({glob.group(1)}) that a weights-only load refuses; re-save it with "
                   "torch.save(model.state_dict(), path)")
        else:
            detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
            first = detail.group(1).strip() if detail else (text.splitlines()[0] if text else type(e).__name__)
            why = f"the file is corrupt or not a torch checkpoint ({type(e).__name__}: {first[:200]})"
        raise RunError(f"checkpoint {path} cannot be loaded: {why}") from e
    state = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"checkpoint {path} does not hold a state dict (name -> tensor); got {type(obj).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise RunError(f"checkpoint {path} does not match the model: missing {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{' ...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise RunError(f"checkpoint {path} does not match the model's shapes: {'; '.join(wrong[:5])}")
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise RunError(f"checkpoint {path} does not match the model: {e}") from e
    return model


def _fill_model_kwargs(model_name: str, model_kwargs: Mapping[str, Any] | None, data: Any) -> dict[str, Any]:
    from . import models

    kwargs = dict(model_kwargs or {})
    accepts = models.model_kwargs(model_name) if not model_name.startswith(models.TORCHVISION_PREFIX) else {
        "num_classes": 10, "in_channels": 3}
    if "num_classes" in accepts and "num_classes" not in kwargs:
        kwargs["num_classes"] = int(data.num_classes)
    if "in_channels" in accepts and "in_channels" not in kwargs:
        kwargs["in_channels"] = int(data.input_shape[0])
    return kwargs


def baseline_key(model_name: str, model_kwargs: Mapping[str, Any], data: Any, recipe: Recipe, seed: int) -> str:
    """The cache key: a hash of model name + kwargs + dataset spec (with val split) + recipe + seed."""
    data_key = data.cache_key() if hasattr(data, "cache_key") else {"spec": getattr(data, "spec", str(data))}
    blob = json.dumps({"v": 1, "model": model_name, "kwargs": dict(model_kwargs), "data": data_key,
                       "recipe": recipe.to_dict(), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:40]


def train_baseline(model_name: str, model_kwargs: Mapping[str, Any] | None, data: Any,
                   recipe: Recipe | Mapping[str, Any] | None = None, *, cache_dir: str | Path,
                   device: str | torch.device = "auto", seed: int = 0,
                   progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Train the dense model once and cache it; later calls with the same inputs load the cached weights.

    ``num_classes``/``in_channels`` default to the dataset's. Files: ``cache_dir/<model>-<data>-<key>.pt``
    (state dict, written atomically) and ``.json`` (metrics, history, recipe). Returns ``(model, info)`` with
    ``info['cached']`` telling whether the cache was hit, ``info['val_accuracy']`` and ``info['test_accuracy']``.
    A run that diverges raises RunError and caches nothing.
    """
    from . import models

    if recipe is None:
        recipe = data.default_recipe()
    elif isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(recipe)
    kwargs = _fill_model_kwargs(model_name, model_kwargs, data)
    key = baseline_key(model_name, kwargs, data, recipe, seed)
    cache = Path(cache_dir).expanduser()
    stem = f"{_slug(model_name)}-{_slug(getattr(data, 'name', 'data'))}-{key}"
    pt, js = cache / f"{stem}.pt", cache / f"{stem}.json"
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = models.create(model_name, **kwargs)
    if pt.is_file() and js.is_file():
        try:
            info = json.loads(js.read_text())
            load_checkpoint(pt, model)
            info.update(cached=True, path=str(pt))
            return model.to(dev), info
        except (RunError, ValueError, OSError) as e:
            warnings.warn(f"baseline cache {pt} is unusable ({e}); training again", RuntimeWarning, stacklevel=2)
    result = fit(model, data, recipe, device=dev, seed=seed, progress=progress)
    if result.status != "ok":
        raise RunError(f"baseline {model_name} on {getattr(data, 'spec', data)} did not finish: {result.status} "
                       f"({result.reason}); nothing was cached. Fix the recipe, or pass your own --baseline PATH")
    test = evaluate(model, data.test, device=dev)
    save_torch(pt, {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()})
    info = {
        "key": key, "model": model_name, "model_kwargs": kwargs, "data": data.cache_key()
        if hasattr(data, "cache_key") else str(data), "recipe": recipe.to_dict(), "seed": seed,
        "val_accuracy": result.val_accuracy, "val_loss": result.last.get("val_loss"),
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "params": sum(p.numel() for p in model.parameters()), "epochs": result.epochs,
        "wall_time": result.wall_time, "device": result.device, "history": result.history,
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": pt.name,
    }
    write_json(js, info)
    info.update(cached=False, path=str(pt))
    return model, info
