"""The Pareto front of a search: compression ratio (CR) against validation accuracy, both maximised.

Usage::

    from stsearch import pareto
    df = pareto.front("runs/digits_cnn")        # trial, accuracy, drop, compression_ratio, ..., formats
    pareto.hypervolume("runs/digits_cnn")       # a float in [0, 1]
    pareto.write_reports("runs/digits_cnn")     # pareto.csv, pareto.png, pareto.html

Every function takes a run directory (``<run>/trials/<n>/metrics.json`` and ``<run>/baseline.json``), a list of
trial records (dicts), or a frame from :func:`trials_frame`. A record has at least ``trial``, ``status``
(complete | pruned | failed | running), ``accuracy`` (validation, 0–1), ``compression_ratio``,
``layer_compression_ratio``, ``params``, ``flops``, ``formats`` ({"stt": 9, …}) and ``plan``. Only complete
trials with a finite accuracy and CR take part in the front. The baseline (``{"accuracy", "params", "flops"}``)
comes from ``baseline.json`` or the ``baseline=`` keyword; ``drop`` is ``(baseline − accuracy) · 100`` points.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io
from .errors import ConfigError, RunError

__all__ = ["trials_frame", "pareto_mask", "front", "format_front", "hypervolume", "best_within_drop", "best_at_cr",
           "format_summary", "plot_png", "plot_html", "write_reports", "FRONT_COLUMNS"]

Run = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | pd.DataFrame
Baseline = Mapping[str, Any] | float | None

FRONT_COLUMNS = ("trial", "accuracy", "drop", "compression_ratio", "layer_compression_ratio", "params", "flops",
                 "formats")
_BASE_COLUMNS = ("trial", "status", "accuracy", "compression_ratio", "layer_compression_ratio", "params", "flops",
                 "formats", "plan", "reason")
_NUMERIC = ("accuracy", "compression_ratio", "layer_compression_ratio", "params", "flops")
_STATUS = {"complete": "complete", "completed": "complete", "pruned": "pruned", "fail": "failed",
           "failed": "failed", "running": "running", "waiting": "running"}
HV_ACCURACY_SPAN = 0.10
"""The hypervolume's reference point sits this far (10 points) below the baseline accuracy."""
HV_MIN_LOG10_CR = 2.0
"""The hypervolume's upper log10-CR bound is at least this (CR 100×)."""


# --------------------------------------------------------------------------------------------------------------
# Reading trials
# --------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _run_records(run: Path) -> list[dict[str, Any]]:
    if not run.is_dir():
        raise RunError(f"run directory not found: {run}")
    tdir = run / "trials"
    if not tdir.is_dir():
        return []
    records = []
    for d in sorted((p for p in tdir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        n = int(d.name)
        metrics = d / "metrics.json"
        if not metrics.exists():
            rec: dict[str, Any] = {"status": "running"}
        else:
            try:
                rec = _read_json(metrics)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            except (OSError, ValueError) as e:
                rec = {"status": "failed", "reason": f"unreadable {metrics}: {e}"}
        rec = dict(rec)
        rec["trial"] = n  # the directory is authoritative: export reads trials/<n>/
        if rec.get("plan") is None and (d / "plan.json").exists():
            try:
                p = _read_json(d / "plan.json")
                rec["plan"] = p.get("plan", p) if isinstance(p, dict) else None
            except (OSError, ValueError):
                pass
        records.append(rec)
    return records


def trials_frame(run_or_records: Run) -> pd.DataFrame:
    """All trials as a frame, one row per trial sorted by number.

    Columns: trial, status, accuracy, compression_ratio, layer_compression_ratio, params, flops, formats, plan,
    reason, then any other record keys. Status is normalised to complete | pruned | failed | running (a record
    without one counts as complete; a trial directory without metrics.json as running; an unreadable
    metrics.json as failed). Numeric columns are floats (NaN where missing).
    """
    if isinstance(run_or_records, pd.DataFrame):
        records = run_or_records.to_dict("records")
    elif isinstance(run_or_records, (str, os.PathLike)):
        records = _run_records(Path(run_or_records))
    elif isinstance(run_or_records, Sequence):
        records = []
        for i, r in enumerate(run_or_records):
            if not isinstance(r, Mapping):
                raise ConfigError(f"trial records: item {i} must be a mapping (got {type(r).__name__})")
            records.append(dict(r))
    else:
        raise ConfigError(f"expected a run directory, a list of trial records or a DataFrame "
                          f"(got {type(run_or_records).__name__})")
    for i, r in enumerate(records):
        r.setdefault("trial", i)
        status = r.get("status")
        status = "complete" if status is None or (isinstance(status, float) and math.isnan(status)) else status
        r["status"] = _STATUS.get(str(status).lower().removeprefix("trialstate."), str(status).lower())
    extra = [k for r in records for k in r if k not in _BASE_COLUMNS]
    columns = list(_BASE_COLUMNS) + list(dict.fromkeys(extra))
    df = pd.DataFrame.from_records(records, columns=columns) if records else pd.DataFrame(columns=columns)
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in ("params", "flops"):  # counts: nullable ints when every known value is whole
        known = df[c].dropna()
        if len(known) and np.isfinite(known).all() and (known == np.round(known)).all() and (
                known.abs() < 2**62).all():
            df[c] = df[c].astype("Int64")
    df["trial"] = pd.to_numeric(df["trial"], errors="coerce")
    if df["trial"].isna().any():
        raise ConfigError("trial records: every 'trial' must be an integer")
    df["trial"] = df["trial"].astype(int)
    df["status"] = df["status"].astype(object)
    return df.sort_values("trial", kind="stable").reset_index(drop=True)


def _where(run: Run) -> str:
    return str(run) if isinstance(run, (str, os.PathLike)) else "the given trial records"


def _baseline(run: Run, baseline: Baseline) -> dict[str, Any]:
    if baseline is not None:
        if isinstance(baseline, Mapping):
            return dict(baseline)
        return {"accuracy": float(baseline)}
    if isinstance(run, (str, os.PathLike)):
        path = Path(run) / "baseline.json"
        if path.exists():
            try:
                data = _read_json(path)
            except (OSError, ValueError) as e:
                raise RunError(f"{path}: corrupt baseline record ({e})") from None
            if not isinstance(data, dict):
                raise RunError(f"{path}: corrupt baseline record (expected a JSON object)")
            return data
    return {}


def _baseline_accuracy(run: Run, baseline: Baseline, what: str) -> float:
    acc = _baseline(run, baseline).get("accuracy")
    try:
        acc = float(acc)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        acc = math.nan
    if not math.isfinite(acc):
        raise RunError(f"{what} needs the baseline accuracy: no usable baseline.json in {_where(run)} "
                       f"(pass baseline=...)")
    return acc


def _complete(df: pd.DataFrame, run: Run) -> pd.DataFrame:
    """The complete trials with finite accuracy and CR; RunError (saying why) when there is none."""
    ok = (df["status"] == "complete") & np.isfinite(df["accuracy"]) & np.isfinite(df["compression_ratio"])
    done = df[ok]
    if len(done):
        return done
    where = _where(run)
    if not len(df):
        raise RunError(f"no complete trial in {where}; no trial recorded (trials/ is empty or missing)")
    parts = []
    failed = df[df["status"] == "failed"]
    if len(failed):
        reasons = [r for r in failed["reason"] if isinstance(r, str) and r]
        parts.append(f"{len(failed)} failed: {reasons[0] if reasons else 'no reason recorded'}")
    for state in ("pruned", "running"):
        n = int((df["status"] == state).sum())
        if n:
            parts.append(f"{n} {state}")
    n_bad = int((df["status"] == "complete").sum())
    if n_bad:
        parts.append(f"{n_bad} complete without a finite accuracy and compression ratio")
    other = len(df) - len(failed) - sum(int((df["status"] == s).sum()) for s in ("pruned", "running", "complete"))
    if other:
        parts.append(f"{other} with another status")
    raise RunError(f"no complete trial in {where}; " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------------------
# The front
# --------------------------------------------------------------------------------------------------------------
def pareto_mask(acc: Sequence[float] | np.ndarray, cr: Sequence[float] | np.ndarray) -> np.ndarray:
    """Non-dominated points when maximising both: ``mask[i]`` is False iff some ``j`` has ``acc[j] >= acc[i]``,
    ``cr[j] >= cr[i]`` and one of them strictly greater. Exact duplicates are both kept; NaN points are never
    on the front and dominate nothing. (N,), (N,) -> bool (N,); O(N log N).
    """
    a = np.asarray(acc, dtype=float).reshape(-1)
    c = np.asarray(cr, dtype=float).reshape(-1)
    if a.shape != c.shape:
        raise ConfigError(f"pareto_mask: acc and cr must have the same length (got {a.size} and {c.size})")
    mask = np.zeros(a.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(a) | np.isnan(c)))
    if not valid.size:
        return mask
    order = valid[np.lexsort((-c[valid], -a[valid]))]  # accuracy descending, then CR descending
    best_cr_above = -np.inf  # max CR over points with strictly higher accuracy
    i = 0
    while i < order.size:
        j = i
        while j < order.size and a[order[j]] == a[order[i]]:
            j += 1
        group = order[i:j]
        top = c[group[0]]  # the group's max CR (sorted descending)
        for k in group:
            # dominated by a more accurate point with CR >= its own, or an equally accurate one with more CR
            mask[k] = not (best_cr_above >= c[k] or c[k] < top)
        best_cr_above = max(best_cr_above, top)
        i = j
    return mask


def format_summary(formats: Any) -> str:
    """``{"stt": 9, "tt": 4, "dense": 2}`` -> ``"stt×9 tt×4 dense×2"`` (count descending, then name)."""
    if isinstance(formats, str):
        return formats
    if not isinstance(formats, Mapping):
        return ""
    items = [(str(k), int(v)) for k, v in formats.items() if isinstance(v, (int, float)) and v]
    return " ".join(f"{k}×{v}" for k, v in sorted(items, key=lambda kv: (-kv[1], kv[0])))


def _front_frame(df: pd.DataFrame, run: Run, baseline: Baseline) -> pd.DataFrame:
    done = _complete(df, run)
    on = done[pareto_mask(done["accuracy"].to_numpy(), done["compression_ratio"].to_numpy())].copy()
    base = _baseline(run, baseline).get("accuracy")
    base = float(base) if isinstance(base, (int, float)) and not isinstance(base, bool) else math.nan
    on["drop"] = (base - on["accuracy"]) * 100.0
    on["formats"] = on["formats"].map(format_summary)
    on = on.sort_values(["compression_ratio", "accuracy", "trial"], ascending=[True, False, True], kind="stable")
    return on.reset_index(drop=True)


def front(run: Run, *, baseline: Baseline = None, latency: bool = False, latency_batch: int = 1) -> pd.DataFrame:
    """The Pareto front of the complete trials, sorted by CR ascending (so accuracy descends).

    Columns :data:`FRONT_COLUMNS`: trial, accuracy (0–1), drop (baseline − accuracy, in points; NaN without a
    baseline), compression_ratio, layer_compression_ratio, params, flops, formats (``"stt×9 tt×4 dense×2"``).
    ``latency=True`` (a run directory only) adds ``latency_ms`` before ``formats``: each front member is loaded
    from its trial directory and timed on the CPU with one thread at batch ``latency_batch`` (median of
    repeats); NaN where its weights cannot be loaded. Only front members are timed, and only here.
    Raises RunError when the run has no complete trial (the message says how many failed and why).
    """
    df = _front_frame(trials_frame(run), run, baseline)[list(FRONT_COLUMNS)]
    if latency:
        df.insert(len(FRONT_COLUMNS) - 1, "latency_ms", _front_latency(run, df["trial"], latency_batch))
    return df


def _front_latency(run: Run, trials: pd.Series, batch: int) -> list[float]:
    if not isinstance(run, (str, os.PathLike)):
        raise ConfigError("front(latency=True) needs a run directory (it loads each front member's weights)")
    from .export import load
    from .study.reports import latency_ms, run_input_shape

    shape = run_input_shape(run)
    out = []
    for n in trials:
        try:
            model = load(Path(run) / "trials" / str(int(n)))
        except RunError:
            out.append(math.nan)
            continue
        out.append(latency_ms(model, shape, batch=batch))
    return out


def format_front(df: pd.DataFrame) -> str:
    """The front as a readable table: accuracy in %, drop in points, CR with ×, FLOPs in M, latency in ms."""
    def num(v: Any, fmt: str) -> str:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return "—"
        return format(f, fmt) if math.isfinite(f) else "—"

    cols: dict[str, Any] = {
        "trial": df["trial"].astype(int),
        "accuracy": [num(100 * float(v), ".2f") + "%" for v in df["accuracy"]],
        "drop (pts)": [num(v, "+.2f") for v in df["drop"]],
        "CR": [num(v, ".2f") + "×" for v in df["compression_ratio"]],
        "params": [num(v, ",.0f") for v in df["params"]],
        "FLOPs": [num(float(v) / 1e6, ".3f") + "M" if pd.notna(v) else "—" for v in df["flops"]],
    }
    if "latency_ms" in df:
        cols["latency (ms)"] = [num(v, ".3f") for v in df["latency_ms"]]
    cols["formats"] = df["formats"]
    return pd.DataFrame(cols).to_string(index=False)


def hypervolume(run: Run, *, baseline: Baseline = None, upper_log10_cr: float | None = None) -> float:
    """Normalised hypervolume of the complete trials on (validation accuracy, log10 CR), both maximised.

    Box: reference (lower) corner ``(b − 0.10, 0)`` with ``b`` the baseline accuracy (10 points below it; CR 1);
    upper corner ``(b, U)`` with ``U = upper_log10_cr`` or, by default, ``max(2, max log10 CR of all trials
    with a finite CR, whatever their status)``. Points are clipped into the box, so a trial above the baseline
    counts as reaching it and one below the reference contributes 0. The dominated area is computed exactly and
    divided by the box area, giving a value in [0, 1]; 0.0 when nothing is complete. Pass one common
    ``upper_log10_cr`` to compare runs whose largest CRs differ.
    """
    df = trials_frame(run)
    b = _baseline_accuracy(run, baseline, "hypervolume")
    if upper_log10_cr is None:
        crs = df["compression_ratio"].to_numpy()
        crs = crs[np.isfinite(crs) & (crs > 0)]
        upper = max(HV_MIN_LOG10_CR, float(np.log10(crs).max()) if crs.size else 0.0)
    else:
        upper = float(upper_log10_cr)
        if not math.isfinite(upper) or upper <= 0:
            raise ConfigError(f"hypervolume: upper_log10_cr must be a positive number (got {upper_log10_cr!r})")
    ok = (df["status"] == "complete") & np.isfinite(df["accuracy"]) & np.isfinite(df["compression_ratio"]) & (
        df["compression_ratio"] > 0)
    lo_acc = b - HV_ACCURACY_SPAN
    x = np.clip(df.loc[ok, "accuracy"].to_numpy(), lo_acc, b) - lo_acc
    y = np.clip(np.log10(df.loc[ok, "compression_ratio"].to_numpy()), 0.0, upper)
    return _hv2d(x, y) / (HV_ACCURACY_SPAN * upper)


def _hv2d(x: np.ndarray, y: np.ndarray) -> float:
    """Area of the union of boxes [0, x_i] × [0, y_i] (x, y >= 0)."""
    area, top = 0.0, 0.0
    for i in np.lexsort((-y, -x)):  # x descending
        if y[i] > top:
            area += float(x[i]) * float(y[i] - top)
            top = float(y[i])
    return area


def best_within_drop(run: Run, max_drop_points: float, *, baseline: Baseline = None) -> pd.Series:
    """The front row with the highest CR whose accuracy is within ``max_drop_points`` points of the baseline
    (ties: higher accuracy). Raises RunError when no trial qualifies."""
    if not isinstance(max_drop_points, (int, float)) or not math.isfinite(max_drop_points) or max_drop_points < 0:
        raise ConfigError(f"--max-drop: must be a non-negative number of points (got {max_drop_points!r})")
    b = _baseline_accuracy(run, baseline, "best_within_drop")
    f = front(run, baseline=b)
    ok = f[f["drop"] <= max_drop_points + 1e-9]
    if not len(ok):
        best = f.loc[f["drop"].idxmin()]
        raise RunError(f"no trial within {max_drop_points:g} points of the baseline accuracy {b:.4f} in "
                       f"{_where(run)}; the closest is trial {int(best['trial'])} at {best['drop']:.2f} points")
    return ok.sort_values(["compression_ratio", "accuracy"], ascending=False, kind="stable").iloc[0]


def best_at_cr(run: Run, min_cr: float, *, baseline: Baseline = None) -> pd.Series:
    """The front row with the best accuracy among trials with CR >= ``min_cr`` (ties: higher CR).
    Raises RunError when no trial reaches ``min_cr``."""
    if not isinstance(min_cr, (int, float)) or not math.isfinite(min_cr) or min_cr <= 0:
        raise ConfigError(f"--min-cr: must be a positive number (got {min_cr!r})")
    f = front(run, baseline=baseline)
    ok = f[f["compression_ratio"] >= min_cr]
    if not len(ok):
        raise RunError(f"no trial reaches compression ratio {min_cr:g} in {_where(run)}; the highest is "
                       f"{f['compression_ratio'].max():.2f}")
    return ok.sort_values(["accuracy", "compression_ratio"], ascending=False, kind="stable").iloc[0]


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------
def _plot_data(run: Run, baseline: Baseline) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """(all trials, complete-and-dominated, front sorted by CR, baseline accuracy or NaN)."""
    df = trials_frame(run)
    done = _complete(df, run)
    mask = pareto_mask(done["accuracy"].to_numpy(), done["compression_ratio"].to_numpy())
    on = done[mask].sort_values(["compression_ratio", "accuracy"], ascending=[True, False], kind="stable")
    base = _baseline(run, baseline).get("accuracy")
    base = float(base) if isinstance(base, (int, float)) and not isinstance(base, bool) else math.nan
    return df, done[~mask], on, base


def _counts(df: pd.DataFrame) -> str:
    parts = [f"{int((df['status'] == s).sum())} {s}" for s in ("complete", "pruned", "failed", "running")]
    return ", ".join(p for p in parts if not p.startswith("0 "))


def plot_png(run: Run, path: str | os.PathLike[str], *, baseline: Baseline = None) -> Path:
    """Write the front as a PNG (matplotlib, Agg): dominated complete trials in grey, the front joined by its
    staircase, a log-scale CR axis and the dense baseline accuracy as a dashed line. Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    df, dominated, on, base = _plot_data(run, baseline)
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(dominated):
        ax.scatter(dominated["compression_ratio"], 100 * dominated["accuracy"], s=18, c="0.65",
                   label=f"dominated ({len(dominated)})", zorder=2)
    ax.step(on["compression_ratio"], 100 * on["accuracy"], where="pre", color="tab:blue", lw=1.5, zorder=3)
    ax.scatter(on["compression_ratio"], 100 * on["accuracy"], s=30, c="tab:blue", edgecolors="k", linewidths=0.5,
               label=f"Pareto front ({len(on)})", zorder=4)
    for _, r in on.iterrows():
        ax.annotate(f"#{int(r['trial'])}", (r["compression_ratio"], 100 * r["accuracy"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="0.25")
    if math.isfinite(base):
        ax.axhline(100 * base, color="tab:red", ls="--", lw=1, label=f"dense baseline ({100 * base:.2f}%)")
    ax.set_xscale("log")
    cr = np.concatenate([dominated["compression_ratio"].to_numpy(), on["compression_ratio"].to_numpy()])
    cr = cr[cr > 0]
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}×"))
    # Label the 2×, 3×, 5× minor ticks too when the data spans about a decade or less (else 1×, 10×, 100×…).
    few = cr.size == 0 or np.log10(cr.max() / cr.min()) < 1.2
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label) if few else NullFormatter())
    ax.set_xlabel("compression ratio (×, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Pareto front: {_counts(df)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with _io.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _minor_label(v: float, _pos: int) -> str:
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}×" if round(mantissa) in (2, 3, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _plan_html(plan: Any, max_lines: int = 60) -> str:
    """The plan for a hover label: one line per layer (``name: {json}``), HTML-escaped, ``<br>``-joined."""
    if plan is None or (isinstance(plan, float) and math.isnan(plan)):
        return "(no plan recorded)"

    def js(v: Any) -> str:
        return json.dumps(v, sort_keys=True, default=str)

    if isinstance(plan, Mapping):
        layers = plan.get("layers")
        lines = [f"{k}: {js(v)}" for k, v in layers.items()] if isinstance(layers, Mapping) else []
        lines += [f"{k}: {js(v)}" for k, v in plan.items() if not (k == "layers" and isinstance(layers, Mapping))]
    else:
        lines = [js(plan)]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"… {len(lines) - max_lines} more"]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def plot_html(run: Run, path: str | os.PathLike[str], *, baseline: Baseline = None) -> Path:
    """Write an interactive, fully offline page (plotly.js inlined, no external script): the plot, with hover
    showing trial, accuracy, CR, the format summary and the plan JSON, and a table of the front."""
    import plotly.graph_objects as go

    df, dominated, on, base = _plot_data(run, baseline)

    def trace(part: pd.DataFrame, name: str, **kw: Any) -> Any:
        custom = [[int(r["trial"]), format_summary(r["formats"]), _plan_html(r["plan"])] for _, r in part.iterrows()]
        return go.Scatter(
            x=[float(v) for v in part["compression_ratio"]], y=[100 * float(v) for v in part["accuracy"]],
            name=name, customdata=custom,
            hovertemplate=("trial %{customdata[0]}<br>accuracy %{y:.2f}%<br>CR %{x:.2f}×<br>%{customdata[1]}"
                           "<br><br>%{customdata[2]}<extra></extra>"), **kw)

    fig = go.Figure()
    fig.add_trace(trace(dominated, "dominated", mode="markers", marker={"color": "#a6a6a6", "size": 7}))
    fig.add_trace(trace(on, f"Pareto front ({len(on)})", mode="lines+markers", line={"shape": "vh"},
                        marker={"color": "#1f77b4", "size": 9, "line": {"width": 1, "color": "black"}}))
    if math.isfinite(base):
        fig.add_hline(y=100 * base, line_dash="dash", line_color="#d62728",
                      annotation_text=f"dense baseline {100 * base:.2f}%", annotation_position="bottom right")
    fig.update_layout(title=f"Pareto front: {_counts(df)}", xaxis_title="compression ratio (×, log scale)",
                      yaxis_title="validation accuracy (%)", template="plotly_white", hoverlabel={"align": "left"})
    fig.update_xaxes(type="log")
    plot = fig.to_html(include_plotlyjs=True, full_html=False, config={"displaylogo": False})
    table = _front_frame(df, run, baseline)[list(FRONT_COLUMNS)].to_html(index=False, float_format="%.4g",
                                                                         border=0, classes="front")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>stsearch Pareto front</title>\n"
            "<style>body{font-family:sans-serif;margin:1.5em} table.front{border-collapse:collapse}"
            " table.front td,table.front th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
            "</style></head>\n<body>\n"
            f"<h2>Pareto front of {html.escape(_where(run))}</h2>\n{plot}\n<h3>Front</h3>\n{table}\n</body></html>\n")
    path = Path(path)
    _io.write_text(path, page)
    return path


def write_reports(run: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                  baseline: Baseline = None) -> dict[str, Path]:
    """(Re)write ``pareto.csv``, ``pareto.png`` and ``pareto.html`` into ``out_dir`` (default: the run
    directory), each atomically. Raises RunError, writing nothing, when the run has no complete trial.
    Returns {"csv": path, "png": path, "html": path}."""
    f = front(run, baseline=baseline)  # raises before anything is written
    out = Path(out_dir) if out_dir is not None else Path(run)
    paths = {"csv": out / "pareto.csv", "png": out / "pareto.png", "html": out / "pareto.html"}
    _io.write_text(paths["csv"], f.to_csv(index=False))
    plot_png(run, paths["png"], baseline=baseline)
    plot_html(run, paths["html"], baseline=baseline)
    return paths
