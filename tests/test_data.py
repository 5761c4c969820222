"""stsearch.data: every source on small real-format data, splits, batching and augmentation, error messages."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from stsearch import data
from stsearch.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    """Write ``arr`` (uint8) in the IDX format MNIST uses: magic 0x0000 08 ndim, big-endian dims, raw bytes."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_fashion(folder: Path, n_train: int = 60, n_test: int = 20, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    sfx = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, compress)


def make_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    """Tiny CIFAR-10 in torchvision's extracted layout: cifar-10-batches-py/{data_batch_1..5,test_batch,...}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int, offset: int) -> None:
        batch = {b"batch_label": name.encode(), b"labels": [(offset + i) % 10 for i in range(n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch, i * per_batch)
    dump("test_batch", n_test, 0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    return folder


def make_pngs(folder: Path, classes: dict[str, int], size: tuple[int, int] = (12, 12), mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / c / f"{i}.png")


def unique_images(n: int, shape: tuple[int, ...] = (2, 2)) -> np.ndarray:
    """n distinct uint8 images: image i spells i in base 256 across its pixels."""
    flat = np.zeros((n, int(np.prod(shape))), np.uint8)
    for j in range(flat.shape[1]):
        flat[:, j] = (np.arange(n) // 256**j) % 256
    return flat.reshape(n, *shape)


def raw_ids(split: data.Split) -> set[int]:
    x, _ = split.tensors(normalized=False)
    flat = x.reshape(len(x), -1).to(torch.int64)
    return set((flat * (256 ** torch.arange(flat.shape[1]))).sum(1).tolist())


# --------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_normalisation() -> None:
    ds = data.load("digits")
    assert ds.name == "digits" and ds.spec == "digits"
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == pytest.approx(1797 * 0.2, abs=10)
    assert len(ds.val) == pytest.approx(0.1 * (len(ds.train) + len(ds.val)), abs=10)
    x, y = ds.train.tensors()
    assert x.shape == (len(ds.train), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert set(y.tolist()) == set(range(10))
    assert ds.default_recipe().epochs > 0


def test_digits_splits_reproducible_and_seeded() -> None:
    a, b, c = data.load("digits", seed=0), data.load("digits", seed=0), data.load("digits", seed=1)
    assert torch.equal(a.val.tensors()[0], b.val.tensors()[0])
    assert not torch.equal(a.val.tensors()[0], c.val.tensors()[0])
    assert torch.equal(a.test.tensors()[0], c.test.tensors()[0])  # test never depends on the seed
    assert len(data.load("digits", val_fraction=0.3).val) > len(a.val)


def test_splits_disjoint_and_stratified(tmp_path: Path) -> None:
    n = 400
    x = unique_images(n)
    y = np.repeat(np.arange(4), n // 4)
    np.savez(tmp_path / "u.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    ds = data.load(f"npz:{tmp_path / 'u.npz'}", val_fraction=0.25, seed=3)
    tr, va = raw_ids(ds.train), raw_ids(ds.val)
    assert tr.isdisjoint(va) and len(tr | va) == n and len(va) == 100
    assert np.bincount(ds.val.tensors()[1].numpy()).tolist() == [25, 25, 25, 25]
    again = data.load(f"npz:{tmp_path / 'u.npz'}", val_fraction=0.25, seed=3)
    assert raw_ids(again.val) == va
    assert raw_ids(data.load(f"npz:{tmp_path / 'u.npz'}", val_fraction=0.25, seed=4).val) != va
    assert len(data.load(f"npz:{tmp_path / 'u.npz'}", val_fraction=0.0).val) == 0


def test_batches_cover_the_split_once() -> None:
    ds = data.load("digits")
    seen = []
    for x, y in ds.train.batches(100, shuffle=True, seed=5):
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and len(x) == len(y) <= 100
        seen.append(y)
    ys = torch.cat(seen)
    assert len(ys) == len(ds.train) and torch.equal(ys.sort().values, ds.train.tensors()[1].sort().values)
    order1 = torch.cat([y for _, y in ds.train.batches(100, shuffle=True, seed=5)])
    order2 = torch.cat([y for _, y in ds.train.batches(100, shuffle=True, seed=6)])
    assert torch.equal(order1, torch.cat(seen)) and not torch.equal(order1, order2)
    plain = torch.cat([x for x, _ in ds.train.batches(256)])
    assert torch.equal(plain, ds.train.tensors()[0])
    assert ds.train.num_batches(100) == len(list(ds.train.batches(100)))
    assert len(list(ds.train.batches(100, drop_last=True))) == len(ds.train) // 100
    with pytest.raises(ConfigError, match="batch_size"):
        next(ds.train.batches(0))


def test_split_pickles_without_device_copies() -> None:
    ds = data.load("digits")
    list(ds.val.batches(512, device="cpu"))
    clone = pickle.loads(pickle.dumps(ds.val))
    assert torch.equal(clone.tensors()[0], ds.val.tensors()[0])


def test_subset_is_stratified_and_small() -> None:
    ds = data.load("digits").subset(train=200, val=50, seed=0)
    assert len(ds.train) == 200 and len(ds.val) == 50 and len(ds.test) == 359
    counts = np.bincount(ds.train.tensors()[1].numpy(), minlength=10)
    assert counts.min() >= 18 and counts.max() <= 22
    assert ds.cache_key()["subset"] == {"train": 200, "val": 50, "test": None, "seed": 0}


# --------------------------------------------------------------------------------------------------- augmentation


def _cifar_like_split(n: int = 6) -> data.TensorSplit:
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    return data.TensorSplit(x, torch.arange(n) % 10, scale=1 / 255, mean=(0.0,) * 3, std=(1.0,) * 3,
                            augment="crop_flip", pad=2)


def test_crop_flip_matches_a_per_image_reference() -> None:
    split = _cifar_like_split()
    x = split.x.float()
    off = torch.tensor([[0, 0], [4, 4], [2, 2], [1, 3], [3, 0], [0, 4]])
    flip = torch.tensor([False, False, True, True, False, True])
    out = split._crop_flip(x, off, flip, torch.arange(8), torch.arange(8))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        ref = padded[i, :, off[i, 0]:off[i, 0] + 8, off[i, 1]:off[i, 1] + 8]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert torch.equal(out[2], x[2].flip(-1))  # centred crop + flip


def test_augmented_batches_are_seeded_and_differ_from_plain() -> None:
    split = _cifar_like_split(64)
    a = torch.cat([x for x, _ in split.batches(16, shuffle=True, seed=1, augment=True)])
    b = torch.cat([x for x, _ in split.batches(16, shuffle=True, seed=1, augment=True)])
    c = torch.cat([x for x, _ in split.batches(16, shuffle=True, seed=1, augment=False)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == c.shape == (64, 3, 8, 8)
    assert (a == 0).float().mean() > (c == 0).float().mean()  # zero padding shows up


# --------------------------------------------------------------------------------------------------- (fashion-)mnist


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    make_fashion(tmp_path / "FashionMNIST" / "raw")
    ds = data.load("fashion-mnist", data_root=tmp_path, val_fraction=0.2)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train) == 48 and len(ds.val) == 12 and len(ds.test) == 20
    assert ds.classes is not None and ds.classes[0] == "T-shirt/top"
    x, y = next(ds.train.batches(8))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    raw = data.read_idx(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(ds.test.tensors(normalized=False)[0][:, 0], torch.from_numpy(raw))


def test_fashion_mnist_debian_folder_and_plain_idx(tmp_path: Path) -> None:
    make_fashion(tmp_path / "debian")  # the folder layout of /usr/share/datasets/fashion-mnist
    assert len(data.load("fashion-mnist", data_root=tmp_path / "debian").test) == 20
    make_fashion(tmp_path / "mnist_plain" / "MNIST" / "raw", compress=False)
    assert len(data.load("mnist", data_root=tmp_path / "mnist_plain").test) == 20


@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist() -> None:
    ds = data.load("fashion-mnist", data_root=data.DEBIAN_FASHION_MNIST)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    x, _ = ds.train.tensors()
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_mnist_missing_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        data.load("mnist", data_root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg
    assert "--data-root" in msg and "download=True" in msg
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", data_root=tmp_path)


def test_corrupt_idx_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "FashionMNIST" / "raw"
    make_fashion(folder)
    bad = folder / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated gzip
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.load("fashion-mnist", data_root=tmp_path)
    write_idx(bad, np.zeros((5, 28, 28)))  # 5 images for 60 labels
    with pytest.raises(DataError, match="do not match"):
        data.load("fashion-mnist", data_root=tmp_path)
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04garbage"))
    with pytest.raises(DataError, match="not an IDX file"):
        data.load("fashion-mnist", data_root=tmp_path)


# --------------------------------------------------------------------------------------------------- cifar


def test_cifar10_pickled_batches(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)
    ds = data.load("cifar10", data_root=tmp_path, val_fraction=0.2)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) == 100 and len(ds.val) == 20 and len(ds.test) == 20
    assert ds.classes is not None and ds.classes[:2] == ["airplane", "automobile"]
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    want = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(ds.test.tensors(normalized=False)[0], want)
    assert ds.test.tensors(normalized=False)[1].tolist() == batch[b"labels"]
    x, y = next(ds.train.batches(16, shuffle=True, seed=0, augment=True))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    # the folder itself may be passed too
    assert len(data.load("cifar10", data_root=folder).test) == 20


def test_cifar_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*--data-root"):
        data.load("cifar10", data_root=tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        data.load("cifar100", data_root=tmp_path)
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        data.load("cifar10", data_root=tmp_path)


def test_cifar_refuses_hostile_pickle(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        data.load("cifar10", data_root=tmp_path)


def test_cifar100_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 50)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [0] * n}, f, protocol=2)
    ds = data.load("cifar100", data_root=tmp_path)
    assert ds.num_classes == 100 and len(ds.test) == 50 and len(ds.train) + len(ds.val) == 200


# --------------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    make_pngs(tmp_path / "train", {"cat": 10, "dog": 10})
    make_pngs(tmp_path / "test", {"cat": 3, "dog": 3})
    ds = data.load(f"imagefolder:{tmp_path}", val_fraction=0.2)
    assert ds.name == "imagefolder" and ds.classes == ["cat", "dog"]
    assert ds.input_shape == (3, 12, 12) and ds.num_classes == 2
    assert len(ds.train) == 16 and len(ds.val) == 4 and len(ds.test) == 6
    assert not ds.train.in_memory
    xs, ys = zip(*ds.train.batches(5, shuffle=True, seed=0, augment=True), strict=True)
    assert [len(x) for x in xs] == [5, 5, 5, 1] and xs[0].shape[1:] == (3, 12, 12)
    assert sorted(torch.cat(ys).tolist()) == [0] * 8 + [1] * 8
    with pytest.raises(DataError, match="tensors"):
        ds.train.tensors()


def test_imagefolder_single_folder_grayscale(tmp_path: Path) -> None:
    make_pngs(tmp_path, {"a": 10, "b": 10, "c": 10}, size=(10, 14), mode="L")
    ds = data.load(f"imagefolder:{tmp_path}")
    assert ds.input_shape == (1, 10, 10) and ds.num_classes == 3
    assert len(ds.test) == 6 and len(ds.train) + len(ds.val) == 24
    x, _ = next(ds.test.batches(64))
    assert x.shape == (6, 1, 10, 10)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no folder"):
        data.load(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        data.load(f"imagefolder:{tmp_path / 'empty'}")
    make_pngs(tmp_path / "x" / "train", {"cat": 2})
    make_pngs(tmp_path / "x" / "test", {"cow": 2})
    with pytest.raises(DataError, match="cow"):
        data.load(f"imagefolder:{tmp_path / 'x'}")


# --------------------------------------------------------------------------------------------------- npz


def test_npz_uint8_hw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (50, 9, 9), dtype=np.uint8), y_train=np.arange(50) % 5,
             x_test=rng.integers(0, 256, (10, 9, 9), dtype=np.uint8), y_test=np.arange(10) % 5)
    ds = data.load(f"npz:{path}")
    assert ds.name == "npz" and ds.spec == f"npz:{path}"
    assert ds.input_shape == (1, 9, 9) and ds.num_classes == 5
    assert len(ds.train) + len(ds.val) == 50 and len(ds.test) == 10
    x, _ = ds.train.tensors()
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    assert len(data.load("npz:d.npz", data_root=tmp_path).test) == 10  # relative to data_root


def test_npz_float_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=rng.normal(3, 2, (40, 3, 6, 6)).astype(np.float64), y_train=np.arange(40) % 4,
             x_test=rng.normal(3, 2, (8, 3, 6, 6)), y_test=np.arange(8) % 4)
    ds = data.load(f"npz:{path}")
    assert ds.input_shape == (3, 6, 6) and ds.num_classes == 4
    x, _ = ds.test.tensors()
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.3


@pytest.mark.parametrize(("change", "match"), [
    ({"x_train": None}, "x_train"),
    ({"x_train": np.zeros((10, 5), np.uint8)}, r"x_train has shape \(10, 5\)"),
    ({"x_train": np.zeros((10, 6, 6, 3), np.uint8)}, "channels-last"),
    ({"y_train": np.zeros(9, np.int64)}, r"y_train has shape \(9,\)"),
    ({"y_train": np.full(10, 0.5)}, "y_train has dtype float64"),
    ({"y_train": -np.ones(10, np.int64)}, "negative label"),
    ({"x_test": np.zeros((4, 7, 7), np.uint8)}, "same"),
    ({"x_train": np.full((10, 6, 6), np.nan)}, "NaN"),
])
def test_npz_validation_names_key(tmp_path: Path, change: dict, match: str) -> None:
    arrays = {"x_train": np.zeros((10, 6, 6), np.uint8), "y_train": np.zeros(10, np.int64),
              "x_test": np.zeros((4, 6, 6), np.uint8), "y_test": np.zeros(4, np.int64)}
    for k, v in change.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        data.load(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no file at"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        data.load(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=[0], y_test=[0])
    with pytest.raises(DataError, match="object arrays"):
        data.load(f"npz:{tmp_path / 'obj.npz'}")


# --------------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(("spec", "kwargs", "match"), [
    ("imagenet", {}, "unknown spec 'imagenet'"),
    ("", {}, "non-empty"),
    ("npz:", {}, "needs a path"),
    ("digits", {"val_fraction": 1.0}, "val_fraction"),
    ("digits", {"val_fraction": -0.1}, "val_fraction"),
    ("digits", {"seed": "x"}, "seed"),
])
def test_bad_specs_raise_config_error(spec: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        data.load(spec, **kwargs)


def test_aliases_and_available() -> None:
    assert "fashion-mnist" in data.available() and "npz:PATH" in data.available()
    assert data.load("DIGITS").name == "digits"
