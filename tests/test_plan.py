"""Plans: JSON round-trip and errors that name the field."""

from __future__ import annotations

import pytest

from stsearch import CompressionPlan, LayerSpec
from stsearch.errors import ConfigError


def test_json_round_trip_keeps_every_field() -> None:
    plan = CompressionPlan({
        "a": LayerSpec("stt", rank=[4, 8], t=[2, 4], in_shape=(4, 4), out_shape=(2, 8), implementation="factorized"),
        "b": "dense",
        "c": {"format": "tucker", "rank": [4, 4, None, None]},
        "d": {"format": "str", "rank": 8, "t": 2},
    })
    back = CompressionPlan.from_json(plan.to_json())
    assert back == plan
    assert back["a"].in_shape == (4, 4) and back["a"].t == (2, 4) and back["a"].implementation == "factorized"
    assert back["c"].rank == (4, 4, None, None)
    assert back.summary() == "dense×1 str×1 stt×1 tucker×1"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"format": "cp", "rank": 4}, "format"),
        ({"format": "tt"}, "rank"),
        ({"format": "tt", "rank": -1}, "rank"),
        ({"format": "tt", "rank": 4, "t": 0}, "t"),
        ({"format": "tt", "rank": [4, "x"]}, "rank[1]"),
        ({"format": "tt", "rank": 4, "in_shape": [4, 0]}, "in_shape[1]"),
        ({"format": "tt", "rank": 4, "implementation": "fast"}, "implementation"),
        ({"format": "tt", "rank": 4, "colour": "red"}, "colour"),
        ({"rank": 4}, "format"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        CompressionPlan({"layer1.conv": spec})
    assert "layer1.conv" in str(e.value) and field in str(e.value)


def test_bad_json_says_where() -> None:
    with pytest.raises(ConfigError, match="line 1"):
        CompressionPlan.from_json("{not json")
    with pytest.raises(ConfigError, match="mapping"):
        CompressionPlan.from_json("[1, 2]")
