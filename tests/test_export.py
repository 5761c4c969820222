"""Export and load: selection rules, files, identical outputs, the ONNX check, and every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

import stsearch
from stsearch import models
from stsearch.errors import ConfigError, RunError
from stsearch.export import ONNX_ATOL, ExportError, export, export_onnx, load, read_plan, select_trial
from stsearch.pareto import trials_frame
from stsearch.surgery import compress
from tests._runs import copy_run, tiny_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> stsearch.export.ExportResult:
    """A full export (ONNX and latency included) by the max-drop rule."""
    return export(run, tmp_path_factory.mktemp("export") / "best", max_drop=100.0)


def _done(run: Path) -> pd.DataFrame:
    df = trials_frame(run)
    return df[df["status"] == "complete"]


def _baseline_acc(run: Path) -> float:
    return json.loads((run / "baseline.json").read_text())["accuracy"]


def _x(batch: int) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))


# ------------------------------------------------------------------------------------------------ selection
def test_selection_rules_agree_with_brute_force(run: Path) -> None:
    done = _done(run)
    assert len(done) >= 2
    base = _baseline_acc(run)
    drops = sorted(100 * (base - done["accuracy"]))
    for pp in [drops[0] + 1e-6, drops[-1] + 1e-6, (drops[0] + drops[-1]) / 2]:
        ok = done[100 * (base - done["accuracy"]) <= pp + 1e-9]
        want = ok.sort_values(["compression_ratio", "accuracy"], ascending=False).iloc[0]
        n, rule = select_trial(run, max_drop=pp)
        assert done.set_index("trial").loc[n, "compression_ratio"] == want["compression_ratio"], rule
        assert "points of the baseline" in rule
    for x in sorted(done["compression_ratio"]):
        ok = done[done["compression_ratio"] >= x]
        n, rule = select_trial(run, min_cr=float(x))
        assert done.set_index("trial").loc[n, "accuracy"] == ok["accuracy"].max(), rule
    first = int(done["trial"].iloc[0])
    assert select_trial(run, trial=first) == (first, f"trial {first}")
    # no rule: the space's allowed drop (constraints.max_accuracy_drop = 0.5 -> 50 points)
    assert select_trial(run) == (select_trial(run, max_drop=50.0)[0],
                                 "highest CR within 50 points of the baseline (the space's allowed drop)")


def test_export_by_trial_and_by_min_cr(run: Path, tmp_path: Path) -> None:
    done = _done(run)
    n = int(done["trial"].iloc[-1])
    res = export(run, tmp_path / "by_trial", trial=n, onnx=False, latency=False)
    assert res.trial == n and json.loads((tmp_path / "by_trial" / "metrics.json").read_text())["trial"] == n
    assert not (tmp_path / "by_trial" / "model.onnx").exists() and res.metrics["onnx"] is None
    assert not list((tmp_path / "by_trial").glob(".*"))  # no staged or temporary file left behind
    top = float(done["compression_ratio"].max())
    res = export(run, tmp_path / "by_cr", min_cr=top, onnx=False, latency=False)
    assert res.metrics["compression_ratio"] == pytest.approx(top)
    assert res.rule == f"best accuracy at CR >= {top:g}"


# ------------------------------------------------------------------------------------------------ the files
def test_export_writes_every_file(exported: stsearch.export.ExportResult, run: Path) -> None:
    out = exported.out
    for name in ("model.pt", "plan.json", "metrics.json", "model.onnx", "README.md"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    state = torch.load(out / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    plan, trial_plan = read_plan(out), read_plan(run / "trials" / str(exported.trial))
    assert set(plan) == set(trial_plan) and plan["plan"] == trial_plan["plan"] and plan["model"] == trial_plan["model"]
    assert plan["schema"] == 1 and plan["stsearch_version"] == stsearch.__version__
    m = json.loads((out / "metrics.json").read_text())
    trial_m = json.loads((run / "trials" / str(exported.trial) / "metrics.json").read_text())
    assert m["val_accuracy"] == m["accuracy"] == pytest.approx(trial_m["accuracy"], abs=1e-12)  # same weights
    assert 0 <= m["test_accuracy"] <= 1 and m["baseline_test_accuracy"] is not None
    assert m["compression_ratio"] == pytest.approx(trial_m["compression_ratio"])
    assert m["params"] == trial_m["params"] and m["flops"] > 0
    assert m["drop_points"] == pytest.approx(100 * (m["baseline_accuracy"] - m["val_accuracy"]))
    assert set(m["latency_ms"]) == {"torch", "onnxruntime", "dense_torch"}
    assert all(v > 0 for v in m["latency_ms"].values())
    assert all(d <= ONNX_ATOL for d in m["onnx"]["max_abs_diff"].values())
    assert set(m["onnx"]["max_abs_diff"]) == {"1", "4"} and m["input_shape"] == [1, 8, 8]
    card = (out / "README.md").read_text()
    assert f"trial {exported.trial}" in card and f"{m['compression_ratio']:.2f}×" in card
    assert "stsearch.load" in card and "test accuracy" in card


def test_load_gives_outputs_identical_to_the_in_memory_model(exported: stsearch.export.ExportResult,
                                                               run: Path) -> None:
    x = _x(5)
    with torch.inference_mode():
        want = exported.model(x)
        assert torch.equal(load(exported.out)(x), want)
        assert torch.equal(load(exported.out / "plan.json")(x), want)
        assert torch.equal(load(run / "trials" / str(exported.trial))(x), want)
    # an independent rebuild, other random factors, with the trained weights loaded by hand
    rec = json.loads((exported.out / "plan.json").read_text())
    ref = compress(models.create(rec["model"]["name"], **rec["model"]["kwargs"]), rec["plan"], init="random",
                   seed=123)
    ref.load_state_dict(torch.load(exported.out / "model.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(ref.eval()(x), want)
    m = load(exported.out)
    assert not m.training and next(m.parameters()).device.type == "cpu"


def test_load_leaves_the_global_rng_alone(exported: stsearch.export.ExportResult) -> None:
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    load(exported.out)
    assert torch.equal(torch.rand(3), a)


def test_onnx_matches_pytorch_at_any_batch(exported: stsearch.export.ExportResult) -> None:
    sess = ort.InferenceSession(str(exported.out / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "input" and inp.shape == ["batch", 1, 8, 8]  # a dynamic batch axis
    assert sess.get_outputs()[0].shape == ["batch", 10]
    model = load(exported.out)
    for b in (1, 4, 13):
        x = _x(b)
        with torch.inference_mode():
            want = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == want.shape and np.abs(got - want).max() <= ONNX_ATOL


def test_onnx_mismatch_fails_loudly_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ort.InferenceSession

    class Off(real):  # type: ignore[misc, valid-type]
        def run(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            return [o + 1e-3 for o in super().run(*a, **k)]

    monkeypatch.setattr(ort, "InferenceSession", Off)
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # exports in a second
    with pytest.raises(ExportError, match=r"ONNX check failed .*model\.onnx.* at batch 1 exceeds 0\.0001"):
        export_onnx(tiny, tmp_path / "model.onnx", (1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_one_clear_error(exported: stsearch.export.ExportResult, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Failed to export.\n## Exception summary\n\n<class 'TypeError'>: unsupported op\n\nmore")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match=r"torch.onnx.export failed for .*model\.onnx: RuntimeError: <class "
                                          r"'TypeError'>: unsupported op \(use --no-onnx"):
        export_onnx(exported.model, tmp_path / "model.onnx", (1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_finetune_trains_longer_and_reports(run: Path, tmp_path: Path) -> None:
    n = int(_done(run)["trial"].iloc[0])
    res = export(run, tmp_path / "ft", trial=n, finetune_epochs=1, onnx=False, latency=False)
    ft = res.metrics["finetune"]
    assert ft["epochs"] == 1 and ft["recipe"]["epochs"] == 1 and ft["recipe"]["lr"] == 0.01  # the space's recipe
    assert math.isfinite(ft["val_accuracy_before"]) and math.isfinite(ft["test_accuracy_before"])
    assert (tmp_path / "ft" / "curve.csv").read_text().startswith("epoch")
    assert "Fine-tuned 1 more epochs" in (tmp_path / "ft" / "README.md").read_text()
    with torch.inference_mode():
        assert torch.equal(load(tmp_path / "ft")(_x(2)), res.model(_x(2)))


def test_reused_trial_exports_its_sources_weights(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / "run")
    src = int(_done(run)["trial"].iloc[0])
    new = max(int(p.name) for p in (r / "trials").iterdir()) + 1
    d = r / "trials" / str(new)
    d.mkdir()
    (d / "plan.json").write_bytes((r / "trials" / str(src) / "plan.json").read_bytes())
    m = json.loads((r / "trials" / str(src) / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps(dict(m, trial=new, reused_from=src)))  # no model.pt of its own
    res = export(r, tmp_path / "out", trial=new, onnx=False, latency=False)
    assert res.metrics["reused_from"] == src and res.trial == new
    want = torch.load(r / "trials" / str(src) / "model.pt", weights_only=True)
    got = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert "reused this result from trial" in (tmp_path / "out" / "README.md").read_text()
    with torch.inference_mode():  # load() follows reused_from too
        assert torch.equal(load(d)(_x(2)), load(r / "trials" / str(src))(_x(2)))


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_and_empty_runs(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"run 'nope' not found: no directory nope or .*nope"):
        export("nope", tmp_path / "o", runs_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty.* is an empty run"):
        export(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "started" / "trials").mkdir(parents=True)
    with pytest.raises(RunError, match=r"no complete trial in .*started.*no trial recorded"):
        export(tmp_path / "started", tmp_path / "o", max_drop=5)


def test_trial_that_does_not_exist(run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match=rf"trial 99 does not exist in {run} \(trials 0–3\)"):
        export(run, tmp_path / "o", trial=99)
    with pytest.raises(ConfigError, match=r"--trial: must be a trial number >= 0 \(got -1\)"):
        select_trial(run, trial=-1)


@pytest.mark.parametrize("state", ["pruned", "failed"])
def test_pruned_or_failed_trial(run: Path, tmp_path: Path, state: str) -> None:
    r = copy_run(run, tmp_path / "run")
    d = r / "trials" / "1"
    m = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps(dict(m, status=state, reason="planted reason", accuracy=None)))
    (d / "model.pt").unlink()
    with pytest.raises(RunError, match=rf"trial 1 in .* was {state} \(planted reason\); only complete trials"):
        export(r, tmp_path / "o", trial=1)
    with pytest.raises(RunError, match=rf"model\.pt not found: the trial was {state} \(planted reason\)"):
        load(d)
    assert not (tmp_path / "o").exists()


def test_no_trial_within_max_drop(run: Path, tmp_path: Path) -> None:
    done = _done(run)
    closest = 100 * (_baseline_acc(run) - done["accuracy"].max())
    assert closest > 0
    with pytest.raises(RunError, match=rf"no trial within {closest / 2:g} points of the baseline accuracy .* "
                                       rf"the closest is trial \d+ at {closest:.2f} points"):
        export(run, tmp_path / "o", max_drop=closest / 2)
    with pytest.raises(RunError, match=r"no trial reaches compression ratio 1e\+06"):
        export(run, tmp_path / "o", min_cr=1e6)
    with pytest.raises(ConfigError, match=r"--max-drop: must be a non-negative number of points \(got -1\)"):
        export(run, tmp_path / "o", max_drop=-1)
    assert not (tmp_path / "o").exists()


def test_corrupt_model_pt(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / "run")
    bad = r / "trials" / "0" / "model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RunError, match=rf"checkpoint {bad} cannot be loaded: the file is corrupt"):
        load(bad.parent)
    with pytest.raises(RunError, match=rf"checkpoint {bad} cannot be loaded"):
        export(r, tmp_path / "o", trial=0)
    torch.save({"conv1.weight": torch.zeros(1)}, bad)  # a state dict of another model
    with pytest.raises(RunError, match=rf"checkpoint {bad} does not match the model"):
        load(bad.parent)


@pytest.mark.parametrize("change", [{"schema": 2, "stsearch_version": "9.0.0"}, {"schema": None}])
def test_plan_json_from_an_incompatible_version(run: Path, tmp_path: Path, change: dict) -> None:
    r = copy_run(run, tmp_path / "run")
    p = r / "trials" / "0" / "plan.json"
    rec = {**json.loads(p.read_text()), **change}
    p.write_text(json.dumps({k: v for k, v in rec.items() if v is not None}))
    schema = change["schema"]
    version = change.get("stsearch_version", stsearch.__version__)
    with pytest.raises(RunError, match=rf"{p}: plan.json schema {schema!r} \(written by stsearch {version}\) is "
                                       rf"incompatible with stsearch {stsearch.__version__}"):
        load(p.parent)
    with pytest.raises(RunError, match=r"plan.json schema"):
        export(r, tmp_path / "o", trial=0)


def test_corrupt_or_malformed_plan_json(run: Path, tmp_path: Path) -> None:
    r = copy_run(run, tmp_path / "run")
    p = r / "trials" / "0" / "plan.json"
    good = json.loads(p.read_text())
    p.write_text("{not json")
    with pytest.raises(RunError, match=rf"{p}: corrupt JSON"):
        load(p.parent)
    p.write_text(json.dumps(dict(good, model={"name": "no_such_model", "kwargs": {}})))
    with pytest.raises(RunError, match=rf"{p}: cannot rebuild the model: .*no_such_model"):
        load(p.parent)
    p.unlink()
    with pytest.raises(RunError, match=rf"{p} not found"):
        load(p.parent)
    with pytest.raises(RunError, match=r"no such directory"):
        load(tmp_path / "nowhere")


def test_bad_arguments(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"choose one of --trial, --max-drop and --min-cr \(got --trial and "
                                          r"--min-cr\)"):
        export(run, tmp_path / "o", trial=0, min_cr=2)
    with pytest.raises(ConfigError, match=r"--finetune-epochs: must be a positive integer \(got 0\)"):
        export(run, tmp_path / "o", trial=0, finetune_epochs=0)
    with pytest.raises(ConfigError, match=r"--out: .* is inside the run"):
        export(run, run / "trials" / "0", trial=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=rf"--out: {tmp_path}/file is a file, not a directory"):
        export(run, tmp_path / "file", trial=0)


@pytest.mark.slow
def test_benchmark_smoke(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "export.py"), "--smoke", "--out",
                           str(tmp_path / "export.json")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "export.json").read_text())["rows"]
    assert rows and all(r["pt_payload_ratio"] > 1 and r["torch_b128_ms"] > 0 and r["ort_b1_ms"] > 0 for r in rows)
    assert "| digits_cnn |" in proc.stdout
