"""Hostile input: YAML that would build Python objects, pickles that would run code, names that would import
modules. Each is refused with the project's error and a message; a marker file proves the payload never ran. A
static scan of the package lists every eval/exec/import/unpickle site, each whitelisted with its reason."""

from __future__ import annotations

import ast
import contextlib
import io
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

import stsearch
from stsearch import models, search
from stsearch.cli import main
from stsearch.data import load as load_data
from stsearch.errors import ConfigError, DataError, RunError, StsearchError
from stsearch.study.space import load_space
from stsearch.training import load_checkpoint

from ._common import FAST, no_hang, record, stderr_lines, write_space

PACKAGE = Path(stsearch.__file__).parent


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"conv1.weight": Payload(marker)}, path)
    return path


def test_the_payload_is_real(tmp_path: Path, marker: Path) -> None:
    """Control: an unrestricted load of the crafted file does run the code (so 'no marker' below means refused)."""
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "pwned"


# ------------------------------------------------------------------------------------------------- YAML
YAML_ATTACKS = {
    "object/apply": "!!python/object/apply:os.system ['touch {m}']\n",
    "nested apply": "model: digits_cnn\nlayers: [{{match: '*'}}]\nrecipe: !!python/object/apply:os.system "
                    "['touch {m}']\n",
    "object/new": "layers: !!python/object/new:subprocess.Popen [['touch', '{m}']]\n",
    "name": "layers: [{{match: !!python/name:os.system }}]\n",
    "module": "layers: [{{match: !!python/module:os }}]\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                  "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "alias bomb in kwargs": "model:\n  name: digits_cnn\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                            + "".join(f"    {k}: &{k} [{', '.join([f'*{j}'] * 10)}]\n"
                                      for j, k in zip("abcdefg", "bcdefgh"))
                            + "layers: [{{match: '*'}}]\n",
    "deep nesting": "model: {{name: digits_cnn, kwargs: {{k: " + "[" * 200 + "]" * 200 + "}}}}\n"
                    "layers: [{{match: '*'}}]\n",
    "self-reference": "model: {{name: digits_cnn, kwargs: &k {{self: *k}}}}\nlayers: [{{match: '*'}}]\n",
}


@pytest.mark.parametrize("attack", sorted(YAML_ATTACKS))
def test_yaml_that_would_build_python_objects_is_refused(attack: str, tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(YAML_ATTACKS[attack].format(m=marker))
    with no_hang(20), pytest.raises(ConfigError) as e:
        load_space(path)
    assert "space.yaml" in str(e.value) and not marker.exists()
    record(fault=f"hostile YAML: {attack}", outcome=f"ConfigError: {str(e.value)[:100]}", payload_ran=False)


def test_a_hostile_space_through_the_cli_is_one_line(tmp_path: Path, marker: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(YAML_ATTACKS["object/apply"].format(m=marker))
    assert main(["search", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert len(stderr_lines(err)) == 1 and "could not determine a constructor" in err and not marker.exists()


@pytest.mark.parametrize("name", ["os:system", "os.system", "torchvision:os", "torchvision:__init__",
                                  "torchvision:../../etc/passwd", "__import__('os').system('true')",
                                  "subprocess.run", "torchvision:utils.load_state_dict_from_url"])
def test_model_names_reach_only_the_registries(name: str) -> None:
    before = set(sys.modules)
    with pytest.raises(ConfigError, match="unknown"):
        models.create(name)
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("os", "subprocess", "etc")}


# ----------------------------------------------------------------------------------------------- pickles
def test_a_crafted_checkpoint_is_refused(tmp_path: Path, marker: Path) -> None:
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(RunError, match="refuses") as e:
        load_checkpoint(evil, models.create("digits_cnn"))
    assert not marker.exists()
    torch.save(Payload(marker), tmp_path / "bare.pt")  # the payload as the whole file
    with pytest.raises(RunError):
        load_checkpoint(tmp_path / "bare.pt", models.create("digits_cnn"))
    assert not marker.exists()
    record(fault="crafted pickle as a checkpoint", outcome=f"RunError: {str(e.value)[:100]}", payload_ran=False)


@pytest.fixture(scope="module")
def finished(runs: Path) -> Path:
    study = search(dict(FAST, trials=2), study="hostile", runs_dir=runs, progress=False)
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    return runs / "hostile"


def test_a_crafted_trial_or_export_is_refused_by_load_export_and_pareto(
        finished: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = shutil.copytree(finished, tmp_path / "hostile")
    for d in (run_dir / "trials").iterdir():
        if (d / "model.pt").exists():
            _evil_checkpoint(d / "model.pt", marker)
    _evil_checkpoint(run_dir / "baseline.pt", marker)
    with pytest.raises(RunError, match="refuses"):
        stsearch.load(run_dir / "trials" / "0")
    assert main(["export", str(run_dir), "--trial", "0", "--out", str(tmp_path / "out"), "--no-onnx",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(stderr_lines(err)) == 1 and "Traceback" not in err
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["pareto", str(run_dir)])  # front latency loads front members' weights
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    assert not marker.exists()
    record(fault="crafted model.pt in trial dirs and baseline.pt", outcome=f"load: RunError; export: exit 2; "
           f"pareto: exit {code}", payload_ran=False)


def test_a_crafted_baseline_checkpoint_is_refused_by_search(tmp_path: Path, marker: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    space = write_space(tmp_path / "space.yaml", FAST)
    assert main(["search", str(space), "--baseline", str(evil), "--runs-dir", str(tmp_path / "runs"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(stderr_lines(err)) == 1 and "refuses" in err and not marker.exists()


def test_a_crafted_baseline_cache_is_retrained_not_loaded(runs: Path, tmp_path: Path, marker: Path) -> None:
    mine = tmp_path / "runs"
    shutil.copytree(runs / ".cache", mine / ".cache")
    cached = list((mine / ".cache" / "baselines").glob("*.pt"))
    assert cached
    for pt in cached:
        _evil_checkpoint(pt, marker)
    with pytest.warns(RuntimeWarning, match="unusable"):
        search(dict(FAST, trials=1), study="evil-cache", runs_dir=mine, progress=False)
    assert not marker.exists()
    assert all(torch.load(pt, weights_only=True) for pt in cached)  # replaced by a freshly trained baseline
    record(fault="crafted pickle in the baseline cache", outcome="warning, retrained", payload_ran=False)


def test_a_crafted_cifar_batch_is_refused(tmp_path: Path, marker: Path) -> None:
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}))
    with pytest.raises(DataError, match="refusing to load builtins.exec"):
        load_data("cifar10", data_root=tmp_path)
    assert not marker.exists()
    record(fault="crafted CIFAR batch pickle", outcome="DataError", payload_ran=False)


def test_an_npz_with_pickled_objects_is_refused(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil.npz"
    x = np.empty(1, dtype=object)
    x[0] = Payload(marker)
    np.savez(path, x_train=x, y_train=np.zeros(1, np.int64), x_test=x, y_test=np.zeros(1, np.int64))
    with pytest.raises(DataError, match="object arrays are refused"):
        load_data(f"npz:{path}")
    assert not marker.exists()
    record(fault="npz holding a pickled object array", outcome="DataError", payload_ran=False)


# ----------------------------------------------------------------------------------------- static scan
DANGEROUS_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint", "importlib.import_module",
                   "importlib.__import__", "importlib.util.spec_from_file_location", "importlib.reload",
                   "runpy.run_path", "runpy.run_module", "pickle.load", "pickle.loads", "pickle.Unpickler",
                   "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads", "marshal.loads",
                   "shelve.open", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
                   "yaml.unsafe_load_all", "os.system", "os.popen", "os.execv", "os.execvp", "os.spawnv",
                   "subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                   "subprocess.check_output", "torch.jit.load", "ctypes.CDLL"}
DANGEROUS_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "importlib", "runpy", "subprocess",
                     "ctypes", "code", "codeop"}
ALLOWED = {
    ("__init__.py", "import importlib"): "lazy attributes of the package",
    ("__init__.py", "importlib.import_module"): "module names come from the fixed _LAZY table, never from input",
    ("data.py", "import pickle"): "CIFAR batches are torchvision's pickles",
    ("data.py", "pickle.Unpickler"): "_ArrayOnlyUnpickler: find_class admits numpy array reconstruction only "
                                     "(test_a_crafted_cifar_batch_is_refused)",
    ("ray_backend.py", "cloudpickle.load"): "Ray's own error file of a trial of this search, in Tune's local "
                                            "experiment folder; never a user file",
    ("ray_backend.py", "from ray import cloudpickle"): "the same",
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _sites(path: Path) -> list[tuple[str, int]]:
    """(what, line) of every dangerous call, base class and import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(f"import {a.name}", node.lineno) for a in node.names
                    if a.name.split(".")[0] in DANGEROUS_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out += [(f"from {mod} import {a.name}", node.lineno) for a in node.names
                    if mod.split(".")[0] in DANGEROUS_MODULES or a.name in DANGEROUS_MODULES]
        elif isinstance(node, ast.ClassDef):
            out += [(name, node.lineno) for name in map(_dotted, node.bases) if name in DANGEROUS_CALLS]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name in DANGEROUS_CALLS:
                safe_yaml = name == "yaml.load" and "SafeLoader" in ast.dump(kw.get("Loader", ast.Constant(None)))
                if not safe_yaml:
                    out.append((name, node.lineno))
            elif name == "torch.load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(("torch.load without weights_only=True", node.lineno))
            elif name in ("np.load", "numpy.load"):
                ap = kw.get("allow_pickle")
                if not (isinstance(ap, ast.Constant) and ap.value is False):
                    out.append(("np.load without allow_pickle=False", node.lineno))
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                out.append(("shell=...", node.lineno))
    return out


def test_nothing_reaches_eval_exec_import_or_unpickling_unchecked() -> None:
    found, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for what, line in _sites(path):
            if (path.name, what) in ALLOWED:
                used.add((path.name, what))
            else:
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{line}: {what}")
    assert found == [], "unreviewed code-execution sites (whitelist each with a reason):\n" + "\n".join(found)
    assert used, "the scan found nothing at all: is it still looking at the package?"


def test_the_scan_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, yaml, torch, numpy as np, subprocess\n"
                   "eval('1')\nexec('x=1')\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
                   "torch.load(p)\ntorch.load(p, weights_only=True)\nnp.load(p, allow_pickle=True)\n"
                   "subprocess.run(c, shell=True)\nclass U(pickle.Unpickler): pass\n"
                   "__import__('os')\n")
    got = [w for w, _ in _sites(bad)]
    assert got.count("yaml.load") == 1 and got.count("torch.load without weights_only=True") == 1
    for want in ("import pickle", "import subprocess", "eval", "exec", "np.load without allow_pickle=False",
                 "subprocess.run", "shell=...", "pickle.Unpickler", "__import__"):
        assert want in got, want


def test_every_stsearch_error_is_a_value_error_with_a_message() -> None:
    for cls in (StsearchError, ConfigError, RunError, DataError):
        assert issubclass(cls, ValueError)


# ------------------------------------------------------------------------------------ where a run may go
BAD_LOCATIONS = {
    "runs-dir is a file": (["--runs-dir", "afile"], "--runs-dir: cannot create the run directory"),
    "runs-dir under a file": (["--runs-dir", "afile/sub"], "--runs-dir: cannot create the run directory"),
    "journal under a file": (["--storage", "journal:afile/x"], "--storage: cannot open the journal file"),
    "journal in /proc": (["--storage", "journal:/proc/stsearch-test/x"], "--storage: cannot open the journal file"),
    "study escapes the runs dir": (["--study", "../escape"], "--study: '../escape' is not a study name"),
    "study is nested": (["--study", "a/b"], "--study: 'a/b' is not a study name"),
    "study is ..": (["--study", ".."], "--study: '..' is not a study name"),
    "timeout nan": (["--timeout", "nan"], "--timeout: must be a positive number of seconds (got nan)"),
    "timeout negative": (["--timeout", "-1"], "--timeout: must be a positive number of seconds (got -1.0)"),
    "timeout zero": (["--timeout", "0"], "--timeout: must be a positive number of seconds (got 0.0)"),
}


@pytest.mark.parametrize("case", sorted(BAD_LOCATIONS))
def test_bad_run_locations_and_limits_are_one_line_errors(case: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fixes: a traceback (NotADirectoryError, FileExistsError, FileNotFoundError) for the first four;
    '../escape' created <runs-dir>/../escape; --timeout nan ran without a limit; -1 and 0 ran nothing and said
    'no trial completed (0 failed; first reason: no trial ran)'."""
    args, message = BAD_LOCATIONS[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("a file")
    space = write_space(work / "space.yaml", FAST)
    monkeypatch.chdir(work)
    code = main(["search", str(space), "--runs-dir", "runs", "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and stderr_lines(err) == [f"stsearch: error: {err.split('error: ', 1)[1].strip()}"], err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) in (["afile", "space.yaml"], ["afile", "runs", "space.yaml"])
    assert not (tmp_path / "escape").exists()
