"""Fault specs for ``--chaos``: parsing and refusals, no Ray."""

from __future__ import annotations

import pytest

from ray_sched.control.chaos import ACTIONS, ChaosEvent, parse_chaos
from ray_sched.errors import ConfigError

pytestmark = pytest.mark.unit


def test_every_action_parses_with_its_default_target():
    events = parse_chaos("kill-local@5s,kill-learner@1,kill-global@2.5s,kill-node@3s")
    assert events == [ChaosEvent(1.0, "kill-learner"), ChaosEvent(2.5, "kill-global"),
                      ChaosEvent(3.0, "kill-node", -1), ChaosEvent(5.0, "kill-local", 0)]
    assert {e.action for e in events} == set(ACTIONS)


def test_specs_from_repeated_flags_are_merged_in_time_order():
    events = parse_chaos(["kill-node:2@4s", "kill-local:1@0.5s, kill-global@2s"])
    assert [str(e) for e in events] == ["kill-local:1@0.5s", "kill-global@2s",
                                        "kill-node:2@4s"]


def test_an_event_prints_as_the_spec_that_makes_it():
    for spec in ("kill-local:3@1.5s", "kill-learner@2s", "kill-global@7s", "kill-node@1s",
                 "kill-node:0@1s"):
        (event,) = parse_chaos(spec)
        assert str(event) == spec
        assert parse_chaos(str(event)) == [event]


def test_no_spec_means_no_fault():
    assert parse_chaos(None) == [] and parse_chaos([]) == [] and parse_chaos(" , ") == []


@pytest.mark.parametrize("spec, match", [
    ("kill-moon@1s", "unknown action 'kill-moon'"),
    ("kill-learner:1@1s", "only kill-local and kill-node take an index"),
    ("kill-global:0@1s", "only kill-local and kill-node take an index"),
    ("kill-local", r"expected ACTION\[:INDEX\]@SECONDS"),
    ("kill-local@-1s", r"expected ACTION\[:INDEX\]@SECONDS"),
    ("kill-local@soon", r"expected ACTION\[:INDEX\]@SECONDS"),
])
def test_a_bad_spec_is_refused_naming_it(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_chaos(spec)
