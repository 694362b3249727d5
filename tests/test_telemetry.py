"""SelfTelemetry: its checks, its OTLP export to a stand-in receiver and to ``ray-sched serve``,
and its Ray metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
import threading
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

import ray_sched.monitor.telemetry as telemetry_module
from ray_sched.errors import ConfigError
from ray_sched.monitor.telemetry import (
    JCT_BOUNDARIES_S,
    MAX_RAY_OBSERVATIONS_PER_CALL,
    SelfTelemetry,
    metrics_url,
)

#: Longest wait for data to arrive anywhere (an export, a Parquet file, a Prometheus scrape).
DEADLINE_S = 60
#: Ray's metrics reach its Prometheus endpoint on its report interval (10 s by default).
RAY_METRICS_DEADLINE_S = 90
JCT_S = np.linspace(0.01, 2.0, 50)


def record_a_batch(telemetry: SelfTelemetry) -> None:
    """50 ok JCTs of which 48 ok and 2 failed tasks, 40 prediction errors, one sample."""
    telemetry.completions(JCT_S, ok=48, failed=2, prediction_error_log=np.full(40, 0.25))
    telemetry.sample(queue_lengths={"local-0": 7, "local-1": 0},
                     busy_cpu={"local-0": 2.0, "local-1": 0.5},
                     tasks_per_s=12.5, decisions_per_s=30.0, learner_mae_log=0.4)


def wait_for(predicate, deadline_s: float = DEADLINE_S, what: str = "data"):
    """Poll ``predicate`` until it answers something truthy, or fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        if answer := predicate():
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {deadline_s} s")
        time.sleep(0.05)


# -- checks and no-ops (no network, no Ray)


@pytest.mark.unit
@pytest.mark.parametrize("endpoint", ["ftp://x", "localhost:4318", "", "http://", "http://h:port"])
def test_an_endpoint_that_is_not_an_http_url_with_a_host_is_refused_by_value(endpoint):
    with pytest.raises(ConfigError, match=re.escape(repr(endpoint))):
        SelfTelemetry(endpoint, ray_metrics=False)


@pytest.mark.unit
@pytest.mark.parametrize("endpoint,url", [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/metrics"),
    ("https://otel.example:4318/", "https://otel.example:4318/v1/metrics"),
    ("http://gw/otlp", "http://gw/otlp/v1/metrics"),
    ("http://127.0.0.1:4318/v1/metrics", "http://127.0.0.1:4318/v1/metrics"),
])
def test_metrics_path_is_appended_to_a_base_url_and_kept_when_given(endpoint, url):
    assert metrics_url(endpoint) == url


@pytest.mark.unit
@pytest.mark.parametrize("interval", [0, -1.0, float("nan"), "1"])
def test_a_non_positive_export_interval_is_refused_by_value(interval):
    with pytest.raises(ConfigError, match="export_interval_s"):
        SelfTelemetry(None, export_interval_s=interval)


@pytest.mark.unit
def test_negative_counts_are_refused_by_value():
    with pytest.raises(ConfigError, match="failed must be an integer >= 0, got -1"):
        SelfTelemetry(None, ray_metrics=False).completions([], ok=0, failed=-1)


@pytest.mark.unit
def test_without_endpoint_or_ray_every_call_is_a_no_op():
    telemetry = SelfTelemetry(None, ray_metrics=False)
    record_a_batch(telemetry)
    telemetry.completions(np.empty(0), ok=0, failed=0)
    telemetry.completions([np.nan, -1.0, 3.0], ok=np.int64(1), failed=0)
    telemetry.sample(queue_lengths={}, busy_cpu={}, tasks_per_s=0, decisions_per_s=0,
                     learner_mae_log=None)
    assert telemetry.ray_metric_names == ()
    telemetry.shutdown()


@pytest.mark.unit
def test_shutdown_twice_is_fine():
    telemetry = SelfTelemetry("http://127.0.0.1:9", ray_metrics=False, export_interval_s=3600)
    telemetry.shutdown()
    telemetry.shutdown()
    telemetry.completions([1.0], ok=1, failed=0)  # after shutdown: dropped, not raised


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.mark.unit
def test_an_endpoint_that_is_down_never_raises_and_logs_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(telemetry_module, "EXPORT_TIMEOUT_S", 0.5)  # no retries: fail fast
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    caplog.set_level(logging.INFO, logger="ray_sched")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    telemetry = SelfTelemetry(endpoint, ray_metrics=False, export_interval_s=0.05)
    for _ in range(3):
        record_a_batch(telemetry)
    wait_for(lambda: telemetry.export_failures >= 3, what="three failed exports")
    telemetry.shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "ray_sched.monitor.telemetry"
    assert f"{endpoint}/v1/metrics failed" in warnings[0].getMessage()


@pytest.mark.unit
def test_ray_histograms_get_evenly_spaced_order_statistics_of_a_large_batch():
    values = np.random.default_rng(0).lognormal(size=10 * MAX_RAY_OBSERVATIONS_PER_CALL)
    thinned = telemetry_module._thin(values, MAX_RAY_OBSERVATIONS_PER_CALL)
    assert len(thinned) == MAX_RAY_OBSERVATIONS_PER_CALL
    assert thinned[0] == values.min() and thinned[-1] == values.max()
    assert abs(np.median(thinned) - np.median(values)) < 0.01 * np.median(values)
    few = values[:5]
    assert np.array_equal(telemetry_module._thin(few, MAX_RAY_OBSERVATIONS_PER_CALL), few)


# -- OTLP/HTTP export to a stand-in receiver


class MetricsReceiver:
    """A tiny OTLP/HTTP metrics endpoint on a free port, run by aiohttp in a thread."""

    def __init__(self):
        self.requests: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/metrics", self._export)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append(ExportMetricsServiceRequest.FromString(body))
        self.headers.append(dict(request.headers))
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def latest(self, name: str):
        """(resource, metric) of the last export that held metric ``name``, or None."""
        for request in reversed(self.requests):
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name == name:
                            return resource_metrics.resource, metric
        return None


@pytest.fixture
def receiver():
    receiver = MetricsReceiver()
    yield receiver
    receiver.stop()


def attributes(points) -> dict:
    """One data point per series: their values by their single attribute's value."""
    return {point.attributes[0].value.string_value if point.attributes else None:
            point.as_int if point.HasField("as_int") else point.as_double for point in points}


def test_every_metric_reaches_an_otlp_http_receiver_with_its_resource_and_headers(receiver):
    telemetry = SelfTelemetry(receiver.url, ray_metrics=False, service_name="tel-e2e",
                              headers={"x-tel-token": "s3cret"},
                              resource_attributes={"service.instance.id": "sched-1"})
    record_a_batch(telemetry)
    telemetry.shutdown()  # the last export: the flush
    wait_for(lambda: receiver.latest("ray_sched.learner.mae_log"), what="an export")

    resource, completed = receiver.latest("ray_sched.tasks.completed")
    resource_attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert resource_attributes["service.name"] == "tel-e2e"
    assert resource_attributes["service.instance.id"] == "sched-1"
    assert receiver.headers[-1]["x-tel-token"] == "s3cret"
    assert completed.sum.is_monotonic and completed.unit == "{task}"
    assert attributes(completed.sum.data_points) == {"ok": 48, "failed": 2}

    jct = receiver.latest("ray_sched.jct")[1]
    (point,) = jct.histogram.data_points
    assert jct.unit == "s" and point.count == 50
    assert point.sum == pytest.approx(JCT_S.sum())
    assert tuple(point.explicit_bounds) == JCT_BOUNDARIES_S
    (error,) = receiver.latest("ray_sched.prediction.error")[1].histogram.data_points
    assert error.count == 40 and error.sum == pytest.approx(10.0)

    def gauge(name):
        return attributes(receiver.latest(name)[1].gauge.data_points)
    assert gauge("ray_sched.queue.length") == {"local-0": 7, "local-1": 0}
    assert gauge("ray_sched.slots.busy") == {"local-0": 2.0, "local-1": 0.5}
    assert gauge("ray_sched.tasks.throughput") == {None: 12.5}
    assert gauge("ray_sched.decisions.rate") == {None: 30.0}
    assert gauge("ray_sched.learner.mae_log") == {None: 0.4}


# -- OTLP/HTTP export to our own receiver, `ray-sched serve`


@pytest.mark.ray
@pytest.mark.slow
def test_ray_sched_serve_writes_self_telemetry_to_its_metrics_table(tmp_path):
    from tests.test_otlp_serve import Server  # the module's subprocess harness

    server = Server(tmp_path / "export")
    try:
        telemetry = SelfTelemetry(server.http, ray_metrics=False, service_name="tel-serve")
        record_a_batch(telemetry)
        telemetry.shutdown()
        assert server.stop() == 0  # SIGTERM drains: every accepted point is in Parquet
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.collector.shutdown()
    points = pd.read_parquet(tmp_path / "export" / "metrics")
    mine = points[points["service"] == "tel-serve"]
    completed = mine[mine["metric"] == "ray_sched.tasks.completed"]
    status = completed["attributes"].map(lambda text: json.loads(text)["status"])
    assert completed.groupby(status)["value"].max().to_dict() == {"failed": 2, "ok": 48}
    assert mine.loc[mine["metric"] == "ray_sched.jct", "count"].max() == 50
    queue = mine[mine["metric"] == "ray_sched.queue.length"]
    assert set(queue["value"]) == {7.0, 0.0} and (queue["type"] == "gauge").all()


# -- Ray metrics


@pytest.fixture(scope="module")
def ray_with_metrics(ray_local):
    """The shared Ray fixture, and its Prometheus metrics URL."""
    node = ray_local._private.worker.global_worker.node
    return ray_local, f"http://127.0.0.1:{node.metrics_export_port}/metrics"


def record_inside_ray() -> tuple[str, ...]:
    telemetry = SelfTelemetry(None)
    record_a_batch(telemetry)
    # Larger than one call observes: thinned, not refused.
    telemetry.completions(np.linspace(0.001, 1, 3 * MAX_RAY_OBSERVATIONS_PER_CALL), ok=1,
                          failed=0)
    return telemetry.ray_metric_names


@pytest.mark.ray
def test_inside_ray_every_metric_is_recorded_through_ray_util_metrics(ray_with_metrics):
    ray, _ = ray_with_metrics
    names = ray.get(ray.remote(num_cpus=1)(record_inside_ray).remote(), timeout=DEADLINE_S)
    assert names == ("ray_sched_decisions_rate", "ray_sched_jct_seconds",
                     "ray_sched_learner_mae_log", "ray_sched_prediction_error",
                     "ray_sched_queue_length", "ray_sched_slots_busy",
                     "ray_sched_tasks_completed", "ray_sched_tasks_throughput")


def scrape(url: str, worker_id: str) -> dict[str, float]:
    """Our metrics on Ray's Prometheus endpoint, recorded by one worker, as
    ``{"name{our labels}": value}``."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    series = {}
    for line in text.splitlines():
        match = re.match(r"(ray_ray_sched_\w+)\{(.*)\} (\S+)$", line)
        if match and f'WorkerId="{worker_id}"' in match[2]:
            ours = ",".join(f"{k}={v}" for k, v in
                            sorted(re.findall(r'\b(local|status|le)="([^"]*)"', match[2])))
            series[f"{match[1]}{{{ours}}}"] = float(match[3])
    return series


@pytest.mark.ray
@pytest.mark.slow
def test_ray_metrics_reach_rays_prometheus_endpoint(ray_with_metrics):
    ray, url = ray_with_metrics

    @ray.remote(num_cpus=1)
    class Monitor:  # an actor: its worker lives on and keeps reporting
        def record(self) -> str:
            self.telemetry = SelfTelemetry(None)
            record_a_batch(self.telemetry)
            return ray.get_runtime_context().get_worker_id()

    monitor = Monitor.remote()
    worker_id = ray.get(monitor.record.remote(), timeout=DEADLINE_S)
    wanted = {"ray_ray_sched_tasks_completed_total{status=ok}": 48.0,
              "ray_ray_sched_tasks_completed_total{status=failed}": 2.0,
              "ray_ray_sched_queue_length{local=local-0}": 7.0,
              "ray_ray_sched_slots_busy{local=local-1}": 0.5,
              "ray_ray_sched_jct_seconds_count{}": 50.0,
              "ray_ray_sched_jct_seconds_bucket{le=0.1}": 3.0,  # 0.01, 0.051, 0.091 (cumulative)
              "ray_ray_sched_tasks_throughput{}": 12.5,
              "ray_ray_sched_learner_mae_log{}": 0.4}
    seen = {}

    def arrived() -> bool:
        seen.update(scrape(url, worker_id))
        return all(seen.get(name) == value for name, value in wanted.items())
    try:
        wait_for(arrived, RAY_METRICS_DEADLINE_S, "Ray metrics on its Prometheus endpoint")
    finally:
        ray.kill(monitor)
    assert {name: seen.get(name) for name in wanted} == wanted
