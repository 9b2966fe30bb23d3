from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from specexec.run.handoff import merge_data
from specexec.tasksfile.types import MergeConfig

ITEMS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["a", "b", "c"]),
    st.fixed_dictionaries({"severity": st.integers(1, 3), "msg": st.sampled_from(["x", "y"])}),
)
CONFIGS = [
    MergeConfig("union"),
    MergeConfig("intersection"),
    MergeConfig("priority", key="severity", top_n=3),
    MergeConfig("voting", min_votes=2),
]


def test_strategies_on_the_pattern_examples() -> None:
    a, b, c = ["x", "y", "z"], ["y", "z", "w"], ["z", "y"]
    assert merge_data(MergeConfig("union"), [a, b, c]) == ["w", "x", "y", "z"]
    assert merge_data(MergeConfig("intersection"), [a, b, c]) == ["y", "z"]
    assert merge_data(MergeConfig("voting", min_votes=3), [a, b, c]) == ["y", "z"]
    assert merge_data(MergeConfig("voting", min_votes=2), [a, b, ["x"]]) == ["x", "y", "z"]
    found = [[{"severity": 2, "m": "b"}, {"severity": 1, "m": "a"}], [{"severity": 3, "m": "c"}]]
    ranked = merge_data(MergeConfig("priority", key="severity", top_n=2), found)
    assert ranked == [{"severity": 1, "m": "a"}, {"severity": 2, "m": "b"}]
    assert merge_data(MergeConfig("union"), [[1, 1, "1"], []]) == ["1", 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(ITEMS, max_size=6), min_size=1, max_size=4))
def test_identical_output_for_every_completion_order(lists: list[list[Any]]) -> None:
    for config in CONFIGS:
        outs = {repr(merge_data(config, list(p))) for p in itertools.permutations(lists)}
        assert len(outs) == 1, config
