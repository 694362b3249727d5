"""The control plane's lighter parts (issue 15), without Ray: synthetic CPU work and busy
neighbours, the actors' priority, the CPU accounting in summary.json, and the learner's
snapshots that the schedulers predict with locally."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from ray_sched import bench
from ray_sched.control.priority import NICE_RANGE, set_process_nice
from ray_sched.errors import ConfigError
from ray_sched.learner import Learner, SnapshotSchedule
from ray_sched.learner.models import OnlineRegressor
from ray_sched.monitor.cpu import ControlPlaneCpu, CpuReading
from ray_sched.replay import check_work
from ray_sched.trace import frame_to_tasks
from ray_sched.work import WORK_KINDS, burn_cpu, busy_neighbours, synthetic_work
from ray_sched.workloads.synthetic import generate

pytestmark = pytest.mark.unit


# --- synthetic work ---------------------------------------------------------------------

def test_cpu_work_burns_its_runtime_in_cpu_time_and_sleep_work_does_not():
    cpu_before = time.thread_time()
    start, finish = synthetic_work(0.05, work="cpu")
    burnt = time.thread_time() - cpu_before
    assert 0.05 <= burnt < 0.5
    assert finish - start >= 0.05

    cpu_before = time.thread_time()
    start, finish = synthetic_work(0.05, "a parent's result", work="sleep")
    assert time.thread_time() - cpu_before < 0.02
    assert finish - start >= 0.045


def test_burn_cpu_of_nothing_returns_at_once():
    assert burn_cpu(0.0) >= 0
    assert burn_cpu(-1.0) >= 0


@pytest.mark.parametrize("work", ["spin", "", "CPU", None])
def test_an_unknown_work_kind_is_refused_by_name(work):
    with pytest.raises(ValueError, match="work must be one of sleep, cpu"):
        synthetic_work(0.01, work=work)
    with pytest.raises(ConfigError, match="--work must be one of"):
        check_work(work)


def test_work_kinds_are_sleep_and_cpu():
    assert WORK_KINDS == ("sleep", "cpu")
    for work in WORK_KINDS:
        check_work(work)


def test_busy_neighbours_burn_cpu_while_the_block_runs_and_stop_after_it():
    with busy_neighbours(2) as pids:
        assert len(pids) == 2
        processes = [psutil.Process(pid) for pid in pids]
        deadline = time.monotonic() + 30
        while (sum(p.cpu_times().user + p.cpu_times().system for p in processes) < 0.2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert sum(p.cpu_times().user + p.cpu_times().system for p in processes) >= 0.2
        assert all(p.nice() == 0 for p in processes)
    for process in processes:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_no_busy_neighbours_is_a_plain_block():
    with busy_neighbours(0) as pids:
        assert pids == []


@pytest.mark.parametrize("n", [-1, 1.5, "2", True])
def test_a_bad_number_of_busy_neighbours_is_refused(n):
    with pytest.raises(ValueError, match="busy neighbours must be a whole number"):
        with busy_neighbours(n):
            pass  # pragma: no cover - never reached


def test_bench_takes_work_and_busy_and_refuses_bad_ones():
    suite = bench.customize(bench.get_suite("quick"), work="cpu", busy=2)
    assert (suite.work, suite.busy) == ("cpu", 2)
    with pytest.raises(ConfigError, match="--work must be one of"):
        bench.customize(bench.get_suite("quick"), work="gpu")
    for busy in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="--busy must be an integer >= 0"):
            bench.customize(bench.get_suite("quick"), busy=busy)


# --- priority -----------------------------------------------------------------------------

@pytest.mark.parametrize("nice", [-21, 20, 1.0, "5", True, None])
def test_a_nice_value_outside_the_range_is_refused(nice):
    with pytest.raises(ValueError, match=r"nice must be an integer in \[-20, 19\]"):
        set_process_nice(nice)


def _in_child(nice: int) -> dict:
    """set_process_nice in a child process (a nice value, once raised, cannot be undone
    unprivileged: this test process keeps its own)."""
    code = ("import json, os; from ray_sched.control.priority import set_process_nice; "
            f"r = set_process_nice({nice}); r['actual'] = os.getpriority(os.PRIO_PROCESS, 0); "
            "print(json.dumps(r))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    import json
    return json.loads(output.strip().splitlines()[-1])


def test_raising_priority_is_applied_or_refused_with_the_reason():
    result = _in_child(-5)
    if result["applied"]:
        assert result["nice"] == result["actual"] == -5 and result["reason"] == ""
    else:  # an unprivileged process: told why, and its priority left as it was
        assert "not permitted" in result["reason"]
        assert result["nice"] == result["actual"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_lowering_priority_is_always_applied():
    result = _in_child(NICE_RANGE[1])
    assert result == {"nice": 19, "applied": True, "reason": "", "actual": 19}


# --- CPU accounting -----------------------------------------------------------------------

def test_control_plane_cpu_per_1k_tasks():
    before = CpuReading(driver_s=10.0, actors_s={"global": 1.0, "local-0": 2.0, "gone": 5.0},
                        ray_system_s=100.0)
    after = CpuReading(driver_s=10.5, actors_s={"global": 2.0, "local-0": 2.5, "new": 9.0},
                       ray_system_s=101.0)
    fields = ControlPlaneCpu.summary(before, after, n_tasks=500)
    # Per 1,000 tasks: actors read at both ends only (1.0 + 0.5 s), the driver's 0.5 s.
    by_role = fields.pop("actor_cpu_s_per_1k")
    assert fields == pytest.approx({"driver_cpu_s_per_1k": 1.0, "actors_cpu_s_per_1k": 3.0,
                                    "control_cpu_s_per_1k": 4.0,
                                    "ray_system_cpu_s_per_1k": 2.0})
    assert by_role == pytest.approx({"global": 2.0, "local-0": 1.0})


def test_control_plane_cpu_without_ray_or_actors_or_tasks():
    before = CpuReading(1.0, {}, None)
    after = CpuReading(3.0, {}, None)
    fields = ControlPlaneCpu.summary(before, after, n_tasks=0)
    assert fields["actors_cpu_s_per_1k"] == 0
    assert fields["driver_cpu_s_per_1k"] == fields["control_cpu_s_per_1k"] == 2000.0
    assert fields["ray_system_cpu_s_per_1k"] is None


def test_a_failing_actor_reading_counts_no_actor_cpu():
    def lost():
        raise RuntimeError("actor died")
    reading = ControlPlaneCpu(lost).read()
    assert reading.actors_s == {} and reading.driver_s > 0


# --- snapshots of the learner -------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_snapshots_follow_every_few_tasks_at_first_then_grow_apart():
    clock = FakeClock()
    schedule = SnapshotSchedule(min_tasks=16, growth=0.25, max_age_s=5.0, min_gap_s=0.2,
                                clock=clock)
    assert not schedule.due(0)
    assert schedule.due(1)  # the very first observations: nothing published yet
    assert schedule.published(1) == 1
    clock.now += 1.0
    assert not schedule.due(16)  # 15 new
    assert schedule.due(17)
    assert schedule.published(17) == 2
    versions, n = [], 17
    for _ in range(200):
        clock.now += 0.3
        n += 16
        if schedule.due(n):
            versions.append(schedule.published(n))
    # 3,200 more tasks: growth-spaced snapshots, about log(3217/17)/log(1.25) of them (the
    # age keeps adding some as they grow apart).
    assert 20 <= len(versions) <= 45
    assert versions == list(range(3, 3 + len(versions)))


def test_a_snapshot_follows_new_work_within_max_age_and_never_within_min_gap():
    clock = FakeClock()
    schedule = SnapshotSchedule(min_tasks=16, growth=0.25, max_age_s=5.0, min_gap_s=0.2,
                                clock=clock)
    schedule.published(1000)
    clock.now += 4.9
    assert not schedule.due(1001)
    clock.now += 0.2
    assert schedule.due(1001)
    assert not schedule.due(1000)  # nothing new, however old
    schedule.published(1001)
    clock.now += 0.1
    assert not schedule.due(5000)  # within min_gap_s
    clock.now += 0.15
    assert schedule.due(5000)


def test_a_new_kind_makes_a_snapshot_due_at_once():
    clock = FakeClock()
    schedule = SnapshotSchedule(min_tasks=16, growth=0.25, max_age_s=5.0, min_gap_s=0.2,
                                clock=clock)
    schedule.published(1000)
    clock.now += 0.01  # well within min_gap_s, and 1 new task of 1,000
    assert not schedule.due(1001)
    assert schedule.due(1001, novel=True)
    assert not schedule.due(1000, novel=True)  # nothing learnt since: nothing to publish


@pytest.mark.parametrize("options", [{"min_tasks": 0}, {"growth": 0}, {"max_age_s": -1},
                                     {"min_gap_s": -0.1}, {"min_tasks": "16"},
                                     {"growth": True}])
def test_a_bad_snapshot_schedule_is_refused_by_name(options):
    name = next(iter(options))
    with pytest.raises(ConfigError, match=name):
        SnapshotSchedule(**options)


@pytest.fixture(scope="module")
def mixed_tasks():
    trace = generate("mixed", n=600, slots=8, load=0.8, seed=21)
    return frame_to_tasks(trace), trace["runtime_s"].to_numpy()


def _trained(tasks, runtimes, n) -> Learner:
    learner = Learner()
    for start in range(0, n, 50):
        learner.observe(tasks[start:start + 50], runtimes[start:start + 50])
    return learner


def test_a_snapshot_predicts_as_the_learner_and_ignores_its_later_learning(mixed_tasks):
    tasks, runtimes = mixed_tasks
    learner = _trained(tasks, runtimes, 300)
    window = len(learner.runtime.refit_)
    snapshot = learner.snapshot()
    # The snapshot leaves out the refit window (only learning needs it); the learner keeps it.
    assert window > 0 and len(learner.runtime.refit_) == window
    assert len(snapshot.runtime.refit_) == 0
    held_out = tasks[300:]
    before = learner.predict(held_out)
    same = snapshot.predict(held_out)
    for field in ("p50_s", "p90_s", "mean_s", "priority"):
        np.testing.assert_allclose(getattr(same, field), getattr(before, field))
    learner.observe(tasks[300:], runtimes[300:] * 5.0)  # a drift the snapshot never saw
    after = learner.predict(held_out)
    assert not np.allclose(after.p50_s, before.p50_s)
    np.testing.assert_allclose(snapshot.predict(held_out).p50_s, same.p50_s)


def test_a_snapshot_is_small_and_loads_without_scikit_learn(mixed_tasks, tmp_path):
    tasks, runtimes = mixed_tasks
    learner = _trained(tasks, runtimes, 300)
    with learner.predict_only():
        data = pickle.dumps(learner, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 300_000
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(data)
    tasks_path = tmp_path / "tasks.pkl"
    tasks_path.write_bytes(pickle.dumps(tasks[300:320]))
    code = (
        "import pickle, sys; "
        f"model = pickle.loads(open({str(path)!r}, 'rb').read()); "
        f"tasks = pickle.loads(open({str(tasks_path)!r}, 'rb').read()); "
        "p = model.predict(tasks); "
        "print(len(p.p50_s), any(name.startswith('sklearn') for name in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120).stdout.split()
    assert output == ["20", "False"]
    expected = learner.predict(tasks[300:320]).p50_s
    np.testing.assert_allclose(pickle.loads(data).predict(tasks[300:320]).p50_s, expected)


def test_a_pickled_regressor_learns_on_from_where_it_was():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(400, 5))
    targets = matrix @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7
    model = OnlineRegressor(loss="squared_error", learning_rate=0.01)
    for start in range(0, 200, 20):
        model.observe(matrix[start:start + 20], targets[start:start + 20])
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(copy.predict(matrix), model.predict(matrix))
    for start in range(200, 400, 20):
        model.observe(matrix[start:start + 20], targets[start:start + 20])
        copy.observe(matrix[start:start + 20], targets[start:start + 20])
    np.testing.assert_allclose(copy.predict(matrix), model.predict(matrix), rtol=1e-9)
    assert copy.n_seen_ == model.n_seen_ == 400


# --- the Dask baseline with CPU-bound work ------------------------------------------------

def test_dask_runs_cpu_work_in_one_single_threaded_process_per_slot():
    from ray_sched.baselines.dask_engine import DaskEngine
    from ray_sched.task import Task

    engine = DaskEngine(2, processes=True)
    try:
        workers = engine.client.scheduler_info()["workers"].values()
        assert [w["nthreads"] for w in workers] == [1, 1]
        assert len({w["id"] for w in workers}) == 2
        tasks = [Task(task_id=f"t{i}", arrival_s=0.0, runtime_s=0.02, cpu=2.0 if i == 0 else 1.0,
                      work="cpu") for i in range(4)]
        engine.submit(tasks)
        done, deadline = {}, time.monotonic() + 60
        while len(done) < 4 and time.monotonic() < deadline:
            done.update((c.task_id, c) for c in engine.poll(0.5))
        # The 2-slot task too: one process is as wide as a task can be.
        assert sorted(done) == ["t0", "t1", "t2", "t3"]
        assert all(c.status == "ok" and c.finish_wall >= c.start_wall for c in done.values())
    finally:
        engine.close()
