"""Specification of the plain-Python scheduler cores: LocalCore and GlobalCore."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.core.global_core import GlobalCore
from ray_sched.core.local_core import LocalCore
from ray_sched.policies.ordering import DeclaredPriority, Fifo
from ray_sched.policies.placement import LeastLoaded, RoundRobin, WorkerLoad
from ray_sched.task import Completion, Task

pytestmark = pytest.mark.unit

NOW = 123.0
CHAIN_DEPTH = 100_000


def fifo_tasks(*cpus: float) -> list[Task]:
    """Tasks t0, t1, ... arriving in that order, with the given cpu."""
    return [Task(f"t{i}", arrival_s=float(i), seq=i, cpu=cpu) for i, cpu in enumerate(cpus)]


def ids(tasks: list[Task]) -> list[str]:
    return [task.task_id for task in tasks]


# ============================================================================= LocalCore


def test_a_local_core_needs_positive_slots():
    with pytest.raises(ValueError, match="slots must be > 0"):
        LocalCore("l", 0, Fifo())


def test_tasks_start_in_order_until_the_slots_are_full():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(1, 1, 1))
    assert ids(core.next_runnable()) == ["t0", "t1"]
    assert core.busy_cpu == 2 and len(core.queue) == 1


def test_nothing_more_starts_while_the_slots_are_full():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(1, 1, 1))
    core.next_runnable()
    assert core.next_runnable() == []


def test_tasks_wanting_several_slots_count_them_all():
    core = LocalCore("l", 4, Fifo())
    core.enqueue(fifo_tasks(2, 2, 2))
    assert ids(core.next_runnable()) == ["t0", "t1"]
    assert core.busy_cpu == 4


def test_a_task_wider_than_every_slot_runs_alone_on_an_idle_core():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(8, 1))
    assert ids(core.next_runnable()) == ["t0"]
    assert core.busy_cpu == 2


def test_a_task_wider_than_every_slot_waits_until_the_core_is_idle():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(1, 8))
    assert ids(core.next_runnable()) == ["t0"]
    core.finish("t0")
    assert ids(core.next_runnable()) == ["t1"]


def test_the_next_task_waits_while_a_wide_task_runs():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(8, 1))
    core.next_runnable()
    assert core.next_runnable() == []
    core.finish("t0")
    assert ids(core.next_runnable()) == ["t1"] and core.busy_cpu == 1


def test_no_task_jumps_ahead_of_one_that_does_not_fit():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(1, 2, 1))
    assert ids(core.next_runnable()) == ["t0"]
    assert core.busy_cpu == 1  # one slot free, yet t2 stays behind t1


def test_finishing_a_task_frees_its_slots_and_returns_it():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(2, 1))
    core.next_runnable()
    finished = core.finish("t0")
    assert finished is not None and finished.task_id == "t0"
    assert core.busy_cpu == 0 and "t0" not in core.running
    assert ids(core.next_runnable()) == ["t1"]


def test_finishing_a_task_that_is_not_running_returns_none():
    core = LocalCore("l", 2, Fifo())
    core.enqueue(fifo_tasks(1))
    assert core.finish("t0") is None and core.finish("ghost") is None
    assert core.busy_cpu == 0


def test_the_ordering_decides_what_starts():
    core = LocalCore("l", 1, DeclaredPriority())
    core.enqueue([Task("low", priority=0, seq=0), Task("high", priority=9, seq=1)])
    assert ids(core.next_runnable()) == ["high"]


def test_a_duplicate_delivery_of_a_running_task_is_ignored():
    core = LocalCore("l", 1, Fifo())
    (task,) = fifo_tasks(1)
    core.enqueue([task])
    core.next_runnable()
    core.enqueue([task])
    assert len(core.queue) == 0
    core.finish("t0")
    assert core.next_runnable() == []


# Regression guard (bug found in review, fixed):
#   a duplicate delivery of a task still queued raised and dropped the rest of the batch.
def test_a_duplicate_delivery_of_a_queued_task_is_ignored():
    core = LocalCore("l", 1, Fifo())
    first, second, third = fifo_tasks(1, 1, 1)
    core.enqueue([first, second])
    core.enqueue([second, third])
    assert ids(core.queue.drain()) == ["t0", "t1", "t2"]


def test_a_snapshot_reports_slots_busy_queued_and_running():
    core = LocalCore("l", 3, Fifo())
    core.enqueue(fifo_tasks(2, 1, 2, 0.5))
    core.next_runnable()
    snap = core.snapshot()
    assert (snap.name, snap.slots, snap.busy_cpu) == ("l", 3.0, 3.0)
    assert (snap.running, snap.queued, snap.queued_cpu) == (2, 2, 2.5)


local_steps = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 7.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(slots=st.sampled_from([1, 2, 3, 4, 2.5]), steps=local_steps)
def test_busy_slots_never_exceed_the_slots_and_no_task_is_lost(slots, steps):
    core = LocalCore("l", slots, Fifo())
    enqueued, finished = [], []
    for action, value in steps:
        if action == "enqueue":
            task = Task(f"t{len(enqueued)}", arrival_s=float(len(enqueued)),
                        seq=len(enqueued), cpu=value)
            enqueued.append(task.task_id)
            core.enqueue([task])
        elif core.running:
            task_id = sorted(core.running)[value % len(core.running)]
            finished.append(core.finish(task_id).task_id)
        core.next_runnable()
        assert core.busy_cpu <= core.slots + 1e-9
        assert core.busy_cpu == pytest.approx(
            sum(min(t.cpu, core.slots) for t in core.running.values()))
        head = core.queue.peek()
        if head is not None:  # whatever still waits does not fit now
            assert core.busy_cpu + min(head.cpu, core.slots) > core.slots + 1e-9
    held = finished + list(core.running) + [t.task_id for t in core.queue]
    assert sorted(held) == sorted(enqueued)


# ============================================================================= GlobalCore


def make_global(n_workers: int = 2, placement=None, **core_options) -> GlobalCore:
    loads = [WorkerLoad(f"local-{i}", 4) for i in range(n_workers)]
    return GlobalCore(placement or RoundRobin(), loads, clock=lambda: NOW, **core_options)


def node(task_id: str, *parents: str, **fields) -> Task:
    return Task(task_id, parents=tuple(parents), **fields)


def ok(task_id: str) -> Completion:
    return Completion(task_id, "ok", worker="local-0", start_wall=1.0, finish_wall=2.0)


def failed(task_id: str) -> Completion:
    return Completion(task_id, "failed", worker="local-0", error="boom")


def placed_ids(placements: list[tuple[int, Task]]) -> list[str]:
    return [task.task_id for _, task in placements]


def test_a_global_core_needs_a_local_scheduler():
    with pytest.raises(ValueError, match="at least one local scheduler"):
        GlobalCore(RoundRobin(), [])


def test_tasks_without_parents_are_placed_on_admission():
    core = make_global()
    placements, failures = core.admit([node("a"), node("b")])
    assert placed_ids(placements) == ["a", "b"] and failures == []
    assert all(0 <= index < 2 for index, _ in placements)
    assert {core.ledger[t].state for t in "ab"} == {"placed"}


def test_admission_numbers_tasks_in_arrival_order():
    core = make_global()
    placements, _ = core.admit([node("a"), node("b")])
    core.admit([node("c")])
    assert [task.seq for _, task in placements] + [core.ledger["c"].task.seq] == [0, 1, 2]


def test_a_child_waits_for_its_parent():
    core = make_global()
    placements, _ = core.admit([node("a"), node("b", "a")])
    assert placed_ids(placements) == ["a"]
    assert core.ledger["b"].state == "waiting"


def test_a_child_is_placed_when_its_parent_completes_ok():
    core = make_global()
    core.admit([node("a"), node("b", "a")])
    recorded, placements = core.complete([ok("a")])
    assert [c.task_id for c in recorded] == ["a"]
    assert placed_ids(placements) == ["b"]
    assert core.ledger["b"].state == "placed"


def test_a_child_admitted_before_its_parent_waits_for_it():
    core = make_global()
    placements, _ = core.admit([node("b", "a")])
    assert placements == []
    assert placed_ids(core.admit([node("a")])[0]) == ["a"]
    assert placed_ids(core.complete([ok("a")])[1]) == ["b"]


def test_a_child_of_a_parent_already_done_is_placed_on_admission():
    core = make_global()
    core.admit([node("a")])
    core.complete([ok("a")])
    assert placed_ids(core.admit([node("b", "a")])[0]) == ["b"]


@pytest.fixture
def diamond() -> GlobalCore:
    """a -> (b, c) -> d, with a completed ok, so b and c are placed and d waits on both."""
    core = make_global()
    core.admit([node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")])
    core.complete([ok("a")])
    return core


def test_a_join_waits_for_every_parent(diamond):
    _, placements = diamond.complete([ok("b")])
    assert placements == []
    assert diamond.ledger["d"].state == "waiting"
    assert diamond.ledger["d"].waiting_on == {"c"}


def test_a_join_is_placed_once_when_its_last_parent_completes(diamond):
    diamond.complete([ok("b")])
    _, placements = diamond.complete([ok("c")])
    assert placed_ids(placements) == ["d"]
    assert [e["event"] for e in diamond.story("d")].count("placed") == 1


def test_a_failed_parent_fails_its_waiting_children_and_their_descendants():
    core = make_global()
    core.admit([node("a"), node("b", "a"), node("c", "b"), node("d", "a"), node("e")])
    recorded, placements = core.complete([failed("a")])
    assert placements == []
    by_id = {c.task_id: c for c in recorded}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert all(c.status == "failed" for c in recorded)
    assert "'a' failed" in by_id["b"].error and "'b' failed" in by_id["c"].error
    assert by_id["b"].attempts == 0
    assert core.finished == {"a": False, "b": False, "c": False, "d": False}
    assert set(core.ledger) == {"e"}


def test_a_join_of_a_failed_parent_fails_once_and_is_never_placed(diamond):
    recorded, _ = diamond.complete([failed("b")])
    assert [c.task_id for c in recorded] == ["b", "d"]
    recorded, placements = diamond.complete([ok("c")])
    assert [c.task_id for c in recorded] == ["c"] and placements == []
    assert "d" not in diamond.ledger and diamond.finished["d"] is False


def test_a_join_whose_parents_both_fail_is_recorded_once(diamond):
    recorded, _ = diamond.complete([failed("b"), failed("c")])
    assert [c.task_id for c in recorded] == ["b", "d", "c"]


def test_a_child_of_a_parent_that_already_failed_is_failed_on_admission():
    core = make_global()
    core.admit([node("a")])
    core.complete([failed("a")])
    placements, failures = core.admit([node("b", "a"), node("c", "b")])
    assert placements == []
    assert [(c.task_id, c.status) for c in failures] == [("b", "failed"), ("c", "failed")]
    assert "'a' failed" in failures[0].error and "'b' failed" in failures[1].error
    assert core.outstanding() == 0


def test_a_failed_parent_fails_a_chain_of_100000_waiting_descendants():
    core = make_global(decision_log_size=1_000)
    chain = [node("t0")] + [node(f"t{i}", f"t{i - 1}") for i in range(1, CHAIN_DEPTH + 1)]
    core.admit(chain)
    recorded, _ = core.complete([failed("t0")])
    assert len(recorded) == CHAIN_DEPTH + 1
    assert all(c.status == "failed" for c in recorded)
    assert core.outstanding() == 0 and core.children == {}


def test_a_duplicate_admission_is_ignored():
    core = make_global()
    core.admit([node("a")])
    placements, failures = core.admit([node("a")])
    assert placements == [] and failures == []
    assert core.outstanding() == 1
    assert "duplicate-ignored" in [e["event"] for e in core.story("a")]


def test_a_task_admitted_again_after_it_finished_is_ignored():
    core = make_global()
    core.admit([node("a")])
    core.complete([ok("a")])
    assert core.admit([node("a")]) == ([], [])
    assert core.outstanding() == 0


def test_a_duplicate_completion_is_recorded_once():
    core = make_global()
    core.admit([node("a"), node("b", "a")])
    first, placed_first = core.complete([ok("a")])
    second, placed_second = core.complete([ok("a"), failed("a")])
    assert [c.task_id for c in first] == ["a"] and placed_ids(placed_first) == ["b"]
    assert second == [] and placed_second == []
    assert core.finished["a"] is True


def test_a_completion_of_a_task_never_admitted_is_ignored():
    core = make_global()
    assert core.complete([ok("ghost")]) == ([], [])
    assert "ghost" not in core.finished


def test_a_completion_of_a_waiting_task_is_ignored():
    core = make_global()
    core.admit([node("a"), node("b", "a")])
    assert core.complete([ok("b")]) == ([], [])
    assert core.ledger["b"].state == "waiting"


def test_placing_counts_the_task_on_its_worker():
    core = make_global(1)
    core.admit([node("a", cpu=2.0, runtime_s=3.0, predicted_runtime_s=2.5)])
    worker = core.workers[0]
    assert (worker.outstanding_cpu, worker.outstanding_tasks) == (2.0, 1)
    # Backlogs are slot-seconds: runtime times cpu.
    assert (worker.true_backlog_s, worker.predicted_backlog_s) == (6.0, 5.0)


def test_worker_counters_return_to_zero_when_everything_completes():
    core = make_global(3, LeastLoaded(seed=1))
    tasks = [node(f"t{i}", cpu=1.0 + i % 3, runtime_s=0.1 * (i + 1),
                  predicted_runtime_s=0.3 * i) for i in range(30)]
    placements, _ = core.admit(tasks)
    assert sum(w.outstanding_tasks for w in core.workers) == 30
    core.complete([ok(t.task_id) if i % 4 else failed(t.task_id)
                   for i, (_, t) in enumerate(placements)])
    for worker in core.workers:
        assert worker.outstanding_cpu == 0 and worker.outstanding_tasks == 0
        assert worker.true_backlog_s == pytest.approx(0, abs=1e-9)
        assert worker.predicted_backlog_s == pytest.approx(0, abs=1e-9)


def test_least_loaded_placement_sees_the_counters_of_earlier_placements():
    core = make_global(2, LeastLoaded(seed=0))
    placements, _ = core.admit([node(f"t{i}") for i in range(4)])
    assert sorted(index for index, _ in placements) == [0, 0, 1, 1]


def test_a_recorded_completion_carries_placement_submission_and_prediction():
    core = make_global()
    core.admit([node("a", submitted_at=100.5, predicted_runtime_s=0.7)])
    (completion,), _ = core.complete([ok("a")])
    assert completion.placed_wall == NOW
    assert completion.submitted_wall == 100.5
    assert completion.predicted_runtime_s == 0.7


def test_a_story_lists_placement_then_completion():
    core = make_global(1)
    core.admit([node("a", predicted_runtime_s=0.5)])
    core.complete([ok("a")])
    story = core.story("a")
    assert [e["event"] for e in story] == ["placed", "completed"]
    assert story[0]["target"] == "local-0" and story[0]["predicted_runtime_s"] == 0.5
    assert story[0]["reason"] == "only candidate"
    assert all(e["wall"] == NOW and e["task_id"] == "a" for e in story)


def test_a_childs_story_shows_it_waited_before_it_was_placed():
    core = make_global()
    core.admit([node("a"), node("b", "a")])
    core.complete([ok("a")])
    events = [e["event"] for e in core.story("b")]
    assert events == ["waiting", "placed"]
    assert core.story("b")[0]["reason"] == "for 1 parent(s)"


def test_a_failed_tasks_story_gives_the_reason():
    core = make_global()
    core.admit([node("a"), node("b", "a")])
    core.complete([failed("a")])
    assert (core.story("a")[-1]["event"], core.story("a")[-1]["reason"]) == ("failed", "boom")
    last = core.story("b")[-1]
    assert (last["event"], last["reason"]) == ("failed", "parent 'a' failed")


def test_the_decision_log_is_bounded():
    core = make_global(decision_log_size=5)
    core.admit([node(f"t{i}") for i in range(20)])
    assert len(core.decisions) == 5
    assert core.story("t0") == [] and len(core.story("t19")) == 1


def test_outstanding_counts_waiting_and_placed_tasks_until_recorded():
    core = make_global()
    core.admit([node("a"), node("b", "a"), node("c")])
    assert core.outstanding() == 3
    core.complete([ok("a")])
    assert core.outstanding() == 2
    core.complete([ok("b"), ok("c")])
    assert core.outstanding() == 0


# ====================================================== GlobalCore: events in, actions out
# Recovery, work stealing and forecast steering driven through the core alone, with no
# Ray: what the GlobalScheduler actor and the simulator both carry out.
from ray_sched.core.actions import Hint, Learn, Place, Record, Steal  # noqa: E402
from ray_sched.policies.placement import PlacementPolicy  # noqa: E402


class AlwaysFirst(PlacementPolicy):
    """Places every task on local scheduler 0 (a misprediction's worst case)."""

    def choose(self, task, loads):
        return 0, "always the first"


def predicted(task_id: str, seconds: float = 1.0, **fields) -> Task:
    return Task(task_id, arrival_s=0.0, predicted_runtime_s=seconds,
                predicted_mean_s=seconds, **fields)


def places(actions) -> dict[int, list[str]]:
    return {a.index: ids(a.tasks) for a in actions if isinstance(a, Place)}


def test_arrivals_become_one_place_action_per_local_scheduler_and_failures_a_record():
    core = GlobalCore(RoundRobin(), [WorkerLoad("a", 1), WorkerLoad("b", 1)], clock=lambda: NOW)
    core.admit([Task("p", arrival_s=0.0)])
    core.complete([Completion("p", "failed", error="boom")])
    actions = core.on_arrivals([Task(f"t{i}", arrival_s=0.0) for i in range(4)]
                               + [Task("child", arrival_s=0.0, parents=("p",))])
    sent = places(actions)
    assert sorted(sent) == [0, 1] and [len(v) for v in sent.values()] == [2, 2]
    assert sorted(sent[0] + sent[1]) == ["t0", "t1", "t2", "t3"]
    record = [a for a in actions if isinstance(a, Record)]
    assert [c.task_id for c in record[0].completions] == ["child"]


def test_completions_return_what_to_learn_children_to_place_and_the_record():
    core = GlobalCore(RoundRobin(), [WorkerLoad("a", 2)], clock=lambda: NOW, learning=True,
                      keep_tasks=True)
    parent = Task("p", arrival_s=0.0, payload=b"fn")
    core.on_arrivals([parent, Task("c", arrival_s=0.0, parents=("p",))])
    done = Completion("p", "ok", start_wall=1.0, finish_wall=1.5)
    actions = core.on_completions(0, [done], {"slots": 3.0, "admitting": True})
    learn, place, record = actions
    assert isinstance(learn, Learn) and ids(learn.tasks) == ["p"]
    assert learn.tasks[0].payload is None and learn.runtimes_s == [0.5]
    assert place == Place(0, [core.ledger["c"].task])
    assert isinstance(record, Record) and record.tasks["p"] is parent
    assert core.loads.slots[0] == 3.0  # the state it sent moved its slots


def test_work_stealing_through_the_core_moves_the_last_queued_tasks_to_an_idle_one():
    core = GlobalCore(AlwaysFirst(), [WorkerLoad("a", 2), WorkerLoad("b", 2)],
                      clock=lambda: NOW, steal=True)
    core.on_arrivals([predicted(f"t{i}") for i in range(8)])
    steals = [a for a in core.on_tick() if isinstance(a, Steal)]
    assert [(s.victim, s.thief) for s in steals] == [(0, 1)] and steals[0].max_tasks == 2
    # The victim gives up its last two; one of them finished meanwhile and stays put.
    core.on_completions(0, [Completion("t7", "ok")])
    moved = core.on_given_up(steals[0], ["t6", "t7"])
    assert moved == [Place(1, [core.ledger["t6"].task])]
    assert core.ledger["t6"].worker == 1 and core.n_steals == 1 and core.n_tasks_stolen == 1
    assert [d["event"] for d in core.story("t6")] == ["placed", "stolen"]
    # Nobody to steal for while the thief is being replaced.
    assert not [a for a in core.on_tick(skip={1}) if isinstance(a, Steal)]


def test_a_lost_local_scheduler_s_tasks_go_out_again_through_the_core():
    core = GlobalCore(RoundRobin(), [WorkerLoad("a", 1), WorkerLoad("b", 1)], clock=lambda: NOW)
    core.on_arrivals([Task(f"t{i}", arrival_s=0.0) for i in range(4)])
    held = [tid for tid, entry in core.ledger.items() if entry.worker == 0]
    again = core.on_lost(0, "a lost", replaced=True, where="on node n2")
    assert sorted(sum(places(again).values(), [])) == sorted(held)
    assert any(d["event"] == "replaced" and "on node n2; 2 task(s) placed again" in d["reason"]
               for d in core.story(""))
    # Not replaced: it is marked dead and nothing goes there again.
    again = core.on_lost(1, "b lost", replaced=False)
    assert set(places(again)) == {0} and not core.loads.alive[1]


def test_a_restarted_core_rebuilds_its_ledger_from_what_survived():
    core = GlobalCore(RoundRobin(), [WorkerLoad("a", 2), WorkerLoad("b", 2)], clock=lambda: NOW)
    tasks = [Task("queued-a", arrival_s=0.0), Task("running-b", arrival_s=0.0),
             Task("in-transit", arrival_s=0.0), Task("done-unacked", arrival_s=0.0),
             Task("child-of-ok", arrival_s=0.0, parents=("ok-parent",)),
             Task("child-of-failed", arrival_s=0.0, parents=("failed-parent",))]
    held = [["queued-a"], ["running-b"]]
    held_back = [(1, [Completion("done-unacked", "ok")])]
    actions = core.rebuild(tasks, ["failed-parent"], held, held_back)
    assert core.n_rebuilt == (3, 3)
    # Held tasks stay where they are (no Place); the rest go out again, the child of the
    # recorded-ok parent at once, the child of the failed parent fails.
    sent = sum(places(actions).values(), [])
    assert sorted(sent) == ["child-of-ok", "in-transit"]
    assert [c.task_id for a in actions if isinstance(a, Record) for c in a.completions] == [
        "child-of-failed"]
    assert core.ledger["queued-a"].worker == 0 and core.ledger["running-b"].worker == 1
    # The completion that arrived before the rebuild is recorded once, where it ran.
    recorded = core.on_completions(1, held_back[0][1])
    assert [c.task_id for a in recorded for c in a.completions] == ["done-unacked"]
    assert core.on_completions(1, held_back[0][1]) == []


class BurstAhead:
    """A forecaster that always sees 6 slot-seconds per second coming to region us."""

    window_s = 1.0

    def forecast(self, horizon, by="region"):
        return {"us": {"work_s_per_s": 6.0}}

    def burst_ahead(self, region, capacity, horizon):
        return region == "us"

    def observe(self, kinds, regions, work):
        self.seen = len(kinds)


def test_forecast_steering_through_the_core_sets_waits_and_hints_demand():
    clock = [NOW]
    loads = [WorkerLoad("us-1", 2, region="us"), WorkerLoad("us-2", 2, region="us"),
             WorkerLoad("eu-1", 4, region="eu")]
    core = GlobalCore(RoundRobin(), loads, clock=lambda: clock[0], forecaster=BurstAhead(),
                      adaptive=True)
    core.on_arrivals([Task("t", arrival_s=0.0)])
    assert core.forecaster.seen == 1
    hints = [a for a in core.on_tick() if isinstance(a, Hint)]
    assert [(h.index, h.busy_slots) for h in hints] == [(0, 3.0), (1, 3.0), (2, 0.0)]
    # (6 - 4) slot-s/s over 2 windows, spread over the region's 4 slots.
    assert list(core.loads.forecast_wait_s) == [1.0, 1.0, 0.0]
    assert core.on_tick() == []  # acted on at most once a second
    clock[0] += 1.0
    assert len(core.on_tick()) == 3
