"""Forwarding the traces tail sampling kept to another OTLP/HTTP endpoint (a Collector, a
tracing backend), re-encoded as ``ExportTraceServiceRequest`` protobuf.

What travels: ids, parent, name, kind, times, status, the span's attributes, its
resource attributes and its scope name, as they arrived. Span events and links are
not kept by decode (only their counts are), so they are not forwarded.

Forwarding is best effort, off the request path: kept spans are buffered and sent
from a background thread every ``FORWARD_EVERY_S`` (or when ``FORWARD_BATCH_SPANS``
wait); a failed send is retried with backoff, then counted as dropped and logged.
The Parquet export holds every span either way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ray_sched.errors import ConfigError
from ray_sched.otlp.schema import Columns

log = logging.getLogger(__name__)

#: Kept spans are sent this often ...
FORWARD_EVERY_S = 1.0
#: ... or as soon as this many wait (the SDK exporters' default batch size).
FORWARD_BATCH_SPANS = 512
#: Sends of one batch before it is dropped (with a log line), and the first backoff.
FORWARD_ATTEMPTS = 3
FORWARD_BACKOFF_S = 0.5
#: Spans held at most while the endpoint is down: past it the oldest are dropped.
FORWARD_MAX_BUFFERED = 100_000

_SPAN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
                 "status_code", "status_message", "service", "scope", "attributes",
                 "resource_attributes")


def any_value(value) -> AnyValue:
    """A JSON value (as decode writes attributes) back to an OTLP AnyValue."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        result = AnyValue()
        result.array_value.values.extend(any_value(v) for v in value)
        return result
    if isinstance(value, dict):
        result = AnyValue()
        result.kvlist_value.values.extend(key_values(value))
        return result
    return AnyValue()


def key_values(attributes: dict) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v)) for k, v in attributes.items()]


def encode_spans(columns: Columns) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest of the spans in ``columns`` (the layout of
    ``schema.SPAN_FIELDS``), grouped by resource and scope as exporters group them."""
    request = ExportTraceServiceRequest()
    resources: dict[str, object] = {}
    scopes: dict[tuple[str, str], object] = {}
    values = {name: columns[name].tolist() for name in _SPAN_COLUMNS}
    for i in range(len(values["span_id"])):
        resource_key = values["resource_attributes"][i]
        resource_spans = resources.get(resource_key)
        if resource_spans is None:
            resource_spans = resources[resource_key] = request.resource_spans.add()
            resource_spans.resource.attributes.extend(key_values(json.loads(resource_key)))
        scope_key = (resource_key, values["scope"][i])
        scope_spans = scopes.get(scope_key)
        if scope_spans is None:
            scope_spans = scopes[scope_key] = resource_spans.scope_spans.add()
            scope_spans.scope.name = values["scope"][i]
        span = scope_spans.spans.add(
            trace_id=bytes.fromhex(values["trace_id"][i]),
            span_id=bytes.fromhex(values["span_id"][i]),
            parent_span_id=bytes.fromhex(values["parent_span_id"][i]),
            name=values["name"][i], kind=values["kind"][i],
            start_time_unix_nano=values["start_ns"][i], end_time_unix_nano=values["end_ns"][i])
        span.attributes.extend(key_values(json.loads(values["attributes"][i])))
        if values["status_code"][i] or values["status_message"][i]:
            span.status.code = values["status_code"][i]
            span.status.message = values["status_message"][i]
    return request


class Forwarder:
    """Sends kept spans to ``endpoint`` (an OTLP/HTTP traces URL, e.g.
    ``http://collector:4318/v1/traces``) from a background thread.

    Args:
        endpoint: the URL to POST ``application/x-protobuf`` bodies to.
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer …"}``).
        timeout_s: per request.
    """

    def __init__(self, endpoint: str, *, headers: dict | None = None, timeout_s: float = 10.0):
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"forward endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.timeout_s = timeout_s
        self.sent_spans = 0
        self.dropped_spans = 0
        self._waiting: list[Columns] = []
        self._waiting_spans = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="otlp-forward", daemon=True)
        self._thread.start()

    def add(self, columns: Columns, keep: np.ndarray) -> None:
        """Queue the spans of ``columns`` where ``keep`` is True."""
        if not keep.any():
            return
        kept = {name: columns[name][keep] for name in _SPAN_COLUMNS}
        with self._lock:
            self._waiting.append(kept)
            self._waiting_spans += len(kept["span_id"])
            while self._waiting_spans > FORWARD_MAX_BUFFERED and len(self._waiting) > 1:
                dropped = self._waiting.pop(0)
                self._waiting_spans -= len(dropped["span_id"])
                self.dropped_spans += len(dropped["span_id"])
            if self._waiting_spans >= FORWARD_BATCH_SPANS:
                self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(FORWARD_EVERY_S)
            self._wake.clear()
            self._send_waiting()

    def _send_waiting(self) -> None:
        with self._lock:
            batches, self._waiting, self._waiting_spans = self._waiting, [], 0
        if not batches:
            return
        columns = {name: np.concatenate([b[name] for b in batches]) for name in _SPAN_COLUMNS}
        count = len(columns["span_id"])
        body = encode_spans(columns).SerializeToString()
        delay = FORWARD_BACKOFF_S
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            try:
                request = urllib.request.Request(self.endpoint, data=body, headers=self.headers,
                                                 method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s):
                    pass
                self.sent_spans += count
                return
            except (urllib.error.URLError, OSError) as error:
                if attempt == FORWARD_ATTEMPTS:
                    self.dropped_spans += count
                    log.warning("forwarding %d spans to %s failed %d times, dropped: %s",
                                count, self.endpoint, attempt, error)
                    return
                time.sleep(delay)
                delay *= 2

    def close(self) -> dict:
        """Send what waits, stop the thread; returns ``{"sent", "dropped"}`` span counts."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=self.timeout_s * FORWARD_ATTEMPTS + 5)
        self._send_waiting()
        return {"sent": self.sent_spans, "dropped": self.dropped_spans}
