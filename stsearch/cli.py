"""The ``stsearch`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import StsearchError


def _search(a: argparse.Namespace) -> int:
    from .study import search

    extra = {}
    if a.backend == "ray":
        extra = {k: v for k, v in dict(address=a.address, cpus_per_trial=a.cpus_per_trial,
                                       gpus_per_trial=a.gpus_per_trial, concurrency=a.concurrency).items()
                 if v is not None}
    search(a.space, trials=a.trials, study=a.study, runs_dir=a.runs_dir, storage=a.storage, sampler=a.sampler,
           seed=a.seed, timeout=a.timeout, dataset=a.dataset, data_root=a.data_root,
           download=True if a.download else None, baseline=a.baseline, device=a.device, backend=a.backend,
           progress=not a.quiet, verbose=a.verbose, **extra)
    return 0


def _pareto(a: argparse.Namespace) -> int:
    from .pareto import format_front, front, write_reports
    from .study.reports import resolve_run

    run = resolve_run(a.run, runs_dir=a.runs_dir, storage=a.storage)
    paths = write_reports(run)
    df = front(run, latency=not a.no_latency)
    if a.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif a.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2, force_ascii=False) + "\n")
    else:
        base = run / "baseline.json"
        print(f"Pareto front of {run.name!r} ({len(df)} trials)" + (
            "; latency: batch 1, one thread, median" if not a.no_latency else "") + (
            "" if base.exists() else "; no baseline.json, so no drop"))
        print(format_front(df))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _export(a: argparse.Namespace) -> int:
    from .export import export

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not a.quiet else None
    res = export(a.run, a.out, trial=a.trial, max_drop=a.max_drop, min_cr=a.min_cr,
                 finetune_epochs=a.finetune_epochs, runs_dir=a.runs_dir, storage=a.storage, device=a.device,
                 data_root=a.data_root, onnx=not a.no_onnx, log=log)
    print(res.summary())
    return 0


def _status(a: argparse.Namespace) -> int:
    import json

    from .study.reports import format_status, format_status_table, list_status, status

    if a.run is not None:
        st = status(a.run, runs_dir=a.runs_dir, storage=a.storage)
        print(json.dumps(st.to_dict(), indent=2, default=str) if a.format == "json" else format_status(st))
    else:
        sts = list_status(a.runs_dir, storage=a.storage)
        if a.format == "json":
            print(json.dumps([s.to_dict() for s in sts], indent=2, default=str))
        else:
            print(format_status_table(sts))
    return 0


def _dashboard(a: argparse.Namespace) -> int:
    from .study.reports import dashboard_server

    server, url = dashboard_server(a.run, host=a.host, port=a.port, runs_dir=a.runs_dir, storage=a.storage)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {a.host}: anyone who can reach it can read and edit the study "
              "(optuna-dashboard has no login)", file=sys.stderr)
    print(f"optuna-dashboard: {url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default="runs", help="where run directories live (default: ./runs)")
    p.add_argument("--storage", help="storage URL when RUN is a study name stored elsewhere")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stsearch", description="Search tensor-decomposition compressions of a "
                                "neural network and export the best one.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run or resume a search; prints the Pareto front and writes plots")
    s.add_argument("space", nargs="?", default=None,
                   help="search space YAML or a shipped name (default: the embedded digits_cnn space)")
    s.add_argument("--trials", type=int, help="finished trials to reach (complete + pruned + failed)")
    s.add_argument("--study", help="study name (default: the space's name)")
    s.add_argument("--runs-dir", default="runs", help="where run directories live (default: ./runs)")
    s.add_argument("--storage", help="Optuna RDB URL or journal:PATH (default: sqlite in the run directory)")
    s.add_argument("--sampler", choices=["tpe", "nsga2", "random"])
    s.add_argument("--seed", type=int)
    s.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    s.add_argument("--dataset", help="dataset spec, e.g. digits, fashion-mnist, cifar10, npz:PATH, imagefolder:PATH")
    s.add_argument("--data-root", help="folder holding torchvision datasets")
    s.add_argument("--download", action="store_true", help="let torchvision download the dataset (online only)")
    s.add_argument("--baseline", help="dense baseline checkpoint (state dict) instead of training one")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    s.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    s.add_argument("--address", help="Ray: cluster address (auto or ray://host:port); default starts a local Ray")
    s.add_argument("--cpus-per-trial", type=float)
    s.add_argument("--gpus-per-trial", type=float)
    s.add_argument("--concurrency", type=int, help="Ray: trials running at once")
    s.add_argument("--quiet", action="store_true", help="no progress display or table")
    s.add_argument("--verbose", action="store_true", help="show training progress and backend logs")
    s.set_defaults(func=_search)

    r = sub.add_parser("pareto", help="print the Pareto front of a run and (re)write pareto.csv/png/html")
    r.add_argument("run", help="run directory, or a study name under --runs-dir")
    _run_args(r)
    r.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), or csv / json on stdout")
    r.add_argument("--no-latency", action="store_true", help="skip measuring latency of front members")
    r.set_defaults(func=_pareto)

    e = sub.add_parser("export", help="export one trial: model.pt, plan.json, metrics.json, model.onnx, README.md")
    e.add_argument("run", help="run directory, or a study name under --runs-dir")
    e.add_argument("--out", required=True, help="export directory (created; its files are replaced)")
    pick = e.add_mutually_exclusive_group()
    pick.add_argument("--trial", type=int, help="this trial number (must be complete)")
    pick.add_argument("--max-drop", type=float, metavar="PP",
                      help="highest CR within PP accuracy points of the baseline (default: the space's allowed "
                           "drop, else 1 point)")
    pick.add_argument("--min-cr", type=float, metavar="X", help="best accuracy among trials with CR >= X")
    e.add_argument("--finetune-epochs", type=int, metavar="E", help="train E more epochs with the space's recipe")
    _run_args(e)
    e.add_argument("--device", default="auto", help="for evaluation and fine-tuning: auto, cpu, cuda, mps")
    e.add_argument("--data-root", help="folder holding torchvision datasets (default: the space's)")
    e.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")
    e.add_argument("--quiet", action="store_true", help="no progress messages")
    e.set_defaults(func=_export)

    t = sub.add_parser("status", help="progress of a run (works while it runs), or of every study in --runs-dir")
    t.add_argument("run", nargs="?", default=None, help="run directory or study name (default: list all)")
    _run_args(t)
    t.add_argument("--format", choices=["table", "json"], default="table")
    t.set_defaults(func=_status)

    d = sub.add_parser("dashboard", help="serve optuna-dashboard for a run (127.0.0.1 by default)")
    d.add_argument("run", help="run directory or study name")
    _run_args(d)
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    d.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    d.set_defaults(func=_dashboard)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StsearchError as e:
        print("stsearch: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission error: name the file, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"stsearch: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stsearch: interrupted; finished trials are kept, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
