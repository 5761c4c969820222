"""Search spaces: YAML files in ``search_spaces/``, validated on load into frozen dataclasses.

>>> space = load_space("digits_cnn")            # a shipped space by name, or a path, or a dict
>>> space.trials, space.model.name, space.objectives
(30, 'digits_cnn', ('accuracy', 'compression_ratio'))
>>> space.with_overrides(trials=5).trials
5

Every problem is a :class:`~stsearch.errors.ConfigError` whose message names the file, the field and the bad
value, e.g. ``digits_cnn.yaml: layers[0].rank.min: must be a positive int (got -2)``. The file is validated
as written; :meth:`SearchSpace.with_overrides` validates the result again. Unknown keys are errors at every
level. :meth:`SearchSpace.to_dict` / :meth:`SearchSpace.to_yaml` write the canonical (fully expanded) form,
which loads back to an equal space.

The schema (every key optional except ``layers``; defaults in brackets)::

    model:     NAME | {name, kwargs}                                          [digits_cnn]
    dataset:   SPEC | {name, data_root, download, val_fraction}                [digits]
    baseline:  RECIPE | {checkpoint: PATH} | PATH (kept as a dict)             [{} = engine defaults]
    recipe:    RECIPE (keys: RECIPE_KEYS)                                      [{}]
    init:      decompose | random                                              [decompose]
    layers:    - {match, exclude, formats, shapes, rank, t, share}             (required, non-empty)
    objectives: [accuracy, compression_ratio (, flops)], kept in that order    [accuracy, compression_ratio]
    constraints: {min_compression_ratio, max_accuracy_drop, max_params, max_flops}  [none]
    sampler:   tpe | nsga2 | random | {name, seed, ...options}                 [tpe]
    trials:    int >= 1                                                        [30]
    early_stopping: {enabled, after_epoch, margin}                             [true, 1, 0.05]
    seed:      int in [0, 2**32)                                               [0]
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..formats import FORMATS, get_format

__all__ = [
    "load_space", "default_space_path", "shipped_spaces", "SearchSpace", "LayerGroup", "ModelSpec", "DatasetSpec",
    "RankSpec", "TSpec", "ShapesSpec", "ShapeChoice", "Constraints", "SamplerSpec",
    "EarlyStopping", "ALL_FORMATS", "RECIPE_KEYS", "OBJECTIVES", "SAMPLERS",
]

ALL_FORMATS: tuple[str, ...] = ("dense", *FORMATS)
"""Every name a layer group may list under ``formats``."""

OBJECTIVES: dict[str, str] = {"accuracy": "maximize", "compression_ratio": "maximize", "flops": "minimize"}
"""Known objectives and their Optuna directions."""

SAMPLERS: dict[str, tuple[str, ...]] = {
    "tpe": ("n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar"),
    "nsga2": ("population_size", "mutation_prob", "crossover_prob", "swapping_prob"),
    "random": (),
}
"""Known samplers and the options each accepts besides ``name`` and ``seed``."""

# Recipe key -> accepted kind: "int", "number", "bool", "str", "ints" (list of int); "?" suffix allows null;
# "bool|str" allows either. Values are checked by the training engine; here only names and basic types.
RECIPE_KEYS: dict[str, str] = {
    "optimizer": "str", "lr": "number", "momentum": "number", "nesterov": "bool", "weight_decay": "number",
    "schedule": "str", "epochs": "int", "batch_size": "int", "label_smoothing": "number",
    "warmup_epochs": "number", "milestones": "ints", "gamma": "number", "grad_clip": "number?",
    "amp": "bool|str?", "channels_last": "bool|str?", "augment": "bool",
}

_TOP_KEYS = ("model", "dataset", "baseline", "recipe", "init", "layers", "objectives", "constraints", "sampler",
             "trials", "early_stopping", "seed")
_GROUP_KEYS = ("match", "exclude", "formats", "shapes", "rank", "t", "share")
_MODEL_KEYS = ("name", "kwargs")
_DATASET_KEYS = ("name", "data_root", "download", "val_fraction")
_RANK_KEYS = ("min", "max", "step", "log", "choices")
_T_KEYS = ("values", "mixed")
_SHAPE_KEYS = ("in", "out")
_CONSTRAINT_KEYS = ("min_compression_ratio", "max_accuracy_drop", "max_params", "max_flops")
_EARLY_KEYS = ("enabled", "after_epoch", "margin")
_OVERRIDE_KEYS = (*_TOP_KEYS, "data_root", "download")
_MAX_SEED = 2**32 - 1  # numpy / Optuna seeds
_MAX_NODES = 10_000  # cap on free-form model kwargs (guards against YAML alias bombs and cycles)
_MAX_DEPTH = 32
_MAX_FILE_BYTES = 1 << 20
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlevel, _repr.maxlist, _repr.maxdict = 60, 60, 3, 8, 6
_MISSING: Any = object()


# --------------------------------------------------------------------------------------------------------------
# The validated space
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The model to compress: a registry name and its constructor arguments (JSON-like)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": _deepcopy_json(self.kwargs)}


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset: a registry spec (``digits``, ``cifar10``, ``npz:PATH``…) and how to find and split it."""

    name: str
    data_root: str | None = None
    download: bool = False
    val_fraction: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_root": self.data_root, "download": self.download,
                "val_fraction": self.val_fraction}


@dataclass(frozen=True)
class RankSpec:
    """Allowed ranks: explicit ``choices``, or the int range ``[min, max]`` with ``step`` (or ``log`` spacing)."""

    min: int | None = 2
    max: int | None = 16
    step: int = 1
    log: bool = False
    choices: tuple[int, ...] | None = None

    def contains(self, r: int) -> bool:
        """Whether rank ``r`` is allowed."""
        if self.choices is not None:
            return r in self.choices
        assert self.min is not None and self.max is not None
        return self.min <= r <= self.max and (r - self.min) % self.step == 0

    def values(self) -> tuple[int, ...]:
        """Every allowed rank, ascending (the range form enumerates ``min, min+step, …, ≤ max``)."""
        if self.choices is not None:
            return tuple(sorted(self.choices))
        assert self.min is not None and self.max is not None
        return tuple(range(self.min, self.max + 1, self.step))

    def has_multiple_of(self, t: int) -> bool:
        """Whether some allowed rank is a multiple of ``t`` (computed without enumerating the range)."""
        if self.choices is not None:
            return any(c % t == 0 for c in self.choices)
        assert self.min is not None and self.max is not None
        # Smallest k >= 0 with (min + k*step) % t == 0: solve k*step ≡ -min (mod t).
        g = math.gcd(self.step, t)
        if (-self.min) % g:
            return False
        m = t // g
        k = ((-self.min) // g % m) * pow(self.step // g % m, -1, m) % m if m > 1 else 0
        return self.min + k * self.step <= self.max

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"min": self.min, "max": self.max, "step": self.step, "log": self.log}


@dataclass(frozen=True)
class TSpec:
    """STP factors ``t``: one uniform value per layer from ``values``; ``mixed`` also samples t per core."""

    values: tuple[int, ...] = (1, 2)
    mixed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "mixed": self.mixed}


@dataclass(frozen=True)
class ShapeChoice:
    """One explicit tensorization: the input (channel/feature) factors and the output factors."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"in": list(self.in_shape), "out": list(self.out_shape)}


@dataclass(frozen=True)
class ShapesSpec:
    """How layers are tensorized: ``auto`` (the search enumerates factorisations), ``depth`` (factorise into
    that many factors), or ``explicit`` (one of the listed shapes)."""

    mode: Literal["auto", "depth", "explicit"] = "auto"
    depths: tuple[int, ...] = ()
    choices: tuple[ShapeChoice, ...] = ()

    def to_dict(self) -> Any:
        if self.mode == "auto":
            return "auto"
        if self.mode == "depth":
            return {"depth": list(self.depths)}
        return [c.to_dict() for c in self.choices]


@dataclass(frozen=True)
class LayerGroup:
    """Layers chosen by glob on module names (``fnmatch``, case-sensitive; ``*`` also matches dots) and what
    they may become. ``share``: every matched layer takes the group's single choice; otherwise each chooses."""

    index: int
    match: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    formats: tuple[str, ...] = ALL_FORMATS
    shapes: ShapesSpec = field(default_factory=ShapesSpec)
    rank: RankSpec = field(default_factory=RankSpec)
    t: TSpec = field(default_factory=TSpec)
    share: bool = False

    def matches(self, module_name: str) -> bool:
        """Whether ``module_name`` matches one ``match`` glob and no ``exclude`` glob."""
        return (any(fnmatch.fnmatchcase(module_name, p) for p in self.match)
                and not any(fnmatch.fnmatchcase(module_name, p) for p in self.exclude))

    @property
    def semi_tensor_formats(self) -> tuple[str, ...]:
        """The listed formats that take an STP factor t (sttu, stt, str)."""
        return tuple(f for f in self.formats if f != "dense" and get_format(f).semi_tensor)

    def to_dict(self) -> dict[str, Any]:
        return {"match": list(self.match), "exclude": list(self.exclude), "formats": list(self.formats),
                "shapes": self.shapes.to_dict(), "rank": self.rank.to_dict(), "t": self.t.to_dict(),
                "share": self.share}


@dataclass(frozen=True)
class Constraints:
    """Feasibility limits checked before training (CR, params, FLOPs) or on the result (accuracy drop, as a
    fraction: 0.05 = 5 points below the dense baseline). ``None`` = no limit."""

    min_compression_ratio: float | None = None
    max_accuracy_drop: float | None = None
    max_params: int | None = None
    max_flops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _CONSTRAINT_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class SamplerSpec:
    """The Optuna sampler: ``name`` in :data:`SAMPLERS`, an optional ``seed`` (else the space's seed), and
    sampler-specific ``options`` passed to its constructor."""

    name: str = "tpe"
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_startup_trials(self) -> int:
        """TPE's random start-up trials (Optuna's default 10 unless set)."""
        return int(self.options.get("n_startup_trials", 10))

    @property
    def population_size(self) -> int:
        """NSGA-II's population size as set (50, Optuna's, if not; :meth:`SearchSpace.make_sampler` sizes an unset
        one to the trial budget)."""
        return int(self.options.get("population_size", 50))

    def build(self, default_seed: int | None = None) -> Any:
        """The ``optuna.samplers`` instance (imports Optuna)."""
        import optuna

        seed = self.seed if self.seed is not None else default_seed
        cls = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
               "random": optuna.samplers.RandomSampler}[self.name]
        return cls(seed=seed, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, **self.options}


TPE_DEFAULTS = {"multivariate": True, "group": True, "constant_liar": True}
"""Our spaces are conditional (parameters named per format), which TPE models best with ``group=True``;
``constant_liar`` keeps parallel workers from sampling the same point. A space's sampler options override."""


def nsga2_population(trials: int) -> int:
    """NSGA-II's population when the space sets none: four generations in the trial budget, 8 to 50 each.

    Optuna's default (50) exceeds most of our budgets, and NSGA-II's first generation is random sampling: with
    40 trials it would never leave it (measured: trial for trial the same plans as ``random``).
    """
    return max(8, min(50, int(trials) // 4))


@dataclass(frozen=True)
class EarlyStopping:
    """Stop a trial after epoch ``after_epoch`` when its accuracy is more than ``margin`` (a fraction) below
    what the front already reaches at a CR at least as high."""

    enabled: bool = True
    after_epoch: int = 1
    margin: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "after_epoch": self.after_epoch, "margin": self.margin}


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with :func:`load_space`; derive variants with :meth:`with_overrides`.

    ``name`` (the file stem) and ``source`` (where it was read) label errors and are not part of equality.
    """

    layers: tuple[LayerGroup, ...]
    model: ModelSpec = field(default_factory=lambda: ModelSpec("digits_cnn"))
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec("digits"))
    baseline: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    init: Literal["decompose", "random"] = "decompose"
    objectives: tuple[str, ...] = ("accuracy", "compression_ratio")
    constraints: Constraints = field(default_factory=Constraints)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    trials: int = 30
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    seed: int = 0
    name: str = field(default="space", compare=False)
    source: str | None = field(default=None, compare=False)

    @property
    def layer_groups(self) -> tuple[LayerGroup, ...]:
        """The layer groups, in file order (the first match wins)."""
        return self.layers

    def group_for(self, module_name: str) -> LayerGroup | None:
        """The first group whose globs match ``module_name`` (and do not exclude it), or ``None``."""
        return next((g for g in self.layers if g.matches(module_name)), None)

    @property
    def baseline_checkpoint(self) -> str | None:
        """The baseline checkpoint path when ``baseline`` is ``{checkpoint: PATH}``, else ``None``."""
        return self.baseline.get("checkpoint")

    @property
    def directions(self) -> list[str]:
        """Optuna directions, one per objective in order ("maximize" / "minimize")."""
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def sampler_seed(self) -> int:
        """The sampler's seed: ``sampler.seed`` if given, else the space's ``seed``."""
        return self.sampler.seed if self.sampler.seed is not None else self.seed

    def make_sampler(self, seed: int | None = None) -> Any:
        """The configured ``optuna.samplers`` instance, seeded with ``seed`` (default :attr:`sampler_seed`).

        Options the space leaves unset take our defaults: :data:`TPE_DEFAULTS` for TPE, and for NSGA-II a
        population sized to the trial budget (:func:`nsga2_population`).
        """
        import warnings

        import optuna

        cfg = self.sampler
        seed = self.sampler_seed if seed is None else seed
        options = dict(cfg.options)
        if cfg.name == "tpe":
            options = {**TPE_DEFAULTS, **options}
            if not options.get("multivariate"):
                options.pop("group", None)
        if cfg.name == "nsga2" and "population_size" not in options:
            options["population_size"] = nsga2_population(self.trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SamplerSpec(cfg.name, seed, options).build(seed)

    def to_dict(self) -> dict[str, Any]:
        """The canonical, fully expanded form: plain dicts/lists/scalars that :func:`load_space` reads back to an
        equal space."""
        return {
            "model": self.model.to_dict(),
            "dataset": self.dataset.to_dict(),
            "baseline": _deepcopy_json(self.baseline),
            "recipe": _deepcopy_json(self.recipe),
            "init": self.init,
            "layers": [g.to_dict() for g in self.layers],
            "objectives": list(self.objectives),
            "constraints": self.constraints.to_dict(),
            "sampler": self.sampler.to_dict(),
            "trials": self.trials,
            "early_stopping": self.early_stopping.to_dict(),
            "seed": self.seed,
        }

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML (what a run directory keeps as ``space.yaml``)."""
        header = f"# stsearch search space {self.name!r}, resolved (defaults expanded, overrides applied)\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None,
                                       allow_unicode=True, width=110)

    def with_overrides(self, **overrides: Any) -> SearchSpace:
        """A new validated space with top-level fields replaced; ``None`` values are ignored (unset CLI flags).

        Keys: any top-level key, plus ``data_root`` and ``download`` (dataset fields). Shorthands:
        ``dataset="npz:PATH"`` keeps data_root, download and val_fraction; ``model="name"`` keeps kwargs only
        if the name is unchanged; ``sampler="nsga2"`` keeps the seed and the options the new sampler accepts;
        ``baseline=PATH`` is a checkpoint; ``seed=S`` also replaces an explicit ``sampler.seed``.
        """
        d = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in _OVERRIDE_KEYS:
                _fail(self._label, f"overrides.{key}", f"unknown override{_allowed(key, _OVERRIDE_KEYS)}", value)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if key in ("data_root", "download"):
                d["dataset"][key] = value
            elif key == "dataset" and isinstance(value, str):
                d["dataset"]["name"] = value
            elif key == "model" and isinstance(value, str):
                if value != d["model"]["name"]:
                    d["model"] = {"name": value, "kwargs": {}}
            elif key == "sampler" and isinstance(value, str):
                old = d["sampler"]
                keep = SAMPLERS.get(value, ()) if value != old["name"] else tuple(old)
                d["sampler"] = {"name": value, "seed": old["seed"],
                                **{k: v for k, v in old.items() if k in keep and k not in ("name", "seed")}}
            elif key == "baseline" and isinstance(value, str):
                d["baseline"] = {"checkpoint": value}
            elif key == "seed":
                d["seed"] = value
                if d["sampler"].get("seed") is not None:
                    d["sampler"]["seed"] = value
            else:
                d[key] = value
        return _build(d, f"{self._label} (with overrides)", self.name, self.source)

    @property
    def _label(self) -> str:
        return Path(self.source).name if self.source else self.name


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _repo_spaces_dir() -> Path:
    """The shipped spaces: the repository's ``search_spaces/`` (source or editable install), else the copy a
    wheel installs as data files under ``<prefix>/share/stsearch/search_spaces``."""
    import sys

    import stsearch

    repo = Path(stsearch.__file__).resolve().parents[1] / "search_spaces"
    if repo.is_dir():
        return repo
    return Path(sys.prefix) / "share" / "stsearch" / "search_spaces"


def _space_dirs() -> list[Path]:
    dirs = [Path.cwd() / "search_spaces", _repo_spaces_dir()]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def default_space_path() -> Path:
    """Path of the embedded default space, ``search_spaces/digits_cnn.yaml`` (the shipped copy)."""
    return _repo_spaces_dir() / "digits_cnn.yaml"


def shipped_spaces() -> dict[str, Path]:
    """Space names found in ``./search_spaces`` and the repository's ``search_spaces`` (cwd wins)."""
    found: dict[str, Path] = {}
    for d in _space_dirs():
        for p in sorted(d.glob("*.y*ml")):
            if p.suffix in (".yaml", ".yml"):
                found.setdefault(p.stem, p)
    return found


def _resolve(source: str | os.PathLike[str]) -> tuple[Path, str]:
    """The file to read and the label used in error messages."""
    path = Path(source)
    if path.is_file():
        return path, str(source)
    if path.exists():
        raise ConfigError(f"{source}: a search space must be a YAML file, not a directory")
    if isinstance(source, str) and source and "/" not in source and os.sep not in source:
        stem = source[:-5] if source.endswith(".yaml") else source[:-4] if source.endswith(".yml") else source
        for d in _space_dirs():
            for suffix in (".yaml", ".yml"):
                cand = d / f"{stem}{suffix}"
                if cand.is_file():
                    return cand, cand.name
    names = ", ".join(shipped_spaces()) or "none"
    raise ConfigError(f"search space {str(source)!r} not found: no such file, and no shipped space of that name "
                      f"(shipped: {names})")


def load_space(source: str | os.PathLike[str] | Mapping[str, Any] | SearchSpace, *,
               name: str | None = None) -> SearchSpace:
    """Load and validate a search space.

    source: a YAML path; a shipped space name (``"digits_cnn"``, looked up in ``./search_spaces`` then the
    repository's ``search_spaces``); an already-parsed mapping; or a SearchSpace (returned as is). ``name``
    labels the space (default: the file stem, or ``"space"`` for a mapping). Raises :class:`ConfigError`
    naming the file, field and value.
    """
    if isinstance(source, SearchSpace):
        return source
    if isinstance(source, Mapping):
        label = name or "<dict>"
        return _build(source, label, name or "space", None)
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"load_space: source must be a path, a space name or a mapping (got {_r(source)})")
    path, label = _resolve(source)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ConfigError(f"{label}: file is larger than {_MAX_FILE_BYTES} bytes; not a search space")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{label}: cannot read the file: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{label}: {where}malformed YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{label}: the file is empty; a search space needs at least 'layers'")
    return _build(data, label, name or path.stem, str(path))


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------
def _r(value: Any) -> str:
    return _repr.repr(value)


def _fail(label: str, path: str, problem: str, value: Any = _MISSING) -> Any:
    got = "" if value is _MISSING else f" (got {_r(value)})"
    raise ConfigError(f"{label}: {path}: {problem}{got}")


def _allowed(key: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1) if isinstance(key, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint}; allowed: {', '.join(allowed)}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class _V:
    """Validation context: the label (file) for every message."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, path: str, problem: str, value: Any = _MISSING) -> Any:
        return _fail(self.label, path or "(top level)", problem, value)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, "must be a mapping", value)
        for k in value:
            if not isinstance(k, str):
                self.fail(path, f"keys must be strings{_allowed(k, allowed)}", k)
            if k not in allowed:
                self.fail(_join(path, k), f"unknown key{_allowed(k, allowed)}", value[k])
        return dict(value)

    def int_(self, value: Any, path: str, lo: int | None = None, hi: int | None = None,
             what: str | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or (lo is not None and value < lo) or (
                hi is not None and value > hi):
            if what is None:
                what = ("a positive int" if lo == 1 and hi is None else "a non-negative int" if lo == 0 and hi
                        is None else f"an int in [{lo}, {hi}]" if lo is not None and hi is not None else "an int")
            self.fail(path, f"must be {what}", value)
        return value

    def number(self, value: Any, path: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False, what: str | None = None) -> float | int:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or math.isfinite(value))
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            if what is None:
                lb = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
                ub = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
                what = "a finite number" + (f" {lb}" if lb else "") + (" and" if lb and ub else "") + (
                    f" {ub}" if ub else "")
            self.fail(path, f"must be {what}", value)
        return value

    def bool_(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, "must be true or false", value)
        return value

    def str_(self, value: Any, path: str, what: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be {what}", value)
        return value

    def choice(self, value: Any, path: str, allowed: tuple[str, ...] | list[str]) -> str:
        if not isinstance(value, str) or value not in allowed:
            self.fail(path, f"must be one of {', '.join(allowed)}", value)
        return value

    def list_(self, value: Any, path: str, what: str = "a non-empty list") -> list[Any]:
        if not isinstance(value, (list, tuple)) or not value:
            self.fail(path, f"must be {what}", value)
        return list(value)

    def unique(self, items: list[Any], path: str) -> None:
        seen: list[Any] = []
        for i, v in enumerate(items):
            if v in seen:
                self.fail(f"{path}[{i}]", "is listed twice", v)
            seen.append(v)


def _deepcopy_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deepcopy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deepcopy_json(v) for v in value]
    return value


def _json_like(v: _V, value: Any, path: str, budget: list[int], depth: int = 0) -> Any:
    """A copy of ``value`` made of str-keyed dicts, lists and scalars (tuples become lists); bounded in size
    and depth (YAML anchors can make huge or cyclic structures)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        v.fail(path.split("[")[0] if depth > _MAX_DEPTH else path,
               f"is too large or self-referencing (more than {_MAX_NODES} values or {_MAX_DEPTH} levels)")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            v.fail(path, "must be a finite number", value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, item in value.items():
            if not isinstance(k, str):
                v.fail(path, "keys must be strings", k)
            out[k] = _json_like(v, item, _join(path, k), budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_like(v, item, f"{path}[{i}]", budget, depth + 1) for i, item in enumerate(value)]
    return v.fail(path, "must be made of mappings, lists, strings, numbers, booleans and nulls", value)


# --------------------------------------------------------------------------------------------------------------
# Section validators
# --------------------------------------------------------------------------------------------------------------
def _model(v: _V, value: Any) -> ModelSpec:
    if isinstance(value, str):
        return ModelSpec(v.str_(value, "model", "a non-empty model name"))
    d = v.mapping(value, "model", _MODEL_KEYS)
    if "name" not in d:
        v.fail("model.name", "is required (a model registry name)")
    name = v.str_(d["name"], "model.name", "a non-empty model name")
    kwargs = d.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        v.fail("model.kwargs", "must be a mapping of constructor arguments", kwargs)
    return ModelSpec(name, _json_like(v, kwargs, "model.kwargs", [_MAX_NODES]))


def _dataset(v: _V, value: Any) -> DatasetSpec:
    d = {"name": value} if isinstance(value, str) else v.mapping(value, "dataset", _DATASET_KEYS)
    if "name" not in d:
        v.fail("dataset.name", "is required (e.g. digits, cifar10, npz:PATH)")
    name = v.str_(d["name"], "dataset.name", "a non-empty dataset spec (e.g. digits, cifar10, npz:PATH)")
    if ":" in name and not name.split(":", 1)[1].strip():
        v.fail("dataset.name", "names a source without a path (write e.g. npz:/data/x.npz)", name)
    root = d.get("data_root")
    if root is not None:
        v.str_(root, "dataset.data_root", "a directory path or null")
    download = v.bool_(d.get("download", False), "dataset.download")
    val = v.number(d.get("val_fraction", 0.1), "dataset.val_fraction", 0, 1, lo_open=True, hi_open=True,
                   what="a fraction in (0, 1)")
    return DatasetSpec(name, root, download, val)


def _recipe(v: _V, value: Any, path: str) -> dict[str, Any]:
    d = v.mapping(value if value is not None else {}, path, tuple(RECIPE_KEYS))
    out: dict[str, Any] = {}
    for k, raw in d.items():
        kind = RECIPE_KEYS[k]
        p = f"{path}.{k}"
        if raw is None and kind.endswith("?"):
            out[k] = None
            continue
        kind = kind.rstrip("?")
        if kind == "int":
            out[k] = v.int_(raw, p, what="an int")
        elif kind == "number":
            out[k] = v.number(raw, p)
        elif kind == "bool":
            out[k] = v.bool_(raw, p)
        elif kind == "str":
            out[k] = v.str_(raw, p)
        elif kind == "bool|str":
            if not isinstance(raw, (bool, str)):
                v.fail(p, "must be true, false, null or a string", raw)
            out[k] = raw
        else:  # ints
            if not isinstance(raw, (list, tuple)):
                v.fail(p, "must be a list of ints", raw)
            out[k] = [v.int_(x, f"{p}[{i}]", what="an int") for i, x in enumerate(raw)]
    return out


def _baseline(v: _V, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"checkpoint": v.str_(value, "baseline", "a checkpoint path")}
    if isinstance(value, Mapping) and "checkpoint" in value:
        extra = [k for k in value if k != "checkpoint"]
        if extra:
            v.fail(f"baseline.{extra[0]}", "cannot be combined with baseline.checkpoint (a checkpoint is not "
                   "trained)", value[extra[0]])
        return {"checkpoint": v.str_(value["checkpoint"], "baseline.checkpoint", "a checkpoint path")}
    if value is not None and not isinstance(value, Mapping):
        v.fail("baseline", "must be a recipe mapping, {checkpoint: PATH} or a checkpoint path", value)
    return _recipe(v, value, "baseline")


def _rank(v: _V, value: Any, path: str) -> RankSpec:
    if isinstance(value, int) and not isinstance(value, bool):
        return RankSpec(min=None, max=None, choices=(v.int_(value, path, 1),))
    d = v.mapping(value, path, _RANK_KEYS)
    if "choices" in d:
        extra = [k for k in d if k != "choices"]
        if extra:
            v.fail(f"{path}.{extra[0]}", "cannot be combined with choices", d[extra[0]])
        items = v.list_(d["choices"], f"{path}.choices", "a non-empty list of positive ints")
        choices = tuple(v.int_(c, f"{path}.choices[{i}]", 1) for i, c in enumerate(items))
        v.unique(list(choices), f"{path}.choices")
        return RankSpec(min=None, max=None, choices=choices)
    lo = v.int_(d.get("min", 2), f"{path}.min", 1)
    hi = v.int_(d.get("max", 16), f"{path}.max", 1)
    if lo > hi:
        v.fail(f"{path}.max", f"must be >= {path}.min ({lo})", hi)
    step = v.int_(d.get("step", 1), f"{path}.step", 1)
    log = v.bool_(d.get("log", False), f"{path}.log")
    if log and step != 1:
        v.fail(f"{path}.step", "must be 1 when log is true (Optuna cannot combine them)", step)
    return RankSpec(min=lo, max=hi, step=step, log=log)


def _t(v: _V, value: Any, path: str) -> TSpec:
    mixed = False
    if isinstance(value, Mapping):
        d = v.mapping(value, path, _T_KEYS)
        if "values" not in d:
            v.fail(f"{path}.values", "is required (the t values to choose from)")
        mixed = v.bool_(d.get("mixed", False), f"{path}.mixed")
        value, path_v = d["values"], f"{path}.values"
    else:
        path_v = path
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    items = v.list_(value, path_v, "a non-empty list of positive ints")
    values = tuple(v.int_(x, f"{path_v}[{i}]", 1) for i, x in enumerate(items))
    v.unique(list(values), path_v)
    return TSpec(values, mixed)


def _shapes(v: _V, value: Any, path: str) -> ShapesSpec:
    if value == "auto":
        return ShapesSpec("auto")
    if isinstance(value, Mapping):
        d = v.mapping(value, path, ("depth",))
        if "depth" not in d:
            v.fail(f"{path}.depth", "is required (e.g. {depth: [1, 2]})")
        depth = d["depth"]
        if isinstance(depth, int) and not isinstance(depth, bool):
            depth = [depth]
        items = v.list_(depth, f"{path}.depth", "a positive int or a non-empty list of them")
        depths = tuple(v.int_(x, f"{path}.depth[{i}]", 1) for i, x in enumerate(items))
        v.unique(list(depths), f"{path}.depth")
        return ShapesSpec("depth", depths=depths)
    if isinstance(value, (list, tuple)) and value:
        choices = []
        for i, item in enumerate(value):
            p = f"{path}[{i}]"
            d = v.mapping(item, p, _SHAPE_KEYS)
            dims = {}
            for k in _SHAPE_KEYS:
                if k not in d:
                    v.fail(f"{p}.{k}", "is required (a list of positive ints whose product is the channel count)")
                seq = v.list_(d[k], f"{p}.{k}", "a non-empty list of positive ints")
                dims[k] = tuple(v.int_(x, f"{p}.{k}[{j}]", 1) for j, x in enumerate(seq))
            choices.append(ShapeChoice(dims["in"], dims["out"]))
        v.unique(choices, path)
        return ShapesSpec("explicit", choices=tuple(choices))
    return v.fail(path, "must be 'auto', {depth: [..]} or a non-empty list of {in: [..], out: [..]}", value)


def _globs(v: _V, value: Any, path: str, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        v.fail(path, "must be a glob or a " + ("" if allow_empty else "non-empty ") + "list of globs", value)
    return tuple(v.str_(x, f"{path}[{i}]", "a non-empty glob") for i, x in enumerate(value))


def _group(v: _V, value: Any, index: int) -> LayerGroup:
    path = f"layers[{index}]"
    d = v.mapping(value, path, _GROUP_KEYS)
    if "match" not in d:
        v.fail(f"{path}.match", "is required (a glob or a list of globs on module names)")
    match = _globs(v, d["match"], f"{path}.match", allow_empty=False)
    exclude = _globs(v, d.get("exclude", []), f"{path}.exclude", allow_empty=True)
    fmts = d.get("formats", list(ALL_FORMATS))
    if isinstance(fmts, str):
        fmts = [fmts]
    items = v.list_(fmts, f"{path}.formats", f"a non-empty list of formats ({', '.join(ALL_FORMATS)})")
    formats = tuple(v.choice(f, f"{path}.formats[{i}]", ALL_FORMATS) for i, f in enumerate(items))
    v.unique(list(formats), f"{path}.formats")
    shapes = _shapes(v, d.get("shapes", "auto"), f"{path}.shapes")
    rank = _rank(v, d["rank"], f"{path}.rank") if "rank" in d else RankSpec()
    t = _t(v, d["t"], f"{path}.t") if "t" in d else TSpec()
    share = v.bool_(d.get("share", False), f"{path}.share")
    group = LayerGroup(index, match, exclude, formats, shapes, rank, t, share)
    if group.semi_tensor_formats:
        for tv in t.values:
            if not rank.has_multiple_of(tv):
                v.fail(f"{path}.t", f"t={tv} divides no rank allowed by {path}.rank {rank.to_dict()}; the "
                       f"semi-tensor formats ({', '.join(group.semi_tensor_formats)}) need ranks that are "
                       f"multiples of t", list(t.values))
    return group


def _objectives(v: _V, value: Any) -> tuple[str, ...]:
    items = v.list_(value, "objectives", f"a non-empty list of objectives ({', '.join(OBJECTIVES)})")
    objs = tuple(v.choice(o, f"objectives[{i}]", tuple(OBJECTIVES)) for i, o in enumerate(items))
    v.unique(list(objs), "objectives")
    for needed in ("accuracy", "compression_ratio"):
        if needed not in objs:
            v.fail("objectives", f"must include {needed}", list(objs))
    # Canonical order (accuracy, compression_ratio[, flops]): study values[0] / values[1] are always these.
    return tuple(o for o in OBJECTIVES if o in objs)


def _constraints(v: _V, value: Any) -> Constraints:
    d = v.mapping(value if value is not None else {}, "constraints", _CONSTRAINT_KEYS)
    out: dict[str, Any] = {}
    for k, raw in d.items():
        if raw is None:
            continue
        p = f"constraints.{k}"
        if k == "min_compression_ratio":
            out[k] = v.number(raw, p, 0, lo_open=True, what="a positive number")
        elif k == "max_accuracy_drop":
            out[k] = v.number(raw, p, 0, 1, what="a fraction in [0, 1] (0.05 = 5 points)")
        elif k == "max_params":
            out[k] = v.int_(raw, p, 1)
        else:
            out[k] = v.number(raw, p, 0, lo_open=True, what="a positive number")
    return Constraints(**out)


def _sampler(v: _V, value: Any) -> SamplerSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        v.fail("sampler", f"must be a sampler name ({', '.join(SAMPLERS)}) or a mapping", value)
    name = v.choice(value.get("name", "tpe"), "sampler.name", tuple(SAMPLERS))
    d = v.mapping(value, "sampler", ("name", "seed", *SAMPLERS[name]))
    seed = d.get("seed")
    if seed is not None:
        v.int_(seed, "sampler.seed", 0, _MAX_SEED)
    opts: dict[str, Any] = {}
    for k, raw in d.items():
        p = f"sampler.{k}"
        if k in ("name", "seed"):
            continue
        if k in ("multivariate", "group", "constant_liar"):
            opts[k] = v.bool_(raw, p)
        elif k == "n_startup_trials":
            opts[k] = v.int_(raw, p, 0)
        elif k == "n_ei_candidates":
            opts[k] = v.int_(raw, p, 1)
        elif k == "population_size":
            opts[k] = v.int_(raw, p, 2, what="an int >= 2")
        elif k == "mutation_prob" and raw is None:
            opts[k] = None
        else:  # probabilities
            opts[k] = v.number(raw, p, 0, 1, what="a probability in [0, 1]")
    if opts.get("group") and not opts.get("multivariate"):
        v.fail("sampler.group", "needs multivariate: true", True)
    return SamplerSpec(name, seed, opts)


def _early(v: _V, value: Any) -> EarlyStopping:
    d = v.mapping(value if value is not None else {}, "early_stopping", _EARLY_KEYS)
    return EarlyStopping(
        enabled=v.bool_(d.get("enabled", True), "early_stopping.enabled"),
        after_epoch=v.int_(d.get("after_epoch", 1), "early_stopping.after_epoch", 1),
        margin=v.number(d.get("margin", 0.05), "early_stopping.margin", 0, 1,
                        what="a fraction in [0, 1] (0.05 = 5 points)"),
    )


def _build(data: Any, label: str, name: str, source: str | None) -> SearchSpace:
    v = _V(label)
    if not isinstance(data, Mapping):
        v.fail("", "a search space must be a mapping of keys (model, dataset, …, layers)", data)
    d = v.mapping(data, "", _TOP_KEYS)
    if "layers" not in d:
        v.fail("layers", "is required: a non-empty list of layer groups, e.g. [{match: '*'}]")
    # Sections in the canonical order, so the first problem reported is the first one in a canonical file.
    model = _model(v, d.get("model", "digits_cnn"))
    dataset = _dataset(v, d.get("dataset", "digits"))
    baseline = _baseline(v, d.get("baseline"))
    recipe = _recipe(v, d.get("recipe"), "recipe")
    init = v.choice(d.get("init", "decompose"), "init", ("decompose", "random"))
    groups = v.list_(d["layers"], "layers", "a non-empty list of layer groups")
    layers = tuple(_group(v, g, i) for i, g in enumerate(groups))
    return SearchSpace(
        layers=layers,
        model=model,
        dataset=dataset,
        baseline=baseline,
        recipe=recipe,
        init=init,  # type: ignore[arg-type]
        objectives=_objectives(v, d.get("objectives", ["accuracy", "compression_ratio"])),
        constraints=_constraints(v, d.get("constraints")),
        sampler=_sampler(v, d.get("sampler", "tpe")),
        trials=v.int_(d.get("trials", 30), "trials", 1),
        early_stopping=_early(v, d.get("early_stopping")),
        seed=v.int_(d.get("seed", 0), "seed", 0, _MAX_SEED),
        name=name,
        source=source,
    )
