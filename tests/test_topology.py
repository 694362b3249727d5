"""Specification of ray_sched.topology: splitting slots over local schedulers and nodes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.errors import ConfigError
from ray_sched.topology import NodeInfo, plan_local_schedulers, split_by_weight, split_evenly

pytestmark = pytest.mark.unit

NODES = [NodeInfo("node-a", 4.0), NodeInfo("node-b", 12.0)]


# ----------------------------------------------------------------------------- split_evenly


def test_split_evenly_gives_the_remainder_to_the_first_parts():
    assert split_evenly(10, 4) == [3, 3, 2, 2]


def test_split_evenly_of_an_exact_multiple_is_equal_parts():
    assert split_evenly(12, 3) == [4, 4, 4]


@given(total=st.integers(0, 10_000), parts=st.integers(1, 200))
def test_split_evenly_sums_to_the_total_with_parts_within_one_largest_first(total, parts):
    split = split_evenly(total, parts)
    assert len(split) == parts and sum(split) == total
    assert max(split) - min(split) <= 1
    assert split == sorted(split, reverse=True)


# ----------------------------------------------------------------------------- split_by_weight


def test_split_by_weight_of_equal_weights_is_even():
    assert split_by_weight(8, [2.0, 2.0]) == [4, 4]


def test_split_by_weight_gives_each_part_at_least_one():
    assert split_by_weight(3, [1.0, 100.0, 1.0]) == [1, 1, 1]


def test_split_by_weight_gives_more_to_heavier_parts():
    small, large = split_by_weight(16, [4.0, 12.0])
    assert small < large and small + large == 16


def test_split_by_weight_refuses_fewer_slots_than_parts():
    with pytest.raises(ConfigError, match="cannot be split over 3"):
        split_by_weight(2, [1.0, 1.0, 1.0])


weights_lists = st.lists(st.floats(0.5, 128.0, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=200)
@given(weights=weights_lists, extra=st.integers(0, 5_000))
def test_split_by_weight_is_within_one_of_its_proportional_share(weights, extra):
    total = len(weights) + extra
    split = split_by_weight(total, weights)
    assert sum(split) == total and min(split) >= 1
    shares = [total * w / sum(weights) for w in weights]
    if min(shares) >= 1:  # no part needed lifting to the minimum of one slot
        for part, share in zip(split, shares):
            assert abs(part - share) < 1


# Regression guard (bug found in review, fixed):
#   one slot was reserved per part before the proportional split, so exact splits were missed.
@pytest.mark.parametrize("total, weights, proportional", [
    (32, [2.0, 30.0], [2, 30]),
    (12, [1.0, 2.0, 3.0], [2, 4, 6]),
])
def test_split_by_weight_is_exactly_proportional_when_it_can_be(total, weights, proportional):
    assert split_by_weight(total, weights) == proportional


# Regression guard (bug found in review, fixed):
#   a zero weight counted as 1 in the shares but not in their sum (parts summed past the total).
def test_split_by_weight_with_a_zero_weight_still_sums_to_the_total():
    split = split_by_weight(10, [0.0, 0.0, 4.0])
    assert sum(split) == 10 and min(split) >= 1


def test_split_by_weight_with_all_weights_zero_is_even():
    assert split_by_weight(9, [0.0, 0.0, 0.0]) == [3, 3, 3]


# ----------------------------------------------------------------------------- plan


def test_the_default_plan_is_one_scheduler_per_node():
    plan = plan_local_schedulers([NodeInfo("node-a", 8.0), NodeInfo("node-b", 8.0)], 6)
    assert plan == [
        {"name": "local-0", "node_id": "node-a", "slots": 3, "region": None},
        {"name": "local-1", "node_id": "node-b", "slots": 3, "region": None},
    ]


def test_the_default_plan_gives_a_node_with_more_cpus_more_slots():
    small, large = plan_local_schedulers(NODES, 16)
    assert small["slots"] < large["slots"]


# Regression guard (bug found in review, fixed):
#   16 slots on nodes of 4 and 12 CPUs were planned as [5, 11], oversubscribing the small node.
def test_the_default_plan_splits_slots_in_proportion_to_cpus():
    plan = plan_local_schedulers(NODES, 16)
    assert plan == [
        {"name": "local-0", "node_id": "node-a", "slots": 4, "region": None},
        {"name": "local-1", "node_id": "node-b", "slots": 12, "region": None},
    ]


def test_a_count_spreads_that_many_schedulers_over_the_nodes_in_turn():
    plan = plan_local_schedulers(NODES, 10, count=5)
    assert [p["node_id"] for p in plan] == ["node-a", "node-b", "node-a", "node-b", "node-a"]
    assert [p["name"] for p in plan] == [f"local-{i}" for i in range(5)]


def test_a_count_splits_the_slots_evenly():
    plan = plan_local_schedulers(NODES, 10, count=4)
    assert [p["slots"] for p in plan] == [3, 3, 2, 2]


def test_a_count_below_the_number_of_nodes_uses_the_first_nodes():
    plan = plan_local_schedulers(NODES + [NodeInfo("node-c", 1.0)], 4, count=1)
    assert [(p["node_id"], p["slots"]) for p in plan] == [("node-a", 4)]


def test_regions_are_assigned_to_schedulers_in_turn():
    plan = plan_local_schedulers(NODES, 12, count=4, regions=["eu", "us"])
    assert [p["region"] for p in plan] == ["eu", "us", "eu", "us"]
    assert [p["name"] for p in plan] == ["local-0-eu", "local-1-us", "local-2-eu", "local-3-us"]


def test_a_region_named_twice_is_served_as_one():
    plan = plan_local_schedulers(NODES, 12, count=3, regions=["eu", "eu", "us"])
    assert [p["region"] for p in plan] == ["eu", "us", "eu"]


def test_more_regions_than_schedulers_leaves_some_regions_without_one():
    plan = plan_local_schedulers(NODES, 16, regions=["ap", "eu", "us"])
    assert [p["region"] for p in plan] == ["ap", "eu"]


def test_a_plan_needs_a_node():
    with pytest.raises(ConfigError, match="no alive Ray node"):
        plan_local_schedulers([], 4)


@pytest.mark.parametrize("slots", [0, -3])
def test_a_plan_needs_at_least_one_slot(slots):
    with pytest.raises(ConfigError, match="--slots must be >= 1"):
        plan_local_schedulers(NODES, slots)


@pytest.mark.parametrize("count", [0, -1])
def test_a_plan_needs_a_count_of_at_least_one(count):
    with pytest.raises(ConfigError, match="--local-schedulers must be >= 1"):
        plan_local_schedulers(NODES, 4, count=count)


def test_a_plan_refuses_fewer_slots_than_counted_schedulers():
    with pytest.raises(ConfigError, match="3 slot\\(s\\) cannot be split over 4"):
        plan_local_schedulers(NODES, 3, count=4)


def test_the_default_plan_refuses_fewer_slots_than_nodes():
    with pytest.raises(ConfigError, match="cannot be split over 2"):
        plan_local_schedulers(NODES, 1)


@settings(max_examples=100)
@given(cpus=st.lists(st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0]), min_size=1, max_size=8),
       extra=st.integers(0, 200), count=st.one_of(st.none(), st.integers(1, 12)))
def test_every_plan_hands_out_exactly_the_slots_with_at_least_one_each(cpus, extra, count):
    nodes = [NodeInfo(f"n{i}", c) for i, c in enumerate(cpus)]
    slots = (count or len(nodes)) + extra
    plan = plan_local_schedulers(nodes, slots, count=count)
    assert len(plan) == (count or len(nodes))
    assert sum(p["slots"] for p in plan) == slots and min(p["slots"] for p in plan) >= 1
    assert len({p["name"] for p in plan}) == len(plan)
