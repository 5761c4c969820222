"""The Pareto front: non-domination, hypervolume, selection rules and the offline reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stsearch import pareto
from stsearch.errors import ConfigError, RunError


def rec(trial: int, acc: float, cr: float, status: str = "complete", **kw: Any) -> dict[str, Any]:
    return {"trial": trial, "status": status, "accuracy": acc, "compression_ratio": cr,
            "layer_compression_ratio": cr * 1.5, "params": int(10_000 / cr), "flops": 1_000_000 // max(cr, 1),
            "formats": {"stt": 2, "tt": 1}, "plan": {"layers": {"conv1": {"format": "stt", "rank": 4, "t": 2}}},
            **kw}


def make_run(root: Path, records: list[dict[str, Any]], baseline: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for r in records:
        d = root / "trials" / str(r["trial"])
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(r))
        (d / "curve.csv").write_text("epoch,accuracy\n1,0.5\n")  # other files are ignored
    if baseline is not None:
        (root / "baseline.json").write_text(json.dumps(baseline))
    return root


RECORDS = [
    rec(0, 0.97, 2.0, formats={"stt": 9, "tt": 4, "dense": 2}),
    rec(1, 0.95, 5.0),
    rec(2, 0.90, 4.0),  # dominated by 1
    rec(3, 0.91, 20.0, formats={"tt": 3, "str": 3, "dense": 1}),
    rec(4, 0.99, 50.0, status="failed", reason="CUDA exploded"),
    rec(5, 0.60, 80.0, status="pruned", reason="early stop"),
    rec(6, 0.95, 5.0),  # duplicate of 1: both kept
]
BASE = {"accuracy": 0.96, "params": 10_000, "flops": 1_000_000}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", RECORDS, BASE)


def brute_force(acc: np.ndarray, cr: np.ndarray) -> np.ndarray:
    n = len(acc)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if math.isnan(acc[i]) or math.isnan(cr[i]):
            continue
        out[i] = not any(acc[j] >= acc[i] and cr[j] >= cr[i] and (acc[j] > acc[i] or cr[j] > cr[i])
                         for j in range(n) if not (math.isnan(acc[j]) or math.isnan(cr[j])))
    return out


coord = st.one_of(st.integers(0, 6).map(float), st.floats(0, 100, allow_nan=False), st.just(math.nan))


@given(st.lists(st.tuples(coord, coord), max_size=40))
def test_pareto_mask_matches_brute_force(points: list[tuple[float, float]]) -> None:
    acc = np.array([p[0] for p in points], dtype=float)
    cr = np.array([p[1] for p in points], dtype=float)
    mask = pareto.pareto_mask(acc, cr)
    assert mask.dtype == bool and mask.shape == acc.shape
    np.testing.assert_array_equal(mask, brute_force(acc, cr))


def test_pareto_mask_ties_and_duplicates() -> None:
    acc = [0.9, 0.9, 0.9, 0.8, 0.95, 0.95]
    cr = [2.0, 2.0, 1.0, 3.0, 1.0, 0.5]
    # (0.9, 2) twice: kept; (0.9, 1) dominated by equal acc, more CR; (0.95, 0.5) by (0.95, 1)
    assert pareto.pareto_mask(acc, cr).tolist() == [True, True, False, True, True, False]
    assert pareto.pareto_mask([], []).tolist() == []
    with pytest.raises(ConfigError, match="same length"):
        pareto.pareto_mask([1.0], [1.0, 2.0])


def test_trials_frame_from_a_run_dir(run: Path) -> None:
    (run / "trials" / "7").mkdir()  # started, no metrics yet
    (run / "trials" / "8").mkdir()
    (run / "trials" / "8" / "metrics.json").write_text("{not json")
    d9 = run / "trials" / "9"
    d9.mkdir()
    (d9 / "metrics.json").write_text(json.dumps({"status": "COMPLETE", "accuracy": 0.5, "compression_ratio": 1.0}))
    (d9 / "plan.json").write_text(json.dumps({"model": {"name": "m"}, "plan": {"layers": {"fc": "dense"}}}))
    (run / "trials" / "tmp").mkdir()  # not a trial
    df = pareto.trials_frame(run)
    assert df["trial"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert df["status"].tolist()[4:] == ["failed", "pruned", "complete", "running", "failed", "complete"]
    assert "unreadable" in df.loc[8, "reason"] and df.loc[9, "plan"] == {"layers": {"fc": "dense"}}
    assert df["accuracy"].dtype == float and math.isnan(df.loc[7, "accuracy"])
    assert str(df["params"].dtype) == "Int64"
    assert pareto.trials_frame([]).empty and list(pareto.trials_frame([]).columns)[:2] == ["trial", "status"]


def test_front_columns_order_and_content(run: Path) -> None:
    f = pareto.front(run)
    assert tuple(f.columns) == pareto.FRONT_COLUMNS
    assert f["trial"].tolist() == [0, 1, 6, 3]  # CR ascending; duplicates 1 and 6 both kept; 2 dominated
    assert f["compression_ratio"].is_monotonic_increasing and f["accuracy"].is_monotonic_decreasing
    np.testing.assert_allclose(f["drop"], [-1.0, 1.0, 1.0, 5.0], atol=1e-9)  # points, vs baseline 0.96
    assert f.loc[0, "formats"] == "stt×9 tt×4 dense×2" and f.loc[3, "formats"] == "str×3 tt×3 dense×1"
    assert f.loc[0, "layer_compression_ratio"] == 3.0 and f.loc[0, "params"] == 5000
    # the failed trial 4 (0.99, 50) would dominate everything if it counted
    same = pareto.front(RECORDS, baseline=0.96)
    pd.testing.assert_frame_equal(same, f)
    assert pareto.front(RECORDS)["drop"].isna().all()  # no baseline known


def test_format_summary() -> None:
    assert pareto.format_summary({"dense": 2, "stt": 9, "tt": 4}) == "stt×9 tt×4 dense×2"
    assert pareto.format_summary({"tr": 1, "str": 1, "tt": 0}) == "str×1 tr×1"
    assert pareto.format_summary(None) == "" and pareto.format_summary("tt×1") == "tt×1"


@pytest.mark.parametrize(("points", "expected"), [
    ([(0.90, 100.0)], 1.0),  # at the baseline, at the upper CR: the whole box
    ([(0.95, 100.0)], 1.0),  # above the baseline counts as reaching it
    ([(0.85, 10.0)], 0.25),  # half the accuracy span, half the log-CR span
    ([(0.90, 10.0), (0.85, 100.0)], 0.75),  # 0.1·1 + 0.05·1 over 0.1·2
    ([(0.90, 10.0), (0.85, 100.0), (0.86, 5.0), (0.90, 10.0)], 0.75),  # dominated points and duplicates add 0
    ([(0.70, 100.0)], 0.0),  # below the reference accuracy (0.80)
    ([(0.90, 0.5)], 0.0),  # CR < 1 is below the reference log10 CR = 0
    ([(0.88, 1000.0)], 0.8),  # upper corner grows to log10 1000 = 3: (0.08·3)/(0.1·3)
])
def test_hypervolume_hand_computed(points: list[tuple[float, float]], expected: float) -> None:
    records = [rec(i, a, c) for i, (a, c) in enumerate(points)]
    assert pareto.hypervolume(records, baseline=0.90) == pytest.approx(expected)


def test_hypervolume_upper_corner_and_statuses() -> None:
    records = [rec(0, 0.90, 10.0), rec(1, 0.5, 1000.0, status="pruned")]
    # the pruned trial's CR still sets the upper corner (log10 1000 = 3): 0.1·1 / (0.1·3)
    assert pareto.hypervolume(records, baseline=0.90) == pytest.approx(1 / 3)
    assert pareto.hypervolume(records, baseline=0.90, upper_log10_cr=2) == pytest.approx(0.5)
    assert pareto.hypervolume([rec(0, 0.9, 10.0, status="failed")], baseline={"accuracy": 0.9}) == 0.0
    with pytest.raises(RunError, match="needs the baseline accuracy"):
        pareto.hypervolume(records)
    with pytest.raises(ConfigError, match="upper_log10_cr"):
        pareto.hypervolume(records, baseline=0.9, upper_log10_cr=0)


def test_hypervolume_of_a_run_dir(run: Path) -> None:
    # baseline 0.96, ref 0.86; upper = log10 80 (pruned trial 5) = 1.903 < 2, so 2.
    x = [(0.96, math.log10(2)), (0.95, math.log10(5)), (0.91, math.log10(20))]
    area = sum((a - 0.86) * (y - prev) for (a, y), prev in zip(x, [0, *[p[1] for p in x[:-1]]], strict=True))
    assert pareto.hypervolume(run) == pytest.approx(area / (0.1 * 2))


def test_best_within_drop_and_best_at_cr(run: Path) -> None:
    assert int(pareto.best_within_drop(run, 1.0)["trial"]) in (1, 6)  # CR 5 within 1 point
    assert int(pareto.best_within_drop(run, 0.0)["trial"]) == 0
    assert int(pareto.best_within_drop(run, 5.0)["trial"]) == 3
    with pytest.raises(RunError, match=r"no trial within 0.5 points.*closest is trial 0"):
        pareto.best_within_drop(RECORDS, 0.5, baseline=0.98)
    with pytest.raises(ConfigError, match="--max-drop"):
        pareto.best_within_drop(run, -1)
    with pytest.raises(RunError, match="needs the baseline accuracy"):
        pareto.best_within_drop(RECORDS, 1.0)
    assert int(pareto.best_at_cr(run, 3.0)["trial"]) in (1, 6)
    assert int(pareto.best_at_cr(run, 1.0)["trial"]) == 0
    assert int(pareto.best_at_cr(run, 20.0)["trial"]) == 3
    with pytest.raises(RunError, match=r"no trial reaches compression ratio 21.*highest is 20.00"):
        pareto.best_at_cr(run, 21)


def test_write_reports(run: Path) -> None:
    from PIL import Image

    paths = pareto.write_reports(run)
    assert set(paths) == {"csv", "png", "html"} and all(p.parent == run for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert csv["trial"].tolist() == [0, 1, 6, 3] and list(csv.columns) == list(pareto.FRONT_COLUMNS)
    with Image.open(paths["png"]) as im:
        im.load()
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # not a blank canvas
    text = paths["html"].read_text(encoding="utf-8")
    assert re.search(r"<script[^>]*\bsrc\s*=", text, re.I) is None  # no external script
    assert re.search(r"<link\b", text, re.I) is None and "cdn.plot.ly/plotly" not in text
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js is inlined
    for trial in (0, 3):
        assert f"<td>{trial}</td>" in text
    assert "stt×9 tt×4 dense×2" in text and "conv1" in text
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_no_complete_trial_is_a_clear_error(tmp_path: Path) -> None:
    bad = make_run(tmp_path / "bad", [rec(0, 0.9, 2.0, status="failed", reason="out of memory"),
                                      rec(1, 0.9, 2.0, status="failed", reason="later"),
                                      rec(2, 0.5, 3.0, status="pruned")], BASE)
    (bad / "trials" / "3").mkdir()
    for fn in (pareto.front, pareto.write_reports, lambda r: pareto.plot_png(r, r / "x.png"),
               lambda r: pareto.plot_html(r, r / "x.html"), lambda r: pareto.best_at_cr(r, 1.0)):
        with pytest.raises(RunError, match=re.escape(f"no complete trial in {bad}; 2 failed: out of memory; "
                                                     "1 pruned; 1 running")):
            fn(bad)
    assert not list(bad.glob("pareto.*")) and not (bad / "x.png").exists()
    assert pareto.hypervolume(bad) == 0.0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="no trial recorded"):
        pareto.front(empty)
    with pytest.raises(RunError, match="run directory not found"):
        pareto.front(tmp_path / "missing")
    with pytest.raises(RunError, match="complete without a finite accuracy"):
        pareto.front([{"trial": 0, "status": "complete", "accuracy": None, "compression_ratio": 2}])


def test_corrupt_baseline_is_a_run_error(run: Path) -> None:
    (run / "baseline.json").write_text("[oops")
    with pytest.raises(RunError, match="baseline.json: corrupt baseline record"):
        pareto.front(run)
