"""Specification of ray_sched.policies.learned: ScoredQueue, LearnedOrdering's score
(runtime, priority, deadline, aging, fairness) and ExpectedCompletion placement."""

from __future__ import annotations

import math

import pytest

from ray_sched.policies import WorkerLoad, resolve_policy
from ray_sched.policies.learned import (
    AGE_WEIGHT,
    DEADLINE_MARGIN,
    ExpectedCompletion,
    LearnedOrdering,
    ScoredQueue,
)
from ray_sched.task import Task

pytestmark = pytest.mark.unit

WEIGHTS = ("priority_weight", "deadline_weight", "age_weight", "fairness_weight",
           "deadline_margin", "width_weight")


def predicted(task_id: str, mean_s: float = 1.0, *, p50_s: float | None = None,
              p90_s: float | None = None, seq: int = 0, **fields) -> Task:
    """A task as the learner leaves it: predicted p50 (= mean unless given), p90, mean."""
    p50 = mean_s if p50_s is None else p50_s
    return Task(task_id, predicted_runtime_s=p50, predicted_mean_s=mean_s,
                predicted_p90_s=p90_s if p90_s is not None else 2 * p50, seq=seq, **fields)


def queue_of(*tasks: Task, ordering: LearnedOrdering | None = None) -> ScoredQueue:
    queue = ScoredQueue(ordering or LearnedOrdering())
    for task in tasks:
        queue.push(task)
    return queue


def drained_ids(queue: ScoredQueue, now: float = 0.0) -> list[str]:
    return [queue.pop(now).task_id for _ in range(len(queue))]


# ----------------------------------------------------------------------------- ScoredQueue


def test_an_empty_queue_has_no_head_and_pop_raises_index_error():
    queue = queue_of()
    assert len(queue) == 0
    assert queue.peek(0.0) is None
    with pytest.raises(IndexError):
        queue.pop(0.0)


def test_push_counts_tasks_and_cpu_and_knows_their_ids():
    queue = queue_of(predicted("a", cpu=1.0), predicted("b", cpu=2.0, seq=1))
    assert len(queue) == 2
    assert "a" in queue and "b" in queue and "c" not in queue
    assert queue.queued_cpu == 3.0
    assert {t.task_id for t in queue} == {"a", "b"}


def test_pushing_a_queued_task_again_raises_value_error():
    queue = queue_of(predicted("a"))
    with pytest.raises(ValueError, match="already queued"):
        queue.push(predicted("a"))


def test_peek_returns_the_head_without_removing_it():
    queue = queue_of(predicted("long", 5.0), predicted("short", 1.0, seq=1))
    assert queue.peek(0.0).task_id == "short"
    assert len(queue) == 2 and "short" in queue


def test_pop_removes_the_head_and_its_cpu():
    queue = queue_of(predicted("long", 5.0, cpu=1.0), predicted("short", 1.0, cpu=2.0, seq=1))
    assert queue.pop(0.0).task_id == "short"
    assert "short" not in queue
    assert len(queue) == 1
    assert queue.queued_cpu == 1.0


def test_remove_takes_out_any_queued_task_by_id():
    queue = queue_of(predicted("a", 1.0), predicted("b", 2.0, seq=1), predicted("c", 3.0, seq=2))
    assert queue.remove("a").task_id == "a"
    assert queue.remove("a") is None
    assert queue.remove("nowhere") is None
    assert len(queue) == 2
    assert drained_ids(queue) == ["b", "c"]


def test_the_queue_grows_past_its_initial_capacity():
    n = 300  # the initial capacity is 256 rows
    means = [1.0 + (i * 37 % n) for i in range(n)]  # distinct, shuffled
    queue = queue_of(*(predicted(f"t{i}", m, seq=i) for i, m in enumerate(means)))
    assert len(queue) == n
    assert queue.queued_cpu == n
    popped = drained_ids(queue)
    assert sorted(popped) == sorted(f"t{i}" for i in range(n))
    assert popped == [f"t{i}" for i in sorted(range(n), key=lambda i: means[i])]


def test_removal_by_swap_keeps_every_other_task_retrievable():
    n = 300
    queue = queue_of(*(predicted(f"t{i}", 1.0 + i, seq=i) for i in range(n)))
    removed = {f"t{i}" for i in range(0, n, 3)} | {"t299", "t1"}
    for task_id in sorted(removed):
        assert queue.remove(task_id).task_id == task_id
    kept = [f"t{i}" for i in range(n) if f"t{i}" not in removed]
    assert all(task_id in queue for task_id in kept)
    assert not any(task_id in queue for task_id in removed)
    assert drained_ids(queue) == kept  # still in order of predicted runtime


def test_drain_empties_the_queue_in_order():
    queue = queue_of(predicted("c", 3.0), predicted("a", 1.0, seq=1), predicted("b", 2.0, seq=2))
    assert [t.task_id for t in queue.drain()] == ["a", "b", "c"]
    assert len(queue) == 0 and queue.queued_cpu == 0


def test_tasks_without_predictions_get_the_fallback_runtime():
    queue = queue_of(Task("unpredicted"), predicted("short", 0.1, seq=1),
                     predicted("long", 5.0, seq=2))
    assert drained_ids(queue) == ["short", "unpredicted", "long"]


def test_many_tenants_are_accepted():
    queue = queue_of(*(predicted(f"t{i}", seq=i, tenant=f"tenant-{i}") for i in range(40)))
    assert len(drained_ids(queue)) == 40


# ----------------------------------------------------------------------------- LearnedOrdering


def test_shorter_predicted_mean_runs_first():
    queue = queue_of(predicted("long", 2.0, seq=0), predicted("short", 1.0, seq=1))
    assert drained_ids(queue) == ["short", "long"]


def test_the_mean_not_the_median_decides():
    # Same p50, but one has a heavy tail (higher mean): it is not mistaken for a short task.
    queue = queue_of(predicted("heavy-tail", 3.0, p50_s=1.0, seq=0),
                     predicted("steady", 1.5, p50_s=1.0, seq=1))
    assert drained_ids(queue) == ["steady", "heavy-tail"]


def test_at_equal_predicted_runtimes_the_task_taking_fewer_slots_runs_first():
    queue = queue_of(predicted("wide", 1.0, cpu=8.0, seq=0), predicted("narrow", 1.0, seq=1),
                     predicted("half", 1.0, cpu=0.5, seq=2))
    assert drained_ids(queue) == ["half", "narrow", "wide"]


def test_equal_scores_run_in_arrival_order():
    queue = queue_of(*(predicted(f"t{i}", 1.0, seq=i) for i in (3, 1, 2, 0)))
    assert drained_ids(queue) == ["t0", "t1", "t2", "t3"]


def test_higher_priority_runs_first_at_equal_runtimes():
    queue = queue_of(predicted("low", priority=1, seq=0), predicted("high", priority=7, seq=1))
    assert drained_ids(queue) == ["high", "low"]


def test_the_effective_priority_overrides_the_declared_one():
    queue = queue_of(predicted("declared-9", priority=9, effective_priority=0.0, seq=0),
                     predicted("predicted-5", priority=0, effective_priority=5.0, seq=1))
    assert drained_ids(queue) == ["predicted-5", "declared-9"]


def aging_crossover_s(long_mean_s: float, short_mean_s: float) -> float:
    """Wait after which a long task (p50 = mean) scores below a just-arrived short one:
    log(long) - AGE_WEIGHT * log1p(wait / long) = log(short)."""
    return long_mean_s * math.expm1(math.log(long_mean_s / short_mean_s) / AGE_WEIGHT)


def test_a_long_task_that_has_waited_long_enough_overtakes_a_new_short_one():
    crossover = aging_crossover_s(4.0, 1.0)  # 4 * (16 - 1) = 60 s
    assert crossover == pytest.approx(60.0)
    for now, head in ((0.99 * crossover, "short"), (1.01 * crossover, "long")):
        queue = queue_of(predicted("long", 4.0, submitted_at=0.0, seq=0),
                         predicted("short", 1.0, submitted_at=now, seq=1))
        assert queue.peek(now).task_id == head, now


def test_waiting_counts_from_submitted_at_not_from_arrival_s():
    # Enqueued at 1,000 s on the scheduler's clock, though the trace says it arrived at 0.
    crossover = aging_crossover_s(4.0, 1.0)
    for now, head in ((1000.0 + 0.99 * crossover, "short"), (1000.0 + 1.01 * crossover, "long")):
        queue = queue_of(predicted("long", 4.0, arrival_s=0.0, submitted_at=1000.0, seq=0),
                         predicted("short", 1.0, arrival_s=now, submitted_at=now, seq=1))
        assert queue.peek(now).task_id == head, now


def deadline_pair(*, arrival_s: float = 0.0, submitted_at: float = 100.0,
                  **ordering_weights) -> ScoredQueue:
    """'free' (1 s, no deadline) and 'due' (p50 2 s, p90 3 s, deadline 10 s after it was
    submitted at 100 s; its trace arrival_s is 0). Aging is off to isolate the deadline."""
    ordering_weights.setdefault("age_weight", 0.0)
    return queue_of(predicted("free", 1.0, submitted_at=100.0, seq=0),
                    predicted("due", 2.0, p90_s=3.0, arrival_s=arrival_s,
                              submitted_at=submitted_at, deadline_s=10.0, seq=1),
                    ordering=LearnedOrdering(**ordering_weights))


# For 'due': at risk once now + p90 > deadline - margin * p90, reachable while now + p50 <=
# deadline, with the deadline at submitted_at + deadline_s = 110 s.
AT_RISK_FROM_S = 110.0 - DEADLINE_MARGIN * 3.0 - 3.0   # 106.25
UNREACHABLE_FROM_S = 110.0 - 2.0                        # 108.0


def test_a_task_whose_deadline_is_safe_is_not_promoted():
    assert deadline_pair().peek(AT_RISK_FROM_S - 0.5).task_id == "free"


def test_a_task_whose_deadline_is_at_risk_is_promoted():
    now = (AT_RISK_FROM_S + UNREACHABLE_FROM_S) / 2
    assert deadline_pair().peek(now).task_id == "due"


def test_a_task_whose_deadline_is_already_unreachable_is_not_promoted():
    assert deadline_pair().peek(UNREACHABLE_FROM_S + 0.5).task_id == "free"


def test_the_deadline_counts_from_submitted_at_not_from_arrival_s():
    now = (AT_RISK_FROM_S + UNREACHABLE_FROM_S) / 2
    # Submitted at 100 s (trace arrival 0 s): at risk at 107 s, promoted.
    assert deadline_pair(arrival_s=0.0, submitted_at=100.0).peek(now).task_id == "due"
    # Submitted at 0 s (trace arrival 100 s): unreachable since 8 s, not promoted.
    assert deadline_pair(arrival_s=100.0, submitted_at=0.0).peek(now).task_id == "free"


def fairness_queue(**ordering_weights) -> ScoredQueue:
    """Tenant 'a' demands 3 equal tasks, 'b' one; 'a1' has already started."""
    queue = queue_of(predicted("a1", tenant="a", seq=0), predicted("a2", tenant="a", seq=1),
                     predicted("a3", tenant="a", seq=2), predicted("b1", tenant="b", seq=3),
                     ordering=LearnedOrdering(**ordering_weights))
    assert queue.pop(0.0).task_id == "a1"
    return queue


def test_an_over_served_tenant_is_pushed_behind():
    # 'a' has had all of the service for 3/4 of the demand: b1 jumps ahead of a2.
    assert fairness_queue().peek(0.0).task_id == "b1"


def aging_pair(**ordering_weights) -> tuple[ScoredQueue, float]:
    now = 1.01 * aging_crossover_s(4.0, 1.0)
    return queue_of(predicted("long", 4.0, submitted_at=0.0, seq=0),
                    predicted("short", 1.0, submitted_at=now, seq=1),
                    ordering=LearnedOrdering(**ordering_weights)), now


def priority_pair(**ordering_weights) -> tuple[ScoredQueue, float]:
    return queue_of(predicted("low", priority=0, seq=0), predicted("high", priority=9, seq=1),
                    ordering=LearnedOrdering(**ordering_weights)), 0.0


def deadline_case(**ordering_weights) -> tuple[ScoredQueue, float]:
    return deadline_pair(**ordering_weights), (AT_RISK_FROM_S + UNREACHABLE_FROM_S) / 2


def fairness_case(**ordering_weights) -> tuple[ScoredQueue, float]:
    return fairness_queue(**ordering_weights), 0.0


def width_pair(**ordering_weights) -> tuple[ScoredQueue, float]:
    # 0.1 s on 4 slots is 0.4 slot-seconds; 0.3 s on one slot, 0.3.
    return queue_of(predicted("wide", 0.1, cpu=4.0, seq=0), predicted("narrow", 0.3, seq=1),
                    ordering=LearnedOrdering(**ordering_weights)), 0.0


@pytest.mark.parametrize("weight, case, head_with_term, head_without_term", [
    ("priority_weight", priority_pair, "high", "low"),
    ("deadline_weight", deadline_case, "due", "free"),
    ("age_weight", aging_pair, "long", "short"),
    ("fairness_weight", fairness_case, "b1", "a2"),
    ("width_weight", width_pair, "narrow", "wide"),
], ids=lambda v: v if isinstance(v, str) and v.endswith("weight") else None)
def test_a_zero_weight_switches_its_term_off(weight, case, head_with_term, head_without_term):
    queue, now = case()
    assert queue.peek(now).task_id == head_with_term
    queue, now = case(**{weight: 0.0})
    assert queue.peek(now).task_id == head_without_term


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "1"], ids=repr)
@pytest.mark.parametrize("name", WEIGHTS)
def test_an_invalid_weight_raises_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        LearnedOrdering(**{name: value})


def test_ml_needs_predictions_and_fifo_does_not():
    assert resolve_policy("ml").needs_predictions is True
    assert resolve_policy("fifo").needs_predictions is False


def test_ml_orders_with_a_scored_queue_and_places_by_expected_completion():
    spec = resolve_policy("ml")
    assert isinstance(spec.make_ordering(), LearnedOrdering)
    assert isinstance(spec.make_ordering().make_queue(), ScoredQueue)
    assert isinstance(spec.make_placement(seed=0), ExpectedCompletion)


# ----------------------------------------------------------------------------- placement


def loads(*specs: tuple[float, float, str | None]) -> list[WorkerLoad]:
    """(slots, predicted backlog in slot-seconds, region) per local scheduler; one with a
    backlog has every slot taken."""
    return [WorkerLoad(f"w{i}", slots, region=region, predicted_backlog_s=backlog,
                       outstanding_cpu=slots if backlog else 0.0)
            for i, (slots, backlog, region) in enumerate(specs)]


def test_expected_completion_prefers_a_free_slot_to_any_backlog():
    # w0: one slot free of four, but a long backlog on the other three; w1: all busy, short.
    workers = [WorkerLoad("w0", 4, outstanding_cpu=3, predicted_backlog_s=30.0),
               WorkerLoad("w1", 4, outstanding_cpu=4, predicted_backlog_s=0.8)]
    index, reason = ExpectedCompletion(seed=0).choose(predicted("t", 0.5), workers)
    assert index == 0 and "a free slot" in reason


def test_expected_completion_spreads_over_free_schedulers_by_load():
    workers = [WorkerLoad("w0", 4, outstanding_cpu=3, predicted_backlog_s=3.0),
               WorkerLoad("w1", 4, outstanding_cpu=1, predicted_backlog_s=9.0)]
    assert ExpectedCompletion(seed=0).choose(predicted("t", 0.5), workers)[0] == 1


def test_expected_completion_picks_the_least_predicted_backlog_per_slot():
    # Backlog per slot: 2.0, 1.5, 2.5 -> w1, though w0 has the most free slot-seconds.
    workers = loads((4, 8.0, None), (1, 1.5, None), (2, 5.0, None))
    index, reason = ExpectedCompletion(seed=0).choose(predicted("t", 0.5), workers)
    assert index == 1
    assert "expected completion 2.000 s" in reason


def test_expected_completion_stays_in_the_tasks_region():
    workers = loads((2, 10.0, "eu"), (2, 20.0, "eu"), (2, 0.0, "us"))
    index, _ = ExpectedCompletion(seed=0).choose(predicted("t", region="eu"), workers)
    assert index == 0


def test_expected_completion_uses_any_worker_for_a_task_without_region():
    workers = loads((2, 10.0, "eu"), (2, 20.0, "eu"), (2, 0.0, "us"))
    index, _ = ExpectedCompletion(seed=0).choose(predicted("t"), workers)
    assert index == 2


def test_expected_completion_uses_any_worker_when_no_worker_serves_the_region():
    workers = loads((2, 10.0, "eu"), (2, 0.0, "us"))
    index, _ = ExpectedCompletion(seed=0).choose(predicted("t", region="ap"), workers)
    assert index == 1


def test_refresh_reorders_queued_tasks_by_new_predictions_without_touching_the_tasks():
    from ray_sched.policies.learned import LearnedOrdering

    queue = LearnedOrdering(age_weight=0, fairness_weight=0).make_queue()
    a = Task("a", predicted_runtime_s=1.0, predicted_p90_s=2.0, predicted_mean_s=1.0)
    b = Task("b", predicted_runtime_s=2.0, predicted_p90_s=4.0, predicted_mean_s=2.0, seq=1)
    queue.push(a)
    queue.push(b)
    assert queue.peek(0.0).task_id == "a"
    queue.refresh(["b", "a", "gone"], [0.1, 5.0, 1.0], [0.2, 9.0, 2.0], [0.1, 5.0, 1.0])
    assert queue.peek(0.0).task_id == "b"
    assert a.predicted_runtime_s == 1.0 and b.predicted_runtime_s == 2.0  # as placed
    assert (a.latest_p90_s, b.latest_p90_s) == (9.0, 0.2)  # what decides inline vs remote


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_first_gives_the_same_order_as_successive_pops(k):
    ordering = LearnedOrdering(fairness_weight=0)
    tasks = [predicted(f"t{i}", mean_s=(i * 7) % 11 + 0.5, seq=i, priority=i % 3,
                       submitted_at=float(i % 4)) for i in range(12)]
    heads = [t.task_id for t in queue_of(*tasks, ordering=ordering).first(k, now=5.0)]
    assert heads == drained_ids(queue_of(*tasks, ordering=ordering), now=5.0)[:k]


def test_a_local_core_fills_every_free_slot_in_order_from_one_pass():
    from ray_sched.core.local_core import LocalCore

    core = LocalCore("l", 3, LearnedOrdering(fairness_weight=0, age_weight=0),
                     clock=lambda: 0.0)
    core.enqueue([predicted(f"t{i}", mean_s=m, seq=i) for i, m in enumerate([5, 1, 3, 2, 4])])
    assert [t.task_id for t in core.next_runnable()] == ["t1", "t3", "t2"]
    assert core.next_runnable() == []
    core.finish("t3")
    assert [t.task_id for t in core.next_runnable()] == ["t4"]


def test_simulation_with_refresh_keeps_every_task_and_the_predictions_made_at_placement():
    from ray_sched.sim import simulate
    from ray_sched.trace import frame_to_tasks
    from ray_sched.workloads.synthetic import generate

    tasks = frame_to_tasks(generate("bursty", n=300, slots=4, load=0.9, seed=2))
    completions, learner = simulate(tasks, policy="ml", slots=4, refresh_every_s=0.1)
    assert len(completions) == 300 and learner is not None
    assert all(c.predicted_runtime_s is not None for c in completions.values())
