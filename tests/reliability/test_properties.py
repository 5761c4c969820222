"""Property-based hostile input: random and malformed spaces, plans and CLI argument lists thrown at the validators.

The only allowed outcomes are success or the project's own error (:class:`StsearchError`) with a message that
names where the problem is; for the CLI, argparse's own usage exit (2), ``--help`` (0), a return code with one
``stsearch: error:`` line, or reaching the point where training would start (patched to stop there). Never a raw
traceback, never a hang (each example runs under a SIGALRM guard). Outcomes are tallied with ``hypothesis.event``:
``pytest tests/reliability/test_properties.py --hypothesis-show-statistics`` prints them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import stsearch.study.reports
import stsearch.study.runner
from stsearch import compress, models, profile
from stsearch.cli import main
from stsearch.errors import StsearchError
from stsearch.plan import CompressionPlan
from stsearch.study.sampling import suggest_plan
from stsearch.study.space import ALL_FORMATS, SearchSpace, load_space
from stsearch.surgery import estimate_params, validate_plan

from ._common import no_hang

SCALE = float(os.environ.get("STSEARCH_HYPOTHESIS_SCALE", "1"))
EXAMPLES = {k: max(1, int(v * SCALE)) for k, v in
            {"spaces": 300, "yaml": 150, "plans": 300, "plan_json": 150, "cli": 120}.items()}
"""max_examples per property; ``STSEARCH_HYPOTHESIS_SCALE=10`` runs ten times more of each."""

MODEL = models.create("digits_cnn")

# ----------------------------------------------------------------------------------------------- values
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "dense", "tt", "str", "stt", "tr", "tucker", "sttu", "*", "conv*", "fc", "1e-3",
                     "nan", ".inf", "digits", "npz:", "npz:x.npz", "cifar10", "tpe", "nsga2", "random"]),
)
plausible = st.one_of(
    st.integers(-2, 40), st.lists(st.integers(-1, 20), max_size=4), st.sampled_from(list(ALL_FORMATS)),
    st.lists(st.sampled_from([*ALL_FORMATS, "dense", "bogus"]), max_size=4), st.booleans(),
    st.floats(-1, 2), st.sampled_from(["auto", "conv*", "fc", "*", "nsga2", "random", "tpe", "flops", "accuracy"]),
    st.fixed_dictionaries({}, optional={"min": st.integers(-1, 20), "max": st.integers(-1, 20),
                                        "step": st.integers(0, 4), "log": st.booleans(),
                                        "choices": st.lists(st.integers(0, 12), max_size=4)}),
    st.fixed_dictionaries({}, optional={"values": st.lists(st.integers(0, 5), max_size=3), "mixed": st.booleans(),
                                        "depth": st.lists(st.integers(0, 4), max_size=3) | st.integers(0, 4)}),
)
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=12)

BASE: dict[str, Any] = {
    "model": {"name": "digits_cnn", "kwargs": {}},
    "dataset": {"name": "digits", "val_fraction": 0.1},
    "baseline": {"epochs": 2, "lr": 0.05},
    "recipe": {"epochs": 1, "lr": 0.01, "batch_size": 64, "milestones": [1]},
    "init": "decompose",
    "layers": [
        {"match": ["conv2", "conv3"], "exclude": [], "formats": ["tucker", "tt", "tr", "sttu", "stt", "str"],
         "shapes": {"depth": [1, 2]}, "rank": {"min": 2, "max": 8, "step": 2}, "t": {"values": [1, 2],
                                                                                      "mixed": True},
         "share": False},
        {"match": "fc", "formats": ["dense", "tt", "str"], "shapes": [{"in": [16, 8], "out": [2, 5]}],
         "rank": {"choices": [2, 4]}, "t": [1, 2], "share": True},
    ],
    "objectives": ["accuracy", "compression_ratio"],
    "constraints": {"min_compression_ratio": 1.5, "max_accuracy_drop": 0.05},
    "sampler": {"name": "tpe", "n_startup_trials": 5},
    "trials": 10,
    "early_stopping": {"enabled": True, "after_epoch": 1, "margin": 0.05},
    "seed": 0,
}


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(BASE)
EXTRA_KEYS = ["typo", "formats", "rank", "t", "match", "name", "kwargs", "min", "max", "values", "depth", "in",
              "out", "lr", "checkpoint", "choices", "mixed", "step", "log", "layers", "seed"]


@st.composite
def mutated_spaces(draw: st.DrawFn) -> Any:
    """The valid BASE with 1-4 mutations: a value replaced, a key dropped or added, a section swapped."""
    import copy

    d: Any = copy.deepcopy(BASE)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            key = path[-1]
            parent[key]  # noqa: B018 - still there after an earlier mutation?
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, (dict, list)):
            continue
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "wrap"]))
        if op == "replace":
            parent[key] = draw(plausible if draw(st.booleans()) else json_like)
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(EXTRA_KEYS) | st.text(max_size=6))] = draw(json_like)
        elif op == "wrap":
            parent[key] = [parent[key]] if draw(st.booleans()) else {"value": parent[key]}
    if draw(st.integers(0, 9)):
        return d
    whole = draw(json_like)  # the whole document replaced (a string would be read as a path: see the YAML test)
    return [whole] if isinstance(whole, str) else whole


def _space_outcome(source: Any) -> SearchSpace | None:
    with no_hang(30):
        try:
            sp = load_space(source, name="prop")
        except StsearchError as e:
            msg = str(e)
            assert msg and "prop" in msg.split(":")[0] or msg.startswith(("load_space", "search space")), msg
            event(f"refused: {type(e).__name__}")
            return None
    event("accepted")
    assert isinstance(sp, SearchSpace)
    assert load_space(yaml.safe_load(sp.to_yaml()), name="prop") == sp  # canonical form round-trips
    return sp


@settings(max_examples=EXAMPLES["spaces"], deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_spaces())
def test_random_spaces_are_accepted_or_refused_with_a_config_error(d: Any) -> None:
    sp = _space_outcome(d)
    if sp is None or sp.model.name != "digits_cnn":
        return
    # An accepted space samples only valid plans (or prunes the trial with its reason).
    ctx = SimpleNamespace(space=sp, baseline_model=MODEL)
    study = optuna.create_study(directions=sp.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        with no_hang(30):
            try:
                plan = suggest_plan(trial, ctx)
            except optuna.TrialPruned as e:
                assert str(e).startswith("no valid")
                event("sampled: pruned (no valid spec)")
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
        validate_plan(MODEL, plan)
        event("sampled: valid plan")
        study.tell(trial, [0.5, estimate_params(MODEL, plan)["compression_ratio"]][: len(sp.directions)]
                   + [1.0] * (len(sp.directions) - 2))


yaml_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda d: yaml.safe_dump(d, default_flow_style=True), mutated_spaces()),
    st.builds(lambda s, i, junk: s[:i] + junk + s[i:],
              st.just(yaml.safe_dump(BASE, sort_keys=False)), st.integers(0, 900),
              st.sampled_from(["\t", ":", "- ", "{", "]", "&a", "*a", "!!python/object:os.system", "!!binary",
                               "\x00", "\ufeff", "'", '"', "%YAML 9.9\n", "---\n", "...\n", "? "])),
)


@settings(max_examples=EXAMPLES["yaml"], deadline=None, suppress_health_check=list(HealthCheck))
@given(yaml_text)
def test_random_yaml_files_are_accepted_or_refused_with_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                                        text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "prop.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # lone surrogates: not a file anyone can write
        return
    _space_outcome(path)


# ------------------------------------------------------------------------------------------------ plans
MODULES = ["conv1", "conv2", "conv3", "fc", "bn1", "pool", "", "features.0", "conv2.weight"]
spec_values = st.one_of(
    st.sampled_from(["dense", "tt", "bogus"]),
    st.fixed_dictionaries(
        {"format": st.sampled_from([*ALL_FORMATS, "TT", "svd", ""]) | scalars},
        optional={"rank": st.integers(-2, 20) | st.lists(st.integers(-1, 20) | st.none(), max_size=6) | scalars,
                  "t": st.integers(-1, 5) | st.lists(st.integers(0, 5), max_size=6) | scalars,
                  "in_shape": st.lists(st.integers(0, 33), max_size=4) | scalars,
                  "out_shape": st.lists(st.integers(0, 33), max_size=4) | scalars,
                  "implementation": st.sampled_from(["auto", "factorized", "reconstructed", "fast"]),
                  "unknown": scalars}),
    json_like,
)
small = st.integers(1, 12)
plausible_specs = st.fixed_dictionaries(
    {"format": st.sampled_from(list(ALL_FORMATS))},
    optional={"rank": small | st.lists(small, min_size=1, max_size=5),
              "t": st.integers(1, 4) | st.lists(st.integers(1, 4), min_size=1, max_size=4),
              "in_shape": st.lists(st.sampled_from([1, 2, 4, 8, 16]), min_size=1, max_size=3),
              "out_shape": st.lists(st.sampled_from([1, 2, 4, 5, 8, 10, 16, 32]), min_size=1, max_size=3)})
plans = st.one_of(
    st.dictionaries(st.sampled_from(["conv1", "conv2", "conv3", "fc"]), plausible_specs, max_size=4),
    st.dictionaries(st.sampled_from(MODULES) | st.text(max_size=6), spec_values, max_size=5),
    json_like,
)


@settings(max_examples=EXAMPLES["plans"], deadline=None, suppress_health_check=list(HealthCheck))
@given(plans)
def test_random_plans_are_accepted_or_refused_with_a_config_error(d: Any) -> None:
    with no_hang(30):
        try:
            plan = CompressionPlan.from_dict(d)
        except StsearchError as e:
            assert str(e).startswith(("plan", "LayerSpec")), str(e)
            event(f"from_dict refused: {type(e).__name__}")
            return
        assert CompressionPlan.from_json(plan.to_json()).to_dict() == plan.to_dict()
        try:
            validate_plan(MODEL, plan)
        except StsearchError as e:
            assert str(e).startswith("plan"), str(e)
            event(f"validate_plan refused: {type(e).__name__}")
            return
        est = estimate_params(MODEL, plan)
        assert est["params"] > 0 and math.isfinite(est["compression_ratio"]) and est["compression_ratio"] > 0
        net = compress(MODEL, plan, init="random", seed=0)
        assert profile(net, (1, 8, 8)).params == est["params"]
    event("accepted, built and counted")


@settings(max_examples=EXAMPLES["plan_json"], deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=80), st.builds(lambda d: __import__("json").dumps(d), plans)))
def test_random_plan_json_is_parsed_or_refused_with_a_config_error(text: str) -> None:
    try:
        CompressionPlan.from_json(text)
    except StsearchError as e:
        assert str(e).startswith(("plan", "LayerSpec")), str(e)
        event(f"refused: {type(e).__name__}")
        return
    event("parsed")


# -------------------------------------------------------------------------------------------------- CLI
class Reached(Exception):  # noqa: N818 - a sentinel, not an error
    """Validation passed: the search would now load the data and train."""


FLAG_VALUES: dict[str, Any] = {
    "--trials": st.sampled_from(["0", "-1", "3", "1e3", "x", "", "99999999999999999999"]),
    "--study": st.sampled_from(["ok", "..", ".", "a/b", "", " ", "x\x00y", "../up", "ünï", "a\\b", "-s"])
    | st.text(max_size=8),
    "--runs-dir": st.sampled_from(["runs", "afile", "afile/sub", "", "new/deeper", "."]),
    "--storage": st.sampled_from(["journal:", "journal:afile/x", "journal:j.log", "nope", "foo://bar",
                                  "sqlite://", "sqlite:///afile/x.db", "sqlite:///db.sqlite", "mysql+x://"])
    | st.text(max_size=8).filter(lambda s: ":" not in s),
    "--sampler": st.sampled_from(["tpe", "nsga2", "random", "cmaes", ""]),
    "--seed": st.sampled_from(["0", "-1", "4294967296", "7", "1.5", "nan"]),
    "--timeout": st.sampled_from(["nan", "inf", "-1", "0", "1e-9", "60", "x", "1e309"]),
    "--dataset": st.sampled_from(["digits", "npz:", "npz:missing.npz", "imagefolder:afile", "cifar10", "", ":",
                                  "mnist", "nope"]) | st.text(max_size=8).filter(lambda s: "/" not in s),
    "--data-root": st.sampled_from(["afile", "missing", "."]),
    "--baseline": st.sampled_from(["afile", "missing.pt", "evil.pt", ""]),
    "--device": st.sampled_from(["auto", "cpu", "cuda", "cuda:9", "mps", "tpu", ""]),
    "--backend": st.sampled_from(["optuna", "ray", "spark", ""]),
    "--address": st.sampled_from(["auto", "ray://nohost:1", ""]),
    "--concurrency": st.sampled_from(["0", "-2", "2", "x"]),
    "--cpus-per-trial": st.sampled_from(["0", "-1", "0.5", "nan"]),
    "--gpus-per-trial": st.sampled_from(["0", "-1", "0.5"]),
    "--out": st.sampled_from(["out", "afile", "runs/ok/trials", "", "runs/ok"]),
    "--trial": st.sampled_from(["0", "-1", "x", "99"]),
    "--max-drop": st.sampled_from(["1", "-1", "nan", "x"]),
    "--min-cr": st.sampled_from(["2", "-1", "inf"]),
    "--finetune-epochs": st.sampled_from(["0", "-1", "2", "x"]),
    "--format": st.sampled_from(["table", "csv", "json", "xml"]),
    "--host": st.sampled_from(["127.0.0.1", "0.0.0.0", "nohost"]),
    "--port": st.sampled_from(["0", "-1", "70000", "x"]),
}
RUN_FLAGS = ["--runs-dir", "--storage"]
COMMANDS: dict[str, tuple[list[str], list[str], int]] = {  # valid flags, bare flags, positionals it takes
    "search": (["--trials", "--study", "--runs-dir", "--storage", "--sampler", "--seed", "--timeout", "--dataset",
                "--data-root", "--baseline", "--device", "--backend", "--address", "--concurrency",
                "--cpus-per-trial", "--gpus-per-trial"], ["--quiet", "--verbose", "--download"], 1),
    "pareto": ([*RUN_FLAGS, "--format"], ["--no-latency"], 1),
    "export": ([*RUN_FLAGS, "--out", "--trial", "--max-drop", "--min-cr", "--finetune-epochs", "--device",
                "--data-root"], ["--no-onnx", "--quiet"], 1),
    "status": ([*RUN_FLAGS, "--format"], [], 1),
    "dashboard": ([*RUN_FLAGS, "--host", "--port"], [], 1),
}
POSITIONALS = st.sampled_from(["digits_cnn", "space.yaml", "evil.yaml", "broken.yaml", "missing.yaml", "afile", "ok",
                               "runs/ok", ".", "", "-"]) | st.text(max_size=8).filter(lambda s: "/" not in s)


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed command lines (a subcommand with its own flags, each with a value) carrying bad values;
    sometimes a foreign or unknown flag, a missing value or an unknown subcommand."""
    cmd = draw(st.sampled_from([*COMMANDS, "search", "search", "serch", ""]))
    flags, bare, npos = COMMANDS.get(cmd, (sorted(FLAG_VALUES), [], 1))
    out = [cmd] if cmd else []
    if draw(st.integers(0, 3)):
        out.append(draw(POSITIONALS))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 19))
        if kind < 14:
            flag = draw(st.sampled_from(flags))
            out += [flag, draw(FLAG_VALUES[flag])]
        elif kind < 16 and bare:
            out.append(draw(st.sampled_from(bare)))
        elif kind < 17:
            out.append(draw(st.sampled_from(sorted(FLAG_VALUES))))  # a flag without its value
        elif kind < 18:
            out.append(draw(st.sampled_from(["--help", "--bogus", "-x"])))
        else:
            flag = draw(st.sampled_from(sorted(FLAG_VALUES)))
            out += [flag, draw(FLAG_VALUES[flag])]  # possibly another subcommand's flag
    return out


@contextlib.contextmanager
def _chdir(path: Path) -> Any:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "afile").write_text("not a directory, not a checkpoint")
    (d / "space.yaml").write_text(yaml.safe_dump(dict(BASE, trials=2)))
    (d / "evil.yaml").write_text("layers: !!python/object/apply:os.system ['touch PWNED']\n")
    (d / "broken.yaml").write_text("layers: [\n")
    return d


@settings(max_examples=EXAMPLES["cli"], deadline=None, suppress_health_check=list(HealthCheck))
@given(args=argv())
def test_random_cli_arguments_end_in_a_usage_error_one_error_line_or_success(
        args: list[str], cli_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*a: Any, **k: Any) -> Any:
        raise Reached

    monkeypatch.setattr(stsearch.study.runner, "build_context", reached)
    monkeypatch.setattr(stsearch.study.reports, "dashboard_server", reached)
    out, err = io.StringIO(), io.StringIO()
    with _chdir(cli_dir), no_hang(60), warnings.catch_warnings(record=True), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:  # argparse: usage error (2) or --help (0)
            assert e.code in (0, 2), (args, e.code, err.getvalue())
            event(f"argparse exit {e.code}")
            return
        except Reached:
            event("valid: reached training")
            return
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("stsearch: error: "), (args, lines)
        event("stsearch: error (exit 2)")
    else:
        assert code == 0, (args, code, lines)
        event("success (exit 0)")
    assert not (cli_dir / "PWNED").exists()

