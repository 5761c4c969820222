"""Sampling: every sample is a valid plan (or a pruned trial with a reason), with fixed distributions."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from stsearch import models
from stsearch.plan import CompressionPlan
from stsearch.study.canonical import canonical_key
from stsearch.study.sampling import layer_spec, suggest_plan, units
from stsearch.study.space import load_space
from stsearch.surgery import compressible_layers, estimate_params, validate_plan

SPACE = {
    "model": "resnet20",
    "layers": [
        {"match": "layer1.*", "formats": ["dense", "tucker", "tt", "tr", "sttu", "stt", "str"],
         "rank": {"min": 2, "max": 16}, "t": {"values": [1, 2, 4], "mixed": True}, "share": True},
        {"match": ["layer2.*", "layer3.*"], "formats": ["tucker", "tt", "tr", "sttu", "stt", "str"],
         "rank": {"min": 2, "max": 24, "log": True}, "t": {"values": [1, 2, 4], "mixed": True}},
        {"match": "conv1", "formats": ["tucker", "stt"], "shapes": {"depth": [1, 2]},
         "rank": {"choices": [2, 3, 6]}, "t": [1, 3]},
        {"match": "fc", "formats": ["tt", "str"],
         "shapes": [{"in": [8, 8], "out": [2, 5]}, {"in": [4, 16], "out": [10]}],
         "rank": {"min": 2, "max": 8}, "t": [1, 2]},
    ],
}


@pytest.fixture(scope="module")
def ctx() -> SimpleNamespace:
    return SimpleNamespace(space=load_space(SPACE), baseline_model=models.create("resnet20"))


def test_units_follow_groups_and_sharing(ctx: SimpleNamespace) -> None:
    us = units(ctx.space, ctx.baseline_model)
    labels = [u.label for u in us]
    assert labels[0] == "group0" and len(us[0].layers) == 6  # layer1.* shares one choice
    assert "layer3.2.conv2" in labels and "conv1" in labels and "fc" in labels
    assert sum(len(u.layers) for u in us) == len(compressible_layers(ctx.baseline_model))


def test_every_sample_is_a_valid_plan(ctx: SimpleNamespace) -> None:
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    ok = pruned = 0
    st_seen: set[str] = set()
    for _ in range(60):
        trial = study.ask()  # one study: a name sampled with two distributions would raise here
        try:
            plan = suggest_plan(trial, ctx)
        except optuna.TrialPruned as e:
            assert "no valid" in str(e)
            pruned += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        validate_plan(ctx.baseline_model, plan)
        est = estimate_params(ctx.baseline_model, plan)
        assert est["params"] > 0 and est["compression_ratio"] > 0
        assert CompressionPlan.from_json(plan.to_json()) == plan
        canonical_key(ctx.baseline_model, plan)
        st_seen |= {s.format for s in plan.values() if s.format.startswith("st")}
        shared = {plan[n].to_dict()["format"] for n, _ in units(ctx.space, ctx.baseline_model)[0].layers}
        assert len(shared) == 1  # a shared group takes one format
        ok += 1
        study.tell(trial, [0.5, est["compression_ratio"]])
    assert ok >= 50 and pruned <= 10
    assert st_seen == {"sttu", "stt", "str"}


def test_repair_caps_ranks_and_respects_t(ctx: SimpleNamespace) -> None:
    space = load_space(SPACE)
    group = space.group_for("conv1")  # 3 -> 16 channels: a Tucker rank above 3 is impossible on the input mode
    conv1 = ctx.baseline_model.conv1
    spec = layer_spec(conv1, "tucker", group, 1, 1, 6)
    assert spec is not None and spec.rank == (6, 3, None, None)
    spec = layer_spec(ctx.baseline_model.get_submodule("layer3.0.conv2"), "str", space.group_for("layer3.0.conv2"),
                      2, 4, 10)
    assert spec is not None and all(r % 4 == 0 for r in spec.rank) and set(spec.t) == {4}
