"""Synthetic OTLP traffic: ExportTraceServiceRequests of nested traces across services.

For benchmarks, notebooks and load tests: the shape of a microservice app's traces (a root
per request, fan-out to downstream services up to a few levels deep, HTTP and database
semantic-convention attributes, a small share of errors and a heavy latency tail).

Example:
    >>> request = trace_request(spans=512, seed=1)
    >>> body = request.SerializeToString()
"""

from __future__ import annotations

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ray_sched.errors import ConfigError

SERVICES = ("frontend", "checkout", "cart", "payment", "shipping", "currency", "catalog",
            "recommendation")
OPERATIONS = ("GET /api/products", "POST /api/checkout", "GET /api/cart", "charge",
              "get_quote", "convert", "list_products", "recommend", "SELECT", "redis GET")
#: Spans per trace (each request holds whole traces).
SPANS_PER_TRACE = 16
#: Deepest level a synthetic trace reaches (root = 0).
MAX_TRACE_DEPTH = 5
#: Share of spans with an error status.
ERROR_SHARE = 0.02


def _attribute(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def trace_request(spans: int = 512, *, seed: int = 0, start_ns: int = 1_700_000_000_000_000_000,
                  error_share: float = ERROR_SHARE) -> ExportTraceServiceRequest:
    """One request of ``spans`` spans: whole traces of SPANS_PER_TRACE spans (the last one
    smaller when ``spans`` is not a multiple), grouped by service as exporters send them.

    Args:
        spans: spans in the request (>= 1).
        seed: the random seed (ids, shapes, durations derive from it).
        start_ns: the first trace's start, unix nanoseconds.
        error_share: share of spans with status ERROR.
    """
    if not isinstance(spans, int) or spans < 1:
        raise ConfigError(f"spans must be an integer >= 1, got {spans!r}")
    rng = np.random.default_rng(seed)
    by_service: dict[str, list[Span]] = {}
    made = 0
    trace_start = start_ns
    while made < spans:
        size = min(SPANS_PER_TRACE, spans - made)
        trace_id = rng.bytes(16)
        span_ids = [rng.bytes(8) for _ in range(size)]
        depth = [0] * size
        parent = [-1] * size
        for i in range(1, size):
            candidates = [j for j in range(i) if depth[j] < MAX_TRACE_DEPTH]
            parent[i] = candidates[int(rng.integers(len(candidates)))]
            depth[i] = depth[parent[i]] + 1
        # Durations: children inside their parent; a lognormal tail on the leaves.
        duration = (rng.lognormal(np.log(2e6), 1.0, size) * (MAX_TRACE_DEPTH + 1 -
                                                             np.array(depth))).astype(np.int64)
        begin = np.zeros(size, dtype=np.int64)
        begin[0] = trace_start
        for i in range(1, size):
            p = parent[i]
            duration[i] = min(duration[i], max(1, duration[p] - 1))
            begin[i] = begin[p] + int(rng.integers(0, max(1, duration[p] - duration[i])))
        service_of = [SERVICES[int(rng.integers(len(SERVICES)))] for _ in range(size)]
        service_of[0] = SERVICES[0]
        for i in range(size):
            span = Span(
                trace_id=trace_id, span_id=span_ids[i],
                parent_span_id=b"" if parent[i] < 0 else span_ids[parent[i]],
                name=OPERATIONS[int(rng.integers(len(OPERATIONS)))] if i else OPERATIONS[
                    int(rng.integers(3))],
                kind=2 if i == 0 else int(rng.integers(1, 4)),
                start_time_unix_nano=int(begin[i]),
                end_time_unix_nano=int(begin[i] + duration[i]),
                attributes=[
                    _attribute("http.request.method", "GET" if rng.random() < 0.7 else "POST"),
                    _attribute("http.response.status_code", 200),
                    _attribute("server.address", service_of[i]),
                    _attribute("db.system", "postgresql" if rng.random() < 0.3 else "none"),
                    _attribute("app.cache_hit", bool(rng.random() < 0.5)),
                ])
            if rng.random() < error_share:
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="failed"))
            by_service.setdefault(service_of[i], []).append(span)
        made += size
        trace_start += int(rng.integers(1_000_000, 50_000_000))
    request = ExportTraceServiceRequest()
    for service, service_spans in by_service.items():
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.append(_attribute("service.name", service))
        resource_spans.resource.attributes.append(_attribute("deployment.environment", "bench"))
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = "ray_sched.synthetic"
        scope_spans.spans.extend(service_spans)
    return request
