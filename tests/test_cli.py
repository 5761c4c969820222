"""The command line: pareto, export, status, dashboard; exit codes and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from stsearch.cli import main
from stsearch.pareto import front
from tests._runs import STUDY, copy_run, tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture()
def mine(run: Path, tmp_path: Path) -> Path:
    """A private copy of the run (commands here rewrite its reports)."""
    return copy_run(run, tmp_path / "runs" / STUDY)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ pareto
def test_pareto_prints_the_front_and_rewrites_the_reports(mine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("pareto.csv", "pareto.png", "pareto.html"):
        (mine / name).unlink()
    rc, out, err = cli(capsys, "pareto", STUDY, "--runs-dir", mine.parent)
    assert rc == 0, err
    df = front(mine)
    lines = out.splitlines()
    assert lines[0].startswith(f"Pareto front of {STUDY!r} ({len(df)} trials); latency: batch 1, one thread")
    header = lines[1].split()
    assert header[:3] == ["trial", "accuracy", "drop"] and "latency" in header and header[-1] == "formats"
    for _, r in df.iterrows():
        assert any(ln.split()[0] == str(r["trial"]) and f"{100 * r['accuracy']:.2f}%" in ln
                   and f"{r['compression_ratio']:.2f}×" in ln and r["formats"] in ln for ln in lines[2:])
    with Image.open(mine / "pareto.png") as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    page = (mine / "pareto.html").read_text()
    assert "<script src=" not in page and "plotly" in page.lower()  # offline: plotly.js inlined
    for _, r in df.iterrows():
        assert f"trial {r['trial']}" in page or f"[{r['trial']}," in page
    assert pd.read_csv(mine / "pareto.csv")["trial"].tolist() == df["trial"].tolist()


def test_pareto_machine_readable(mine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "pareto", mine, "--format", "csv")
    assert rc == 0
    df = pd.read_csv(io.StringIO(out))
    want = front(mine)
    assert df["trial"].tolist() == want["trial"].tolist()
    assert list(df.columns) == [*want.columns[:-1], "latency_ms", "formats"]
    assert (df["latency_ms"] > 0).all()
    rc, out, _ = cli(capsys, "pareto", mine, "--format", "json", "--no-latency")
    rows = json.loads(out)
    assert rc == 0 and [r["trial"] for r in rows] == want["trial"].tolist() and "latency_ms" not in rows[0]
    assert rows[0]["formats"] == want["formats"].iloc[0]


# ------------------------------------------------------------------------------------------------ export, status
def test_export_command(mine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    top = float(front(mine)["compression_ratio"].max())
    rc, out, err = cli(capsys, "export", mine, "--out", tmp_path / "exp", "--min-cr", top)
    assert rc == 0, err
    assert out.startswith("exported trial ") and f"CR {top:.2f}×" in out and "onnxruntime" in out
    assert "exporting ONNX" in err  # progress goes to stderr
    for name in ("model.pt", "plan.json", "metrics.json", "model.onnx", "README.md"):
        assert (tmp_path / "exp" / name).is_file()
    assert isinstance(torch.load(tmp_path / "exp" / "model.pt", weights_only=True), dict)


def test_status_command(mine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "status", STUDY, "--runs-dir", mine.parent)
    assert rc == 0 and f"study {STUDY!r}" in out and "4 of 4 finished" in out
    rc, out, _ = cli(capsys, "status", "--runs-dir", mine.parent)
    assert rc == 0 and out.splitlines()[0].split()[:3] == ["study", "state", "finished"] and STUDY in out
    rc, out, _ = cli(capsys, "status", mine, "--format", "json")
    assert rc == 0 and json.loads(out)["counts"]["complete"] == 4
    rc, out, _ = cli(capsys, "status", "--runs-dir", mine.parent, "--format", "json")
    assert rc == 0 and [s["study"] for s in json.loads(out)] == [STUDY]


# ------------------------------------------------------------------------------------------------ errors
def _prune(run: Path, n: int) -> None:
    d = run / "trials" / str(n)
    m = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps(dict(m, status="pruned", reason="early stop")))
    (d / "model.pt").unlink()


def _corrupt_weights(run: Path, n: int) -> None:
    (run / "trials" / str(n) / "model.pt").write_bytes(b"\x00garbage")


def _new_plan_schema(run: Path, n: int) -> None:
    p = run / "trials" / str(n) / "plan.json"
    p.write_text(json.dumps(dict(json.loads(p.read_text()), schema=7, stsearch_version="3.0.0")))


BAD = {
    "missing run": (["export", "nope", "--out", "{tmp}/o", "--runs-dir", "{tmp}"], None,
                    r"run 'nope' not found: no directory nope or {tmp}/nope"),
    "empty run": (["pareto", "{tmp}/empty"], None, r"{tmp}/empty is an empty run"),
    "missing trial": (["export", "{run}", "--out", "{tmp}/o", "--trial", "42"], None,
                      r"trial 42 does not exist in {run} \(trials 0–3\)"),
    "pruned trial": (["export", "{run}", "--out", "{tmp}/o", "--trial", "2"], _prune,
                     r"trial 2 in {run} was pruned \(early stop\); only complete trials can be exported"),
    "nothing within max-drop": (["export", "{run}", "--out", "{tmp}/o", "--max-drop", "0.001"], None,
                                r"no trial within 0.001 points of the baseline accuracy"),
    "corrupt model.pt": (["export", "{run}", "--out", "{tmp}/o", "--trial", "1"], _corrupt_weights,
                         r"checkpoint {run}/trials/1/model.pt cannot be loaded: the file is corrupt"),
    "incompatible plan.json": (["export", "{run}", "--out", "{tmp}/o", "--trial", "1"], _new_plan_schema,
                               r"{run}/trials/1/plan.json: plan.json schema 7 \(written by stsearch 3.0.0\) is "
                               r"incompatible"),
    "status of a missing runs dir": (["status", "--runs-dir", "{tmp}/none"], None,
                                     r"runs directory {tmp}/none not found"),
    "dashboard of a missing run": (["dashboard", "{tmp}/none"], None, r"run '{tmp}/none' not found"),
    "bad storage": (["status", "x", "--runs-dir", "{tmp}", "--storage", "nonsense"], None,
                    r"--storage: 'nonsense' is neither an RDB URL"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_code_2(case: str, mine: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import re

    args, damage, pattern = BAD[case]
    (tmp_path / "empty").mkdir()
    if damage is not None:
        damage(mine, int(args[args.index("--trial") + 1]))
    fill = {"tmp": str(tmp_path), "run": str(mine)}
    rc, out, err = cli(capsys, *[a.format(**fill) for a in args])
    assert rc == 2, (out, err)
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err  # progress lines may come before it
    assert errors[0].startswith("stsearch: error: ") and "Traceback" not in err, err
    pat = pattern.format(**{k: re.escape(v) for k, v in fill.items()})
    assert re.search(pat, err), (pat, err)
    assert not (tmp_path / "o").exists()


def test_conflicting_selection_rules_are_a_usage_error(mine: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["export", str(mine), "--out", str(tmp_path / "o"), "--trial", "0", "--max-drop", "1"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ dashboard
def test_dashboard_command_serves_on_loopback_then_stops(run: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "stsearch.cli", "dashboard", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("optuna-dashboard: http://127.0.0.1:"), (line, proc.stderr.read()
                                                                         if proc.poll() is not None else "")
        url = line.split()[1]
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url.rstrip("/"), timeout=10) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()
    assert proc.returncode is not None


def test_os_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk or a permission error is one line naming the file, exit 2, no traceback."""
    import stsearch.cli as cli

    def boom(_args: object) -> int:
        raise OSError(28, "No space left on device", "/runs/x/baseline.pt")

    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices["search"].set_defaults(func=boom)  # noqa: SLF001
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["search"]) == 2
    assert capsys.readouterr().err.strip() == "stsearch: error: No space left on device (/runs/x/baseline.pt)"
