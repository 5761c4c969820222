"""Atomic outputs: trial files, exports and the baseline cache go to a temporary sibling and are renamed into place.
A crash mid-write (an exception, or the process killed) leaves the old file whole; a later run never trusts a
half-written one."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState

import stsearch
import stsearch.export
from stsearch import _io, search
from stsearch.errors import RunError
from stsearch.pareto import front, trials_frame

from ._common import FAST, python_cmd, record, run

PACKAGE = Path(stsearch.__file__).parent


class _Torn:
    """A file wrapper whose ``write`` lands half of the next chunk, then fails like a full disk."""

    def __init__(self, f: Any, after: int = 0):
        self._f = f
        self._after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Torn:
        self._f.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._f.__exit__(*exc)

    def write(self, data: Any) -> int:
        if self._after <= 0:
            self._f.write(data[: max(1, len(data) // 2)])
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        self._after -= 1
        return self._f.write(data)


def _tear(monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool] = lambda name: True) -> None:
    """Make every temporary file that ``_io.atomic_open`` opens (and whose name passes ``when``) tear."""
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = real(fd, *args, **kwargs)
        return _Torn(f) if when(str(getattr(f, "name", ""))) or when(os.readlink(f"/proc/self/fd/{fd}")) else f

    monkeypatch.setattr(_io.os, "fdopen", fdopen)


def _temps(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.tmp"))


WRITERS: dict[str, Callable[[Path], None]] = {
    "write_text": lambda p: _io.write_text(p, "new " * 1000),
    "write_json": lambda p: _io.write_json(p, {"new": list(range(1000))}),
    "save_torch": lambda p: _io.save_torch(p, {"w": torch.ones(1000)}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_that_fails_midway_keeps_the_old_file(writer: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "artifact"
    path.write_bytes(b"old, complete content")
    _tear(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        WRITERS[writer](path)
    assert path.read_bytes() == b"old, complete content"
    assert _temps(tmp_path) == []  # the torn temporary file is removed
    monkeypatch.undo()
    WRITERS[writer](path)  # and the next write succeeds
    assert path.read_bytes() != b"old, complete content" and _temps(tmp_path) == []


@pytest.fixture(scope="module")
def finished(runs: Path) -> Path:
    """A finished 3-trial run (do not modify it; copy it)."""
    study = search(dict(FAST, trials=3), study="atomic", runs_dir=runs, progress=False)
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.user_attrs for t in study.trials]
    return runs / "atomic"


_KILL_MID_WRITE = """
import os, signal, sys
import torch
from stsearch import _io

path = sys.argv[1]
real = os.fdopen


class Dying:
    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: the temporary file stays behind


_io.os.fdopen = lambda fd, *a, **k: Dying(real(fd, *a, **k))
state = torch.load(path, weights_only=True)
_io.save_torch(path, {k: v * 0 for k, v in state.items()})
"""


def test_a_killed_writer_leaves_the_old_trial_whole_and_its_debris_is_ignored(finished: Path,
                                                                              tmp_path: Path) -> None:
    run_dir = shutil.copytree(finished, tmp_path / "atomic")
    trial = run_dir / "trials" / "0"
    old = stsearch.load(trial).state_dict()
    rows = trials_frame(run_dir).to_dict("records")
    proc = run(python_cmd(_KILL_MID_WRITE) + [str(trial / "model.pt")], timeout=300)
    assert proc.returncode == -9, proc.stderr
    debris = _temps(run_dir)
    assert len(debris) == 1 and debris[0].parent == trial and debris[0].name.startswith(".model.pt.")
    new = stsearch.load(trial).state_dict()  # the old, whole weights
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in old)
    assert trials_frame(run_dir).to_dict("records") == rows  # the debris is not a trial or a file of one
    assert set(front(run_dir)["trial"]) == set(front(finished)["trial"])
    record(fault="SIGKILL while model.pt was half written", trials_lost=0,
           outcome="old model.pt intact; one ignored .model.pt.*.tmp left")


def test_a_trial_whose_weights_cannot_be_written_fails_without_a_half_file(runs: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _tear(monkeypatch, when=lambda name: f"{os.sep}trials{os.sep}1{os.sep}.model.pt." in name)
    study = search(dict(FAST, trials=4), study="torn", runs_dir=runs, progress=False)
    ts = {t.number: t for t in study.trials}
    bad = ts[1]
    assert bad.state == TrialState.FAIL
    assert bad.user_attrs["reason"] == "OSError: [Errno 28] No space left on device (simulated)"
    d = runs / "torn" / "trials" / "1"
    assert not (d / "model.pt").exists() and _temps(d) == []
    assert json.loads((d / "metrics.json").read_text())["status"] == "failed"
    with pytest.raises(RunError, match="only complete trials and exports hold weights"):
        stsearch.load(d)
    assert [ts[n].state for n in (0, 2, 3)] == [TrialState.COMPLETE] * 3  # the search went on
    assert 1 not in set(front(runs / "torn")["trial"])
    record(fault="disk full while writing a trial's model.pt", trials_lost=0,
           outcome="FAIL: " + bad.user_attrs["reason"])


def test_the_baseline_cache_is_never_trusted_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stsearch.data import load as load_data
    from stsearch.training import train_baseline

    data = load_data("digits", seed=0)
    recipe = {"epochs": 1, "lr": 0.05, "batch_size": 64}
    cache = tmp_path / "cache"

    def train() -> dict[str, Any]:
        return train_baseline("digits_cnn", {}, data, recipe, cache_dir=cache, device="cpu")[1]

    _tear(monkeypatch, when=lambda name: name.endswith(".tmp") and ".digits_cnn-" in name and ".pt." in name)
    with pytest.raises(OSError, match="simulated"):
        train()  # the weights' write tears: nothing is cached
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert train()["cached"] is False
    pt = next(cache.glob("*.pt"))
    assert train()["cached"] is True
    good = pt.read_bytes()
    pt.write_bytes(good[: len(good) // 2])  # as a non-atomic copy or a failing disk would leave it
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert train()["cached"] is False  # not trusted: trained again
    assert train()["cached"] is True
    pt.with_suffix(".json").unlink()  # a crash between the two files of the cache
    assert train()["cached"] is False
    assert _temps(cache) == []
    record(fault="baseline cache: torn write, truncated .pt, missing .json", trials_lost=0,
           outcome="never loaded; retrained each time")


def test_a_failed_re_export_keeps_the_previous_export(finished: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    stsearch.export.export(finished, out, trial=0, onnx=False, latency=False, device="cpu")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = stsearch.load(out)(x)
    _tear(monkeypatch, when=lambda name: f"{os.sep}.model.pt." in name)
    with pytest.raises(OSError, match="simulated"):
        stsearch.export.export(finished, out, trial=1, onnx=False, latency=False, device="cpu")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # every file of the old export, whole
    with torch.no_grad():
        assert torch.equal(stsearch.load(out)(x), y)
    record(fault="disk full while re-exporting model.pt", trials_lost=0, outcome="previous export intact")



def test_a_re_export_that_dies_between_two_files_is_never_loaded_mixed(finished: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file of an export is atomic, the directory is not: dying after model.pt and before plan.json leaves
    trial 1's weights next to trial 0's plan. ``stsearch.load`` must then refuse (or, once export writes the
    directory atomically, give the old model), never build one from the other's weights."""
    out = tmp_path / "export"
    stsearch.export.export(finished, out, trial=0, onnx=False, latency=False, device="cpu")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = stsearch.load(out)(x)
    real = _io.write_json

    def write_json(path: Any, obj: Any) -> None:
        if Path(path).name == "plan.json":
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        real(path, obj)

    monkeypatch.setattr(_io, "write_json", write_json)
    with pytest.raises(OSError, match="simulated"):
        stsearch.export.export(finished, out, trial=1, onnx=False, latency=False, device="cpu")
    monkeypatch.undo()
    try:
        model = stsearch.load(out)
    except RunError as e:
        outcome = f"RunError: {str(e)[:80]}"
    else:
        with torch.no_grad():
            assert torch.equal(model(x), y)
        outcome = "old model"
    record(fault="export dies between model.pt and plan.json", trials_lost=0, outcome=f"load: {outcome}")

# ----------------------------------------------------------------------------------------- static check
WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed", "dump", "to_csv",
               "to_json", "write_html", "write_image", "export", "copyfile", "copy", "copy2", "replace", "rename"}
ALLOWED_WRITES = {
    ("_io.py", "*"): "the atomic writer itself (mkstemp in the target folder, fsync, os.replace)",
    ("pareto.py", "savefig"): "fig.savefig(f) into the file object of _io.atomic_open",
    ("export.py", "save"): "onnx.save(proto, tmp): the mkstemp temporary, renamed by os.replace once checked",
    ("export.py", "export"): "torch.onnx.export(..., tmp): the same temporary",
    ("export.py", "replace"): "os.replace(tmp, path): the rename of export_onnx",
}


def _writes(path: Path) -> list[tuple[str, int]]:
    """(call name, line) of every call in ``path`` that may write a file, outside ``_io.<name>(...)``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in WRITE_CALLS:
            if isinstance(f.value, ast.Name) and f.value.id == "_io":
                continue
            if f.attr in ("copy", "replace") and not (isinstance(f.value, ast.Name) and f.value.id in ("os", "shutil")):
                continue  # str.replace, dict.copy, dataclasses.replace, ...
            if f.attr in ("to_csv", "to_json") and not node.args and not any(
                    k.arg == "path_or_buf" for k in node.keywords):
                continue  # returns the text (then written with _io.write_text, or printed)
            if f.attr == "export" and not (isinstance(f.value, ast.Attribute) and f.value.attr == "onnx"):
                continue  # export() of stsearch itself
            out.append((f.attr, node.lineno))
        elif isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                  None)
            if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+"):
                out.append(("open", node.lineno))
    return out


def test_every_file_the_package_writes_goes_through_the_atomic_writer() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line in _writes(path):
            if (path.name, "*") in ALLOWED_WRITES or (path.name, name) in ALLOWED_WRITES:
                continue
            found.append(f"{rel}:{line}: {name}(...)")
    assert found == [], "non-atomic writes (use stsearch._io, or whitelist with a reason):\n" + "\n".join(found)
