"""Work stealing (plan, give-up, ledger move), admission, forecast steering and the
Controls switchboard: decision rules on plain Python, no Ray."""

from __future__ import annotations

import pytest

from ray_sched.control import Controls
from ray_sched.control.stealing import (
    MOVE_COST_S,
    plan_steals,
    predicted_wait_s,
)
from ray_sched.core.global_core import GlobalCore
from ray_sched.core.local_core import LocalCore
from ray_sched.errors import ConfigError
from ray_sched.policies.learned import ExpectedCompletion, LearnedOrdering
from ray_sched.policies.ordering import Fifo
from ray_sched.policies.placement import LeastLoaded, LoadTable, WorkerLoad
from ray_sched.task import Task

pytestmark = pytest.mark.unit


def table(*rows: tuple, regions: list | None = None) -> LoadTable:
    """Rows of (slots, outstanding_cpu, predicted_backlog_s); one task per outstanding cpu."""
    return LoadTable([WorkerLoad(name=f"w{i}", slots=slots, outstanding_cpu=cpu,
                                 outstanding_tasks=int(cpu), predicted_backlog_s=backlog,
                                 region=None if regions is None else regions[i])
                      for i, (slots, cpu, backlog) in enumerate(rows)])


def predicted(task_id: str, p50_s: float, seq: int = 0, **fields) -> Task:
    return Task(task_id, predicted_runtime_s=p50_s, predicted_mean_s=p50_s,
                predicted_p90_s=2 * p50_s, seq=seq, **fields)


# ----------------------------------------------------------------------------- the plan


def test_the_wait_counts_only_where_work_is_queued_beyond_the_slots():
    loads = table((2, 1, 0.5), (2, 6, 6.0))
    assert predicted_wait_s(loads).tolist() == [0.0, 3.0]


def test_an_idle_scheduler_steals_from_the_longest_wait_as_many_as_it_has_free_slots():
    loads = table((2, 0, 0.0), (2, 6, 6.0), (2, 10, 20.0))
    steals = plan_steals(loads)
    assert [(s.victim, s.thief, s.max_tasks) for s in steals] == [(2, 0, 2)]
    assert "idle: 2 free slot(s)" in steals[0].reason and "w2 waits 10.000 s" in steals[0].reason


def test_each_idle_thief_pairs_with_its_own_victim():
    loads = table((2, 0, 0.0), (1, 0, 0.0), (2, 6, 6.0), (2, 10, 20.0))
    pairs = {(s.victim, s.thief) for s in plan_steals(loads)}
    assert pairs == {(3, 0), (2, 1)}


def test_no_steal_when_the_victim_would_wait_less_than_a_move_costs():
    backlog = 2 * MOVE_COST_S / 2 * 0.5  # a wait of half the move cost
    loads = table((2, 0, 0.0), (2, 3, backlog))
    assert plan_steals(loads) == []


def test_no_steal_when_nothing_is_queued_anywhere():
    assert plan_steals(table((2, 0, 0.0), (2, 2, 3.0))) == []


def test_a_scheduler_with_a_queue_of_its_own_is_no_thief():
    # More demand than slots (a 2-slot task waits behind three running): not idle.
    assert plan_steals(table((4, 5, 3.0), (2, 8, 12.0))) == []
    assert len(plan_steals(table((4, 3, 3.0), (2, 8, 12.0)))) == 1  # one slot free: a thief


def test_moves_stay_within_a_region():
    loads = table((2, 0, 0.0), (2, 10, 20.0), regions=["eu", "us"])
    assert plan_steals(loads) == []
    loads = table((2, 0, 0.0), (2, 10, 20.0), (2, 0, 0.0), regions=["eu", "us", "us"])
    assert [(s.victim, s.thief) for s in plan_steals(loads)] == [(1, 2)]


def test_dead_schedulers_neither_steal_nor_are_stolen_from():
    loads = table((2, 0, 0.0), (2, 10, 20.0))
    loads.set_alive(0, False)
    assert plan_steals(loads) == []


def test_a_bottleneck_gives_the_least_waiting_enough_to_even_out():
    # Nobody idle; w2 waits 10 s against a mean of ~3.9 s: it gives w0 (waits 0.5 s) half
    # the gap in slot-seconds, in tasks of its own mean size (20 s / 10 tasks = 2 s).
    loads = table((2, 3, 1.0), (2, 3, 2.5), (2, 10, 20.0))
    steals = plan_steals(loads)
    assert [(s.victim, s.thief) for s in steals] == [(2, 0)]
    assert steals[0].max_tasks == 5  # ceil((10 - 0.5) / 2 * 2 / 2)
    assert "bottleneck" in steals[0].reason and "> 2 x mean" in steals[0].reason


def test_a_wait_near_the_mean_is_no_bottleneck():
    assert plan_steals(table((2, 3, 2.0), (2, 3, 2.5), (2, 4, 3.0))) == []


def test_a_move_never_exceeds_the_cap_or_the_victims_queue():
    loads = table((100, 0, 0.0), (2, 5, 50.0))
    (steal,) = plan_steals(loads, max_tasks=64)
    assert steal.max_tasks == 3  # 3 queued beyond its slots
    loads = table((100, 0, 0.0), (2, 500, 5000.0))
    assert plan_steals(loads, max_tasks=64)[0].max_tasks == 64


# ------------------------------------------------------------------------- giving up


def test_a_local_core_gives_up_the_tasks_that_would_run_last_and_skips_tiny_ones():
    core = LocalCore("l", 1, LearnedOrdering(age_weight=0, fairness_weight=0),
                     clock=lambda: 0.0)
    core.enqueue([predicted("run", 0.1, 0), predicted("a", 0.2, 1), predicted("b", 5.0, 2),
                  predicted("tiny", 0.001, 3), predicted("c", 9.0, 4)])
    assert [t.task_id for t in core.next_runnable()] == ["tiny"]
    given = core.give_up(2, min_runtime_s=0.01)
    assert [t.task_id for t in given] == ["c", "b"]
    assert len(core.queue) == 2 and "tiny" in core.running


def test_running_tasks_are_never_given_up():
    core = LocalCore("l", 2, Fifo(), clock=lambda: 0.0)
    core.enqueue([predicted(f"t{i}", 1.0, i, arrival_s=float(i)) for i in range(3)])
    core.next_runnable()
    given = core.give_up(5)
    assert [t.task_id for t in given] == ["t2"] and set(core.running) == {"t0", "t1"}
    assert core.give_up(5) == []


def test_tasks_given_up_do_not_count_as_served_to_their_tenant():
    core = LocalCore("l", 1, LearnedOrdering(), clock=lambda: 0.0)
    core.enqueue([predicted("a", 1.0, 0, tenant="x"), predicted("b", 1.0, 1, tenant="x")])
    core.next_runnable()
    served = core.queue.served_s.sum()
    core.give_up(1)
    assert core.queue.served_s.sum() == served


# ------------------------------------------------------------------------- the ledger


def two_worker_core() -> GlobalCore:
    return GlobalCore(LeastLoaded(), [WorkerLoad("a", 2), WorkerLoad("b", 2)],
                      clock=lambda: 10.0)


def test_a_move_carries_each_tasks_load_to_the_thief_and_logs_why():
    core = two_worker_core()
    placements, _ = core.admit([predicted(f"t{i}", 2.0, i, runtime_s=3.0) for i in range(4)])
    on_a = [t.task_id for index, t in placements if index == 0]
    moved = core.move(on_a, 0, 1, "idle")
    assert [t.task_id for t in moved] == on_a
    assert core.loads.outstanding_tasks.tolist() == [0, 4]
    assert core.loads.predicted_backlog_s.tolist() == [0.0, 8.0]
    assert all(core.ledger[i].worker == 1 for i in on_a)
    story = core.story(on_a[0])
    assert story[-1]["event"] == "stolen" and story[-1]["target"] == "b"
    assert story[-1]["reason"] == "from a: idle"


def test_ids_no_longer_at_the_victim_are_not_moved():
    core = two_worker_core()
    placements, _ = core.admit([predicted("t0", 1.0, 0), predicted("t1", 1.0, 1)])
    where = {t.task_id: index for index, t in placements}
    on_a = [i for i, w in where.items() if w == 0]
    on_b = [i for i, w in where.items() if w == 1]
    assert core.move(on_b + ["unknown"], 0, 1, "x") == []
    from ray_sched.task import Completion
    core.complete([Completion(on_a[0], "ok")])
    assert core.move(on_a, 0, 1, "x") == []  # recorded meanwhile


def test_a_lost_thief_places_again_the_tasks_it_stole():
    core = two_worker_core()
    placements, _ = core.admit([predicted(f"t{i}", 1.0, i) for i in range(4)])
    on_a = [t.task_id for index, t in placements if index == 0]
    core.move(on_a, 0, 1, "idle")
    again = core.lose_worker(1, replaced=False)
    assert sorted(t.task_id for _, t in again) == [f"t{i}" for i in range(4)]
    assert {index for index, _ in again} == {0}


# ---------------------------------------------------- admission and forecast steering


def test_placement_skips_a_scheduler_that_stopped_admitting_while_another_admits():
    loads = table((2, 0, 0.0), (2, 1, 1.0))
    loads.set_admitting(0, False)
    assert loads.candidates(None).tolist() == [1]
    loads.set_admitting(1, False)  # nobody admits: every live one is a candidate again
    assert loads.candidates(None).tolist() == [0, 1]
    loads.set_admitting(0, True)
    assert loads.candidates(None).tolist() == [0]


def test_expected_completion_steers_away_from_a_region_with_a_burst_ahead():
    loads = table((2, 0, 0.0), (2, 0, 0.0), regions=["eu", "us"])
    task = predicted("t", 1.0)
    loads.forecast_wait_s[0] = 3.0
    assert ExpectedCompletion().choose(task, loads)[0] == 1
    loads.forecast_wait_s[:] = [0.0, 3.0]
    assert ExpectedCompletion().choose(task, loads)[0] == 0
    # A task bound to its region stays there, burst or not.
    assert ExpectedCompletion().choose(predicted("r", 1.0, region="us"), loads)[0] == 1


# ---------------------------------------------------------------------- Controls


def test_controls_default_to_inline_batch_steal_and_forecast_without_adaptive_slots():
    assert Controls().as_dict() == {"inline": True, "batch": True, "steal": True,
                                    "forecast": True,
                                    "adaptive": False, "min_slots": 0.5, "max_slots": 2.0,
                                    "control_nice": -10}


def test_controls_come_from_a_dict_with_overrides_that_are_not_none():
    controls = Controls.of({"steal": False}, inline=False, adaptive=None)
    assert (controls.steal, controls.inline, controls.adaptive) == (False, False, False)
    assert Controls.of(controls) == controls and Controls.of(None) == Controls()


@pytest.mark.parametrize("value, match", [
    ({"stealing": True}, r"unknown control\(s\) \['stealing'\]"),
    ({"steal": "yes"}, "controls.steal must be True or False"),
    ({"min_slots": 0}, "controls.min_slots must be a number > 0"),
    ({"min_slots": 1.5}, "min_slots <= 1 <= max_slots"),
    ({"max_slots": 0.5}, "min_slots <= 1 <= max_slots"),
    ("steal", "controls must be a Controls or a dict"),
])
def test_bad_controls_are_refused_naming_what_is_wrong(value, match):
    with pytest.raises(ConfigError, match=match):
        Controls.of(value)
