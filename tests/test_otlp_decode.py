"""OTLP decoding: real payloads, protobuf/JSON equivalence, the hex-id trap, per-item
rejections, bad bodies, decompression limits and the column layouts."""

from __future__ import annotations

import base64
import gzip
import json
import math
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ray_sched.errors import InvalidPayloadError, PayloadTooLargeError, UnsupportedMediaTypeError
from ray_sched.otlp import decode as otlp_decode
from ray_sched.otlp.decode import (
    MAX_MESSAGES,
    SIGNALS,
    Decoded,
    decode_message,
    decode_request,
    decode_zipkin,
    decompress,
    parse_otlp_json,
    read_payload_file,
)
from ray_sched.otlp.schema import (
    LOG_FIELDS,
    METRIC_POINT_FIELDS,
    SPAN_FIELDS,
    STATUS_ERROR,
    UNKNOWN_SERVICE,
    numpy_dtype,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "otlp"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"the real OTLP payloads are not at {DATA} (see its SOURCES.md)")
PROTO_EXAMPLES = DATA / "opentelemetry-proto"
HOTROD = DATA / "jaeger-hotrod" / "getTrace-response.json"
ZIPKIN = DATA / "zipkin-smartthings"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SCHEMAS = {"traces": SPAN_FIELDS, "metrics": METRIC_POINT_FIELDS, "logs": LOG_FIELDS}
MiB = 1024 * 1024

TRACE_A = bytes(range(1, 17))
TRACE_B = bytes(range(101, 117))
SPAN_1, SPAN_2, SPAN_3 = (bytes([n] * 8) for n in (1, 2, 3))


# --- builders --------------------------------------------------------------------------------


def kv(key: str, **value) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def trace_request(*spans: dict, services=("checkout", "cart")) -> ExportTraceServiceRequest:
    """A request of two resources; ``spans`` (Span field values) are split between them."""
    request = ExportTraceServiceRequest()
    resources = []
    for service in services:
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend([kv("service.name", string_value=service),
                                                   kv("host.name", string_value="h1")])
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = f"{service}.lib"
        scope_spans.scope.attributes.append(kv("scope.attr", bool_value=True))
        resources.append(scope_spans)
    for index, fields in enumerate(spans):
        span = resources[index % len(resources)].spans.add()
        defaults = {"trace_id": TRACE_A, "span_id": (index + 1).to_bytes(8, "big"),
                    "name": f"op{index}", "kind": 2, "start_time_unix_nano": 1_000,
                    "end_time_unix_nano": 5_000}
        for name, value in {**defaults, **fields}.items():
            if name == "attributes":
                span.attributes.extend(value)
            else:
                setattr(span, name, value)
    return request


def rich_trace_request() -> ExportTraceServiceRequest:
    request = trace_request(
        {"span_id": SPAN_1},
        {"span_id": SPAN_2, "parent_span_id": SPAN_1, "kind": 3},
        {"span_id": SPAN_3, "parent_span_id": SPAN_2, "trace_id": TRACE_B},
    )
    first = request.resource_spans[0].scope_spans[0].spans[0]
    first.attributes.extend([
        kv("http.method", string_value="GET"), kv("http.status_code", int_value=503),
        kv("ok", bool_value=False), kv("ratio", double_value=0.25),
        kv("blob", bytes_value=b"\x00\xff"),
        KeyValue(key="list", value=AnyValue(array_value={"values": [
            AnyValue(string_value="a"), AnyValue(int_value=2)]})),
        KeyValue(key="map", value=AnyValue(kvlist_value={"values": [
            kv("inner", string_value="x")]})),
    ])
    first.status.code = STATUS_ERROR
    first.status.message = "upstream timeout"
    first.events.add(name="retry", time_unix_nano=2_000)
    link = first.links.add()
    link.trace_id, link.span_id = TRACE_B, SPAN_3
    return request


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.append(kv("service.name", string_value="api"))
    scope = resource_metrics.scope_metrics.add()
    scope.scope.name = "meter"
    counter = scope.metrics.add(name="requests", unit="1")
    counter.sum.aggregation_temporality = 2
    counter.sum.is_monotonic = True
    point = counter.sum.data_points.add(as_int=7, start_time_unix_nano=10, time_unix_nano=20)
    point.attributes.extend([kv("route", string_value="/b"), kv("code", int_value=200)])
    exemplar = point.exemplars.add(as_double=1.5, time_unix_nano=15)
    exemplar.trace_id, exemplar.span_id = TRACE_A, SPAN_1
    gauge = scope.metrics.add(name="temperature", unit="C")
    gauge.gauge.data_points.add(as_double=21.5, time_unix_nano=20)
    histogram = scope.metrics.add(name="latency", unit="ms")
    histogram.histogram.aggregation_temporality = 1
    histogram.histogram.data_points.add(count=3, sum=12.0, bucket_counts=[1, 2],
                                        explicit_bounds=[5.0], min=1.0, max=8.0,
                                        time_unix_nano=20)
    exponential = scope.metrics.add(name="size", unit="By")
    exponential.exponential_histogram.aggregation_temporality = 1
    exponential_point = exponential.exponential_histogram.data_points.add(
        count=4, sum=30.0, scale=1, zero_count=1, time_unix_nano=20)
    exponential_point.positive.offset = 2
    exponential_point.positive.bucket_counts.extend([1, 2])
    summary = scope.metrics.add(name="gc", unit="s")
    summary_point = summary.summary.data_points.add(count=5, sum=2.5, time_unix_nano=20)
    summary_point.quantile_values.add(quantile=0.5, value=0.4)
    summary_point.quantile_values.add(quantile=0.99, value=1.1)
    return request


def logs_request() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(kv("service.name", string_value="worker"))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "logger"
    scope.log_records.add(time_unix_nano=5, observed_time_unix_nano=6, severity_number=9,
                          severity_text="INFO", body=AnyValue(string_value="started"),
                          trace_id=TRACE_A, span_id=SPAN_1,
                          attributes=[kv("pid", int_value=42)])
    scope.log_records.add(time_unix_nano=7, severity_number=17, event_name="crash",
                          body=AnyValue(kvlist_value={"values": [kv("code", int_value=3)]}))
    return request


BUILDERS = {"traces": rich_trace_request, "metrics": metrics_request, "logs": logs_request}
ID_KEYS = ("traceId", "spanId", "parentSpanId")


def base64_ids_to_hex(value):
    """What OTLP/JSON does differently from protobuf's JSON mapping: ids as hex."""
    if isinstance(value, dict):
        return {key: (base64.b64decode(item).hex() if key in ID_KEYS else
                      base64_ids_to_hex(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [base64_ids_to_hex(item) for item in value]
    return value


def otlp_json(message) -> dict:
    return base64_ids_to_hex(json_format.MessageToDict(message, use_integers_for_enums=True))


def json_body(data: dict) -> bytes:
    return json.dumps(data).encode()


def spans_json(*spans: dict) -> dict:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]},
        "scopeSpans": [{"scope": {"name": "lib"}, "spans": list(spans)}]}]}


def span_json(**fields) -> dict:
    span = {"traceId": TRACE_A.hex(), "spanId": SPAN_1.hex(), "name": "op",
            "startTimeUnixNano": "1000", "endTimeUnixNano": "2000"}
    span.update(fields)
    return span


def assert_same_columns(left: dict, right: dict) -> None:
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        equal_nan = left[name].dtype.kind == "f"
        assert np.array_equal(left[name], right[name], equal_nan=equal_nan), name


# --- real payloads ---------------------------------------------------------------------------


@needs_data
def test_trace_json_example_decodes_one_span_with_its_hex_ids():
    decoded = read_payload_file(PROTO_EXAMPLES / "trace.json")
    span = json.loads((PROTO_EXAMPLES / "trace.json").read_text())[
        "resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert (decoded.signal, decoded.accepted, decoded.rejected) == ("traces", 1, 0)
    columns = decoded.columns
    assert columns["trace_id"][0] == span["traceId"].lower()
    assert columns["span_id"][0] == span["spanId"].lower()
    assert columns["parent_span_id"][0] == span["parentSpanId"].lower()
    assert (len(columns["trace_id"][0]), len(columns["span_id"][0])) == (32, 16)
    assert columns["duration_ns"][0] == 1_000_000_000
    assert columns["service"][0] == "my.service"
    assert columns["scope"][0] == "my.library"
    assert json.loads(columns["attributes"][0]) == {"my.span.attr": "some value"}


@needs_data
def test_metrics_json_example_decodes_every_point_including_histograms():
    decoded = read_payload_file(PROTO_EXAMPLES / "metrics.json")
    columns = decoded.columns
    assert (decoded.signal, decoded.accepted, decoded.rejected) == ("metrics", 4, 0)
    assert list(columns["type"]) == ["sum", "gauge", "histogram", "exponential_histogram"]
    assert list(columns["value"]) == [5.0, 10.0, 2.0, 10.0]
    assert list(columns["count"]) == [1, 1, 2, 3]
    assert list(columns["monotonic"]) == [True, False, False, False]
    assert list(columns["temporality"]) == [1, 0, 1, 1]
    assert json.loads(columns["detail"][2]) == {
        "bounds": [1.0], "buckets": [1, 1], "min": 0.0, "max": 2.0}
    exponential = json.loads(columns["detail"][3])
    assert (exponential["scale"], exponential["zero_count"]) == (0, 1)
    assert exponential["positive"] == {"offset": 1, "bucket_counts": [0, 2]}
    assert columns["series"][0] == "my.counter{my.counter.attr=some value}"


@needs_data
def test_logs_json_example_decodes_one_record_with_its_hex_ids():
    decoded = read_payload_file(PROTO_EXAMPLES / "logs.json")
    columns = decoded.columns
    assert (decoded.signal, decoded.accepted, decoded.rejected) == ("logs", 1, 0)
    assert columns["trace_id"][0] == "5b8efff798038103d269b633813fc60c"
    assert columns["span_id"][0] == "eee19b7ec3c1b174"
    assert columns["body"][0] == "Example log record"
    assert json.loads(columns["attributes"][0])["map.attribute"] == {
        "some.map.key": "some value"}


@needs_data
def test_events_json_example_decodes_one_event_with_its_name_and_object_body():
    decoded = read_payload_file(PROTO_EXAMPLES / "events.json")
    columns = decoded.columns
    assert (decoded.signal, decoded.accepted) == ("logs", 1)
    assert columns["event_name"][0] == "browser.page_view"
    assert columns["trace_id"][0] == ""
    assert json.loads(columns["body"][0])["title"] == "Free Online GUID Generator"


@needs_data
@pytest.mark.parametrize("name, signal, items", [
    ("trace.protobuf-bin", "traces", 1), ("trace.protobuf-text", "traces", 1),
    ("metrics.protobuf-bin", "metrics", 3), ("metrics.protobuf-text", "metrics", 3),
])
def test_protobuf_example_files_decode_as_their_signal(name, signal, items):
    decoded = read_payload_file(PROTO_EXAMPLES / name)
    assert (decoded.signal, decoded.accepted, decoded.rejected) == (signal, items, 0)
    assert decoded.services == ["my.service"]


@needs_data
@pytest.mark.parametrize("signal", ["trace", "metrics"])
def test_protobuf_binary_and_text_examples_give_the_same_columns(signal):
    binary = read_payload_file(PROTO_EXAMPLES / f"{signal}.protobuf-bin")
    text = read_payload_file(PROTO_EXAMPLES / f"{signal}.protobuf-text")
    assert_same_columns(binary.columns, text.columns)


@needs_data
def test_trace_protobuf_example_equals_its_json_example():
    binary = read_payload_file(PROTO_EXAMPLES / "trace.protobuf-bin")
    from_json = read_payload_file(PROTO_EXAMPLES / "trace.json")
    assert_same_columns(binary.columns, from_json.columns)


@needs_data
def test_hotrod_trace_has_40_spans_across_6_services():
    decoded = read_payload_file(HOTROD)
    assert (decoded.accepted, decoded.rejected) == (40, 0)
    assert Counter(decoded.columns["service"]) == {
        "frontend": 13, "redis-manual": 14, "route": 10, "driver": 1, "mysql": 1,
        "customer": 1}
    assert sorted(decoded.services) == sorted(
        ["frontend", "redis-manual", "route", "driver", "mysql", "customer"])
    assert decoded.resources == 6
    assert set(map(len, decoded.columns["trace_id"])) == {32}
    assert set(map(len, decoded.columns["span_id"])) == {16}
    assert (decoded.columns["duration_ns"] >= 0).all()


@needs_data
def test_hotrod_trace_decodes_the_same_from_json_bytes_and_from_protobuf():
    request = parse_otlp_json("traces", json.loads(HOTROD.read_bytes())["result"])
    from_json = decode_request("traces", json_body(json.loads(HOTROD.read_bytes())["result"]),
                               JSON)
    from_protobuf = decode_request("traces", request.SerializeToString(), PROTOBUF)
    assert_same_columns(from_json.columns, from_protobuf.columns)


@needs_data
@pytest.mark.parametrize("name, spans, services", [
    ("smartthings-mobile-web-install.json", 1041, 16),
    ("smartthings-oauth-authorization.json", 175, 8),
])
def test_zipkin_files_accept_every_span(name, spans, services):
    decoded = read_payload_file(ZIPKIN / name)
    raw = json.loads((ZIPKIN / name).read_text())
    assert (decoded.signal, decoded.accepted, decoded.rejected) == ("traces", spans, 0)
    assert len(decoded.services) == services
    assert Counter(decoded.columns["service"]) == Counter(
        span["localEndpoint"]["serviceName"] for span in raw)
    assert set(map(len, decoded.columns["trace_id"])) == {32}
    assert all(trace_id.startswith("0" * 16) for trace_id in decoded.columns["trace_id"])
    assert set(decoded.columns["scope"]) == {"zipkin"}


@needs_data
def test_zipkin_span_without_timestamp_takes_the_earliest_of_its_shared_halves():
    raw = json.loads((ZIPKIN / "smartthings-mobile-web-install.json").read_text())
    index = next(i for i, span in enumerate(raw) if "timestamp" not in span)
    earliest = min(span["timestamp"] for span in raw
                   if span["id"] == raw[index]["id"] and "timestamp" in span)
    decoded = decode_zipkin(raw)
    assert decoded.columns["start_ns"][index] == earliest * 1000


def test_zipkin_span_without_timestamp_and_no_other_half_is_rejected():
    span = zipkin_span()
    del span["timestamp"]
    decoded = decode_zipkin([span])
    assert decoded.messages == ["[0].timestamp: missing, and no span with this id has one"]


# --- protobuf and JSON encodings -------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_protobuf_and_json_encodings_of_one_request_give_identical_columns(signal):
    message = BUILDERS[signal]()
    from_protobuf = decode_request(signal, message.SerializeToString(), PROTOBUF)
    from_json = decode_request(signal, json_body(otlp_json(message)), JSON)
    assert from_protobuf.accepted > 0 and from_protobuf.rejected == 0
    assert from_json.rejected == 0
    assert_same_columns(from_protobuf.columns, from_json.columns)
    assert from_protobuf.attributes == from_json.attributes


@pytest.mark.parametrize("signal", SIGNALS)
def test_decode_message_equals_decode_request_on_the_same_message(signal):
    message = BUILDERS[signal]()
    body = message.SerializeToString()
    from_message = decode_message(signal, message)
    from_body = decode_request(signal, body, PROTOBUF)
    assert_same_columns(from_message.columns, from_body.columns)
    assert from_message.body_bytes == len(body) == from_body.body_bytes
    assert from_message.features() == from_body.features()


def test_decode_message_of_another_type_raises_type_error():
    with pytest.raises(TypeError, match="ExportTraceServiceRequest"):
        decode_message("traces", metrics_request())


def test_hex_ids_in_json_are_not_read_as_base64():
    data = spans_json(span_json(traceId="5B8EFFF798038103D269B633813FC60C",
                                spanId="EEE19B7EC3C1B174", parentSpanId="EEE19B7EC3C1B173"))
    decoded = decode_request("traces", json_body(data), JSON)
    assert decoded.columns["trace_id"][0] == "5b8efff798038103d269b633813fc60c"
    assert decoded.columns["span_id"][0] == "eee19b7ec3c1b174"
    assert decoded.columns["parent_span_id"][0] == "eee19b7ec3c1b173"


def test_parse_otlp_json_gives_16_and_8_byte_ids():
    span = parse_otlp_json("traces", spans_json(span_json())).resource_spans[0].scope_spans[
        0].spans[0]
    assert (span.trace_id, span.span_id) == (TRACE_A, SPAN_1)


def test_parse_otlp_json_leaves_the_dict_it_is_given_unchanged():
    data = spans_json(span_json())
    before = json.dumps(data)
    parse_otlp_json("traces", data)
    assert json.dumps(data) == before


def test_exemplar_and_link_ids_in_json_are_read_as_hex():
    message = parse_otlp_json("metrics", otlp_json(metrics_request()))
    exemplar = message.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[
        0].exemplars[0]
    assert (exemplar.trace_id, exemplar.span_id) == (TRACE_A, SPAN_1)
    traces = parse_otlp_json("traces", otlp_json(rich_trace_request()))
    link = traces.resource_spans[0].scope_spans[0].spans[0].links[0]
    assert (link.trace_id, link.span_id) == (TRACE_B, SPAN_3)


def test_int64_fields_in_json_may_be_numbers_or_strings():
    as_numbers = span_json(startTimeUnixNano=1000, endTimeUnixNano=2000)
    decoded = decode_request("traces", json_body(spans_json(as_numbers)), JSON)
    assert decoded.columns["duration_ns"][0] == 1000


def test_unknown_json_fields_are_ignored():
    data = spans_json(span_json(futureField={"x": 1}))
    data["somethingNew"] = [1, 2]
    data["resourceSpans"][0]["extra"] = "y"
    decoded = decode_request("traces", json_body(data), JSON)
    assert (decoded.accepted, decoded.rejected) == (1, 0)


# --- rejections ------------------------------------------------------------------------------


def test_wrong_length_trace_id_is_rejected_and_named_by_its_path():
    request = trace_request({}, {}, {"trace_id": bytes(range(1, 25))})
    decoded = decode_request("traces", request.SerializeToString(), PROTOBUF)
    assert (decoded.accepted, decoded.rejected) == (2, 1)
    assert decoded.messages == [
        "resourceSpans[0].scopeSpans[0].spans[1].traceId: must be 16 bytes, got 24"]


def test_missing_span_id_is_rejected():
    request = trace_request({"span_id": b""}, {})
    decoded = decode_request("traces", request.SerializeToString(), PROTOBUF)
    assert (decoded.accepted, decoded.rejected) == (1, 1)
    assert decoded.messages == [
        "resourceSpans[0].scopeSpans[0].spans[0].spanId: must be 8 bytes, got 0"]


@pytest.mark.parametrize("field_name, value, path", [
    ("trace_id", bytes(16), "traceId"), ("span_id", bytes(8), "spanId")])
def test_all_zero_ids_are_rejected(field_name, value, path):
    decoded = decode_message("traces", trace_request({field_name: value}, {}))
    assert (decoded.accepted, decoded.rejected) == (1, 1)
    assert decoded.messages == [
        f"resourceSpans[0].scopeSpans[0].spans[0].{path}: must not be all zero"]


def test_wrong_length_parent_span_id_is_rejected():
    decoded = decode_message("traces", trace_request({"parent_span_id": b"\x01\x02"}, {}))
    assert decoded.rejected == 1
    assert decoded.messages[0].endswith("parentSpanId: must be empty or 8 bytes, got 2")


def test_all_zero_parent_span_id_marks_a_root():
    decoded = decode_message("traces", trace_request({"parent_span_id": bytes(8)}))
    assert (decoded.accepted, decoded.columns["parent_span_id"][0]) == (1, "")


def test_span_ending_before_it_starts_is_rejected():
    request = trace_request({}, {"start_time_unix_nano": 9_000, "end_time_unix_nano": 8_000})
    decoded = decode_message("traces", request)
    assert (decoded.accepted, decoded.rejected) == (1, 1)
    assert decoded.messages == [
        "resourceSpans[1].scopeSpans[0].spans[0].endTimeUnixNano: must not be before "
        "startTimeUnixNano (8000 < 9000)"]


def test_span_kind_outside_the_enum_is_rejected():
    decoded = decode_message("traces", trace_request({"kind": 9}, {}))
    assert decoded.rejected == 1
    assert "kind: must be a SpanKind 0..5, got 9" in decoded.messages[0]


def test_non_hex_id_in_json_is_rejected_as_not_hex():
    data = spans_json(span_json(), span_json(spanId="zz" * 8),
                      span_json(parentSpanId="abc"), span_json(spanId=SPAN_2.hex()))
    decoded = decode_request("traces", json_body(data), JSON)
    assert (decoded.accepted, decoded.rejected) == (2, 2)
    assert decoded.messages == [
        "resourceSpans[0].scopeSpans[0].spans[1].spanId: not hex: 'zzzzzzzzzzzzzzzz'",
        "resourceSpans[0].scopeSpans[0].spans[2].parentSpanId: not hex: 'abc'"]
    assert list(decoded.columns["span_id"]) == [SPAN_1.hex(), SPAN_2.hex()]


def test_non_hex_link_id_in_json_rejects_its_span():
    data = spans_json(span_json(links=[{"traceId": "not-hex", "spanId": SPAN_2.hex()}]))
    decoded = decode_request("traces", json_body(data), JSON)
    assert decoded.rejected == 1
    assert decoded.messages == [
        "resourceSpans[0].scopeSpans[0].spans[0].links[0].traceId: not hex: 'not-hex'"]


def test_non_hex_exemplar_id_in_json_rejects_its_data_point():
    data = otlp_json(metrics_request())
    points = data["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"]
    points[0]["exemplars"][0]["spanId"] = "xyz"
    decoded = decode_request("metrics", json_body(data), JSON)
    assert decoded.rejected == 1
    assert decoded.messages == [
        "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].exemplars[0].spanId:"
        " not hex: 'xyz'"]
    assert "requests" not in set(decoded.columns["metric"])


def test_log_record_ids_may_be_empty_but_not_of_the_wrong_length():
    request = logs_request()
    request.resource_logs[0].scope_logs[0].log_records[0].span_id = b"\x01" * 5
    decoded = decode_message("logs", request)
    assert (decoded.accepted, decoded.rejected) == (1, 1)
    assert decoded.messages == [
        "resourceLogs[0].scopeLogs[0].logRecords[0].spanId: must be empty or 8 bytes, got 5"]
    assert decoded.columns["trace_id"][0] == ""


def test_metric_without_data_is_rejected_as_one_item():
    request = metrics_request()
    request.resource_metrics[0].scope_metrics[0].metrics.add(name="empty")
    decoded = decode_message("metrics", request)
    assert (decoded.accepted, decoded.rejected) == (5, 1)
    assert decoded.messages[0].startswith(
        "resourceMetrics[0].scopeMetrics[0].metrics[5]: metric 'empty' has no data")


def test_only_the_first_messages_are_kept_but_every_rejection_is_counted():
    request = trace_request(*[{"span_id": b""} for _ in range(MAX_MESSAGES + 3)], {})
    decoded = decode_message("traces", request)
    assert (decoded.accepted, decoded.rejected) == (1, MAX_MESSAGES + 3)
    assert len(decoded.messages) == MAX_MESSAGES


def test_partial_success_message_counts_and_lists_the_rejections():
    decoded = decode_message("traces", trace_request({"span_id": b""}, {}, {}))
    assert decoded.partial_success_message() == (
        "1 of 3 spans rejected: "
        "resourceSpans[0].scopeSpans[0].spans[0].spanId: must be 8 bytes, got 0")


def test_partial_success_message_is_empty_when_nothing_is_rejected():
    assert decode_message("traces", trace_request({})).partial_success_message() == ""


# --- bad bodies ------------------------------------------------------------------------------


def test_garbage_bytes_as_protobuf_raise_invalid_payload():
    with pytest.raises(InvalidPayloadError, match="not a valid ExportTraceServiceRequest"):
        decode_request("traces", b"\xff\xff\xff\xff garbage", PROTOBUF)


def test_truncated_protobuf_raises_invalid_payload():
    body = rich_trace_request().SerializeToString()
    with pytest.raises(InvalidPayloadError, match="protobuf"):
        decode_request("traces", body[: len(body) // 2], PROTOBUF)


def test_json_spans_that_are_not_a_list_name_the_field():
    data = spans_json()
    data["resourceSpans"][0]["scopeSpans"][0]["spans"] = "x"
    with pytest.raises(InvalidPayloadError) as raised:
        decode_request("traces", json_body(data), JSON)
    assert raised.value.path == "resourceSpans[0].scopeSpans[0].spans"
    assert "repeated field spans must be in []" in raised.value.reason


def test_json_timestamp_that_is_an_object_names_the_field_and_span():
    data = spans_json(span_json(), span_json(startTimeUnixNano={}))
    with pytest.raises(InvalidPayloadError) as raised:
        decode_request("traces", json_body(data), JSON)
    assert raised.value.path == "resourceSpans[0].scopeSpans[0].spans[1].startTimeUnixNano"
    assert str(raised.value).startswith(raised.value.path + ": ")


def test_json_error_under_a_metric_type_names_its_full_path():
    data = otlp_json(metrics_request())
    metric = data["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][1]
    metric["gauge"]["dataPoints"][0]["asDouble"] = "warm"
    with pytest.raises(InvalidPayloadError) as raised:
        decode_request("metrics", json_body(data), JSON)
    assert raised.value.path == (
        "resourceMetrics[0].scopeMetrics[0].metrics[1].gauge.dataPoints[0].asDouble")


def test_json_list_element_that_is_not_an_object_names_its_index():
    data = spans_json(span_json(), None)
    with pytest.raises(InvalidPayloadError) as raised:
        decode_request("traces", json_body(data), JSON)
    assert raised.value.path == "resourceSpans[0].scopeSpans[0].spans[1]"
    assert raised.value.reason == "must be a JSON object, got null"


def test_invalid_json_raises_invalid_payload():
    with pytest.raises(InvalidPayloadError, match="not valid JSON"):
        decode_request("traces", b'{"resourceSpans": [', JSON)


def test_json_that_is_not_an_object_raises_invalid_payload():
    with pytest.raises(InvalidPayloadError, match="must be a JSON object.*got array"):
        decode_request("logs", b"[]", JSON)


def test_unsupported_content_type_raises_unsupported_media_type():
    with pytest.raises(UnsupportedMediaTypeError, match="text/xml"):
        decode_request("traces", b"<spans/>", "text/xml")


def test_content_type_parameters_and_case_are_ignored():
    body = json_body(spans_json(span_json()))
    decoded = decode_request("traces", body, "Application/JSON; charset=utf-8")
    assert decoded.accepted == 1


def test_unknown_signal_raises_value_error():
    with pytest.raises(ValueError, match="profiles"):
        decode_request("profiles", b"", PROTOBUF)


# --- decompression ---------------------------------------------------------------------------


def test_gzip_round_trips():
    body = rich_trace_request().SerializeToString()
    assert decompress(gzip.compress(body), "gzip") == body
    assert decompress(gzip.compress(body), "X-GZIP") == body


def test_deflate_accepts_zlib_and_raw_streams():
    raw = zlib.compressobj(wbits=-15)
    assert decompress(zlib.compress(b"abc" * 100), "deflate") == b"abc" * 100
    assert decompress(raw.compress(b"xyz") + raw.flush(), "deflate") == b"xyz"


def test_identity_and_no_encoding_return_the_body():
    assert decompress(b"body", None) == decompress(b"body", "identity") == b"body"


def test_concatenated_gzip_members_are_one_body():
    assert decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip") == b"abcd"


def test_gzip_bomb_raises_payload_too_large_without_inflating_it():
    compressor = zlib.compressobj(wbits=31)
    zeros = bytes(MiB)
    bomb = b"".join(compressor.compress(zeros) for _ in range(100)) + compressor.flush()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match=str(MiB)):
            decompress(bomb, "gzip", max_bytes=MiB)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 * MiB


def test_plain_body_over_the_limit_raises_payload_too_large():
    with pytest.raises(PayloadTooLargeError, match="1024"):
        decompress(bytes(1025), None, max_bytes=1024)


def test_corrupt_gzip_raises_invalid_payload():
    corrupt = bytearray(gzip.compress(b"hello world" * 50))
    corrupt[12:20] = b"\xff" * 8
    with pytest.raises(InvalidPayloadError, match="body is not valid gzip"):
        decompress(bytes(corrupt), "gzip")


def test_truncated_gzip_raises_invalid_payload():
    body = gzip.compress(b"hello world" * 50)
    with pytest.raises(InvalidPayloadError, match="body is not valid gzip: truncated"):
        decompress(body[:-10], "gzip")


def test_unsupported_encoding_raises_unsupported_media_type():
    with pytest.raises(UnsupportedMediaTypeError, match="'br'.*gzip"):
        decompress(b"...", "br")


# --- columns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("empty", [False, True], ids=["items", "no-items"])
def test_columns_have_every_schema_field_with_its_dtype(signal, empty):
    message = BUILDERS[signal]().__class__() if empty else BUILDERS[signal]()
    decoded = decode_message(signal, message)
    schema = SCHEMAS[signal]
    assert list(decoded.columns) == schema.names
    for field in schema:
        column = decoded.columns[field.name]
        assert column.dtype == numpy_dtype(field.type), field.name
        assert column.shape == (decoded.accepted,)
        if column.dtype == object:
            assert all(isinstance(value, str) for value in column), field.name
    assert (decoded.accepted == 0) == empty


def test_zero_accepted_spans_still_give_every_column():
    decoded = decode_message("traces", trace_request({"span_id": b""}))
    assert decoded.accepted == 0
    assert list(decoded.columns) == SPAN_FIELDS.names


def test_any_values_become_json_values():
    decoded = decode_message("traces", rich_trace_request())
    assert json.loads(decoded.columns["attributes"][0]) == {
        "http.method": "GET", "http.status_code": 503, "ok": False, "ratio": 0.25,
        "blob": base64.b64encode(b"\x00\xff").decode(), "list": ["a", 2],
        "map": {"inner": "x"}}
    assert decoded.columns["attributes"][1] == "{}"
    assert decoded.columns["resource_attributes"][0] == (
        '{"service.name":"checkout","host.name":"h1"}')


def test_non_finite_doubles_stay_valid_json():
    request = trace_request({"attributes": [kv("x", double_value=math.nan),
                                            kv("y", double_value=-math.inf)]})
    decoded = decode_message("traces", request)
    assert json.loads(decoded.columns["attributes"][0]) == {"x": "NaN", "y": "-Infinity"}


def test_a_repeated_attribute_key_keeps_its_last_value():
    request = trace_request({"attributes": [kv("a", int_value=1), kv("b", int_value=2),
                                            kv("a", int_value=3)]})
    assert decode_message("traces", request).columns["attributes"][0] == '{"a":3,"b":2}'


def test_span_columns_carry_status_kind_events_links_service_and_scope():
    decoded = decode_message("traces", rich_trace_request())
    columns = decoded.columns
    assert list(columns["service"]) == ["checkout", "checkout", "cart"]
    assert list(columns["scope"]) == ["checkout.lib", "checkout.lib", "cart.lib"]
    assert list(columns["kind"]) == [2, 2, 3]
    assert (columns["status_code"][0], columns["status_message"][0]) == (
        STATUS_ERROR, "upstream timeout")
    assert (columns["events"][0], columns["links"][0]) == (1, 1)
    assert columns["parent_span_id"][2] == SPAN_1.hex()


def test_resource_without_service_name_is_the_unknown_service():
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=TRACE_A, span_id=SPAN_1, start_time_unix_nano=1, end_time_unix_nano=2)
    decoded = decode_message("traces", request)
    assert list(decoded.columns["service"]) == [UNKNOWN_SERVICE]
    assert decoded.columns["scope"][0] == ""


def test_metric_points_carry_series_values_counts_and_details():
    columns = decode_message("metrics", metrics_request()).columns
    assert list(columns["type"]) == [
        "sum", "gauge", "histogram", "exponential_histogram", "summary"]
    assert columns["series"][0] == "requests{code=200,route=/b}"
    assert columns["series"][1] == "temperature{}"
    assert list(columns["value"]) == [7.0, 21.5, 12.0, 30.0, 2.5]
    assert list(columns["count"]) == [1, 1, 3, 4, 5]
    assert list(columns["temporality"]) == [2, 0, 1, 1, 0]
    assert json.loads(columns["detail"][4]) == {"quantiles": [[0.5, 0.4], [0.99, 1.1]]}
    assert json.loads(columns["detail"][3])["positive"] == {"offset": 2,
                                                            "bucket_counts": [1, 2]}


def test_log_columns_keep_a_string_body_as_is_and_others_as_json():
    columns = decode_message("logs", logs_request()).columns
    assert list(columns["body"]) == ["started", '{"code":3}']
    assert list(columns["event_name"]) == ["", "crash"]
    assert list(columns["severity_number"]) == [9, 17]


def test_features_summarise_the_request():
    decoded = decode_request("traces", rich_trace_request().SerializeToString(), PROTOBUF)
    assert decoded.features() == {
        "signal": "traces", "body_bytes": decoded.body_bytes, "items": 3, "resources": 2,
        "attributes": 2 * 2 + 2 * 1 + 7, "services": 2, "service": "checkout"}
    assert decoded.body_bytes > 0


def test_features_of_an_empty_request_have_no_service():
    features = Decoded("logs", {}, 0, 0).features()
    assert (features["items"], features["service"], features["services"]) == (0, "", 0)


# --- Zipkin and files ------------------------------------------------------------------------


def zipkin_span(**fields) -> dict:
    span = {"traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "name": "get",
            "kind": "SERVER", "timestamp": 1_000_000, "duration": 250,
            "localEndpoint": {"serviceName": "frontend"}}
    span.update(fields)
    return span


def test_zipkin_spans_map_to_otlp_columns():
    decoded = decode_zipkin([zipkin_span(
        parentId="0000000000000001", tags={"error": "timeout", "http.path": "/a"},
        annotations=[{"timestamp": 1_000_100, "value": "ws"}])])
    columns = decoded.columns
    assert columns["trace_id"][0] == "0000000000000000463ac35c9f6413ad"
    assert (columns["start_ns"][0], columns["end_ns"][0]) == (1_000_000_000, 1_000_250_000)
    assert (columns["kind"][0], columns["status_code"][0]) == (2, STATUS_ERROR)
    assert columns["status_message"][0] == "timeout"
    assert json.loads(columns["attributes"][0]) == {"error": "timeout", "http.path": "/a"}
    assert (columns["events"][0], columns["resource_attributes"][0]) == (1, "{}")
    assert decoded.services == ["frontend"]


def test_zipkin_span_without_kind_service_or_duration_gets_defaults():
    span = zipkin_span()
    for name in ("kind", "localEndpoint", "duration"):
        del span[name]
    columns = decode_zipkin([span]).columns
    assert (columns["kind"][0], columns["service"][0], columns["duration_ns"][0]) == (
        0, UNKNOWN_SERVICE, 0)


def test_bad_zipkin_items_are_rejected_with_their_index():
    decoded = decode_zipkin(json.dumps([
        zipkin_span(), zipkin_span(id="xyz"), "not a span", zipkin_span(kind="SIDEWAYS"),
        zipkin_span(traceId="0" * 32)]))
    assert (decoded.accepted, decoded.rejected) == (1, 4)
    assert decoded.messages == [
        "[1].id: must be 16 hex characters, got 'xyz'",
        "[2]: must be a JSON object, got string",
        "[3].kind: must be one of CLIENT, SERVER, PRODUCER, CONSUMER, got 'SIDEWAYS'",
        "[4].traceId: must not be all zero"]


def test_zipkin_body_that_is_not_an_array_raises_invalid_payload():
    with pytest.raises(InvalidPayloadError, match="JSON array"):
        decode_zipkin({"spans": []})


def test_gzipped_payload_file_is_gunzipped_first(tmp_path):
    body = json_body(spans_json(span_json()))
    path = tmp_path / "request.json.gz"
    path.write_bytes(gzip.compress(body))
    decoded = read_payload_file(path)
    assert (decoded.signal, decoded.accepted, decoded.body_bytes) == ("traces", 1, len(body))


@pytest.mark.parametrize("signal", SIGNALS)
def test_binary_payload_file_is_read_as_its_signal(tmp_path, signal):
    path = tmp_path / "request.pb"
    path.write_bytes(BUILDERS[signal]().SerializeToString())
    decoded = read_payload_file(path)
    assert (decoded.signal, decoded.rejected) == (signal, 0)
    assert decoded.accepted == decode_message(signal, BUILDERS[signal]()).accepted


def test_payload_file_of_unknown_suffix_raises(tmp_path):
    path = tmp_path / "request.xml"
    path.write_bytes(b"<x/>")
    with pytest.raises(UnsupportedMediaTypeError, match=".xml"):
        read_payload_file(path)


def test_attribute_caches_stay_bounded():
    spans = otlp_decode._MEMBER_CACHE_ENTRIES + 10
    request = trace_request(*[{"attributes": [kv("id", int_value=n)]} for n in range(spans)])
    for _ in range(2):  # the second time every member is known, so the sets are cached
        decoded = decode_message("traces", request)
    assert decoded.accepted == spans
    assert len(otlp_decode._MEMBERS) <= otlp_decode._MEMBER_CACHE_ENTRIES
    assert len(otlp_decode._ATTRIBUTE_SETS) <= otlp_decode._SET_CACHE_ENTRIES
    assert json.loads(decoded.columns["attributes"][-1]) == {"id": spans - 1}


def test_cached_attributes_give_the_same_columns_as_fresh_ones():
    otlp_decode._MEMBERS.clear()
    otlp_decode._ATTRIBUTE_SETS.clear()
    decoded = [decode_message(signal, BUILDERS[signal]()) for signal in ("traces", "logs")]
    for _ in range(2):
        again = [decode_message(signal, BUILDERS[signal]()) for signal in ("traces", "logs")]
        for first, second in zip(decoded, again):
            assert_same_columns(first.columns, second.columns)
