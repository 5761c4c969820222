"""Search spaces: validation with precise errors, shipped spaces, round-trip and overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stsearch.errors import ConfigError
from stsearch.study.space import (
    ALL_FORMATS,
    RankSpec,
    SearchSpace,
    default_space_path,
    load_space,
    shipped_spaces,
)

VALID: dict[str, Any] = {
    "model": {"name": "digits_cnn", "kwargs": {"channels": [8, 16, 16]}},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "baseline": {"epochs": 5, "lr": 0.05},
    "recipe": {"epochs": 2, "lr": 0.01, "milestones": [1], "amp": None},
    "init": "decompose",
    "layers": [
        {"match": "conv*", "exclude": ["conv1"], "formats": ["tt", "stt"], "rank": {"min": 2, "max": 8},
         "t": [1, 2]},
        {"match": ["fc", "conv1"], "formats": ["dense", "tr", "str"], "shapes": {"depth": [1, 2]},
         "rank": {"choices": [2, 4]}, "t": {"values": [1, 2], "mixed": True}, "share": True},
    ],
    "objectives": ["accuracy", "compression_ratio", "flops"],
    "constraints": {"min_compression_ratio": 2, "max_accuracy_drop": 0.05},
    "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 5},
    "trials": 7,
    "early_stopping": {"enabled": True, "after_epoch": 1, "margin": 0.1},
    "seed": 1,
}


def write_space(tmp_path: Path, data: Any, name: str = "bad_space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A copy of VALID with the dotted/indexed ``path`` set to ``value`` (``value is DEL`` removes it)."""
    d = copy.deepcopy(VALID)
    keys = [int(k) if k.isdigit() else k for k in re.split(r"[.\[\]]+", path) if k]
    node: Any = d
    for k in keys[:-1]:
        node = node[k]
    if value is DEL:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return d


DEL = object()


def test_valid_space_loads_with_the_values_written() -> None:
    sp = load_space(VALID)
    assert sp.model.name == "digits_cnn" and sp.model.kwargs == {"channels": [8, 16, 16]}
    assert sp.dataset.val_fraction == 0.2 and sp.dataset.data_root is None and sp.dataset.download is False
    assert sp.baseline == {"epochs": 5, "lr": 0.05} and sp.baseline_checkpoint is None
    g0, g1 = sp.layer_groups
    assert g0.match == ("conv*",) and g0.exclude == ("conv1",) and g0.shapes.mode == "auto"
    assert g0.rank.values() == tuple(range(2, 9)) and g0.t.values == (1, 2) and not g0.t.mixed
    assert g1.rank.choices == (2, 4) and g1.t.mixed and g1.share and g1.shapes.depths == (1, 2)
    assert sp.directions == ["maximize", "maximize", "minimize"]
    assert sp.sampler_seed == 3 and sp.sampler.n_startup_trials == 5 and sp.trials == 7


def test_defaults_and_shorthands() -> None:
    sp = load_space({"layers": [{"match": "*", "rank": 4, "t": 2, "formats": "stt"}]})
    g = sp.layers[0]
    assert g.rank.choices == (4,) and g.t.values == (2,) and g.formats == ("stt",)
    assert sp.model.name == "digits_cnn" and sp.dataset.name == "digits" and sp.init == "decompose"
    assert sp.objectives == ("accuracy", "compression_ratio") and sp.sampler.name == "tpe"
    assert sp.trials == 30 and sp.seed == 0 and sp.early_stopping.enabled
    assert load_space({"layers": [{"match": "*"}]}).layers[0].formats == ALL_FORMATS
    flipped = load_space({"layers": [{"match": "*"}], "objectives": ["flops", "compression_ratio", "accuracy"]})
    assert flipped.objectives == ("accuracy", "compression_ratio", "flops")  # canonical order
    assert load_space({"layers": [{"match": "*"}], "baseline": "b.pt"}).baseline_checkpoint == "b.pt"


def test_yaml_1_1_float_strings_are_numbers(tmp_path: Path) -> None:
    p = write_space(tmp_path, "layers: [{match: '*'}]\nrecipe: {lr: 1e-3, weight_decay: 5e-4}\n")
    assert load_space(p).recipe == {"lr": 0.001, "weight_decay": 0.0005}


# (field path to break, bad value, text that must appear in the message)
MALFORMED = [
    ("layers[0].rank.min", -2, "layers[0].rank.min: must be a positive int (got -2)"),
    ("layers[0].rank.max", 1, "layers[0].rank.max: must be >= layers[0].rank.min (2) (got 1)"),
    ("layers[0].rank.min", 2.5, "layers[0].rank.min: must be a positive int (got 2.5)"),
    ("layers[1].rank.choices", [], "layers[1].rank.choices: must be a non-empty list of positive ints (got [])"),
    ("layers[1].rank.choices", [2, 2], "layers[1].rank.choices[1]: is listed twice (got 2)"),
    ("layers[0].t", [1, 0], "layers[0].t[1]: must be a positive int (got 0)"),
    ("layers[0].t", [1, "two"], "layers[0].t[1]: must be a positive int (got 'two')"),
    ("layers[1].t.values", [True], "layers[1].t.values[0]: must be a positive int (got True)"),
    ("layers[1].t.mixed", "yes", "layers[1].t.mixed: must be true or false (got 'yes')"),
    ("layers[0].formats", ["tt", "cp"], "layers[0].formats[1]: must be one of dense, tucker"),
    ("layers[0].formats", [], "layers[0].formats: must be a non-empty list of formats"),
    ("layers[0].match", [], "layers[0].match: must be a glob or a non-empty list of globs (got [])"),
    ("layers[0].match", DEL, "layers[0].match: is required"),
    ("layers[0].share", 1, "layers[0].share: must be true or false (got 1)"),
    ("layers[0].shapes", "manual", "layers[0].shapes: must be 'auto', {depth: [..]}"),
    ("layers[1].shapes.depth", [0], "layers[1].shapes.depth[0]: must be a positive int (got 0)"),
    ("layers[0].shapes", [{"in": [4, 4]}], "layers[0].shapes[0].out: is required"),
    ("layers[0].shapes", [{"in": [4, -4], "out": [2]}], "layers[0].shapes[0].in[1]: must be a positive int (got -4)"),
    ("layers", [], "layers: must be a non-empty list of layer groups (got [])"),
    ("layers", DEL, "layers: is required"),
    ("objectives", ["accuracy"], "objectives: must include compression_ratio (got ['accuracy'])"),
    ("objectives", ["accuracy", "compression_ratio", "latency"], "objectives[2]: must be one of accuracy, "),
    ("constraints.max_accuracy_drop", 5, "constraints.max_accuracy_drop: must be a fraction in [0, 1]"),
    ("constraints.min_compression_ratio", -1, "constraints.min_compression_ratio: must be a positive number"),
    ("trials", 0, "trials: must be a positive int (got 0)"),
    ("trials", "many", "trials: must be a positive int (got 'many')"),
    ("seed", -1, "seed: must be an int in [0, 4294967295] (got -1)"),
    ("sampler.name", "cmaes", "sampler.name: must be one of tpe, nsga2, random (got 'cmaes')"),
    ("sampler.n_startup_trials", -3, "sampler.n_startup_trials: must be a non-negative int (got -3)"),
    ("init", "pretrained", "init: must be one of decompose, random (got 'pretrained')"),
    ("model", "", "model: must be a non-empty model name (got '')"),
    ("model.kwargs", [1], "model.kwargs: must be a mapping of constructor arguments (got [1])"),
    ("dataset.val_fraction", 1.5, "dataset.val_fraction: must be a fraction in (0, 1) (got 1.5)"),
    ("dataset.name", "npz:", "dataset.name: names a source without a path"),
    ("dataset.download", "no", "dataset.download: must be true or false (got 'no')"),
    ("recipe.epochs", "3", "recipe.epochs: must be an int (got '3')"),
    ("recipe.lr", float("nan"), "recipe.lr: must be a finite number (got nan)"),
    ("recipe.milestones", 10, "recipe.milestones: must be a list of ints (got 10)"),
    ("baseline.nesterov", "on", "baseline.nesterov: must be true or false (got 'on')"),
    ("baseline", {"checkpoint": "a.pt", "epochs": 3}, "baseline.epochs: cannot be combined with"),
    ("early_stopping.after_epoch", 0, "early_stopping.after_epoch: must be a positive int (got 0)"),
    ("early_stopping.margin", -0.1, "early_stopping.margin: must be a fraction in [0, 1]"),
    ("layers[0].rank", {"min": 2, "max": 8, "step": 2, "log": True}, "layers[0].rank.step: must be 1 when log"),
    ("layers[0].rank", {"choices": [3, 5]}, "layers[0].t: t=2 divides no rank allowed by layers[0].rank"),
]


@pytest.mark.parametrize(("path", "value", "expected"), MALFORMED, ids=[m[0] + f"={m[1]!r}" for m in MALFORMED])
def test_malformed_space_names_file_field_and_value(tmp_path: Path, path: str, value: Any, expected: str) -> None:
    p = write_space(tmp_path, with_change(path, value))
    with pytest.raises(ConfigError) as e:
        load_space(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert expected in msg, msg


UNKNOWN = [
    ("colour", ""),
    ("model.klass", "model.klass"),
    ("dataset.root", "dataset.root"),
    ("baseline.learning_rate", "baseline.learning_rate"),
    ("recipe.epoch", "recipe.epoch"),
    ("layers[0].ranks", "layers[0].ranks"),
    ("layers[0].rank.maximum", "layers[0].rank.maximum"),
    ("layers[1].t.mix", "layers[1].t.mix"),
    ("layers[1].shapes.depths", "layers[1].shapes.depths"),
    ("constraints.min_cr", "constraints.min_cr"),
    ("sampler.population_size", "sampler.population_size"),  # an NSGA-II option on TPE
    ("early_stopping.patience", "early_stopping.patience"),
]


@pytest.mark.parametrize(("path", "field"), UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unknown_keys_are_errors_at_every_level(tmp_path: Path, path: str, field: str) -> None:
    p = write_space(tmp_path, with_change(path, 123))
    with pytest.raises(ConfigError, match=r"unknown key.*allowed: ") as e:
        load_space(p)
    key = path.rsplit(".", 1)[-1]
    assert f"{field or key}: unknown key" in str(e.value) and "(got 123)" in str(e.value)


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"layers\[0\]\.rnak: unknown key; did you mean 'rank'\?"):
        load_space({"layers": [{"match": "*", "rnak": 4}]})


def test_unknown_key_in_explicit_shape(tmp_path: Path) -> None:
    p = write_space(tmp_path, with_change("layers[0].shapes", [{"in": [4], "out": [4], "kernel": 3}]))
    with pytest.raises(ConfigError, match=r"layers\[0\]\.shapes\[0\]\.kernel: unknown key; allowed: in, out"):
        load_space(p)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write_space(tmp_path, "trials: 3\nlayers:\n  - match: '*'\n    rank: {min: 2, max: 8\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: line \d+, column \d+: malformed YAML"):
        load_space(p)
    p2 = write_space(tmp_path, "layers: [{match: '*'}]\n  bad: indent\n", "indent.yaml")
    with pytest.raises(ConfigError, match=r"indent\.yaml: line 2, column \d+: malformed YAML"):
        load_space(p2)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the file is empty"),
    ("- a\n- b\n", "(top level): a search space must be a mapping"),
    ("42\n", "(got 42)"),
    ("layers: [{match: '*'}]\n1: x\n", "keys must be strings"),
])
def test_empty_or_non_mapping_file(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_space(write_space(tmp_path, text))


def test_hostile_yaml_is_a_config_error(tmp_path: Path) -> None:
    cyclic = "model: {name: digits_cnn, kwargs: {a: &x [*x]}}\nlayers: [{match: '*'}]\n"
    with pytest.raises(ConfigError, match="model.kwargs"):
        load_space(write_space(tmp_path, cyclic))
    bomb = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(6)]
    text = "model:\n  name: digits_cnn\n  kwargs:\n" + "".join(f"    {line}\n" for line in bomb)
    with pytest.raises(ConfigError, match="too large or self-referencing"):
        load_space(write_space(tmp_path, text + "layers: [{match: '*'}]\n", "bomb.yaml"))
    with pytest.raises(ConfigError, match=r"line 1, column 9: malformed YAML: .*python/object:os.system"):
        load_space(write_space(tmp_path, "layers: !!python/object:os.system {}\n", "unsafe.yaml"))


def test_missing_space_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"'no_such_space' not found.*shipped: .*digits_cnn"):
        load_space("no_such_space")


@pytest.mark.parametrize("name", ["digits_cnn", "fashion_lenet5", "cifar10_resnet20", "cifar10_resnet32"])
def test_every_shipped_space_loads_and_round_trips(name: str) -> None:
    assert name in shipped_spaces()
    sp = load_space(name)
    assert sp.name == name and sp == load_space(f"{name}.yaml") == load_space(shipped_spaces()[name])
    again = load_space(sp.to_dict())
    assert again == sp and again.to_dict() == sp.to_dict()
    from_yaml = load_space(yaml.safe_load(sp.to_yaml()))
    assert from_yaml == sp and from_yaml.to_yaml().splitlines()[1:] == sp.to_yaml().splitlines()[1:]


def test_shipped_space_contents() -> None:
    d = load_space(default_space_path())
    assert default_space_path().name == "digits_cnn.yaml"
    assert d.model.name == "digits_cnn" and d.dataset.name == "digits" and d.trials == 30
    assert d.layers[0].match == ("*",) and d.layers[0].exclude == () and d.recipe["epochs"] <= 4
    for n in ("cifar10_resnet20", "cifar10_resnet32"):
        sp = load_space(n)
        g = sp.layers[0]
        assert set(g.formats) == {"tt", "stt", "tr", "str"} and g.rank.max == 16 and g.t.values == (1, 2)
        assert sp.baseline["lr"] == 0.1 and sp.recipe["lr"] == 0.005
        assert sp.group_for("layer2.1.conv1") is g and sp.group_for("conv1") is None and sp.group_for("fc") is None


def test_round_trip_of_a_full_space(tmp_path: Path) -> None:
    sp = load_space(VALID, name="full")
    p = tmp_path / "space.yaml"
    p.write_text(sp.to_yaml())
    back = load_space(p)
    assert back == sp and back.to_dict() == sp.to_dict() == load_space(sp.to_dict()).to_dict()


def test_cwd_search_spaces_shadow_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "search_spaces").mkdir()
    write_space(tmp_path / "search_spaces", {"layers": [{"match": "*"}], "trials": 2}, "digits_cnn.yaml")
    write_space(tmp_path / "search_spaces", {"layers": [{"match": "*"}], "trials": 3}, "mine.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_space("digits_cnn").trials == 2 and load_space("mine").trials == 3
    assert load_space(default_space_path()).trials == 30


def test_group_for_first_match_wins_and_exclude() -> None:
    sp = load_space(VALID)
    assert sp.group_for("conv2") is sp.layers[0]
    assert sp.group_for("conv1") is sp.layers[1]  # excluded from group 0, matched by group 1
    assert sp.group_for("fc") is sp.layers[1]
    assert sp.group_for("bn1") is None


def test_overrides_return_a_new_validated_space() -> None:
    sp = load_space(VALID, name="v")
    o = sp.with_overrides(trials=3, dataset="npz:/data/x.npz", data_root="/data", seed=9, sampler="nsga2",
                          model="lenet5", baseline="/ckpt/b.pt", download=True, init=None)
    assert (sp.trials, sp.dataset.name, sp.seed) == (7, "digits", 1)  # unchanged
    assert o.trials == 3 and o.dataset.name == "npz:/data/x.npz" and o.dataset.data_root == "/data"
    assert o.dataset.val_fraction == 0.2 and o.dataset.download is True  # kept / set
    assert o.seed == 9 and o.sampler.name == "nsga2" and o.sampler.seed == 9 and o.sampler.options == {}
    assert o.model.name == "lenet5" and o.model.kwargs == {}
    assert o.baseline == {"checkpoint": "/ckpt/b.pt"} and o.init == "decompose"
    assert o.name == "v" and load_space(o.to_dict()) == o
    same = sp.with_overrides(model="digits_cnn", sampler="tpe")
    assert same == sp  # same model keeps kwargs; same sampler keeps its options
    assert sp.with_overrides(dataset={"name": "cifar10"}).dataset.val_fraction == 0.1
    assert sp.with_overrides(constraints={}).constraints.min_compression_ratio is None


@pytest.mark.parametrize(("kw", "expected"), [
    ({"trials": 0}, "bad_space.yaml (with overrides): trials: must be a positive int (got 0)"),
    ({"sampler": "grid"}, "sampler.name: must be one of tpe, nsga2, random (got 'grid')"),
    ({"seed": -5}, "seed: must be an int in [0, 4294967295] (got -5)"),
    ({"dataset": ""}, "dataset.name: must be a non-empty dataset spec"),
    ({"colour": "red"}, "overrides.colour: unknown override"),
])
def test_bad_overrides(tmp_path: Path, kw: dict[str, Any], expected: str) -> None:
    sp = load_space(write_space(tmp_path, VALID))
    with pytest.raises(ConfigError) as e:
        sp.with_overrides(**kw)
    assert expected in str(e.value)


def test_recipe_keys_match_the_training_engine() -> None:
    from dataclasses import fields

    from stsearch.study.space import RECIPE_KEYS

    training = pytest.importorskip("stsearch.training")
    assert set(RECIPE_KEYS) == {f.name for f in fields(training.Recipe)}
    for name in shipped_spaces():  # the shipped recipes pass the engine's own validation
        sp = load_space(name)
        for recipe in (sp.baseline, sp.recipe):
            training.Recipe.from_dict(recipe)


def test_make_sampler_builds_the_configured_sampler() -> None:
    import optuna

    sp = load_space(VALID)
    assert isinstance(sp.make_sampler(), optuna.samplers.TPESampler)
    ns = sp.with_overrides(sampler={"name": "nsga2", "population_size": 8, "crossover_prob": 0.8})
    assert isinstance(ns.make_sampler(), optuna.samplers.NSGAIISampler) and ns.sampler.population_size == 8
    assert isinstance(sp.with_overrides(sampler="random").make_sampler(), optuna.samplers.RandomSampler)


@given(lo=st.integers(1, 40), span=st.integers(0, 40), step=st.integers(1, 7), t=st.integers(1, 12))
def test_rank_has_multiple_of_matches_enumeration(lo: int, span: int, step: int, t: int) -> None:
    r = RankSpec(min=lo, max=lo + span, step=step)
    assert r.has_multiple_of(t) == any(v % t == 0 for v in r.values())
    assert all(r.contains(v) for v in r.values()) and not r.contains(lo + span + 1)


# -- property: whatever the input, the only exception is ConfigError ------------------------------------------
KEYS = ["model", "dataset", "baseline", "recipe", "init", "layers", "objectives", "constraints", "sampler",
        "trials", "early_stopping", "seed", "name", "kwargs", "match", "exclude", "formats", "shapes", "rank",
        "t", "share", "min", "max", "step", "log", "choices", "values", "mixed", "depth", "in", "out", "epochs",
        "lr", "checkpoint", "milestones", "seed", "enabled", "margin", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.integers(), st.floats(allow_nan=True),
                    st.sampled_from(["", "*", "auto", "tt", "stt", "dense", "tpe", "nsga2", "decompose", "1e-3",
                                     "npz:", "accuracy", "compression_ratio"]), st.text(max_size=5))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(0, 3)), inner, max_size=5)), max_leaves=20)


@settings(max_examples=150)
@given(data=st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_random_dicts_raise_only_config_error(data: dict[str, Any]) -> None:
    try:
        sp = load_space(data)
    except ConfigError:
        return
    assert isinstance(sp, SearchSpace) and load_space(sp.to_dict()) == sp


@settings(max_examples=150)
@given(path=st.sampled_from([p for p, _, _ in MALFORMED] + [p for p, _ in UNKNOWN]), value=values)
def test_random_mutations_of_a_valid_space_raise_only_config_error(path: str, value: Any) -> None:
    try:
        sp = load_space(with_change(path, value))
    except ConfigError:
        return
    assert load_space(sp.to_dict()) == sp
    assert load_space(yaml.safe_load(sp.to_yaml())) == sp


def test_nsga2_population_is_sized_to_the_budget() -> None:
    """Optuna's default population (50) would leave a 40-trial NSGA-II search in its random first generation."""
    sp = load_space("digits_cnn").with_overrides(sampler="nsga2", trials=40)
    assert sp.make_sampler()._population_size == 10
    assert sp.with_overrides(trials=8).make_sampler()._population_size == 8  # at least 8
    assert sp.with_overrides(trials=1000).make_sampler()._population_size == 50  # at most Optuna's default
    set_ = sp.with_overrides(sampler={"name": "nsga2", "population_size": 6})
    assert set_.make_sampler()._population_size == 6  # a population the space sets wins


def test_make_sampler_applies_tpe_defaults_and_seed() -> None:
    sp = load_space("digits_cnn")
    s = sp.make_sampler(seed=3)
    assert s._multivariate and s._group and s._rng.rng.randint(0, 10**9) == \
        type(s)(seed=3)._rng.rng.randint(0, 10**9)


def test_installed_wheel_finds_the_shipped_spaces(tmp_path, monkeypatch) -> None:
    """Outside a source checkout the spaces come from the wheel's data files, <prefix>/share/stsearch/."""
    import shutil
    import sys

    import stsearch
    from stsearch.study.space import default_space_path, shipped_spaces

    share = tmp_path / "prefix" / "share" / "stsearch" / "search_spaces"
    share.mkdir(parents=True)
    shutil.copy(default_space_path(), share / "digits_cnn.yaml")
    monkeypatch.setattr(stsearch, "__file__", str(tmp_path / "site" / "stsearch" / "__init__.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.chdir(tmp_path)
    assert default_space_path() == share / "digits_cnn.yaml"
    assert shipped_spaces() == {"digits_cnn": share / "digits_cnn.yaml"}
    assert load_space("digits_cnn").name == "digits_cnn"
