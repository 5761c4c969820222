"""The evidence benchmarks' ``--smoke`` modes run end to end on synthetic data and write the table schema.

Each script runs in a subprocess with one thread (tens of seconds in all); the outputs go to a temporary folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script: str, out: Path, *extra: str, timeout: float = 300) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "SYNTHETIC" in proc.stdout  # smoke mode says that its data is not the real set


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def test_compare_formats_smoke(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import compare_formats as cf
    finally:
        sys.path.remove(str(BENCH))
    _run("compare_formats.py", tmp_path, "--families", "tt", "tr")
    cols, rows = _csv(tmp_path / "rows.csv")
    assert cols == cf.ROW_COLUMNS
    assert {r["family"] for r in rows} == {"tt", "tr"}
    assert {r["init"] for r in rows} == {"decompose", "random"}
    kinds = {r["kind"] for r in rows}
    assert {"classical", "≡ classical", "new topology"} <= kinds  # the grid holds a genuinely new topology
    for r in rows:
        assert 0.0 <= float(r["test_mean"]) <= 1.0 and float(r["layer_compression_ratio"]) > 1
        assert float(r["epoch_time_s"]) > 0
    cols, drops = _csv(tmp_path / "cr_at_drop.csv")
    assert cols == cf.DROP_COLUMNS and drops
    cols, _ = _csv(tmp_path / "equal_rank.csv")
    assert cols == cf.EQUAL_RANK_COLUMNS
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] is True and summary["rows"]
    assert all(Path(p).is_file() for p in summary["plots"])


def test_search_gain_smoke(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import search_gain as sg
    finally:
        sys.path.remove(str(BENCH))
    _run("search_gain.py", tmp_path)
    cols, rows = _csv(tmp_path / "summary.csv")
    assert cols == sg.SUMMARY_COLUMNS
    assert [r["arm"] for r in rows] == ["search (mixed formats)", "best uniform plans"]
    for r in rows:
        assert 0.0 <= float(r["hypervolume_val"]) <= 1.0
    cols, _ = _csv(tmp_path / "points.csv")
    assert cols == sg.POINT_COLUMNS
    s = json.loads((tmp_path / "summary.json").read_text())
    for k in ("share_trials_saved_canonical", "share_trials_early_stopped", "share_epochs_saved_early_stop"):
        assert 0.0 <= s["savings"][k] <= 1.0
    assert Path(s["plot"]).is_file()


@pytest.mark.slow  # ~15 s; keeps the default run of this file under a minute
def test_cifar_paper_smoke(tmp_path: Path) -> None:
    _run("cifar_paper.py", tmp_path)
    cols, rows = _csv(tmp_path / "rows.csv")
    sys.path.insert(0, str(BENCH))
    try:
        import cifar_paper as cp
    finally:
        sys.path.remove(str(BENCH))
    assert cols == cp.COLUMNS
    comps = {(r["family"], r["comparison"]) for r in rows}
    assert comps == {(f, c) for f in ("tt", "tr") for c in ("equal rank", "equal params (control)")}
    for r in rows:
        assert math.isfinite(float(r["epoch_time_s"]))


def test_resnet_transfer_smoke(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import resnet_transfer as rt
    finally:
        sys.path.remove(str(BENCH))
    _run("resnet_transfer.py", tmp_path, "--ranks", "4", "8")  # r = 8's control TT(4)/TR(4) is r = 4's row
    cols, rows = _csv(tmp_path / "rows.csv")
    assert cols == rt.ROW_COLUMNS
    assert len(rows) == 12 and {r["family"] for r in rows} == {"tt", "tr"}
    assert {r["kind"] for r in rows} == {"classical", "≡ classical"}
    for r in rows:
        assert int(r["n_seeds"]) == 1 and 0.0 <= float(r["test_mean"]) <= 1.0
        assert float(r["layer_compression_ratio"]) > 1 and float(r["epoch_time_s"]) > 0
    shared = [r for r in rows if r["shared_with"]]
    assert {r["row"] for r in shared} == {"TT(R=4, t=1)", "TR(R=4, t=1)", "TT(R=8/2, t=1)", "TR(R=8/2, t=1)"}
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 10  # 12 rows, 10 distinct plans
    cols, prs = _csv(tmp_path / "pairs.csv")
    assert cols == rt.PAIR_COLUMNS
    eq_params = [p for p in prs if p["comparison"] == rt.EQUAL_PARAMS]
    eq_rank = [p for p in prs if p["comparison"] == rt.EQUAL_RANK]
    assert len(eq_params) == len(eq_rank) == 4
    for p in eq_params:  # ST(r, 2) vs classical(r/2): about the same parameter count
        assert 0.8 <= float(p["param_ratio"]) <= 1.25, p
    for p in eq_rank:  # at equal rank ST stores fewer numbers
        assert float(p["param_ratio"]) < 0.8, p
    md = (tmp_path / "tables.md").read_text()
    assert rt.EQUAL_PARAMS[1:] in md and rt.EQUAL_RANK[1:] in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] is True and "SYNTHETIC" in summary["data"] and summary["wall_time_s"] > 0
    assert summary["n_runs"] == 10 and len(summary["runs_shared"]) == 2


@pytest.mark.parametrize("d,expected,flag", [(0.5, 10.0, ""), (5.0, 40.0, "ge"), (0.1, math.nan, "none")])
def test_cr_at_drop_rule(d: float, expected: float, flag: str) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _evidence import cr_at_drop
    finally:
        sys.path.remove(str(BENCH))
    # drops 0.2 at CR 5, 0.8 at CR 20 (interpolated at 0.5: halfway in log CR -> 10), 3.0 at CR 40
    got, f = cr_at_drop([5, 20, 40], [0.2, 0.8, 3.0], d)
    assert f == flag
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
