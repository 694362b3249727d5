"""Specification of ray_sched.policies: policy names, orderings, TaskQueue and placements."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.errors import ConfigError
from ray_sched.policies import (
    BASELINES,
    ORDERINGS,
    PLACEMENTS,
    POLICIES,
    TaskQueue,
    WorkerLoad,
    policy_names,
    resolve_policy,
)
from ray_sched.policies.ordering import DeclaredPriority, EarliestDeadline, Fifo, Oracle
from ray_sched.policies.placement import (
    LeastLoaded,
    LeastWork,
    PowerOfTwo,
    RoundRobin,
    candidates,
)
from ray_sched.task import Task

pytestmark = pytest.mark.unit


def tasks(*specs: dict) -> list[Task]:
    """Tasks t0, t1, ... with the given fields; seq is the position (arrival order)."""
    return [Task(f"t{i}", seq=i, **spec) for i, spec in enumerate(specs)]


def drained_ids(ordering, queued: list[Task]) -> list[str]:
    queue = TaskQueue(ordering)
    for task in queued:
        queue.push(task)
    return [task.task_id for task in queue.drain()]


def workers(*outstanding_cpu: float, slots: float = 4.0, **fields) -> list[WorkerLoad]:
    return [WorkerLoad(f"w{i}", slots, outstanding_cpu=cpu, **fields)
            for i, cpu in enumerate(outstanding_cpu)]


# ----------------------------------------------------------------------------- policy names


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_named_policy_resolves_to_its_ordering_and_placement(name):
    spec = resolve_policy(name)
    assert (spec.name, spec.ordering, spec.placement) == (name, *POLICIES[name])
    assert isinstance(spec.make_ordering(), ORDERINGS[spec.ordering])
    assert isinstance(spec.make_placement(seed=1), PLACEMENTS[spec.placement])


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_any_ordering_plus_placement_pair_resolves(ordering, placement):
    spec = resolve_policy(f"{ordering}+{placement}")
    assert (spec.ordering, spec.placement) == (ordering, placement)


def test_an_unknown_name_is_refused_listing_every_accepted_name():
    with pytest.raises(ConfigError) as caught:
        resolve_policy("shortest-job-first")
    message = str(caught.value)
    assert "'shortest-job-first'" in message
    assert all(name in message for name in policy_names())
    assert "ORDERING+PLACEMENT" in message


@pytest.mark.parametrize("name", ["sjf+least-loaded", "fifo+nearest", "fifo+", "+least-loaded"])
def test_an_unknown_pair_is_refused_listing_orderings_and_placements(name):
    with pytest.raises(ConfigError) as caught:
        resolve_policy(name)
    message = str(caught.value)
    assert all(o in message for o in ORDERINGS) and all(p in message for p in PLACEMENTS)


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_is_refused_as_a_pair(name):
    with pytest.raises(ConfigError, match="baseline"):
        resolve_policy(name)


def test_policy_names_are_the_named_policies_and_the_baselines():
    assert policy_names() == [*POLICIES, *BASELINES]


def test_only_the_oracle_ordering_and_least_work_placement_are_clairvoyant():
    assert {n for n, cls in ORDERINGS.items() if cls.clairvoyant} == {"oracle"}
    assert {n for n, cls in PLACEMENTS.items() if cls.clairvoyant} == {"least-work"}


# ----------------------------------------------------------------------------- orderings


def test_fifo_runs_by_arrival():
    queued = tasks({"arrival_s": 3.0}, {"arrival_s": 1.0}, {"arrival_s": 2.0})
    assert drained_ids(Fifo(), queued) == ["t1", "t2", "t0"]


def test_fifo_breaks_arrival_ties_by_sequence_number():
    queued = tasks({"arrival_s": 1.0}, {"arrival_s": 1.0}, {"arrival_s": 1.0})
    assert drained_ids(Fifo(), list(reversed(queued))) == ["t0", "t1", "t2"]


def test_priority_runs_9_first_then_lower_priorities():
    queued = tasks({"priority": 0}, {"priority": 9}, {"priority": 5})
    assert drained_ids(DeclaredPriority(), queued) == ["t1", "t2", "t0"]


def test_priority_is_fifo_within_one_priority():
    queued = tasks({"priority": 5, "arrival_s": 2.0}, {"priority": 5, "arrival_s": 1.0},
                   {"priority": 0, "arrival_s": 0.0}, {"priority": 5, "arrival_s": 1.0})
    assert drained_ids(DeclaredPriority(), queued) == ["t1", "t3", "t0", "t2"]


def test_edf_runs_the_earliest_absolute_deadline_first():
    # t0 arrives first but must finish by 10; t1 by 1 + 2 = 3; t2 by 2 + 5 = 7.
    queued = tasks({"arrival_s": 0.0, "deadline_s": 10.0}, {"arrival_s": 1.0, "deadline_s": 2.0},
                   {"arrival_s": 2.0, "deadline_s": 5.0})
    assert drained_ids(EarliestDeadline(), queued) == ["t1", "t2", "t0"]


def test_edf_runs_tasks_without_a_deadline_last_in_fifo_order():
    queued = tasks({"arrival_s": 1.0}, {"arrival_s": 5.0, "deadline_s": 100.0},
                   {"arrival_s": 0.0})
    assert drained_ids(EarliestDeadline(), queued) == ["t1", "t2", "t0"]


def test_oracle_runs_the_shortest_true_runtime_first():
    queued = tasks({"runtime_s": 3.0}, {"runtime_s": 0.5}, {"runtime_s": 1.0})
    assert drained_ids(Oracle(), queued) == ["t1", "t2", "t0"]


def test_oracle_runs_tasks_of_unknown_runtime_last():
    queued = tasks({"runtime_s": None}, {"runtime_s": 9.0})
    assert drained_ids(Oracle(), queued) == ["t1", "t0"]


# ----------------------------------------------------------------------------- TaskQueue


def test_an_empty_queue_peeks_none_and_refuses_to_pop():
    queue = TaskQueue(Fifo())
    assert queue.peek() is None and len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop()


def test_peek_shows_the_next_task_without_taking_it():
    queue = TaskQueue(Fifo())
    first, second = tasks({"arrival_s": 0.0}, {"arrival_s": 1.0})
    queue.push(second)
    queue.push(first)
    assert queue.peek() is first and len(queue) == 2
    assert queue.pop() is first and queue.peek() is second


def test_a_pushed_task_is_contained_and_counted():
    queue = TaskQueue(Fifo())
    queue.push(tasks({})[0])
    assert "t0" in queue and "t9" not in queue and len(queue) == 1
    assert [task.task_id for task in queue] == ["t0"]


def test_pushing_a_queued_task_id_again_is_refused():
    queue = TaskQueue(Fifo())
    queue.push(Task("a"))
    with pytest.raises(ValueError, match="already queued"):
        queue.push(Task("a", arrival_s=5.0))
    assert len(queue) == 1


def test_a_removed_task_is_never_popped():
    queue = TaskQueue(Fifo())
    for task in tasks({"arrival_s": 0.0}, {"arrival_s": 1.0}, {"arrival_s": 2.0}):
        queue.push(task)
    removed = queue.remove("t0")
    assert removed is not None and removed.task_id == "t0"
    assert "t0" not in queue and len(queue) == 2
    assert queue.peek().task_id == "t1"
    assert [task.task_id for task in queue.drain()] == ["t1", "t2"]


def test_removing_a_task_that_is_not_queued_returns_none():
    queue = TaskQueue(Fifo())
    queue.push(Task("a"))
    assert queue.remove("b") is None and len(queue) == 1


def test_a_removed_task_can_be_pushed_again_and_pops_once():
    queue = TaskQueue(Fifo())
    (task,) = tasks({})
    queue.push(task)
    queue.remove("t0")
    queue.push(task)
    assert [t.task_id for t in queue.drain()] == ["t0"]
    assert queue.peek() is None


def test_queued_cpu_sums_the_cpu_of_queued_tasks():
    queue = TaskQueue(Fifo())
    for task in tasks({"cpu": 1.0, "arrival_s": 0.0}, {"cpu": 2.0, "arrival_s": 1.0},
                      {"cpu": 0.5, "arrival_s": 2.0}):
        queue.push(task)
    assert queue.queued_cpu == pytest.approx(3.5)
    queue.pop()
    assert queue.queued_cpu == pytest.approx(2.5)
    queue.remove("t2")
    assert queue.queued_cpu == pytest.approx(2.0)
    queue.remove("t2")  # already gone: nothing more is subtracted
    assert queue.queued_cpu == pytest.approx(2.0)


def test_drain_returns_every_task_in_order_and_empties_the_queue():
    queue = TaskQueue(DeclaredPriority())
    for task in tasks({"priority": 1}, {"priority": 7}, {"priority": 1}):
        queue.push(task)
    assert [task.task_id for task in queue.drain()] == ["t1", "t0", "t2"]
    assert len(queue) == 0 and queue.queued_cpu == pytest.approx(0.0)


# Regression guard (bug found in review, fixed):
#   equal keys and equal seq made heapq compare Task objects (TypeError).
def test_tasks_with_equal_keys_and_equal_seq_pop_in_push_order():
    queue = TaskQueue(Fifo())
    queue.push(Task("a", arrival_s=1.0))
    queue.push(Task("b", arrival_s=1.0))
    assert [task.task_id for task in queue.drain()] == ["a", "b"]


ORDERING_CLASSES = [Fifo, DeclaredPriority, EarliestDeadline, Oracle]
task_fields = st.fixed_dictionaries({
    "arrival_s": st.floats(0, 100, allow_nan=False),
    "runtime_s": st.one_of(st.none(), st.floats(0.001, 100, allow_nan=False)),
    "priority": st.integers(0, 9),
    "deadline_s": st.one_of(st.none(), st.floats(0.001, 100, allow_nan=False)),
    "cpu": st.sampled_from([0.5, 1.0, 2.0]),
})


@settings(max_examples=60, deadline=None)
@given(ordering=st.sampled_from(ORDERING_CLASSES), specs=st.lists(task_fields, max_size=30),
       removed=st.sets(st.integers(0, 29)))
def test_a_queue_pops_in_key_then_sequence_order_skipping_removed_tasks(ordering, specs,
                                                                         removed):
    policy = ordering()
    queued = tasks(*specs)
    queue = TaskQueue(policy)
    for task in queued:
        queue.push(task)
    for index in removed:
        queue.remove(f"t{index}")
    kept = [t for i, t in enumerate(queued) if i not in removed]
    expected = sorted(kept, key=lambda t: (policy.key(t), t.seq))
    assert queue.queued_cpu == pytest.approx(sum(t.cpu for t in kept))
    assert [t.task_id for t in queue.drain()] == [t.task_id for t in expected]


# ----------------------------------------------------------------------------- candidates


def test_candidates_are_the_live_schedulers_of_the_tasks_region():
    loads = [WorkerLoad("eu-0", 2, "eu"), WorkerLoad("us-0", 2, "us"),
             WorkerLoad("eu-1", 2, "eu")]
    assert candidates(Task("a", region="eu"), loads) == [0, 2]


def test_a_task_of_a_region_without_a_scheduler_may_go_to_any_live_one():
    loads = [WorkerLoad("eu-0", 2, "eu"), WorkerLoad("us-0", 2, "us")]
    assert candidates(Task("a", region="asia"), loads) == [0, 1]


def test_a_task_whose_regions_schedulers_are_all_dead_may_go_to_any_live_one():
    loads = [WorkerLoad("eu-0", 2, "eu", alive=False), WorkerLoad("us-0", 2, "us"),
             WorkerLoad("us-1", 2, "us")]
    assert candidates(Task("a", region="eu"), loads) == [1, 2]


def test_a_task_without_a_region_may_go_to_any_live_scheduler():
    loads = [WorkerLoad("eu-0", 2, "eu"), WorkerLoad("us-0", 2, "us", alive=False),
             WorkerLoad("x", 2)]
    assert candidates(Task("a"), loads) == [0, 2]


def test_dead_schedulers_of_the_region_are_not_candidates():
    loads = [WorkerLoad("eu-0", 2, "eu", alive=False), WorkerLoad("eu-1", 2, "eu"),
             WorkerLoad("us-0", 2, "us")]
    assert candidates(Task("a", region="eu"), loads) == [1]


def test_placing_with_no_live_scheduler_is_an_error():
    with pytest.raises(RuntimeError, match="no live local scheduler"):
        candidates(Task("a"), [WorkerLoad("w0", 2, alive=False)])


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_a_dead_scheduler_is_never_chosen(name):
    placement = PLACEMENTS[name](seed=3)
    # The dead one is the least loaded by every measure, so only liveness keeps it out.
    loads = [WorkerLoad("dead", 8, alive=False),
             WorkerLoad("w1", 2, outstanding_cpu=1, true_backlog_s=5),
             WorkerLoad("w2", 2, outstanding_cpu=3, true_backlog_s=1),
             WorkerLoad("w3", 2, outstanding_cpu=2, true_backlog_s=2)]
    chosen = {placement.choose(Task(f"t{i}"), loads)[0] for i in range(200)}
    assert 0 not in chosen


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_the_only_candidate_is_chosen(name):
    loads = [WorkerLoad("eu-0", 2, "eu", outstanding_cpu=100), WorkerLoad("us-0", 2, "us")]
    assert PLACEMENTS[name](seed=0).choose(Task("a", region="eu"), loads) == (0, "only candidate")


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_placements_with_the_same_seed_choose_alike(name):
    loads = [WorkerLoad(f"w{i}", 4, outstanding_cpu=i % 2, true_backlog_s=i % 2)
             for i in range(6)]
    one, two = PLACEMENTS[name](seed=11), PLACEMENTS[name](seed=11)
    picks = [(one.choose(Task(f"t{i}"), loads), two.choose(Task(f"t{i}"), loads))
             for i in range(50)]
    assert all(a == b for a, b in picks)


# ----------------------------------------------------------------------------- placements


def test_worker_load_is_outstanding_cpu_per_slot():
    assert WorkerLoad("w", 4, outstanding_cpu=3).load == 0.75


def test_round_robin_gives_each_candidate_one_task_per_turn():
    placement = RoundRobin()
    loads = workers(0, 0, 0)
    picks = [placement.choose(Task(f"t{i}"), loads)[0] for i in range(9)]
    assert Counter(picks[:3]) == Counter({0: 1, 1: 1, 2: 1})
    assert picks[3:6] == picks[:3] and picks[6:] == picks[:3]


def test_round_robin_ignores_load():
    placement = RoundRobin()
    loads = workers(100, 0)
    assert {placement.choose(Task(f"t{i}"), loads)[0] for i in range(4)} == {0, 1}


# Regression guard (bug found in review, fixed):
#   one turn counter shared by all regions starved some schedulers when regions interleaved.
def test_round_robin_cycles_within_a_region_when_regions_interleave():
    placement = RoundRobin()
    loads = [WorkerLoad("eu-0", 2, "eu"), WorkerLoad("eu-1", 2, "eu"),
             WorkerLoad("us-0", 2, "us"), WorkerLoad("us-1", 2, "us")]
    picks = [placement.choose(Task(f"t{i}", region="eu" if i % 2 == 0 else "us"), loads)[0]
             for i in range(8)]
    assert set(picks) == {0, 1, 2, 3}


def test_least_loaded_picks_the_least_outstanding_cpu_per_slot():
    loads = [WorkerLoad("small", 2, outstanding_cpu=2),   # 1.0 per slot
             WorkerLoad("big", 16, outstanding_cpu=8),    # 0.5 per slot
             WorkerLoad("busy", 4, outstanding_cpu=3)]    # 0.75 per slot
    index, reason = LeastLoaded().choose(Task("a"), loads)
    assert index == 1 and "least loaded" in reason


def test_least_loaded_breaks_ties_only_among_the_least_loaded():
    placement = LeastLoaded(seed=5)
    loads = workers(1, 0, 2, 0)
    picks = Counter(placement.choose(Task(f"t{i}"), loads)[0] for i in range(200))
    assert set(picks) == {1, 3}


def test_power_of_two_between_two_candidates_picks_the_less_loaded():
    placement = PowerOfTwo(seed=2)
    loads = workers(3, 1)
    assert {placement.choose(Task(f"t{i}"), loads)[0] for i in range(50)} == {1}


def test_power_of_two_never_picks_the_single_most_loaded_of_many():
    placement = PowerOfTwo(seed=2)
    loads = workers(0, 1, 2, 3, 4)
    picks = Counter(placement.choose(Task(f"t{i}"), loads)[0] for i in range(300))
    assert 4 not in picks
    assert picks[0] > picks[3]


def test_power_of_two_names_the_two_it_compared():
    _, reason = PowerOfTwo(seed=0).choose(Task("a"), workers(0, 1, 2))
    assert reason.startswith("power-of-two between w")


def test_least_work_picks_the_smallest_true_backlog_per_slot_when_all_are_busy():
    loads = [WorkerLoad("a", 2, outstanding_cpu=2, true_backlog_s=10.0),  # 5 s per slot
             WorkerLoad("b", 8, outstanding_cpu=8, true_backlog_s=16.0),  # 2 s per slot
             WorkerLoad("c", 1, outstanding_cpu=1, true_backlog_s=3.0)]   # 3 s per slot
    index, reason = LeastWork().choose(Task("a"), loads)
    assert index == 1 and "least true backlog" in reason


def test_least_work_prefers_a_free_slot_to_a_smaller_backlog():
    # Regression (issue 7, notebook 03): placing by backlog per slot alone queued tasks on
    # busy schedulers while others had idle slots, 6-17% worse than fifo at load 0.9.
    loads = [WorkerLoad("a", 4, outstanding_cpu=3, true_backlog_s=40.0),
             WorkerLoad("b", 4, outstanding_cpu=4, true_backlog_s=1.0)]
    assert LeastWork().choose(Task("a"), loads)[0] == 0


def test_different_seeds_can_break_ties_differently():
    loads = workers(*([0] * 8))
    first_picks = {LeastLoaded(seed=seed).choose(Task("t"), loads)[0] for seed in range(10)}
    assert len(first_picks) > 1
