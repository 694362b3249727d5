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


def test_otlp_processors_on_both_nodes_bring_together_traces_split_over_requests(
        two_node_cluster, tmp_path):
    """Two processors, one per node, listening on one port: the spans of each trace come in
    three requests over separate connections, and still make one trace. (A long decision
    wait: the drain decides every trace.)"""
    import asyncio

    import pandas as pd
    import requests

    from ray_sched.otlp.pipeline import OtlpPipeline, PipelineConfig
    from ray_sched.otlp.synthetic import trace_request

    request = trace_request(480, seed=21)        # 30 traces of 16 spans
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans
             for span in ss.spans]
    bodies = []
    for part in range(3):                        # every trace's spans in all three requests
        body = type(request)()
        resource_spans = body.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name").value.string_value = "split"
        resource_spans.scope_spans.add().spans.extend(spans[part::3])
        bodies.append(body.SerializeToString())

    async def main():
        pipeline = OtlpPipeline(PipelineConfig(export_dir=str(tmp_path), processors=2,
                                               decision_wait_s=30))
        urls = await pipeline.listen("127.0.0.1", 0, None)
        loop = asyncio.get_running_loop()

        def send(body):
            with requests.Session() as session:     # a connection of its own
                return session.post(f"{urls['http']}/v1/traces", data=body, timeout=60,
                                    headers={"Content-Type": "application/x-protobuf"})
        answers = await asyncio.gather(*[loop.run_in_executor(None, send, body)
                                         for body in bodies])
        stats = await pipeline.stats()
        written = await pipeline.drain()
        pipeline.close()
        return answers, stats, written

    answers, stats, written = asyncio.run(main())
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert stats["processors"] == 2 and stats["processor_nodes"] == 2
    assert stats["accepted"] == 480 and written["spans"] == 480
    rows = pd.read_parquet(tmp_path / "spans")
    assert len(rows) == 480 and not rows["orphan"].any()
    assert rows["trace_spans"].eq(16).all() and rows["trace_id"].nunique() == 30
    assert rows.groupby("trace_id")["sample_reason"].nunique().eq(1).all()
    assert len(pd.read_parquet(tmp_path / "traces")) == 30
