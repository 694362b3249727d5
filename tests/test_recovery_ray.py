"""Failure recovery and fault injection (issue 5, items 6-8): a local scheduler or the
global scheduler killed mid-replay, and on a 3-node cluster every fault in one replay (a
worker node removed, the global scheduler, a local scheduler and the learner killed, the
other worker node killed); each time every task is recorded exactly once with status ok.
The learner's restart from its checkpoint: tests/test_learner_ray.py."""

from __future__ import annotations

import threading
import time
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


def test_a_killed_global_scheduler_is_restarted_and_loses_no_task(ray_local, trace):
    engine, delivered = counting_engine("ml", local_schedulers=2)
    scheduler = engine.scheduler
    try:
        result = replay(trace, policy="ml", slots=RAY_SLOTS, engine=engine,
                        chaos="kill-global@2s", show_progress=False)
        decisions = scheduler.monitor_output()["decisions"]
    finally:
        engine.close()
    assert_each_task_once_and_ok(result, delivered, trace)
    assert scheduler.n_global_restarts == 1
    assert result.summary["chaos_events"] == ["kill-global@2s"]
    # The new incarnation took back what the local schedulers held (some were running).
    assert (decisions["event"] == "recovered").sum() >= 1, decisions["event"].value_counts()
    # Its named detached actors are gone with the scheduler.
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert not any(name.startswith(scheduler._prefix) for name in names)


@pytest.mark.cluster
def test_every_fault_on_a_three_node_cluster_loses_no_task(tmp_path):
    """One replay on 3 small nodes (one local scheduler each) through every fault in turn:
    a worker node removed, the global scheduler killed (restarted), a local scheduler
    killed, the learner killed, the other worker node killed with ``--chaos kill-node``.
    Every task is recorded exactly once, ok, and the last ones ran on the head alone."""
    from ray.cluster_utils import Cluster

    from ray_sched.engines import SchedulerEngine

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    # The driver joins while the head is the only node, so that it is attached to the head:
    # on one machine every node has the same address and it might pick a worker's raylet,
    # whose loss would then take the driver's actors with it.
    ray.init(address=cluster.address)
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        frame = small_trace(300, tree_share=0.1, slots=6, mean_runtime_s=0.1)
        delivered: Counter = Counter()
        scheduler = Scheduler("ml", 6, model_dir=str(tmp_path), fresh=True,
                              checkpoint_every=20)
        scheduler.add_listener(lambda batch: delivered.update(c.task_id for c in batch))
        engine = SchedulerEngine(scheduler)
        head = ray.get_runtime_context().get_node_id()
        assert len(scheduler.plan) == 3
        on_worker = [i for i, e in enumerate(scheduler.plan) if e["node_id"] != head]
        first = next(w for w in workers if w.node_id == scheduler.plan[on_worker[0]]["node_id"])
        remover = threading.Timer(1.5, cluster.remove_node, args=(first,))
        remover.start()
        chaos = "kill-global@2.5s,kill-local:0@3.5s,kill-learner@4.5s,kill-node@5.5s"
        try:
            result = replay(frame, policy="ml", slots=6, engine=engine, chaos=chaos,
                            show_progress=False)
            plan = ray.get(scheduler._global.plan_now.remote(), timeout=30)
        finally:
            remover.join()
            engine.close()
        assert_each_task_once_and_ok(result, delivered, frame)
        assert scheduler.n_global_restarts == 1
        assert len(plan) == 3
        # Both worker nodes are gone (one removed, one killed by --chaos kill-node).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            if alive == {head}:
                break
            time.sleep(0.5)
        assert alive == {head}
        late = result.results[result.results["start_s"] > 9.0]
        assert (late["node"] == head).all()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_chaos_specs_are_checked_before_anything_runs(trace):
    from ray_sched.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown action 'kill-moon'"):
        replay(trace, policy="ml", slots=RAY_SLOTS, chaos="kill-moon@1s")
    with pytest.raises(ConfigError, match="baseline"):
        replay(trace, policy="ray-default", slots=RAY_SLOTS, chaos="kill-local@1s")
    # One node: kill-node has nothing it may kill (never the driver's node).
    with pytest.raises(ConfigError, match="kill-node needs a multi-node cluster"):
        replay(trace, policy="fifo", slots=RAY_SLOTS, chaos="kill-node@1s",
               show_progress=False)
