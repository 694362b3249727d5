"""Several Ray nodes (ray.cluster_utils.Cluster): one local scheduler per node."""

from __future__ import annotations

import pytest

from tests.conftest import small_trace

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_node_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_local_scheduler_per_node_and_tasks_run_on_both(two_node_cluster):
    import ray

    from ray_sched.replay import replay

    frame = small_trace(80, tree_share=0.1, slots=4)
    result = replay(frame, policy="least-loaded", slots=4, show_progress=False)
    results = result.results
    assert result.ok and len(results) == 80
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(results["node"]) == alive and len(alive) == 2
    assert results["worker"].nunique() == 2
