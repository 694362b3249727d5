"""Specification of the simulator (ray_sched.sim.engine.simulate) and of simulate_trace:
exact virtual times, every task once, slot limits, dependencies, and policy quality."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pandas as pd
import pytest

from ray_sched.errors import ConfigError
from ray_sched.metrics import read_results
from ray_sched.replay import simulate_trace
from ray_sched.sim.engine import simulate
from ray_sched.task import Completion, Task
from ray_sched.trace import frame_to_tasks
from ray_sched.workloads.synthetic import generate

pytestmark = pytest.mark.unit

SLOTS = 8


@cache
def _frame(scenario: str, n: int, seed: int) -> pd.DataFrame:
    return generate(scenario, n=n, slots=SLOTS, load=0.85, seed=seed)


def trace_tasks(scenario: str, n: int, seed: int) -> list[Task]:
    """Fresh Tasks of a synthetic trace (the simulator writes onto the tasks it runs)."""
    return frame_to_tasks(_frame(scenario, n, seed))


def mean_jct_s(tasks: list[Task], completions: dict[str, Completion]) -> float:
    return float(np.mean([completions[t.task_id].finish_wall - t.arrival_s for t in tasks]))


def busiest(intervals: list[tuple[float, float, float]]) -> float:
    """Most slots in use at once over (start, finish, cpu) intervals; a task finishing at
    the instant another starts hands its slots over."""
    events = sorted([(start, cpu) for start, _, cpu in intervals]
                    + [(finish, -cpu) for _, finish, cpu in intervals])
    in_use, peak = 0.0, 0.0
    for _, delta in events:
        in_use += delta
        peak = max(peak, in_use)
    return peak


@pytest.fixture(scope="module")
def loaded_mixed() -> dict[str, tuple[list[Task], dict[str, Completion]]]:
    """mixed, 1,500 tasks at load 0.85 on 8 slots, under fifo, oracle and ml."""
    runs = {}
    for policy in ("fifo", "oracle", "ml"):
        tasks = trace_tasks("mixed", 1500, seed=5)
        completions, _ = simulate(tasks, policy=policy, slots=SLOTS)
        runs[policy] = (tasks, completions)
    return runs


# ----------------------------------------------------------------------------- exact times


def test_fifo_on_one_slot_gives_the_hand_computed_times():
    tasks = [Task("a", arrival_s=0.0, runtime_s=2.0), Task("b", arrival_s=1.0, runtime_s=1.0),
             Task("c", arrival_s=1.5, runtime_s=0.5)]
    completions, learner = simulate(tasks, policy="fifo", slots=1, launch_overhead_s=0.0,
                                    arrival_batch_s=0.0)
    times = {k: (c.start_wall, c.finish_wall) for k, c in completions.items()}
    assert times == {"a": (0.0, 2.0), "b": (2.0, 3.0), "c": (3.0, 3.5)}
    assert learner is None


def test_the_launch_overhead_delays_each_start():
    tasks = [Task("a", arrival_s=0.0, runtime_s=2.0), Task("b", arrival_s=1.0, runtime_s=1.0),
             Task("c", arrival_s=1.5, runtime_s=0.5)]
    completions, _ = simulate(tasks, policy="fifo", slots=1, launch_overhead_s=0.1,
                              arrival_batch_s=0.0)
    times = [(c.start_wall, c.finish_wall) for c in (completions[k] for k in "abc")]
    assert times == [pytest.approx((0.1, 2.1)), pytest.approx((2.2, 3.2)),
                     pytest.approx((3.3, 3.8))]


def test_idle_slots_start_a_task_at_its_arrival():
    tasks = [Task("a", arrival_s=0.0, runtime_s=1.0), Task("b", arrival_s=0.5, runtime_s=1.0)]
    completions, _ = simulate(tasks, policy="fifo", slots=2, launch_overhead_s=0.0,
                              arrival_batch_s=0.0)
    assert completions["b"].start_wall == 0.5


def test_arrivals_batched_in_ticks_wait_at_most_the_tick():
    tasks = [Task("a", arrival_s=0.0, runtime_s=1.0), Task("b", arrival_s=0.0004, runtime_s=1.0),
             Task("c", arrival_s=0.5, runtime_s=1.0)]
    completions, _ = simulate(tasks, policy="fifo", slots=3, launch_overhead_s=0.0,
                              arrival_batch_s=0.001)
    assert completions["a"].start_wall == completions["b"].start_wall == pytest.approx(0.001)
    assert completions["c"].start_wall == pytest.approx(0.501)


def test_fifo_on_one_slot_follows_the_queueing_recurrence():
    # Independent check: start_i = max(arrival_i, finish_{i-1}), finish_i = start_i + runtime_i.
    rng = np.random.default_rng(11)
    arrivals = np.cumsum(rng.exponential(0.5, 200))
    service = rng.lognormal(np.log(0.4), 0.8, 200)
    tasks = [Task(f"t{i:03d}", arrival_s=float(a), runtime_s=float(r))
             for i, (a, r) in enumerate(zip(arrivals, service))]
    completions, _ = simulate(tasks, policy="fifo", slots=1, launch_overhead_s=0.0,
                              arrival_batch_s=0.0)
    finish = 0.0
    for task in tasks:
        start = max(task.arrival_s, finish)
        finish = start + task.runtime_s
        done = completions[task.task_id]
        assert done.start_wall == pytest.approx(start, abs=1e-9), task.task_id
        assert done.finish_wall == pytest.approx(finish, abs=1e-9), task.task_id


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("policy", ["fifo", "oracle", "ml"])
def test_every_task_runs_exactly_once(loaded_mixed, policy):
    tasks, completions = loaded_mixed[policy]
    assert sorted(completions) == sorted(t.task_id for t in tasks)
    assert all(c.status == "ok" and c.attempts == 1 for c in completions.values())


@pytest.mark.parametrize("policy", ["fifo", "oracle", "ml"])
def test_tasks_run_for_their_runtime_after_arriving(loaded_mixed, policy):
    tasks, completions = loaded_mixed[policy]
    for task in tasks:
        done = completions[task.task_id]
        assert done.start_wall >= task.arrival_s
        assert done.finish_wall - done.start_wall == pytest.approx(task.runtime_s, abs=1e-9)


@pytest.mark.parametrize("policy", ["fifo", "oracle", "ml"])
def test_never_more_slots_busy_than_given(loaded_mixed, policy):
    tasks, completions = loaded_mixed[policy]
    assert any(t.cpu == 2 for t in tasks)  # the trace has wide tasks
    intervals = [(completions[t.task_id].start_wall, completions[t.task_id].finish_wall, t.cpu)
                 for t in tasks]
    assert busiest(intervals) <= SLOTS + 1e-9
    assert busiest(intervals) == SLOTS  # and the load keeps them all busy at times


@pytest.mark.parametrize("policy", ["fifo", "ml"])
def test_never_more_slots_busy_than_each_worker_has(policy):
    tasks = trace_tasks("mixed", 400, seed=2)
    completions, _ = simulate(tasks, policy=policy, slots=SLOTS, nodes=4)
    by_worker: dict[str, list] = {}
    for task in tasks:
        done = completions[task.task_id]
        by_worker.setdefault(done.worker, []).append(
            (done.start_wall, done.finish_wall, task.cpu))
    assert len(by_worker) == 4
    assert all(busiest(intervals) <= SLOTS / 4 + 1e-9 for intervals in by_worker.values())


@pytest.mark.parametrize("policy", ["fifo", "ml"])
def test_children_start_after_all_their_parents_finish(policy):
    tasks = trace_tasks("tree", 300, seed=4)
    assert sum(len(t.parents) > 1 for t in tasks) > 0  # the trace has DAG joins
    completions, _ = simulate(tasks, policy=policy, slots=SLOTS)
    assert len(completions) == len(tasks)
    children = [t for t in tasks if t.parents]
    assert children
    for child in children:
        start = completions[child.task_id].start_wall
        for parent in child.parents:
            assert start >= completions[parent].finish_wall, (child.task_id, parent)


def test_simulate_refuses_bad_parameters():
    tasks = [Task("a", runtime_s=1.0)]
    with pytest.raises(ConfigError, match="unknown policy"):
        simulate(tasks, policy="shortest-guess", slots=1)
    with pytest.raises(ConfigError, match="nodes"):
        simulate(tasks, policy="fifo", slots=1, nodes=0)
    with pytest.raises(ConfigError, match="launch_overhead_s"):
        simulate(tasks, policy="fifo", slots=1, launch_overhead_s=-0.1)


# Regression guard: a bug found in review, fixed.
def test_simulating_the_same_tasks_twice_reports_the_second_run_alone():
    tasks = trace_tasks("mixed", 100, seed=1)
    simulate(tasks, policy="ml", slots=SLOTS)
    completions, _ = simulate(tasks, policy="fifo", slots=SLOTS)
    assert {c.attempts for c in completions.values()} == {1}
    assert all(c.predicted_runtime_s is None for c in completions.values())


# ----------------------------------------------------------------------------- policy quality


def test_oracle_beats_fifo_on_a_loaded_trace(loaded_mixed):
    fifo, oracle = (mean_jct_s(*loaded_mixed[p]) for p in ("fifo", "oracle"))
    assert oracle <= fifo


def test_ml_beats_fifo_and_comes_within_30_percent_of_the_oracle(loaded_mixed):
    # Seed 5: fifo 0.74 s, oracle 0.40 s, ml 0.45 s mean JCT (seeds 1-3: ml 1.04-1.15x oracle).
    fifo, oracle, ml = (mean_jct_s(*loaded_mixed[p]) for p in ("fifo", "oracle", "ml"))
    assert ml < fifo
    assert ml <= 1.3 * oracle


def test_ml_records_the_learners_predictions(loaded_mixed):
    tasks, completions = loaded_mixed["ml"]
    predicted = [completions[t.task_id].predicted_runtime_s for t in tasks]
    assert all(p is not None and p > 0 for p in predicted)
    fifo_tasks, fifo_completions = loaded_mixed["fifo"]
    assert all(fifo_completions[t.task_id].predicted_runtime_s is None for t in fifo_tasks)


def test_ml_returns_the_learner_that_learnt_from_every_task():
    tasks = trace_tasks("mixed", 200, seed=1)
    _, learner = simulate(tasks, policy="ml", slots=SLOTS)
    assert learner.n_observed_ == len(tasks)


# ----------------------------------------------------------------------------- simulate_trace


def test_simulate_trace_writes_results_per_the_contract(tmp_path):
    frame = _frame("mixed", 200, 1)
    result = simulate_trace(frame, policy="ml", slots=SLOTS, out=tmp_path / "out")
    results, summary = read_results(tmp_path / "out")
    assert sorted(results["task_id"]) == sorted(frame["task_id"])
    assert (results["status"] == "ok").all()
    assert summary["policy"] == "ml"
    assert summary["n_tasks"] == summary["n_ok"] == len(frame)
    assert summary["engine"] == "simulator"
    assert results["predicted_runtime_s"].notna().all()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_tasks"] == len(frame)
    assert result.ok


def test_simulate_trace_measured_runtime_is_the_traces_runtime(tmp_path):
    frame = _frame("mixed", 200, 1)
    result = simulate_trace(frame, policy="fifo", slots=SLOTS)
    merged = result.results.merge(frame[["task_id", "runtime_s"]], on="task_id",
                                  suffixes=("", "_trace"))
    np.testing.assert_allclose(merged["measured_runtime_s"], merged["runtime_s_trace"],
                               atol=1e-9)
    assert result.out_dir is None


@pytest.mark.parametrize("baseline", ["ray-default", "dask"])
def test_simulate_trace_refuses_the_baselines(baseline, tmp_path):
    with pytest.raises(ConfigError, match=baseline):
        simulate_trace(_frame("mixed", 50, 1), policy=baseline, slots=SLOTS, out=tmp_path)
    assert not list(tmp_path.iterdir())


def test_simulate_trace_refuses_a_bad_slot_count():
    with pytest.raises(ConfigError, match="slots"):
        simulate_trace(_frame("mixed", 50, 1), policy="fifo", slots=0)


def test_simulate_trace_spreads_tasks_over_the_nodes():
    result = simulate_trace(_frame("mixed", 400, 2), policy="fifo", slots=SLOTS, nodes=4)
    assert result.results["worker"].nunique() == 4
    assert result.results["node"].nunique() == 4
    assert result.summary["nodes"] == 4


def test_simulate_trace_with_local_schedulers_keeps_tasks_in_their_region():
    frame = _frame("mixed", 300, 2)
    result = simulate_trace(frame, policy="ml", slots=6, local_schedulers=3)
    regions = dict(zip(frame["task_id"], frame["region"]))
    for task_id, worker in zip(result.results["task_id"], result.results["worker"]):
        assert worker.endswith("-" + regions[task_id]), (task_id, worker)


# ----------------------------------------------------------------------------- failures, delays


def test_node_loss_re_places_every_task_of_the_lost_node_and_records_each_once():
    tasks = trace_tasks("mixed", 400, seed=8)
    stats = {}
    completions, _ = simulate(tasks, policy="fifo", slots=8, nodes=2, node_loss=[(2.0, 1)],
                              stats=stats)
    assert sorted(completions) == sorted(t.task_id for t in tasks)
    assert all(c.status == "ok" for c in completions.values())
    retried = [c for c in completions.values() if c.attempts == 2]
    assert retried and stats["lost_runs"] >= 1
    late_on_lost = [c for c in completions.values()
                    if c.node == "node-1" and c.finish_wall > 2.0]
    assert late_on_lost == []  # nothing finishes on the lost node after the loss
    assert all(c.node == "node-0" for c in retried)


def test_network_delay_comes_before_the_launch_overhead():
    tasks = [Task("a", arrival_s=1.0, runtime_s=1.0)]
    completions, _ = simulate(tasks, policy="fifo", slots=1, launch_overhead_s=0.01,
                              network_delay_s=0.05, arrival_batch_s=0.0)
    assert completions["a"].start_wall == pytest.approx(1.06)


@pytest.mark.parametrize("loss", [[(1.0, 5)], [(-1.0, 0)]])
def test_node_loss_naming_no_node_is_refused(loss):
    with pytest.raises(ConfigError, match="node_loss"):
        simulate([Task("a", runtime_s=1.0)], policy="fifo", slots=2, nodes=2, node_loss=loss)
