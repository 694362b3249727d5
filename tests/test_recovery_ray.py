"""Failure recovery and fault injection (issue 5, item 6-8): a local scheduler killed
mid-replay, the learner killed mid-replay, a worker node removed mid-replay; each time
every task is recorded exactly once with status ok."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import ray

from ray_sched import Scheduler
from ray_sched.replay import replay
from ray_sched.workloads.synthetic import generate
from tests.conftest import RAY_SLOTS, small_trace

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def counting_engine(policy: str, *, model_dir=None, **options):
    """A SchedulerEngine whose every delivered completion is counted per task id."""
    from ray_sched.engines import SchedulerEngine

    scheduler = Scheduler(policy, RAY_SLOTS, model_dir=model_dir, fresh=True, **options)
    delivered: Counter = Counter()
    scheduler.add_listener(lambda batch: delivered.update(c.task_id for c in batch))
    return SchedulerEngine(scheduler), delivered


@pytest.fixture(scope="module")
def trace():
    return generate("mixed", n=150, slots=RAY_SLOTS, load=0.8, seed=11)


def assert_each_task_once_and_ok(result, delivered, trace):
    assert result.ok, result.results.loc[result.results["status"] != "ok", "error"].tolist()
    assert sorted(result.results["task_id"]) == sorted(trace["task_id"])
    assert set(delivered.values()) == {1}, [k for k, v in delivered.items() if v > 1]
    assert sorted(delivered) == sorted(trace["task_id"])


def test_a_killed_local_scheduler_loses_no_task(ray_local, trace):
    # The only local scheduler: nowhere else to go until its replacement is up. (Two local
    # schedulers, one lost: the node-removal test below.)
    chaos = "kill-local@2s"
    engine, delivered = counting_engine("ml")
    try:
        result = replay(trace, policy="ml", slots=RAY_SLOTS, engine=engine, chaos=chaos,
                        show_progress=False)
        story = engine.scheduler.monitor_output()["decisions"]
    finally:
        engine.close()
    assert_each_task_once_and_ok(result, delivered, trace)
    assert result.summary["chaos_events"] == [chaos.replace("local@", "local:0@")]
    lost = story[story["event"] == "lost"]
    assert len(lost) >= 1                                  # it held tasks when it died
    rerun = result.results.set_index("task_id").loc[lost["task_id"], "attempts"]
    assert (rerun >= 2).all()                              # attempts counts the lost run
    assert (story["event"] == "replaced").sum() == 1


def test_a_killed_learner_restarts_from_its_checkpoint(ray_local, trace, tmp_path):
    # A checkpoint every 10 completions: by 3 s (about 50 arrivals) some exist.
    engine, delivered = counting_engine("ml", model_dir=str(tmp_path), checkpoint_every=10)
    scheduler = engine.scheduler
    try:
        result = replay(trace, policy="ml", slots=RAY_SLOTS, engine=engine,
                        chaos="kill-learner@3s", show_progress=False)
        info = ray.get(scheduler._global.learner_info.remote(), timeout=60)
    finally:
        engine.close()
    assert_each_task_once_and_ok(result, delivered, trace)
    assert info["loaded_from"] is not None and str(tmp_path) in info["loaded_from"]


@pytest.mark.cluster
def test_a_removed_worker_node_loses_no_task():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    # The driver joins while the head is the only node, so that it is attached to the head:
    # on one machine every node has the same address and it might pick the worker's raylet,
    # whose removal would then take the driver's actors with it.
    ray.init(address=cluster.address)
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        frame = small_trace(120, tree_share=0.1, slots=4, mean_runtime_s=0.1)
        from ray_sched.engines import SchedulerEngine
        delivered: Counter = Counter()
        scheduler = Scheduler("least-loaded", 4, model_dir=None)
        scheduler.add_listener(lambda batch: delivered.update(c.task_id for c in batch))
        engine = SchedulerEngine(scheduler)
        assert len(scheduler.plan) == 2
        remover = threading.Timer(2.0, cluster.remove_node, args=(worker,))
        remover.start()
        try:
            result = replay(frame, policy="least-loaded", slots=4, engine=engine,
                            show_progress=False)
        finally:
            remover.join()
            engine.close()
        assert_each_task_once_and_ok(result, delivered, frame)
        head = ray.get_runtime_context().get_node_id()
        late = result.results[result.results["start_s"] > 6.0]
        assert (late["node"] == head).all()                # after the loss: the head only
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_chaos_specs_are_checked_before_anything_runs(trace):
    from ray_sched.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown action 'kill-moon'"):
        replay(trace, policy="ml", slots=RAY_SLOTS, chaos="kill-moon@1s")
    with pytest.raises(ConfigError, match="baseline"):
        replay(trace, policy="ray-default", slots=RAY_SLOTS, chaos="kill-local@1s")
