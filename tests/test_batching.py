"""Amortised launches (issue 15, item 4): which queued tasks share a launch and a slot
(LocalCore.next_launches with LaunchBatcher's rule), with no Ray."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.control.batching import MIN_OBSERVED, LaunchBatcher
from ray_sched.core.local_core import LocalCore
from ray_sched.policies.ordering import Fifo
from ray_sched.task import Task

pytestmark = pytest.mark.unit

LAUNCH_S = 0.010  # a launch cost of 10 ms: tiny is under 20 ms, a batch carries 40 ms


def queued(*runtimes: float | None, kind: str = "k", cpu: float = 1.0) -> list[Task]:
    """Tasks t0, t1, ... in FIFO order, each predicted (p90) at the given runtime."""
    return [Task(f"t{i}", arrival_s=float(i), seq=i, kind=kind, cpu=cpu, predicted_p90_s=r)
            for i, r in enumerate(runtimes)]


def launches(core: LocalCore, batcher: LaunchBatcher) -> list[list[str]]:
    return [[t.task_id for t in launch]
            for launch in core.next_launches(*batcher.rule(LAUNCH_S))]


def test_tiny_tasks_in_a_backlog_share_launches_in_queue_order_within_the_budget():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(queued(*[0.004] * 30))
    started = launches(core, LaunchBatcher())
    # 10 tasks of 4 ms per 40 ms launch; two slots, so two launches now, in queue order.
    assert started == [[f"t{i}" for i in range(10)], [f"t{i}" for i in range(10, 20)]]
    assert core.busy_cpu == 2 and len(core.running) == 20 and len(core.queue) == 10
    # A batch's slot frees with its last task, not before.
    for i in range(9):
        core.finish(f"t{i}")
    assert core.busy_cpu == 2 and launches(core, LaunchBatcher()) == []
    core.finish("t9")
    assert core.busy_cpu == 1
    assert launches(core, LaunchBatcher()) == [[f"t{i}" for i in range(20, 30)]]


def test_a_batch_takes_no_more_than_its_share_of_the_queue_per_free_slot():
    core = LocalCore("l", 4, Fifo())
    core.enqueue(queued(*[0.001] * 12))
    assert [len(launch) for launch in launches(core, LaunchBatcher())] == [3, 3, 3, 3]


def test_long_unknown_staged_and_wide_tasks_start_alone_and_close_the_batch():
    core = LocalCore("l", 4, Fifo())
    tasks = queued(0.001, 0.001, 0.5, 0.001, None, 0.001, 0.001, 0.001, 0.001, 0.001)
    tasks[6].stage = "sink"
    tasks[7].cpu = 2.0
    core.enqueue(tasks)
    assert launches(core, LaunchBatcher()) == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
    # Strict order holds: t5 waits for a free slot even though t3's batch had room.
    assert "t5" in core.queue


def test_everything_that_fits_starts_alone_and_off_means_one_task_per_launch():
    core = LocalCore("l", 8, Fifo())
    core.enqueue(queued(*[0.001] * 8))
    assert launches(core, LaunchBatcher()) == [[f"t{i}"] for i in range(8)]
    core = LocalCore("l", 2, Fifo())
    core.enqueue(queued(*[0.001] * 8))
    assert launches(core, LaunchBatcher(enabled=False)) == [["t0"], ["t1"]]
    assert launches(core, LaunchBatcher(max_batch=3)) == []


def test_measured_runtimes_of_a_kind_stand_in_for_missing_predictions():
    batcher = LaunchBatcher()
    task = Task("x", arrival_s=0.0, kind="tiny")
    assert batcher.expected_s(task) is None
    for _ in range(MIN_OBSERVED):
        batcher.observe("tiny", 0.002)
    assert batcher.expected_s(task) == pytest.approx(0.002)
    # A re-prediction made while queued wins over both.
    task.latest_p90_s = 0.5
    assert batcher.expected_s(task) == 0.5
    batcher.observe("tiny", None)
    batcher.observe("tiny", float("nan"))  # ignored, not a crash
    assert batcher.kind_p90_s("tiny") == pytest.approx(0.002)


def test_a_batcher_refuses_bad_settings_by_name():
    with pytest.raises(ValueError, match="work_per_launch"):
        LaunchBatcher(work_per_launch=0)
    with pytest.raises(ValueError, match="max_batch"):
        LaunchBatcher(max_batch=0)
    with pytest.raises(ValueError, match="tiny_launches"):
        LaunchBatcher(tiny_launches=5.0, work_per_launch=4.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.one_of(st.none(), st.floats(0.0, 0.05)),
                                   min_size=0, max_size=60),
       st.lists(st.integers(0, 59), max_size=80))
def test_every_task_runs_once_in_queue_order_and_slots_are_never_overbooked(
        slots, runtimes, finish_order):
    core = LocalCore("l", slots, Fifo())
    core.enqueue(queued(*runtimes))
    batcher = LaunchBatcher()
    started: list[str] = []
    for pick in [*finish_order, *range(len(runtimes) * 2)]:
        for launch in core.next_launches(*batcher.rule(LAUNCH_S)):
            started += [t.task_id for t in launch]
            assert sum(batcher.expected_s(t) or 0 for t in launch) <= 4 * LAUNCH_S + 1e-12 \
                or len(launch) == 1
        assert core.busy_cpu <= slots + 1e-9
        if core.running:
            running = sorted(core.running)
            core.finish(running[pick % len(running)])
    assert started == [f"t{i}" for i in range(len(runtimes))]
    assert not core.running and not len(core.queue) and core.busy_cpu == 0


def test_the_core_decides_each_start_inline_remote_batched_or_on_a_stage():
    from ray_sched.control.inline import InlineDecider

    inline = InlineDecider(initial_launch_cost_s=LAUNCH_S)
    core = LocalCore("l", 2, Fifo(), inline=inline, batcher=LaunchBatcher())
    staged = Task("s", arrival_s=-1.0, seq=-1, stage="sink")
    core.enqueue([staged] + queued(0.004, 0.004, 0.004)
                 + [Task(f"k{i}", arrival_s=10.0 + i, seq=10 + i, kind="k") for i in range(3)])
    starts = core.starts()
    # The stage task alone; then three tasks predicted under a launch: one batch, run inline.
    assert [(ids_of(s.tasks), s.mode) for s in starts] == [(["s"], "stage"),
                                                            (["t0", "t1", "t2"], "inline")]
    assert all(t.attempts == 1 for s in starts for t in s.tasks)
    assert inline.stats()["inline"] == 3 and core.batcher.stats()["batches"] == 1
    core.finish("s")
    for task_id in ("t0", "t1", "t2"):
        core.finish(task_id, runtime_s=0.001)
    # No prediction for kind k, and too few of its runtimes measured here: alone, remote.
    assert [(ids_of(s.tasks), s.mode) for s in core.starts()] == [(["k0"], "remote"),
                                                                  (["k1"], "remote")]
    # Once enough of the kind have run here, its tasks batch on their measured runtimes
    # (one free slot: the whole queue fits one launch's budget); without a prediction
    # they never run inline.
    for _ in range(MIN_OBSERVED):
        core.batcher.observe("k", 0.002)
    core.finish("k0", runtime_s=0.002)
    core.enqueue([Task(f"m{i}", arrival_s=20.0 + i, seq=20 + i, kind="k") for i in range(4)])
    assert [(ids_of(s.tasks), s.mode) for s in core.starts()] == [
        (["k2", "m0", "m1", "m2", "m3"], "remote")]


def ids_of(tasks: list[Task]) -> list[str]:
    return [task.task_id for task in tasks]
