"""stsearch.training: recipes, fit/evaluate on real digits, NaN and interrupt handling, cached baselines."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stsearch import data, models, training
from stsearch.errors import ConfigError, RunError
from stsearch.training import Recipe

TIMING = {"epoch_time", "train_time", "images_per_s"}


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits")


@pytest.fixture(scope="module")
def tiny(digits: data.Dataset) -> data.Dataset:
    return digits.subset(train=256, val=64, seed=0)


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


# --------------------------------------------------------------------------------------------------- recipe


def test_recipe_defaults_and_round_trip() -> None:
    r = Recipe()
    assert (r.optimizer, r.lr, r.momentum, r.nesterov, r.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)
    assert (r.schedule, r.epochs, r.batch_size, r.label_smoothing) == ("cosine", 10, 128, 0.0)
    assert (r.warmup_epochs, r.milestones, r.gamma, r.grad_clip, r.amp, r.channels_last) == (
        0, (), 0.1, None, True, "auto")
    d = Recipe(optimizer="adamw", lr=1e-3, milestones=(3, 6), schedule="step", grad_clip=1).to_dict()
    assert json.loads(json.dumps(d)) == d and d["milestones"] == [3, 6]
    assert Recipe.from_dict(d) == Recipe(optimizer="adamw", lr=1e-3, milestones=(3, 6), schedule="step",
                                         grad_clip=1.0)
    assert Recipe.from_dict({"lr": 1}).lr == 1.0 and Recipe.from_dict(None) == Recipe()
    assert Recipe.from_dict({"lr": "1e-3", "weight_decay": "5e-4"}).lr == 1e-3  # YAML 1.1 strings
    r2 = r.replace(epochs=3)
    assert r2.epochs == 3 and r.epochs == 10


@pytest.mark.parametrize(("d", "field"), [
    ({"optimiser": "sgd"}, "recipe.optimiser"),
    ({"optimizer": "rmsprop"}, "recipe.optimizer"),
    ({"lr": -0.1}, "recipe.lr"),
    ({"lr": "fast"}, "recipe.lr"),
    ({"lr": [0.1]}, "recipe.lr"),
    ({"lr": float("inf")}, "recipe.lr"),
    ({"momentum": 1.0}, "recipe.momentum"),
    ({"weight_decay": -1}, "recipe.weight_decay"),
    ({"schedule": "linear"}, "recipe.schedule"),
    ({"epochs": 2.5}, "recipe.epochs"),
    ({"epochs": -1}, "recipe.epochs"),
    ({"batch_size": 0}, "recipe.batch_size"),
    ({"batch_size": True}, "recipe.batch_size"),
    ({"label_smoothing": 1.0}, "recipe.label_smoothing"),
    ({"warmup_epochs": 20, "epochs": 10}, "recipe.warmup_epochs"),
    ({"milestones": [5, 3]}, "recipe.milestones"),
    ({"milestones": "5"}, "recipe.milestones"),
    ({"gamma": 0}, "recipe.gamma"),
    ({"grad_clip": 0}, "recipe.grad_clip"),
    ({"amp": "yes"}, "recipe.amp"),
    ({"channels_last": "always"}, "recipe.channels_last"),
])
def test_bad_recipe_names_the_field(d: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(d)
    assert field in str(e.value)
    bad_value = d.get(field.split(".")[1])
    if bad_value is not None and field != "recipe.warmup_epochs":
        assert repr(bad_value) in str(e.value)
    with pytest.raises(ConfigError, match="recipe.nope"):
        Recipe().replace(nope=1)


def test_default_recipes() -> None:
    c = training.default_recipe("cifar10")
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size, c.schedule) == (
        "sgd", 0.1, 0.9, 5e-4, 128, "cosine")
    assert c.epochs >= 150
    for name in ("digits", "mnist", "fashion-mnist", "cifar100", "npz:/x.npz", "imagefolder:/d"):
        assert isinstance(training.default_recipe(name), Recipe)
    with pytest.raises(ConfigError, match="imagenet"):
        training.default_recipe("imagenet")


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant", "onecycle"])
def test_schedules_shape(schedule: str) -> None:
    r = Recipe(schedule=schedule, epochs=10, warmup_epochs=1 if schedule != "onecycle" else 0)
    f = [training._lr_factor(r, s, 10) for s in range(100)]
    assert all(0 < v <= 1 for v in f[:-1]) and f[-1] >= 0
    if schedule == "cosine":
        assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[-1] < 0.01
        assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    elif schedule == "step":
        assert f[20] == 1.0 and f[55] == pytest.approx(0.1) and f[80] == pytest.approx(0.01)
    elif schedule == "constant":
        assert f[10:] == [1.0] * 90
    else:
        assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0, abs=1e-3) and f[-1] < 1e-3
        assert f.index(max(f)) == pytest.approx(30, abs=1)


# --------------------------------------------------------------------------------------------------- fit


def test_fit_digits_reaches_95_percent_in_seconds(digits: data.Dataset) -> None:
    torch.manual_seed(0)
    net = models.create("digits_cnn")
    t0 = time.perf_counter()
    res = training.fit(net, digits, device="cpu", seed=0)
    took = time.perf_counter() - t0
    assert res.status == "ok" and res.reason == "" and res.epochs == digits.default_recipe().epochs
    test = training.evaluate(net, digits.test, device="cpu")
    assert test["accuracy"] >= 0.95, test
    assert took < 60 and res.wall_time <= took
    h = res.history
    assert [e["epoch"] for e in h] == list(range(1, res.epochs + 1))
    assert set(h[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_accuracy", "lr", "epoch_time",
                         "train_time", "images_per_s"}
    assert h[-1]["train_loss"] < h[0]["train_loss"] and h[-1]["val_accuracy"] >= 0.93
    assert h[-1]["lr"] < h[0]["lr"] and all(e["images_per_s"] > 0 for e in h)
    assert res.val_accuracy == h[-1]["val_accuracy"] and net.training


def test_fit_is_reproducible_on_cpu(tiny: data.Dataset) -> None:
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)

    def run(seed: int) -> list[dict]:
        torch.manual_seed(0)
        return strip_timing(training.fit(models.create("digits_cnn"), tiny, recipe, device="cpu",
                                         seed=seed).history)

    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a != c


def test_nan_learning_rate_ends_with_nan_status(tiny: data.Dataset) -> None:
    net = models.create("digits_cnn")
    res = training.fit(net, tiny, Recipe(lr=float("nan"), epochs=3, batch_size=32), device="cpu")
    assert res.status == "nan" and not res.ok
    assert "nan" in res.reason and "epoch 1" in res.reason and "recipe.lr" in res.reason
    assert res.history == [] and res.epochs == 0


def test_divergence_with_huge_lr_is_caught(tiny: data.Dataset) -> None:
    net = models.create("digits_cnn")
    res = training.fit(net, tiny, Recipe(lr=1e30, momentum=0.0, nesterov=False, epochs=2, batch_size=32),
                       device="cpu")
    assert res.status == "nan"


def test_epoch_callback_and_max_epochs(tiny: data.Dataset) -> None:
    calls: list[tuple[int, dict]] = []
    res = training.fit(models.create("digits_cnn"), tiny, Recipe(epochs=5, batch_size=64), device="cpu",
                       epoch_callback=lambda e, m: calls.append((e, m)), max_epochs=2)
    assert res.epochs == 2 and [c[0] for c in calls] == [1, 2]
    assert calls[1][1]["val_accuracy"] == res.history[1]["val_accuracy"]
    # the schedule still spans recipe.epochs: lr after 2 of 5 epochs is well above 0
    assert res.history[-1]["lr"] > 0.3 * 0.05

    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        training.fit(models.create("digits_cnn"), tiny, Recipe(epochs=5, batch_size=64), device="cpu",
                     epoch_callback=prune)


def test_keyboard_interrupt_gives_interrupted_status(tiny: data.Dataset) -> None:
    class Stop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = models.create("digits_cnn")
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 12:
                raise KeyboardInterrupt
            return self.inner(x)

    res = training.fit(Stop(), tiny, Recipe(epochs=3, batch_size=32), device="cpu")
    assert res.status == "interrupted" and res.epochs == 1 and "epoch 2" in res.reason


@pytest.mark.parametrize("overrides", [
    {"optimizer": "adam", "lr": 1e-3, "schedule": "onecycle"},
    {"optimizer": "adamw", "lr": 1e-3, "schedule": "step", "milestones": (1,)},
    {"optimizer": "sgd", "momentum": 0.0, "schedule": "constant", "label_smoothing": 0.1, "grad_clip": 1.0,
     "channels_last": True, "warmup_epochs": 1},
])
def test_fit_variants_train(tiny: data.Dataset, overrides: dict) -> None:
    torch.manual_seed(0)
    res = training.fit(models.create("digits_cnn"), tiny, Recipe(epochs=2, batch_size=32, **overrides),
                       device="cpu", progress=True)
    assert res.status == "ok" and res.history[-1]["val_accuracy"] > 0.3


def test_channels_last_auto_and_model_handed_back_contiguous(tiny: data.Dataset) -> None:
    cpu = torch.device("cpu")
    auto = Recipe()
    assert training._use_channels_last(models.create("digits_cnn"), auto, cpu)
    assert training._use_channels_last(models.create("torchvision:mobilenet_v3_small"), auto, cpu)
    assert not training._use_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), auto, cpu)

    class Custom(nn.Module):  # unknown code may .view() NHWC activations: not converted on the CPU
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

    assert not training._use_channels_last(Custom(), auto, cpu)
    assert training._use_channels_last(Custom(), auto.replace(channels_last=True), cpu)
    assert not training._use_channels_last(models.create("digits_cnn"), auto.replace(channels_last=False), cpu)
    net = models.create("digits_cnn")
    training.fit(net, tiny, Recipe(epochs=1, batch_size=64), device="cpu")
    assert all(p.is_contiguous() for p in net.parameters())


def test_fit_accepts_dict_recipe_and_rejects_bad(tiny: data.Dataset) -> None:
    res = training.fit(models.create("digits_cnn"), tiny, {"epochs": 1, "batch_size": 64}, device="cpu")
    assert res.epochs == 1
    with pytest.raises(ConfigError, match="recipe.epoch"):
        training.fit(models.create("digits_cnn"), tiny, {"epoch": 1}, device="cpu")
    with pytest.raises(ConfigError, match="device"):
        training.fit(models.create("digits_cnn"), tiny, {"epochs": 1}, device="tpu")


def test_resolve_device() -> None:
    assert training.resolve_device("cpu") == torch.device("cpu")
    assert training.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        assert training.resolve_device("auto") == torch.device("cpu") or torch.backends.mps.is_available()
        with pytest.raises(ConfigError, match="CUDA is not available"):
            training.resolve_device("cuda")
        assert training._amp_dtype(torch.device("cpu"), True) is None


def test_evaluate(digits: data.Dataset) -> None:
    net = models.create("digits_cnn").train()
    out = training.evaluate(net, digits.val, device="cpu", batch_size=50)
    assert set(out) == {"accuracy", "loss"}
    assert 0 <= out["accuracy"] <= 1 and out["loss"] > 0 and net.training
    assert math.isclose(out["loss"], training.evaluate(net, digits.val, device="cpu")["loss"], rel_tol=1e-5)
    empty = digits.subset(val=0)
    assert math.isnan(training.evaluate(net, empty.val, device="cpu")["accuracy"])


@pytest.mark.slow
def test_npz_default_recipe_lenet5_on_10k_digit_set(tmp_path: Path) -> None:
    """LeNet-5 with the npz default recipe reaches >= 95% on a 10k-image 28x28 digit set (digits upscaled and
    jittered; the test images come from held-out originals)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(d.target))
    tr, te = idx[:1400], idx[1400:]
    up = torch.nn.functional.interpolate(torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None],
                                         size=(20, 20), mode="bilinear", align_corners=False)

    def place(i: int, dy: int, dx: int) -> np.ndarray:
        img = np.zeros((28, 28), np.uint8)
        img[4 + dy:24 + dy, 4 + dx:24 + dx] = (up[i, 0].clamp(0, 1) * 255).numpy().astype(np.uint8)
        return img

    pick = rng.choice(tr, 10000)
    xs = np.stack([place(i, *rng.integers(-3, 4, 2)) for i in pick])
    ys = d.target[pick]
    xt = np.stack([place(i, 0, 0) for i in te])
    np.savez(tmp_path / "d10k.npz", x_train=xs, y_train=ys, x_test=xt, y_test=d.target[te])
    ds = data.load(f"npz:{tmp_path / 'd10k.npz'}")
    torch.manual_seed(0)
    net = models.create("lenet5")
    res = training.fit(net, ds, device="cpu")
    assert res.status == "ok"
    assert training.evaluate(net, ds.test, device="cpu")["accuracy"] >= 0.95


# --------------------------------------------------------------------------------------------------- baselines


def test_baseline_is_cached(tiny: data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = Recipe(epochs=1, batch_size=64)
    m1, info1 = training.train_baseline("digits_cnn", {}, tiny, recipe, cache_dir=tmp_path, device="cpu")
    assert info1["cached"] is False and Path(info1["path"]).is_file()
    assert info1["model_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert 0 <= info1["val_accuracy"] <= 1 and 0 <= info1["test_accuracy"] <= 1
    stored = json.loads(Path(info1["path"]).with_suffix(".json").read_text())
    assert stored["key"] == info1["key"] and len(stored["history"]) == 1

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("fit must not run on a cache hit")

    monkeypatch.setattr(training, "fit", boom)
    m2, info2 = training.train_baseline("digits_cnn", None, tiny, recipe, cache_dir=tmp_path, device="cpu")
    assert info2["cached"] is True and info2["key"] == info1["key"]
    assert info2["val_accuracy"] == info1["val_accuracy"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # a different recipe or seed is a different key
    assert training.baseline_key("digits_cnn", info1["model_kwargs"], tiny, recipe.replace(lr=0.1), 0) != \
        info1["key"]
    assert training.baseline_key("digits_cnn", info1["model_kwargs"], tiny, recipe, 1) != info1["key"]


def test_corrupt_cache_is_retrained(tiny: data.Dataset, tmp_path: Path) -> None:
    recipe = Recipe(epochs=1, batch_size=64)
    _, info = training.train_baseline("digits_cnn", {}, tiny, recipe, cache_dir=tmp_path, device="cpu")
    Path(info["path"]).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unusable"):
        _, info2 = training.train_baseline("digits_cnn", {}, tiny, recipe, cache_dir=tmp_path, device="cpu")
    assert info2["cached"] is False
    assert training.train_baseline("digits_cnn", {}, tiny, recipe, cache_dir=tmp_path, device="cpu")[1]["cached"]


def test_diverging_baseline_raises_and_caches_nothing(tiny: data.Dataset, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nan"):
        training.train_baseline("digits_cnn", {}, tiny, Recipe(lr=float("nan"), epochs=1), cache_dir=tmp_path,
                                device="cpu")
    assert not list(tmp_path.glob("*.pt"))


def test_load_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = models.create("lenet5")
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        dst = training.load_checkpoint(tmp_path / name, models.create("lenet5"))
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(),
                                                     strict=True))
    with pytest.raises(RunError, match="does not exist"):
        training.load_checkpoint(tmp_path / "nope.pt", models.create("lenet5"))
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(RunError, match=r"junk\.pt.*corrupt"):
        training.load_checkpoint(tmp_path / "junk.pt", models.create("lenet5"))
    with pytest.raises(RunError, match=r"plain\.pt.*(missing|shape)"):
        training.load_checkpoint(tmp_path / "plain.pt", models.create("digits_cnn"))
    with pytest.raises(RunError, match=r"plain\.pt.*shapes.*fc3.weight"):
        training.load_checkpoint(tmp_path / "plain.pt", models.create("lenet5", num_classes=7))
    torch.save(src, tmp_path / "module.pt")  # a pickled module, refused by weights_only
    with pytest.raises(RunError, match=r"module\.pt.*state_dict"):
        training.load_checkpoint(tmp_path / "module.pt", models.create("lenet5"))
