"""landscope.settings: ``group.KEY=VALUE`` overrides into a typed schema, one error line each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from landscope.errors import ConfigError
from landscope.settings import only_group, structured_settings


@dataclass
class Toy:
    steps: int = 10
    rates: List[float] = field(default_factory=lambda: [0.1])
    radius: Optional[float] = None


def test_overrides_merge_into_the_schema() -> None:
    s = structured_settings(Toy, "toy", ["toy.steps=3", "toy.rates=[0.5,1]", "toy.radius=2"],
                            "toy.steps=5")
    assert s == {"steps": 3, "rates": [0.5, 1.0], "radius": 2.0}
    assert structured_settings(Toy, "toy", [], "toy.steps=5") == {"steps": 10, "rates": [0.1],
                                                                  "radius": None}


@pytest.mark.parametrize("overrides,message", [
    (["other.steps=3"], "only toy.KEY=VALUE overrides are accepted here (got 'other.steps=3'), "
                        "e.g. toy.steps=5"),
    (["+toy.steps=3"], "only toy.KEY=VALUE overrides"),
    (["toy.step=3"], "unknown setting toy.step (known: toy.steps, toy.rates, toy.radius)"),
    (["toy.steps"], "expected toy.KEY=VALUE (got 'toy.steps')"),
    (["toy.steps=many"], "toy.steps: "),
])
def test_bad_overrides_are_one_line_naming_the_key(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        structured_settings(Toy, "toy", overrides, "toy.steps=5")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_hydra_group_also_takes_its_preset_and_plus_forms() -> None:
    only_group(["landscape=basic", "+landscape.bezier.enabled=true", "landscape.seed=1"],
               "landscape", "landscape.path_points=11", group_choice=True)
    with pytest.raises(ConfigError, match="only landscape overrides are accepted here"):
        only_group(["probe.top_k=3"], "landscape", "landscape.path_points=11",
                   group_choice=True)
