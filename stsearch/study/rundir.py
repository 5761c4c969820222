"""The run directory contract (shared by the search, Ray backend, pareto, export and status)::

    <runs-dir>/<study>/
      study.db                Optuna storage, unless --storage says otherwise
      space.yaml              the resolved search space, CLI overrides applied
      baseline.pt             dense baseline weights (state dict)
      baseline.json           baseline metrics (validation/test accuracy, params, FLOPs, recipe)
      trials/<n>/             plan.json, model.pt, metrics.json, curve.csv
      pareto.csv, pareto.png, pareto.html
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunDir:
    """Paths of one study's run directory."""

    root: Path

    @classmethod
    def of(cls, runs_dir: str | os.PathLike[str], study: str) -> RunDir:
        return cls(Path(runs_dir) / study)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def space_yaml(self) -> Path:
        return self.root / "space.yaml"

    @property
    def baseline_pt(self) -> Path:
        return self.root / "baseline.pt"

    @property
    def baseline_json(self) -> Path:
        return self.root / "baseline.json"

    @property
    def storage_file(self) -> Path:
        return self.root / "storage.json"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / str(number)

    def trial_numbers(self) -> list[int]:
        d = self.root / "trials"
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())

    def baseline(self) -> dict[str, Any]:
        try:
            return json.loads(self.baseline_json.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.root}: no baseline.json; is this a stsearch run directory?") from None
        except json.JSONDecodeError as e:
            raise RunError(f"{self.baseline_json}: corrupt JSON ({e.msg} at line {e.lineno})") from None

    def storage_url(self) -> str:
        """The storage URL recorded for this run (``--storage``), or the default SQLite file."""
        if self.storage_file.exists():
            return json.loads(self.storage_file.read_text())["storage"]
        return f"sqlite:///{self.study_db.resolve()}"


def resolve_storage(storage: str | None, run: RunDir, *, heartbeat: int | None = 30) -> Any:
    """An Optuna storage object for ``storage``.

    ``None``: ``sqlite:///<run>/study.db``. ``journal:PATH``: a JournalStorage on a (shared) file.
    Anything else: an Optuna RDB URL (PostgreSQL for clusters, MySQL, SQLite). RDB storages get a heartbeat,
    so a trial whose worker died is failed after the grace period.
    """
    import optuna

    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run directory {run.root}: {e.strerror or e}") from None
    if storage is None:
        storage = f"sqlite:///{run.study_db.resolve()}"
    if not isinstance(storage, str) or not storage:
        raise RunError(f"--storage: must be an Optuna RDB URL or journal:PATH (got {storage!r})")
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = storage[len("journal:"):]
        if not path:
            raise RunError("--storage: journal: needs a file path, e.g. journal:/shared/study.log")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        except OSError as e:
            raise RunError(f"--storage: cannot open the journal file {path!r}: {e.strerror or e}") from None
    if "://" not in storage:
        raise RunError(f"--storage: {storage!r} is neither an RDB URL (e.g. sqlite:///x.db, "
                       f"postgresql://user@host/db) nor journal:PATH")
    kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if heartbeat:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=4 * heartbeat)
    for attempt in range(SCHEMA_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: "experimental"
                return optuna.storages.RDBStorage(storage, **kwargs)
        except Exception as e:  # noqa: BLE001 - report any driver error with the URL
            # Workers started together on a new database race to create its tables ("table studies already
            # exists", a duplicate alembic_version row); the loser finds them made when it tries again.
            if attempt < SCHEMA_RETRIES and _schema_race(e):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise RunError(f"--storage: cannot open {storage!r}: {e}") from None
    raise AssertionError("unreachable")


SCHEMA_RETRIES = 5


def _schema_race(e: Exception) -> bool:
    text = str(e).lower()
    return "already exists" in text or "alembic_version" in text or "unique constraint" in text
