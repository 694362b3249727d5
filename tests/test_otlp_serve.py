"""``ray-sched serve`` with real clients: the OpenTelemetry Python SDK's own OTLP/HTTP and
OTLP/gRPC exporters, the real payloads in shared/data/otlp, and bad bodies; then SIGTERM,
and every span, point and record sent must be in the export dir exactly once, and every
kept span forwarded once to the ``--forward`` endpoint.

One server process for the module (a Ray start costs ~20 s on 2 cores); the tests add to
what it was sent, and the last one stops it and counts the rows. Two processors, so that
traces whose spans come in different requests (or protocols) must be brought together; a
30 s decision wait, so that parts sent moments apart meet on a loaded machine too (the drain
decides every trace at the end).
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from tests.conftest import REPO, SHARED

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")]

OTLP_DATA = SHARED / "data" / "otlp"
START_TIMEOUT_S = 240
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Deeper than the default max_depth (1000).
DEEP_CHAIN = 1500


class Collector(http.server.BaseHTTPRequestHandler):
    """Stands in for the endpoint kept traces are forwarded to."""

    bodies: list[bytes] = []

    def do_POST(self):
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Server:
    """A ``ray-sched serve`` subprocess on free ports, and what the tests sent it."""

    def __init__(self, export_dir: Path):
        self.collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=self.collector.serve_forever, daemon=True).start()
        forward_url = f"http://127.0.0.1:{self.collector.server_address[1]}/v1/traces"
        self.export_dir = export_dir
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.sent = {"spans": {}, "points": {}, "records": {}}  # service -> count
        command = [sys.executable, "-m", "ray_sched.cli", "serve", "--export-dir",
                   str(export_dir), "--http-port", "0", "--grpc-port", "0", "--processors",
                   "2", "--decision-wait-s", "30", "--max-body-bytes", str(MAX_BODY_BYTES),
                   "--forward", forward_url]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.http = self.grpc = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.http is None or self.grpc is None:
            line = self._next_line(deadline)
            if line.startswith("OTLP/HTTP listening on "):
                self.http = line.rsplit(" ", 1)[1]
            elif line.startswith("OTLP/GRPC listening on "):
                self.grpc = line.rsplit(" ", 1)[1]

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"serve said nothing in time: {self.output[-20:]}") from None
        if line is None:
            raise AssertionError(f"serve exited ({self.process.poll()}): {self.output[-30:]}")
        self.output.append(line)
        return line

    def stop(self, timeout_s: float = 180) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        while (line := self.lines.get(timeout=30)) is not None:  # the rest of its output
            self.output.append(line)
        return code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serve") / "export")
    yield server
    if server.process.poll() is None:
        server.process.kill()
    server.collector.shutdown()


class Counting:
    """Wraps an SDK exporter and counts what it exported successfully."""

    def __init__(self, exporter, measure, success):
        self.exporter, self.measure, self.success = exporter, measure, success
        self.exported = 0

    def export(self, batch, *args, **kwargs):
        result = self.exporter.export(batch, *args, **kwargs)
        assert result == self.success, f"the exporter failed: {result}"
        self.exported += self.measure(batch)
        return result

    def __getattr__(self, name):
        return getattr(self.exporter, name)


class CountingSpans(Counting, SpanExporter):
    def __init__(self, exporter):
        super().__init__(exporter, len, SpanExportResult.SUCCESS)

    def shutdown(self):
        self.exporter.shutdown()


def send_nested_traces(exporter, service: str, traces: int = 40) -> int:
    """Traces of depth 4 with fan-out and some errors, through the SDK's batch processor."""
    counting = CountingSpans(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(counting, max_export_batch_size=512))
    tracer = provider.get_tracer("ray_sched.tests")
    for t in range(traces):
        with tracer.start_as_current_span("GET /checkout", attributes={"http.route": "/c"}):
            for c in range(3):
                with tracer.start_as_current_span(f"call-{c}"):
                    with tracer.start_as_current_span("db.query") as leaf:
                        if (t + c) % 7 == 0:
                            leaf.set_status(Status(StatusCode.ERROR, "boom"))
                        with tracer.start_as_current_span("disk.read"):
                            pass
    assert provider.force_flush(30_000)
    provider.shutdown()
    return counting.exported


def test_sdk_http_exporter_traces_are_accepted(server):
    sent = send_nested_traces(HttpSpans(endpoint=f"{server.http}/v1/traces"), "sdk-http")
    assert sent == 40 * 10
    server.sent["spans"]["sdk-http"] = sent


def test_sdk_grpc_exporter_traces_are_accepted(server):
    sent = send_nested_traces(GrpcSpans(endpoint=server.grpc, insecure=True), "sdk-grpc")
    assert sent == 40 * 10
    server.sent["spans"]["sdk-grpc"] = sent


def test_a_trace_exported_in_parts_by_two_services_over_http_and_grpc_is_one_trace(server):
    """Each service's SDK exports its own spans of the same traces, one over HTTP and one
    over gRPC (different requests, listeners and protocols): they must meet."""
    from opentelemetry.trace import set_span_in_context

    providers, counters = {}, {}
    for service, exporter in (("split-http", HttpSpans(endpoint=f"{server.http}/v1/traces")),
                              ("split-grpc", GrpcSpans(endpoint=server.grpc, insecure=True))):
        counters[service] = CountingSpans(exporter)
        providers[service] = TracerProvider(resource=Resource.create({"service.name": service}))
        providers[service].add_span_processor(BatchSpanProcessor(counters[service]))
    front = providers["split-http"].get_tracer("t")
    back = providers["split-grpc"].get_tracer("t")
    for t in range(12):
        with front.start_as_current_span("GET /split") as root:
            with back.start_as_current_span("rpc", context=set_span_in_context(root)) as rpc:
                with front.start_as_current_span("callback",
                                                 context=set_span_in_context(rpc)) as leaf:
                    if t % 4 == 0:
                        leaf.set_status(Status(StatusCode.ERROR, "deep failure"))
    for service, provider in providers.items():
        assert provider.force_flush(30_000)
        provider.shutdown()
        server.sent["spans"][service] = counters[service].exported
    assert counters["split-http"].exported == 24 and counters["split-grpc"].exported == 12


class CountingMetrics(MetricExporter):
    def __init__(self, exporter):
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self.exporter = exporter
        self.exported = 0

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        result = self.exporter.export(metrics_data, timeout_millis=timeout_millis)
        assert result == MetricExportResult.SUCCESS
        self.exported += sum(len(m.data.data_points) for rm in metrics_data.resource_metrics
                             for sm in rm.scope_metrics for m in sm.metrics)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.exporter.shutdown()


def test_sdk_http_exporter_metrics_are_accepted(server):
    exporter = CountingMetrics(HttpMetrics(endpoint=f"{server.http}/v1/metrics"))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader],
                             resource=Resource.create({"service.name": "sdk-metrics"}))
    meter = provider.get_meter("ray_sched.tests")
    counter = meter.create_counter("requests")
    histogram = meter.create_histogram("latency", unit="ms")
    for i in range(30):
        counter.add(1, {"route": f"/r{i % 3}"})
        histogram.record(i * 1.5, {"route": f"/r{i % 2}"})
    assert provider.force_flush(30_000)
    provider.shutdown()
    assert exporter.exported >= 5  # 3 counter series + 2 histogram series, per export
    server.sent["points"]["sdk-metrics"] = exporter.exported


def test_sdk_http_and_grpc_exporters_logs_are_accepted(server):
    for name, exporter in (("sdk-logs-http", HttpLogs(endpoint=f"{server.http}/v1/logs")),
                           ("sdk-logs-grpc", GrpcLogs(endpoint=server.grpc, insecure=True))):
        counting = Counting(exporter, len, LogRecordExportResult.SUCCESS)
        provider = LoggerProvider(resource=Resource.create({"service.name": name}))
        provider.add_log_record_processor(BatchLogRecordProcessor(counting))
        logger = logging.getLogger(f"ray_sched.tests.{name}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
        logger.addHandler(handler)
        for i in range(25):
            logger.log((logging.INFO, logging.WARNING, logging.ERROR)[i % 3], "event %d", i)
        assert provider.force_flush(30_000)
        logger.removeHandler(handler)
        provider.shutdown()
        assert counting.exported == 25
        server.sent["records"][name] = 25


def post(server, path, body, content_type="application/x-protobuf", **headers):
    return requests.post(f"{server.http}{path}", data=body, timeout=60,
                         headers={"Content-Type": content_type, **headers})


@pytest.mark.parametrize("name,path,content_type", [
    ("opentelemetry-proto/trace.json", "/v1/traces", "application/json"),
    ("opentelemetry-proto/metrics.json", "/v1/metrics", "application/json"),
    ("opentelemetry-proto/logs.json", "/v1/logs", "application/json"),
    ("opentelemetry-proto/events.json", "/v1/logs", "application/json"),
    ("opentelemetry-proto/trace.protobuf-bin", "/v1/traces", "application/x-protobuf"),
    ("opentelemetry-proto/metrics.protobuf-bin", "/v1/metrics", "application/x-protobuf"),
])
def test_real_otlp_payloads_are_accepted(server, name, path, content_type):
    file = OTLP_DATA / name
    if not file.exists():
        pytest.skip(f"{file} is not here")
    response = post(server, path, gzip.compress(file.read_bytes()), content_type,
                    **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.content
    assert response.headers["Content-Type"] == content_type


def test_real_hotrod_trace_is_accepted_and_all_40_spans_kept_for_export(server):
    file = OTLP_DATA / "jaeger-hotrod" / "getTrace-response.json"
    if not file.exists():
        pytest.skip(f"{file} is not here")
    body = json.dumps(json.loads(file.read_text())["result"]).encode()
    response = post(server, "/v1/traces", body, "application/json")
    assert response.status_code == 200
    assert "partialSuccess" not in response.json()


def status_of(response) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.content)


def test_garbage_protobuf_gets_400_and_the_server_keeps_serving(server):
    response = post(server, "/v1/traces", b"\xff\xfe\x00garbage" * 10)
    assert response.status_code == 400
    assert "ExportTraceServiceRequest" in status_of(response).message


def test_garbage_over_grpc_is_invalid_argument(server):
    import grpc
    with grpc.insecure_channel(server.grpc) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                     request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as error:
            export(b"\xff\xfe\x00garbage" * 10, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in error.value.details()


def test_truncated_protobuf_gets_400(server):
    body = (OTLP_DATA / "opentelemetry-proto" / "trace.protobuf-bin").read_bytes()
    assert post(server, "/v1/traces", body[:-7]).status_code == 400


def test_text_xml_gets_415(server):
    assert post(server, "/v1/traces", b"<spans/>", "text/xml").status_code == 415


def test_wrong_json_type_gets_400_naming_the_field(server):
    body = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": {}}]}]}]}'
    response = post(server, "/v1/traces", body, "application/json")
    assert response.status_code == 400
    assert "startTimeUnixNano" in response.json()["message"]


def test_bad_span_id_is_rejected_as_partial_success_and_the_rest_kept(server):
    good = "0102030405060708"
    spans = [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": good, "name": "ok",
              "startTimeUnixNano": "1", "endTimeUnixNano": "2"},
             {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "zz", "name": "bad",
              "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "partial"}}]},
        "scopeSpans": [{"spans": spans}]}]}
    response = post(server, "/v1/traces", json.dumps(body).encode(), "application/json")
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and "spanId" in partial["errorMessage"]
    server.sent["spans"]["partial"] = 1


def test_gzip_bomb_gets_413(server):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    response = post(server, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_oversize_body_gets_413(server):
    assert post(server, "/v1/logs", b"\0" * (MAX_BODY_BYTES + 10)).status_code == 413


def test_trace_deeper_than_max_depth_is_flagged_not_refused(server):
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "deep"
    spans = resource_spans.scope_spans.add().spans
    for i in range(DEEP_CHAIN):  # a chain: span i is the parent of span i + 1
        spans.add(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"),
                  parent_span_id=i.to_bytes(8, "big") if i else b"", name=f"level-{i}",
                  start_time_unix_nano=1_000 + i, end_time_unix_nano=10_000_000 - i)
    assert post(server, "/v1/traces", request.SerializeToString()).status_code == 200
    server.sent["spans"]["deep"] = DEEP_CHAIN


def test_sigterm_drains_and_every_item_sent_is_exported_exactly_once(server):
    # Still serving after every bad body above.
    assert post(server, "/v1/traces", b"").status_code == 200
    assert server.stop() == 0
    assert any(line.startswith("drained:") for line in server.output), server.output[-10:]
    spans = pd.read_parquet(server.export_dir / "spans")
    for service, count in server.sent["spans"].items():
        mine = spans[spans["service"] == service]
        assert len(mine) == count, service
        assert not mine.duplicated(["trace_id", "span_id"]).any()
    sdk = spans[spans["service"] == "sdk-http"]
    assert sdk["trace_depth"].max() == 3 and sdk.groupby("trace_id").size().eq(10).all()
    assert sdk.loc[sdk["trace_error"], "sampled"].all()  # error traces always kept
    assert (spans["service"] == "frontend").sum() == 13  # the HotROD trace's frontend spans
    split = spans[spans["service"].isin(["split-http", "split-grpc"])]
    assert len(split) == 36 and not split["orphan"].any()
    assert split["trace_spans"].eq(3).all() and split["trace_depth"].eq(2).all()
    assert split.groupby("trace_id")["sample_reason"].nunique().eq(1).all()
    failed = split[split["trace_error"]]
    assert failed["trace_id"].nunique() == 3 and failed["sampled"].all()
    assert (failed["root_service"] == "split-http").all()
    traces = pd.read_parquet(server.export_dir / "traces")
    assert not traces["trace_id"].duplicated().any()
    assert set(split["trace_id"]) <= set(traces["trace_id"])
    assert traces.set_index("trace_id").loc[list(set(split["trace_id"])), "spans"].eq(3).all()
    deep = spans[spans["service"] == "deep"]
    assert deep["trace_depth_exceeded"].all() and deep["trace_depth"].max() == DEEP_CHAIN - 1
    metrics = pd.read_parquet(server.export_dir / "metrics")
    assert (metrics["service"] == "sdk-metrics").sum() == server.sent["points"]["sdk-metrics"]
    logs = pd.read_parquet(server.export_dir / "logs")
    for service, count in server.sent["records"].items():
        assert (logs["service"] == service).sum() == count
    span_metrics = pd.read_parquet(server.export_dir / "span_metrics")
    checkout = span_metrics[(span_metrics["service"] == "sdk-http")
                            & (span_metrics["operation"] == "GET /checkout")]
    assert checkout["calls"].sum() == 40
    assert len(pd.read_parquet(server.export_dir / "log_counts")) > 0
    forwarded = [span.span_id.hex() for body in Collector.bodies
                 for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                 for ss in rs.scope_spans for span in ss.spans]
    assert sorted(forwarded) == sorted(spans.loc[spans["sampled"], "span_id"])
