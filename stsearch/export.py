"""Take one model out of a search: export it (weights, plan, metrics, ONNX, model card) and load it back.

>>> res = export("runs/digits_cnn", "out/digits", max_drop=1.0)   # highest CR within 1 point of the baseline
>>> model = stsearch.load("out/digits")                            # no study, no search: plan + weights
>>> model = stsearch.load("runs/digits_cnn/trials/7")               # a trial directory has the same format

An export directory holds ``model.pt`` (a state dict, ``torch.load(..., weights_only=True)``), ``plan.json``
(the trial schema: model name and kwargs, plan, init, schema, stsearch version), ``metrics.json`` (validation
and test accuracy, CR, params, FLOPs, latency), ``model.onnx`` (dynamic batch axis, checked against PyTorch with
ONNX Runtime) and ``README.md`` (a model card). Every file is written atomically. The export is the only place
the test split is used; the search never touches it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _io
from .errors import ConfigError, RunError, StsearchError
from .study.rundir import PLAN_SCHEMA_VERSION

__all__ = ["load", "export", "export_onnx", "select_trial", "read_plan", "build_model", "ExportResult",
           "ExportError", "ONNX_ATOL"]

ONNX_ATOL = 1e-4
"""The largest |ONNX Runtime − PyTorch| output difference an export accepts (batch 1 and batch 4)."""
ONNX_CHECK_BATCHES = (1, 4)


class ExportError(StsearchError):
    """The model could not be exported (ONNX conversion failed or disagrees with PyTorch)."""


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _version() -> str:
    from . import __version__

    return __version__


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``plan.json`` record of a trial or export directory (or the file itself).

    Raises RunError naming the file when it is missing, corrupt, or written with another schema.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "plan.json"
    if not p.is_file():
        raise RunError(f"{p} not found: {p.parent} is not a trial or export directory")
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{p}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{p}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rec, dict):
        raise RunError(f"{p}: expected a JSON object, got {type(rec).__name__}")
    schema, version = rec.get("schema"), rec.get("stsearch_version", "unknown")
    if schema != PLAN_SCHEMA_VERSION:
        raise RunError(f"{p}: plan.json schema {schema!r} (written by stsearch {version}) is incompatible with "
                       f"stsearch {_version()}, which reads schema {PLAN_SCHEMA_VERSION}; load it with stsearch "
                       f"{version}")
    model = rec.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise RunError(f"{p}: 'model' must be {{\"name\": ..., \"kwargs\": {{...}}}} (got {model!r})")
    if not isinstance(model.get("kwargs", {}), dict):
        raise RunError(f"{p}: model.kwargs must be a mapping (got {model.get('kwargs')!r})")
    if not isinstance(rec.get("plan"), dict):
        raise RunError(f"{p}: 'plan' must be a mapping of module name to layer spec (got {rec.get('plan')!r})")
    return rec


def build_model(record: dict[str, Any], *, where: str | os.PathLike[str] = "plan.json") -> nn.Module:
    """The compressed model's structure from a ``plan.json`` record (random factors: load weights next).

    Torch's global RNG is left as it was.
    """
    from . import models
    from .surgery import compress

    m = record["model"]
    try:
        with torch.random.fork_rng(devices=[]):
            base = models.create(m["name"], **dict(m.get("kwargs") or {}))
            return compress(base, record["plan"], init="random", seed=0)
    except StsearchError as e:
        raise RunError(f"{where}: cannot rebuild the model: {e}") from None


def _trial_status(d: Path) -> tuple[str | None, str | None]:
    try:
        m = json.loads((d / "metrics.json").read_text())
        return m.get("status"), m.get("reason")
    except (OSError, ValueError, AttributeError):
        return None, None


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a compressed model from a trial or export directory (``plan.json`` + ``model.pt``), without
    the study or the search, and return it in eval mode on ``device``.

    The structure comes from ``stsearch.models.create`` and ``stsearch.compress(..., init="random")``; the
    weights are loaded with ``torch.load(weights_only=True)``. Raises RunError naming the file when the
    directory, plan or weights are missing, corrupt or incompatible.
    """
    d = Path(path)
    if d.is_file() and d.name in ("plan.json", "model.pt"):
        d = d.parent
    if not d.is_dir():
        raise RunError(f"{d}: no such directory (expected a trial or export directory with plan.json and "
                       f"model.pt)")
    if not (d / "model.pt").is_file() and d.parent.name == "trials" and d.name.isdigit():
        d = _weights_dir(d.parent.parent, int(d.name))[0]  # a reused trial: its source holds the weights
    rec = read_plan(d)
    weights = d / "model.pt"
    if not weights.is_file():
        state, reason = _trial_status(d)
        why = f": the trial was {state} ({reason})" if state in ("pruned", "failed") else ""
        raise RunError(f"{weights} not found{why}; only complete trials and exports hold weights")
    return _load_weights(rec, weights, d / "plan.json").to(device).eval()


def _load_weights(record: dict[str, Any], weights: Path, where: Path) -> nn.Module:
    from .training import load_checkpoint

    model = build_model(record, where=where)
    load_checkpoint(weights, model)  # RunError naming the file: corrupt, not a state dict, or mismatched
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Choosing the trial
# --------------------------------------------------------------------------------------------------------------
def select_trial(run: str | os.PathLike[str], *, trial: int | None = None, max_drop: float | None = None,
                 min_cr: float | None = None) -> tuple[int, str]:
    """(trial number, rule) for a run directory. Exactly one rule, or none:

    * ``trial=N``: that trial, which must be complete;
    * ``max_drop=PP``: the front trial with the highest CR within PP accuracy points of the baseline;
    * ``min_cr=X``: the front trial with the best accuracy among those with CR >= X;
    * none: ``max_drop`` = the space's ``constraints.max_accuracy_drop`` (1 point when unset).
    """
    from . import pareto
    from .study.reports import allowed_drop

    root = Path(run)
    given = [k for k, v in (("--trial", trial), ("--max-drop", max_drop), ("--min-cr", min_cr)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"choose one of --trial, --max-drop and --min-cr (got {' and '.join(given)})")
    if trial is not None:
        return _check_trial(root, trial), f"trial {trial}"
    pareto.front(root)  # a run without a complete trial says so (and why) before anything else
    if min_cr is not None:
        row = pareto.best_at_cr(root, min_cr)
        return int(row["trial"]), f"best accuracy at CR >= {min_cr:g}"
    note = ""
    if max_drop is None:
        max_drop, note = 100 * allowed_drop(root), " (the space's allowed drop)"
    row = pareto.best_within_drop(root, max_drop)
    return int(row["trial"]), f"highest CR within {max_drop:g} points of the baseline{note}"


def _check_trial(root: Path, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"--trial: must be a trial number >= 0 (got {n!r})")
    from .study.rundir import RunDir

    rd = RunDir(root)
    d = rd.trial_dir(n)
    if not d.is_dir():
        have = rd.trial_numbers()
        span = f"trials {have[0]}–{have[-1]}" if have else "no trials"
        raise RunError(f"trial {n} does not exist in {root} ({span})")
    if not (d / "metrics.json").exists():
        raise RunError(f"trial {n} in {root} has not finished (no metrics.json); wait for it or pick another")
    state, reason = _trial_status(d)
    if state != "complete":
        raise RunError(f"trial {n} in {root} was {state or 'not recorded'}"
                       f"{f' ({reason})' if reason else ''}; only complete trials can be exported")
    return n


def _weights_dir(root: Path, n: int) -> tuple[Path, int | None]:
    """The directory holding trial ``n``'s trained weights: its own, or (reused trial) its source's."""
    d = root / "trials" / str(n)
    try:
        src = json.loads((d / "metrics.json").read_text()).get("reused_from")
    except (OSError, ValueError, AttributeError):
        src = None
    src = int(src) if isinstance(src, (int, float)) and not isinstance(src, bool) and math.isfinite(src) else None
    if (d / "model.pt").is_file() or src is None:
        return d, src
    return root / "trials" / str(src), src


# --------------------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------------------
def _pinned(model: nn.Module, implementation: str) -> nn.Module:
    """A CPU eval copy of ``model`` whose factorized layers all run ``implementation`` (an ONNX graph has one
    path for every batch size; ``auto`` would choose per input shape)."""
    from .layers import FactorizedLayer

    m = copy.deepcopy(model).cpu().eval()
    if implementation != "auto":
        for mod in m.modules():
            if isinstance(mod, FactorizedLayer):
                mod.implementation = implementation
    return m


def _exporter_summary(e: BaseException) -> str:
    """One line out of the exporter's long message: its "Exception summary" line when it has one."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"## Exception summary\s*\n\s*(.+)", text)
    line = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line.strip()[:300]}"


def _name_batch_axis(proto: Any) -> None:
    """Call the dynamic first axis of the graph's input and output ``batch``."""
    for v in (*proto.graph.input, *proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_param"):
            dims[0].dim_param = "batch"


def _strip_debug_info(proto: Any) -> None:
    """Drop what only debugging needs (per-node stack traces and doc strings, intermediate value_info): on a
    small model that is most of the file, and it would hide the compression."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int], *,
                implementation: str = "factorized", batches: Sequence[int] = ONNX_CHECK_BATCHES,
                atol: float = ONNX_ATOL, opset: int | None = None) -> dict[str, Any]:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``input``, output ``logits``), then check ONNX
    Runtime against PyTorch at each of ``batches``; the file appears (atomically) only if every max |diff| is
    <= ``atol``, else ExportError. ``implementation="factorized"`` keeps the factors in the graph (the file
    stays compressed); ``reconstructed`` stores dense kernels. Returns {"max_abs_diff": {batch: d}, ...}.
    """
    import numpy as np
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref_model = copy.deepcopy(model).cpu().eval()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    log = io.StringIO()
    try:
        m = _pinned(ref_model, implementation)
        # Batch 2 (torch.export specialises sizes 0 and 1); Dim.DYNAMIC keeps the axis dynamic even where a layer
        # picks its contraction order from the batch size (the traced order is exact at every size).
        example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                torch.onnx.export(m, (example,), tmp, input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), external_data=False, dynamo=True,
                                  optimize=True, opset_version=opset)
        except Exception as e:  # noqa: BLE001 - any exporter failure, summarised on one line
            raise ExportError(f"torch.onnx.export failed for {path}: {_exporter_summary(e)} (use --no-onnx to "
                              f"export without ONNX)") from e
        import onnx

        proto = onnx.load(tmp, load_external_data=False)
        _strip_debug_info(proto)
        _name_batch_axis(proto)
        onnx.save(proto, tmp)
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
        diffs: dict[int, float] = {}
        gen = torch.Generator().manual_seed(2)
        for b in batches:
            x = torch.randn(b, *input_shape, generator=gen)
            with torch.inference_mode():
                want = ref_model(x).float().numpy()
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            if got.shape != want.shape:
                raise ExportError(f"ONNX check failed for {path}: output shape {got.shape} at batch {b}, PyTorch "
                                  f"gives {want.shape}; model.onnx was not written")
            d = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
            diffs[b] = d
            if not d <= atol:
                raise ExportError(f"ONNX check failed for {path}: max |onnxruntime − torch| = {d:.3g} at batch "
                                  f"{b} exceeds {atol:g}; model.onnx was not written")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {"max_abs_diff": {str(b): d for b, d in diffs.items()}, "atol": atol, "opset": opset_used,
            "implementation": implementation, "input": "input", "output": "logits",
            "dynamic_axes": {"input": {"0": "batch"}, "logits": {"0": "batch"}}}


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """What :func:`export` wrote: the directory, the trial and rule that chose it, the metrics and files, and
    the exported model itself (CPU, eval mode)."""

    out: Path
    trial: int
    rule: str
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    model: nn.Module | None = None

    def summary(self) -> str:
        """A few lines for the command line."""
        m = self.metrics
        lat = m.get("latency_ms") or {}
        lines = [f"exported trial {self.trial} of {m.get('study')!r} ({self.rule}) to {self.out}",
                 f"  validation accuracy {_pct(m.get('val_accuracy'))} (baseline {_pct(m.get('baseline_accuracy'))}),"
                 f" test accuracy {_pct(m.get('test_accuracy'))} (baseline {_pct(m.get('baseline_test_accuracy'))})",
                 f"  CR {m['compression_ratio']:.2f}× ({m['params']:,} params), {m['flops']:,} FLOPs",
                 "  latency (batch 1, 1 thread): " + ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()
                                                                if isinstance(v, float))]
        ft = m.get("finetune")
        if ft:
            lines.append(f"  fine-tuned {ft['epochs']} more epochs: validation {_pct(ft['val_accuracy_before'])} -> "
                         f"{_pct(m['val_accuracy'])}, test {_pct(ft['test_accuracy_before'])} -> "
                         f"{_pct(m['test_accuracy'])}")
        lines.append("  files: " + ", ".join(sorted(p.name for p in self.files.values())))
        return "\n".join(lines)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def export(run: str | os.PathLike[str], out: str | os.PathLike[str], *, trial: int | None = None,
           max_drop: float | None = None, min_cr: float | None = None, finetune_epochs: int | None = None,
           runs_dir: str | os.PathLike[str] = "runs", storage: str | None = None, device: str = "auto",
           data_root: str | None = None, onnx: bool = True, latency: bool = True,
           log: Callable[[str], None] | None = None) -> ExportResult:
    """Export one trial of a run to ``out`` (see the module docstring for the files).

    The trial is chosen by ``trial``, ``max_drop`` (points) or ``min_cr`` (see :func:`select_trial`).
    ``finetune_epochs=E`` trains it E more epochs with the space's trial recipe first. Validation and test
    accuracy are measured on the run's dataset split; latency at batch 1 on one CPU thread (median).
    """
    from .study.engine import plan_record
    from .study.reports import latency_ms, load_run_data, onnx_latency_ms, resolve_run
    from .surgery import profile
    from .training import evaluate

    say = log or (lambda _msg: None)
    root = resolve_run(run, runs_dir=runs_dir, storage=storage)
    if finetune_epochs is not None and (isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int)
                                        or finetune_epochs < 1):
        raise ConfigError(f"--finetune-epochs: must be a positive integer (got {finetune_epochs!r})")
    n, rule = select_trial(root, trial=trial, max_drop=max_drop, min_cr=min_cr)
    out = Path(out)
    tdir = root / "trials" / str(n)
    o, trials_dir = out.resolve(), (root / "trials").resolve()
    if o == root.resolve() or trials_dir == o or trials_dir in o.parents:
        raise ConfigError(f"--out: {out} is inside the run; choose a directory of its own")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory")
    src, reused_from = _weights_dir(root, n)
    record = read_plan(src)
    weights = src / "model.pt"
    if not weights.is_file():
        raise RunError(f"{weights} not found: trial {n} is complete but its weights are missing")
    say(f"loading trial {n}{'' if trial is not None else f' ({rule})'} from {src}")
    model = _load_weights(record, weights, src / "plan.json")
    try:
        trial_metrics = json.loads((tdir / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{tdir / 'metrics.json'}: unreadable ({e})") from None
    baseline = _read_baseline(root)

    data = load_run_data(root, data_root)
    input_shape = tuple(int(s) for s in data.input_shape)
    val = evaluate(model, data.val, device=device)
    test = evaluate(model, data.test, device=device)
    finetune = None
    if finetune_epochs:
        finetune, curve = _finetune(root, model, data, n, finetune_epochs, device, say)
        finetune.update(val_accuracy_before=val["accuracy"], test_accuracy_before=test["accuracy"])
        val = evaluate(model, data.val, device=device)
        test = evaluate(model, data.test, device=device)
    model = model.cpu().eval()
    prof = profile(model, input_shape)

    files: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    onnx_info = None
    staged = out / ".model.onnx.staged"  # renamed into place with the other files, after every check passed
    try:
        if onnx:
            say("exporting ONNX and checking it with onnxruntime at batch 1 and 4")
            onnx_info = export_onnx(model, staged, input_shape)
        lat: dict[str, float] = {}
        if latency:
            say("measuring latency (batch 1, one thread, median)")
            lat["torch"] = latency_ms(model, input_shape)
            if onnx:
                lat["onnxruntime"] = onnx_latency_ms(staged, input_shape)
            dense = _dense_baseline(root, record)
            if dense is not None:
                lat["dense_torch"] = latency_ms(dense, input_shape)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _io.save_torch(out / "model.pt", state)
        files["model"] = out / "model.pt"
        new_record = plan_record(record["model"]["name"], dict(record["model"].get("kwargs") or {}),
                                 _plan(record), record.get("init", "decompose"))
        _io.write_json(out / "plan.json", new_record)
        files["plan"] = out / "plan.json"
        if onnx:
            os.replace(staged, out / "model.onnx")
            files["onnx"] = out / "model.onnx"
        elif (out / "model.onnx").exists():
            (out / "model.onnx").unlink()  # a stale graph of an earlier export would not match model.pt
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    if finetune is not None:
        _io.write_text(out / "curve.csv", _curve_csv(curve))
        files["curve"] = out / "curve.csv"
    elif (out / "curve.csv").exists():
        (out / "curve.csv").unlink()  # an earlier export's fine-tuning curve

    base_acc, base_test = baseline.get("accuracy"), baseline.get("test_accuracy")
    metrics: dict[str, Any] = {
        "study": root.name, "run": str(root.resolve()), "trial": n, "selected_by": rule, "reused_from": reused_from,
        "status": "complete", "accuracy": val["accuracy"], "val_accuracy": val["accuracy"], "val_loss": val["loss"],
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "search_accuracy": trial_metrics.get("accuracy"),
        "baseline_accuracy": base_acc, "baseline_test_accuracy": base_test,
        "drop_points": _drop(base_acc, val["accuracy"]), "test_drop_points": _drop(base_test, test["accuracy"]),
        **prof.to_dict(), "formats": dict(_plan(record).format_counts()),
        "latency_ms": lat, "latency_setting": {"batch": 1, "threads": 1, "statistic": "median"},
        "onnx": onnx_info, "finetune": finetune, "input_shape": list(input_shape),
        "preprocessing": _preprocessing(data), "dataset": getattr(data, "spec", None),
        "file_bytes": {p.name: p.stat().st_size for p in files.values()},
        "baseline_file_bytes": (root / "baseline.pt").stat().st_size if (root / "baseline.pt").is_file() else None,
        "stsearch_version": _version(), "exported_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    _io.write_json(out / "metrics.json", metrics)
    files["metrics"] = out / "metrics.json"
    _io.write_text(out / "README.md", model_card(metrics, new_record, prof.layers))
    files["readme"] = out / "README.md"
    return ExportResult(out=out, trial=n, rule=rule, metrics=metrics, files=files, model=model)


def _plan(record: dict[str, Any]) -> Any:
    from .plan import CompressionPlan

    return CompressionPlan.from_dict(record["plan"])


def _drop(base: Any, acc: float) -> float | None:
    return 100 * (float(base) - acc) if isinstance(base, (int, float)) and math.isfinite(acc) else None


def _read_baseline(root: Path) -> dict[str, Any]:
    from .study.rundir import RunDir

    try:
        return RunDir(root).baseline()
    except RunError:
        return {}


def _dense_baseline(root: Path, record: dict[str, Any]) -> nn.Module | None:
    """The run's dense baseline model, or ``None`` when ``baseline.pt`` is absent or does not load."""
    from . import models
    from .training import load_checkpoint

    path = root / "baseline.pt"
    if not path.is_file():
        return None
    m = record["model"]
    try:
        with torch.random.fork_rng(devices=[]):
            net = models.create(m["name"], **dict(m.get("kwargs") or {}))
        return load_checkpoint(path, net).eval()
    except StsearchError:
        return None


def _preprocessing(data: Any) -> dict[str, Any] | None:
    s = data.test
    if all(hasattr(s, k) for k in ("mean", "std")):
        out = {"mean": list(s.mean), "std": list(s.std)}
        if hasattr(s, "scale"):
            out["scale"] = s.scale
        return out
    return None


def _finetune(root: Path, model: nn.Module, data: Any, n: int, epochs: int, device: str,
              say: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .study.space import load_space
    from .training import Recipe, fit

    sp = load_space(root / "space.yaml")
    recipe = Recipe.from_dict({**data.default_recipe().to_dict(), **dict(sp.recipe or {})}).replace(epochs=epochs)
    say(f"fine-tuning {epochs} epochs with the space's trial recipe")
    res = fit(model, data, recipe, device=device, seed=n, progress=False)
    if not res.ok:
        raise ExportError(f"--finetune-epochs {epochs}: training of trial {n} stopped ({res.status}: "
                          f"{res.reason}); nothing was written")
    return {"epochs": epochs, "recipe": recipe.to_dict(), "train_time": res.wall_time}, list(res.history)


def _curve_csv(curve: list[dict[str, Any]]) -> str:
    if not curve:
        return "epoch\n"
    keys = list(curve[0])
    return "\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in curve]) + "\n"


def model_card(metrics: dict[str, Any], record: dict[str, Any], layers: Any = None) -> str:
    """The export's ``README.md``: where the model came from, how good and small it is, how to use it."""
    m = metrics
    lat = m.get("latency_ms") or {}
    name = record["model"]["name"]
    shape = ", ".join(str(s) for s in m["input_shape"])
    rows = [("validation accuracy", _pct(m.get("val_accuracy")), _pct(m.get("baseline_accuracy"))),
            ("test accuracy", _pct(m.get("test_accuracy")), _pct(m.get("baseline_test_accuracy"))),
            ("parameters", f"{m['params']:,}", f"{m['dense_params']:,}"),
            ("compression ratio", f"{m['compression_ratio']:.2f}×", "1×"),
            ("FLOPs (batch 1)", f"{m['flops']:,}", f"{m['dense_flops']:,}")]
    if "torch" in lat:
        rows.append(("latency, PyTorch CPU (ms)", f"{lat['torch']:.3f}",
                     f"{lat['dense_torch']:.3f}" if "dense_torch" in lat else "—"))
    if "onnxruntime" in lat:
        rows.append(("latency, ONNX Runtime CPU (ms)", f"{lat['onnxruntime']:.3f}", "—"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    layer_md = ""
    if layers is not None and len(layers):
        cols = ["layer", "format", "ranks", "t", "params", "dense_params", "compression_ratio"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in layers[cols].to_dict("records"):
            lines.append("| " + " | ".join(f"{r[c]:.2f}×" if c == "compression_ratio" else str(r[c])
                                           for c in cols) + " |")
        layer_md = "\n## Layers\n\n" + "\n".join(lines) + "\n"
    ft = m.get("finetune")
    ft_md = (f"\nFine-tuned {ft['epochs']} more epochs with the search's trial recipe after the search "
             f"(validation {_pct(ft['val_accuracy_before'])} before).\n") if ft else ""
    pre = m.get("preprocessing")
    pre_md = ""
    if pre:
        pre_md = (f"Inputs are normalised as in training: `x = (pixel * {pre.get('scale', 1):g} - mean) / std`, "
                  f"mean {pre['mean']}, std {pre['std']}.\n")
    onnx_md = ""
    if m.get("onnx"):
        o = m["onnx"]
        diffs = ", ".join(f"{v:.1e} at batch {k}" for k, v in o["max_abs_diff"].items())
        onnx_md = (f"`model.onnx` (opset {o.get('opset')}, input `input` with a dynamic batch axis, output "
                   f"`logits`) matches PyTorch to {diffs} (limit {o['atol']:g}).\n\n"
                   "```python\nimport numpy as np, onnxruntime as ort\n"
                   "sess = ort.InferenceSession(\"model.onnx\")\n"
                   f"logits = sess.run(None, {{\"input\": np.zeros((1, {shape}), np.float32)}})[0]\n```\n")
    return (f"# {name}, compressed by stsearch (trial {m['trial']} of study `{m['study']}`)\n\n"
            f"Selected by: {m['selected_by']}. Formats: {_plan(record).summary()}."
            + (f" The search reused this result from trial {m['reused_from']} (same canonical plan)."
               if m.get("reused_from") is not None else "") + "\n" + ft_md +
            f"\n| | compressed | dense baseline |\n|---|---|---|\n{table}\n\n"
            f"Validation accuracy is what the search optimised; the test split was used only by this export. "
            f"Latency: batch 1, one CPU thread, median of repeats.\n{layer_md}\n"
            f"## Use\n\nInput: float32 `(batch, {shape})`; output: `(batch, classes)` logits. {pre_md}\n"
            "```python\nimport stsearch, torch\n"
            "model = stsearch.load(\"path/to/this/directory\")   # plan.json + model.pt, eval mode\n"
            f"logits = model(torch.zeros(1, {shape}))\n```\n\n{onnx_md}\n"
            "## Files\n\n"
            "- `model.pt`: state dict (`torch.load(path, weights_only=True)`)\n"
            "- `plan.json`: model name and arguments, compression plan, stsearch version\n"
            "- `metrics.json`: accuracies, compression, FLOPs, latency\n"
            + ("- `model.onnx`: ONNX graph with factorized layers\n" if m.get("onnx") else "")
            + ("- `curve.csv`: fine-tuning learning curve\n" if ft else "")
            + f"\nExported with stsearch {m['stsearch_version']} on {m['exported_at']}.\n")
