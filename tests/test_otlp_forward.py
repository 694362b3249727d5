"""Forwarding kept traces: the re-encoding is lossless for what decode keeps, and the
forwarder delivers, batches and gives up cleanly."""

from __future__ import annotations

import http.server
import threading

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ray_sched.errors import ConfigError
from ray_sched.otlp import forward
from ray_sched.otlp.decode import decode_message, decode_request, read_payload_file
from ray_sched.otlp.forward import Forwarder, encode_spans
from ray_sched.otlp.synthetic import trace_request
from tests.conftest import SHARED

pytestmark = pytest.mark.unit

KEPT_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
                "status_code", "status_message", "service", "scope", "attributes",
                "resource_attributes")


def assert_same_spans(a, b):
    order_a, order_b = np.argsort(a["span_id"]), np.argsort(b["span_id"])
    for name in KEPT_COLUMNS:
        assert a[name][order_a].tolist() == b[name][order_b].tolist(), name


def test_encoded_spans_decode_back_to_the_same_columns():
    columns = decode_request("traces", trace_request(300, seed=4).SerializeToString(),
                             "application/x-protobuf").columns
    again = decode_message("traces", encode_spans(columns)).columns
    assert_same_spans(columns, again)


def test_real_hotrod_trace_survives_re_encoding():
    path = SHARED / "data" / "otlp" / "jaeger-hotrod" / "getTrace-response.json"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    columns = read_payload_file(path).columns
    assert_same_spans(columns, decode_message("traces", encode_spans(columns)).columns)


class Capture(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def capture_server():
    Capture.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", Capture.bodies
    server.shutdown()


def test_forwarder_sends_only_the_kept_spans(capture_server):
    url, bodies = capture_server
    columns = decode_request("traces", trace_request(200, seed=5).SerializeToString(),
                             "application/x-protobuf").columns
    keep = np.arange(200) % 3 == 0
    forwarder = Forwarder(url)
    forwarder.add(columns, keep)
    forwarder.add(columns, np.zeros(200, dtype=bool))
    assert forwarder.close() == {"sent": int(keep.sum()), "dropped": 0}
    received = [s.span_id.hex() for body in bodies
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans for s in ss.spans]
    assert sorted(received) == sorted(columns["span_id"][keep].tolist())


def test_forwarder_counts_spans_dropped_when_the_endpoint_is_down(monkeypatch):
    monkeypatch.setattr(forward, "FORWARD_BACKOFF_S", 0.01)
    columns = decode_request("traces", trace_request(20, seed=6).SerializeToString(),
                             "application/x-protobuf").columns
    forwarder = Forwarder("http://127.0.0.1:9/v1/traces", timeout_s=1.0)  # discard port
    forwarder.add(columns, np.ones(20, dtype=bool))
    assert forwarder.close() == {"sent": 0, "dropped": 20}


def test_forwarder_refuses_a_non_http_endpoint():
    with pytest.raises(ConfigError, match="http"):
        Forwarder("collector:4317")
