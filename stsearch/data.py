"""Datasets: one ``load(spec)`` for the embedded digits, torchvision's image sets, image folders and npz arrays.

>>> ds = load("digits")                        # offline, bundled with scikit-learn
>>> ds.input_shape, ds.num_classes              # ((1, 8, 8), 10)
>>> for x, y in ds.train.batches(128, shuffle=True, seed=0, augment=True, device="cpu"):
...     ...                                     # x: (B, C, H, W) float32 normalised, y: (B,) int64

Specs: ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``, ``npz:PATH``.

* Validation is held out of the training data, stratified per class, with ``seed`` (disjoint and reproducible);
  ``test`` is the dataset's own test set and is meant for final reports only.
* Small sets are held in memory as tensors (uint8, or float for digits and float npz) and normalised on the
  fly; they move to the training device once, and shuffling, augmentation (random crop with zero padding and a
  horizontal flip for CIFAR) and normalisation run batched on that device, without DataLoader workers.
* ``imagefolder:`` streams from disk through a DataLoader with torchvision transforms.
* (Fashion-)MNIST is read from raw IDX files (``.gz`` or not): ``ROOT/FashionMNIST/raw`` as torchvision lays it
  out, ``ROOT`` itself, or Debian's ``dataset-fashion-mnist`` folder ``/usr/share/datasets/fashion-mnist``
  (searched when no ``data_root`` is given; pass it as ``data_root`` to name it explicitly).
  CIFAR is read from torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` pickles with an unpickler
  that only admits numpy arrays. ``download=True`` fetches through torchvision, and only when asked.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .training import Recipe

__all__ = [
    "load", "available", "Dataset", "Split", "TensorSplit", "LoaderSplit", "default_data_roots",
    "DEBIAN_FASHION_MNIST", "read_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_MNIST = Path("/usr/share/datasets/mnist")
DATA_ROOT_ENV = "STSEARCH_DATA_ROOT"

# Per-channel (mean, std) of the training images in [0, 1], the usual published constants.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALIASES = {
    "digits": "digits", "sklearn-digits": "digits",
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100",
}
_PREFIXES = ("imagefolder", "npz")
AUGMENTS = ("none", "crop", "crop_flip")


def available() -> list[str]:
    """The dataset specs :func:`load` understands (``PATH`` stands for a path)."""
    return ["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "npz:PATH"]


def default_data_roots() -> list[Path]:
    """Where datasets are looked for when no ``data_root`` is given: ``$STSEARCH_DATA_ROOT``, ``./data``,
    ``~/.cache/stsearch/data`` (in that order)."""
    roots = []
    if os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]).expanduser())
    roots += [Path("data"), Path("~/.cache/stsearch/data").expanduser()]
    return roots


# --------------------------------------------------------------------------------------------------- splits


class Split:
    """One split of a dataset. ``len(split)`` images; ``batches(...)`` yields ``(x, y)`` on the device.

    x: (B, C, H, W) float32, normalised; y: (B,) int64 class indices.
    """

    name: str
    in_memory: bool = False

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None,
                augment: bool = False, device: str | torch.device | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """How many batches ``batches(batch_size)`` yields."""
        n = len(self)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def tensors(self, normalized: bool = True) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, n: int, seed: int = 0) -> Split:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class TensorSplit(Split):
    """An in-memory split: images x (N, C, H, W) uint8 or float32 and labels y (N,) int64, on the CPU.

    A pixel p is fed to the model as ``(p * scale - mean[c]) / std[c]``. ``augment`` names the policy that
    ``batches(augment=True)`` applies: ``none``, ``crop`` (random crop after zero padding of ``pad`` pixels)
    or ``crop_flip`` (the same plus a random horizontal flip); padding is black, as with torchvision's
    ``RandomCrop(padding=4)`` before ``Normalize``.
    """

    in_memory = True

    def __init__(self, x: Tensor, y: Tensor, *, scale: float, mean: Sequence[float], std: Sequence[float],
                 augment: str = "none", pad: int = 4, name: str = "train") -> None:
        if x.ndim != 4:
            raise DataError(f"split {name!r}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"split {name!r}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise DataError(f"split {name!r}: {x.shape[1]} channels but mean/std of length {len(mean)}")
        self.x = x.contiguous()
        self.y = y.to(torch.int64).contiguous()
        self.scale = float(scale)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.pad = int(pad)
        self.name = name
        self._device_cache: tuple[torch.device, Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (f"TensorSplit(name={self.name!r}, n={len(self)}, shape={tuple(self.x.shape[1:])}, "
                f"dtype={self.x.dtype}, augment={self.augment!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_device_cache"] = None  # never ship device copies (e.g. through Ray's object store)
        return state

    # -- accessors
    def tensors(self, normalized: bool = True) -> tuple[Tensor, Tensor]:
        """CPU tensors (x, y): x (N, C, H, W) float32 normalised, or the stored raw pixels if not ``normalized``."""
        if not normalized:
            return self.x, self.y
        return self._normalize(self.x, *self._affine(torch.device("cpu"))), self.y

    def subset(self, n: int, seed: int = 0) -> TensorSplit:
        """A random subset of ``n`` images (stratified by class), as a new split."""
        if n >= len(self):
            return self
        idx = torch.as_tensor(_stratified_pick(self.y.numpy(), n, seed))
        return self._with(self.x[idx], self.y[idx], self.name)

    def _with(self, x: Tensor, y: Tensor, name: str) -> TensorSplit:
        return TensorSplit(x, y, scale=self.scale, mean=self.mean, std=self.std, augment=self.augment,
                           pad=self.pad, name=name)

    # -- iteration
    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device.type == "cpu":
            return self.x, self.y
        cache = self._device_cache
        if cache is None or cache[0] != device:
            cache = (device, self.x.to(device), self.y.to(device))
            self._device_cache = cache
        return cache[1], cache[2]

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(1, C, 1, 1) multiplier a and offset b with x_norm = x * a + b."""
        std = torch.tensor(self.std, dtype=torch.float32)
        a = (self.scale / std).view(1, -1, 1, 1)
        b = (-torch.tensor(self.mean, dtype=torch.float32) / std).view(1, -1, 1, 1)
        return a.to(device), b.to(device)

    @staticmethod
    def _normalize(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.addcmul(b, x.to(torch.float32), a)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None,
                augment: bool = False, device: str | torch.device | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x (B, C, H, W) float32 normalised, y (B,) int64) on ``device`` (default: CPU).

        ``shuffle`` draws one permutation per call from ``seed`` (a fresh random seed if None); ``augment``
        applies this split's policy with random numbers drawn from the same generator, all on the device.
        """
        bs = _check_batch_size(batch_size)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        x, y = self._on(dev)
        a, b = self._affine(dev)
        n = len(self)
        gen = torch.Generator()
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        perm = torch.randperm(n, generator=gen).to(dev) if shuffle else None
        policy = self.augment if augment else "none"
        if policy != "none":
            H, W = x.shape[-2:]
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen).to(dev)
            flips = (torch.rand(n, generator=gen) < 0.5) if policy == "crop_flip" else torch.zeros(n, dtype=torch.bool)
            flips = flips.to(dev)
            ar_h = torch.arange(H, device=dev)
            ar_w = torch.arange(W, device=dev)
        stop = n - n % bs if drop_last else n
        for i in range(0, stop, bs):
            j = min(i + bs, n)
            if perm is None:
                xb, yb = x[i:j], y[i:j]
            else:
                idx = perm[i:j]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if policy != "none":
                xb = self._crop_flip(xb, offsets[i:j], flips[i:j], ar_h, ar_w)
            yield self._normalize(xb, a, b), yb

    def _crop_flip(self, xb: Tensor, off: Tensor, flip: Tensor, ar_h: Tensor, ar_w: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W): zero-pad by ``pad``, crop at per-image offsets, flip where ``flip``.

        One gather: rows = oy + i, cols = ox + (W - 1 - j if flip else j) into the padded batch.
        """
        p = self.pad
        W = xb.shape[-1]
        xp = F.pad(xb, (p, p, p, p))
        rows = off[:, :1] + ar_h  # (B, H)
        cols_fwd = ar_w.expand(len(xb), -1)
        cols = off[:, 1:] + torch.where(flip[:, None], (W - 1) - cols_fwd, cols_fwd)  # (B, W)
        bidx = torch.arange(len(xb), device=xb.device)[:, None, None]
        out = xp[bidx, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last in memory


class _FolderImages(torch.utils.data.Dataset):
    """(path, label) samples -> (transformed image (C, H, W), label); picklable for DataLoader workers."""

    def __init__(self, samples: list[tuple[str, int]], mode: str, transform: Any) -> None:
        self.samples = samples
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
        except Exception as e:  # PIL raises several types for broken files
            raise DataError(f"imagefolder: cannot read image {path}: {e}; remove or replace the file") from e
        return self.transform(img), label


class LoaderSplit(Split):
    """A split streamed from image files through a DataLoader with torchvision transforms.

    Yields x (B, C, S, S) float32 normalised (resize + centre crop to S; with ``augment``, a random crop after
    zero padding of S/8 and a random horizontal flip) and y (B,) int64.
    """

    in_memory = False

    def __init__(self, samples: list[tuple[str, int]], *, mode: str, size: int, mean: Sequence[float],
                 std: Sequence[float], augment: str = "crop_flip", name: str = "train",
                 num_workers: int | None = None) -> None:
        self.samples = samples
        self.mode = mode
        self.size = size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment
        self.name = name
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"LoaderSplit(name={self.name!r}, n={len(self)}, size={self.size}, mode={self.mode!r})"

    def _transform(self, augment: bool) -> Any:
        from torchvision import transforms as T

        steps: list[Any] = [T.Resize(self.size), T.CenterCrop(self.size)]
        if augment and self.augment in ("crop", "crop_flip"):
            steps.append(T.RandomCrop(self.size, padding=max(1, self.size // 8)))
        if augment and self.augment == "crop_flip":
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return 0 if len(self) < 2048 else min(8, max(1, (os.cpu_count() or 2) - 1))

    def subset(self, n: int, seed: int = 0) -> LoaderSplit:
        """A random subset of ``n`` images (stratified by class), as a new split."""
        if n >= len(self):
            return self
        idx = _stratified_pick(np.array([s[1] for s in self.samples]), n, seed)
        return self._with([self.samples[i] for i in idx], self.name)

    def _with(self, samples: list[tuple[str, int]], name: str) -> LoaderSplit:
        return LoaderSplit(samples, mode=self.mode, size=self.size, mean=self.mean, std=self.std,
                           augment=self.augment, name=name, num_workers=self.num_workers)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None,
                augment: bool = False, device: str | torch.device | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x (B, C, S, S), y (B,)) on ``device``, decoded by DataLoader workers."""
        bs = _check_batch_size(batch_size)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        gen = None
        if shuffle:
            gen = torch.Generator()
            gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        loader = torch.utils.data.DataLoader(
            _FolderImages(self.samples, self.mode, self._transform(augment)), batch_size=bs, shuffle=shuffle,
            generator=gen, num_workers=self._workers(), pin_memory=dev.type == "cuda", drop_last=drop_last,
        )
        for xb, yb in loader:
            yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)

    def tensors(self, normalized: bool = True) -> tuple[Tensor, Tensor]:
        raise DataError(
            f"split {self.name!r} streams {len(self)} images from disk (imagefolder); tensors() exists only "
            "for in-memory splits. Iterate split.batches(...) instead, or convert the folder to an npz file."
        )


# --------------------------------------------------------------------------------------------------- dataset


@dataclass
class Dataset:
    """A loaded dataset: ``train``/``val``/``test`` splits, ``input_shape`` (C, H, W) and ``num_classes``."""

    name: str
    spec: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, int, int]
    num_classes: int
    classes: list[str] | None = None
    val_fraction: float = 0.1
    seed: int = 0
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def default_recipe(self) -> Recipe:
        """The training recipe suited to this dataset (see :func:`stsearch.training.default_recipe`)."""
        from .training import default_recipe

        return default_recipe(self.name)

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None,
               seed: int = 0) -> Dataset:
        """A copy with (stratified) random subsets of the splits, e.g. for a quick low-fidelity search."""
        def pick(split: Split, n: int | None) -> Split:
            return split if n is None else split.subset(n, seed)

        return Dataset(self.name, self.spec, pick(self.train, train), pick(self.val, val), pick(self.test, test),
                       self.input_shape, self.num_classes, self.classes, self.val_fraction, self.seed,
                       self.source, dict(self.info, subset={"train": train, "val": val, "test": test,
                                                            "seed": seed}))

    def cache_key(self) -> dict[str, Any]:
        """What identifies this data for caching: spec, validation fraction, seed and any subsetting."""
        return {"spec": self.spec, "val_fraction": self.val_fraction, "seed": self.seed,
                "subset": self.info.get("subset")}

    def __repr__(self) -> str:
        return (f"Dataset({self.spec!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def _stratified_pick(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` items drawn per class in proportion (sorted); deterministic in ``seed``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"subset size must be an integer >= 0, got {n!r}")
    if n == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # Sort the shuffled order by class (stable), then take every k-th: proportional per class.
    by_class = order[np.argsort(y[order], kind="stable")]
    take = np.floor(np.arange(n) * (len(y) / n)).astype(np.int64)
    return np.sort(by_class[take])


def _split_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of range(len(y)) into (keep, held_out): round(fraction * N) held out, shared among the
    classes in proportion (largest remainders first), each class shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    extra = int(round(fraction * len(y))) - int(take.sum())
    if extra > 0:
        take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    take = np.minimum(take, counts)
    held: list[np.ndarray] = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == c)
        held.append(idx[rng.permutation(len(idx))[:k]])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def _check_args(val_fraction: Any, seed: Any) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= float(val_fraction) < 1.0
    ):
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")


def _tensor_dataset(name: str, spec: str, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                    *, scale: float, mean: Sequence[float], std: Sequence[float], augment: str,
                    num_classes: int, classes: list[str] | None, val_fraction: float, seed: int,
                    source: str) -> Dataset:
    keep, held = _split_indices(y_train.numpy(), val_fraction, seed)
    keep_t, held_t = torch.as_tensor(keep), torch.as_tensor(held)
    kw: dict[str, Any] = {"scale": scale, "mean": mean, "std": std, "augment": augment}
    train = TensorSplit(x_train[keep_t], y_train[keep_t], name="train", **kw)
    val = TensorSplit(x_train[held_t], y_train[held_t], name="val", **kw)
    test = TensorSplit(x_test, y_test, name="test", **kw)
    c, h, w = x_train.shape[1:]
    return Dataset(name, spec, train, val, test, (int(c), int(h), int(w)), int(num_classes), classes,
                   float(val_fraction), int(seed), source)


# --------------------------------------------------------------------------------------------------- loaders


def load(spec: str, data_root: str | os.PathLike[str] | None = None, download: bool = False,
         val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load dataset ``spec`` with a validation split of ``val_fraction`` of train drawn with ``seed``.

    ``data_root`` is where torchvision-style datasets live (default: :func:`default_data_roots`, plus Debian's
    dataset folders); ``download=True`` lets torchvision fetch a missing one into it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"dataset: spec must be a non-empty string such as 'digits', got {spec!r}")
    _check_args(val_fraction, seed)
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    kind_l = kind.lower()
    if sep and kind_l in _PREFIXES:
        if not arg:
            raise ConfigError(f"dataset: {kind_l}: needs a path, e.g. '{kind_l}:/data/my_images'")
        path = Path(arg).expanduser()
        if not path.is_absolute() and not path.exists() and data_root is not None:
            path = Path(data_root).expanduser() / path  # relative paths may also live under data_root
        if kind_l == "npz":
            return _load_npz(spec, path, val_fraction, seed)
        return _load_imagefolder(spec, path, val_fraction, seed)
    name = _ALIASES.get(spec.lower())
    if name is None:
        raise ConfigError(f"dataset: unknown spec {spec!r}; use one of {', '.join(available())}")
    if name == "digits":
        return _load_digits(val_fraction, seed)
    if name in ("mnist", "fashion-mnist"):
        return _load_mnist(name, data_root, download, val_fraction, seed)
    return _load_cifar(name, data_root, download, val_fraction, seed)


def _load_digits(val_fraction: float, seed: int) -> Dataset:
    """scikit-learn's 1,797 8x8 digits; a fixed stratified 20% (seed 0) is the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    y = torch.as_tensor(d.target, dtype=torch.int64)
    rest, test = _split_indices(d.target, 0.2, 0)
    xr, yr = x[torch.as_tensor(rest)], y[torch.as_tensor(rest)]
    scaled = xr / 16.0
    mean, std = [float(scaled.mean())], [float(scaled.std())]
    return _tensor_dataset(
        "digits", "digits", xr, yr, x[torch.as_tensor(test)], y[torch.as_tensor(test)], scale=1 / 16.0,
        mean=mean, std=std, augment="none", num_classes=10, classes=[str(i) for i in range(10)],
        val_fraction=val_fraction, seed=seed, source="sklearn.datasets.load_digits",
    )


# ---- (Fashion-)MNIST: raw IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}
_MNIST_DIRS = {"mnist": ("MNIST", "mnist"), "fashion-mnist": ("FashionMNIST", "fashion-mnist", "fashion_mnist")}
_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), e.g. MNIST's ``train-images-idx3-ubyte.gz`` -> (N, 28, 28) uint8."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; the file is corrupt or truncated, delete it and "
                        "fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); expected e.g. "
                        "00000803 for images or 00000801 for labels")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {dims} ({expected} bytes) but the file has {len(raw)} "
                        "bytes; the file is corrupt or truncated, delete it and fetch it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # 'train-images.idx3-ubyte' as some mirrors name them
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _mnist_candidates(name: str, data_root: str | os.PathLike[str] | None) -> list[Path]:
    roots = [Path(data_root).expanduser()] if data_root is not None else default_data_roots()
    out: list[Path] = []
    for root in roots:
        for sub in _MNIST_DIRS[name]:
            out += [root / sub / "raw", root / sub]
        out.append(root)
    if data_root is None:  # an explicit root is searched alone
        out.append(DEBIAN_FASHION_MNIST if name == "fashion-mnist" else DEBIAN_MNIST)
    return out


def _load_mnist(name: str, data_root: str | os.PathLike[str] | None, download: bool, val_fraction: float,
                seed: int) -> Dataset:
    candidates = _mnist_candidates(name, data_root)
    folder = next((c for c in candidates if all(_find_idx(c, s) for s in _MNIST_FILES.values())), None)
    if folder is None and download:
        root = Path(data_root).expanduser() if data_root is not None else default_data_roots()[-1]
        _torchvision_download(name, root)
        folder = next((c for c in _mnist_candidates(name, root)
                       if all(_find_idx(c, s) for s in _MNIST_FILES.values())), None)
    if folder is None:
        files = ", ".join(f"{s}[.gz]" for s in _MNIST_FILES.values())
        debian = (" or install Debian's package (apt-get install dataset-fashion-mnist), which puts them in "
                  f"{DEBIAN_FASHION_MNIST}") if name == "fashion-mnist" else ""
        raise DataError(
            f"dataset {name!r} not found: looked for {files} in {', '.join(map(str, candidates))}. Fix: pass "
            f"--data-root DIR (data_root=) pointing at a folder holding them (or DIR/{_MNIST_DIRS[name][0]}/raw), "
            f"or download=True when online{debian}."
        )
    arrays = {k: read_idx(_find_idx(folder, s)) for k, s in _MNIST_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        xs, ys = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if xs.ndim != 3 or ys.ndim != 1 or xs.shape[0] != ys.shape[0]:
            raise DataError(f"dataset {name!r} in {folder}: {split} images {xs.shape} and labels {ys.shape} do not "
                            "match (expected (N, 28, 28) and (N,))")
        if ys.size and ys.max() > 9:
            raise DataError(f"dataset {name!r} in {folder}: {split} labels go up to {ys.max()}, expected 0..9")
    mean, std = _STATS[name]
    classes = _FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return _tensor_dataset(
        name, name, torch.from_numpy(arrays["x_train"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["y_train"].astype(np.int64)), torch.from_numpy(arrays["x_test"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["y_test"].astype(np.int64)), scale=1 / 255.0, mean=mean, std=std, augment="none",
        num_classes=10, classes=classes, val_fraction=val_fraction, seed=seed, source=str(folder),
    )


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"dataset {name!r}: download into {root} failed ({type(e).__name__}: {e}). Fix: check the "
                        "network, or fetch the files by hand and pass --data-root") from e


# ---- CIFAR: torchvision's pickled batches

_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels", 100),
}
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits plain containers and numpy arrays only: a hostile pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}; the file is corrupt or not a "
                        "CIFAR pickle, delete the folder and fetch it again") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _load_cifar(name: str, data_root: str | os.PathLike[str] | None, download: bool, val_fraction: float,
                seed: int) -> Dataset:
    folder_name, train_files, test_files, meta_file, names_key, label_key, n_classes = _CIFAR[name]
    roots = [Path(data_root).expanduser()] if data_root is not None else default_data_roots()
    needed = train_files + test_files

    def find() -> Path | None:
        for root in roots:
            for cand in (root / folder_name, root):
                if all((cand / f).is_file() for f in needed):
                    return cand
        return None

    folder = find()
    if folder is None and download:
        _torchvision_download(name, roots[0] if data_root is not None else roots[-1])
        roots = [roots[0] if data_root is not None else roots[-1]]
        folder = find()
    if folder is None:
        looked = ", ".join(str(r / folder_name) for r in roots)
        raise DataError(
            f"dataset {name!r} not found: looked for {', '.join(needed)} in {looked}. Fix: pass --data-root DIR "
            f"(data_root=) where DIR/{folder_name}/ is torchvision's extracted archive, or download=True when online."
        )

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for fname in files:
            d = _unpickle(folder / fname)
            if "data" not in d or label_key not in d:
                raise DataError(f"CIFAR batch {folder / fname} lacks the 'data' or {label_key!r} entry "
                                f"(has {sorted(d)})")
            x = np.asarray(d["data"])
            y = np.asarray(d[label_key], dtype=np.int64)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
                raise DataError(f"CIFAR batch {folder / fname}: data {x.shape} {x.dtype} with {len(y)} labels; "
                                "expected (N, 3072) uint8 and N labels")
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise DataError(f"CIFAR batch {folder / fname}: labels outside 0..{n_classes - 1}")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    classes = None
    if (folder / meta_file).is_file():
        meta = _unpickle(folder / meta_file)
        names = meta.get(names_key)
        if isinstance(names, list) and len(names) == n_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    mean, std = _STATS[name]
    return _tensor_dataset(
        name, name, torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te),
        scale=1 / 255.0, mean=mean, std=std, augment="crop_flip", num_classes=n_classes, classes=classes,
        val_fraction=val_fraction, seed=seed, source=str(folder),
    )


# ---- npz arrays

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(spec: str, path: Path, val_fraction: float, seed: int) -> Dataset:
    if not path.is_file():
        raise DataError(f"dataset {spec!r}: no file at {path.resolve()}; give the path of an .npz file holding "
                        f"{', '.join(_NPZ_KEYS)} (np.savez(path, x_train=..., y_train=..., ...))")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"dataset {spec!r}: {path} lacks key(s) {missing} (has {z.files}); it needs "
                                f"{', '.join(_NPZ_KEYS)}")
            arrays = {k: z[k] for k in _NPZ_KEYS}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"dataset {spec!r}: cannot read {path} as .npz ({type(e).__name__}: {e}); object arrays "
                        "are refused, save plain numeric arrays") from e

    xs = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        key = f"x_{split}"
        if x.dtype.kind not in "uif":
            raise DataError(f"dataset {spec!r}: {key} has dtype {x.dtype}; use uint8 or float images")
        if x.dtype.kind in "ui" and x.dtype != np.uint8:
            if x.size and (x.min() < 0 or x.max() > 255):
                raise DataError(f"dataset {spec!r}: {key} is {x.dtype} with values outside 0..255; use uint8 "
                                "or float")
            x = x.astype(np.uint8)
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim != 4:
            raise DataError(f"dataset {spec!r}: {key} has shape {x.shape}; images must be (N, H, W) or "
                            "(N, C, H, W)")
        if x.shape[1] > 4 and x.shape[-1] in (1, 3, 4):
            raise DataError(f"dataset {spec!r}: {key} has shape {x.shape}, which looks channels-last (N, H, W, C); "
                            "transpose it to (N, C, H, W) with x.transpose(0, 3, 1, 2)")
        if x.shape[0] == 0:
            raise DataError(f"dataset {spec!r}: {key} is empty")
        if x.dtype.kind == "f":
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise DataError(f"dataset {spec!r}: {key} contains NaN or inf")
        ykey = f"y_{split}"
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"dataset {spec!r}: {ykey} has shape {y.shape}, expected ({x.shape[0]},) to match "
                            f"{key} {x.shape}")
        if y.dtype.kind not in "ui" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
            raise DataError(f"dataset {spec!r}: {ykey} has dtype {y.dtype}; labels must be integers 0..K-1")
        if y.min() < 0:
            raise DataError(f"dataset {spec!r}: {ykey} has a negative label {y.min()}; labels must be 0..K-1")
        xs[split] = (x, y.astype(np.int64))
    (x_tr, y_tr), (x_te, y_te) = xs["train"], xs["test"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"dataset {spec!r}: x_train images are {x_tr.shape[1:]} but x_test images are "
                        f"{x_te.shape[1:]}; both need the same (C, H, W)")
    if x_tr.dtype != x_te.dtype:
        raise DataError(f"dataset {spec!r}: x_train is {x_tr.dtype} but x_test is {x_te.dtype}; use one dtype")
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    scale = 1 / 255.0 if x_tr.dtype == np.uint8 else 1.0
    xt = torch.from_numpy(np.ascontiguousarray(x_tr))
    chan = xt.to(torch.float64).mul_(scale).transpose(0, 1).reshape(xt.shape[1], -1)
    mean = chan.mean(1).tolist()
    std = [s if s > 1e-8 else 1.0 for s in chan.std(1).tolist()]
    return _tensor_dataset(
        "npz", spec, xt, torch.from_numpy(y_tr), torch.from_numpy(np.ascontiguousarray(x_te)),
        torch.from_numpy(y_te), scale=scale, mean=mean, std=std, augment="none", num_classes=num_classes,
        classes=None, val_fraction=val_fraction, seed=seed, source=str(path.resolve()),
    )


# ---- image folders

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}


def _load_imagefolder(spec: str, path: Path, val_fraction: float, seed: int) -> Dataset:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if not path.is_dir():
        raise DataError(f"dataset {spec!r}: no folder at {path.resolve()}; expected PATH/<class>/<image> or "
                        "PATH/train/<class>/<image> (+ PATH/test/ or PATH/val/)")
    train_dir = path / "train" if (path / "train").is_dir() else path
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None) if train_dir != path else None
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    if train_dir == path:
        classes = [c for c in classes if c not in ("train", "test", "val")]
    if not classes:
        raise DataError(f"dataset {spec!r}: {train_dir} has no class sub-folders; lay images out as "
                        f"{train_dir}/<class>/<image>.png")
    class_to_idx = {c: i for i, c in enumerate(classes)}

    def samples_of(folder: Path) -> list[tuple[str, int]]:
        try:
            return make_dataset(str(folder), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        except Exception as e:
            raise DataError(f"dataset {spec!r}: cannot list images in {folder}: {e}") from e

    train_samples = samples_of(train_dir)
    if not train_samples:
        raise DataError(f"dataset {spec!r}: no images ({', '.join(IMG_EXTENSIONS)}) under {train_dir}/<class>/")
    if test_dir is not None:
        extra = sorted(e.name for e in os.scandir(test_dir) if e.is_dir() and e.name not in class_to_idx)
        if extra:
            raise DataError(f"dataset {spec!r}: {test_dir} has classes {extra} that {train_dir} lacks")
        test_samples = samples_of(test_dir)
        if not test_samples:
            raise DataError(f"dataset {spec!r}: {test_dir} holds no images")
    else:  # one folder: hold out a fixed, seed-independent 20% as test
        labels = np.array([s[1] for s in train_samples])
        keep, held = _split_indices(labels, 0.2, 0)
        test_samples = [train_samples[i] for i in held]
        train_samples = [train_samples[i] for i in keep]

    from PIL import Image

    first = train_samples[0][0]
    try:
        with Image.open(first) as img:
            mode = "L" if img.mode in _GRAY_MODES else "RGB"
            size = min(min(img.size), 224)
    except Exception as e:
        raise DataError(f"dataset {spec!r}: cannot read image {first}: {e}") from e
    channels = 1 if mode == "L" else 3
    mean, std = ((0.5,), (0.5,)) if mode == "L" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    labels = np.array([s[1] for s in train_samples])
    keep, held = _split_indices(labels, val_fraction, seed)
    kw: dict[str, Any] = {"mode": mode, "size": size, "mean": mean, "std": std, "augment": "crop_flip"}
    train = LoaderSplit([train_samples[i] for i in keep], name="train", **kw)
    val = LoaderSplit([train_samples[i] for i in held], name="val", **kw)
    test = LoaderSplit(test_samples, name="test", **kw)
    return Dataset("imagefolder", spec, train, val, test, (channels, size, size), len(classes), classes,
                   float(val_fraction), int(seed), str(path.resolve()))
