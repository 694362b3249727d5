"""The columnar trace decoder against the reference decoder: the same rows, column by
column, for every kind of span and attribute a client may send, and each body that it does
not decode itself left to the reference (none lost, none decoded twice)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ray_sched.errors import InvalidPayloadError
from ray_sched.otlp.columnar import SPAN_BATCH_SCHEMA, decode_traces, to_batch_table, walk
from ray_sched.otlp.decode import decode_request
from ray_sched.otlp.synthetic import trace_request
from tests.conftest import SHARED

pytestmark = pytest.mark.unit

PROTOBUF = "application/x-protobuf"


def reference_table(bodies):
    tables = [to_batch_table(decode_request("traces", body, PROTOBUF).columns)
              for body in bodies]
    return pa.concat_tables(tables) if tables else SPAN_BATCH_SCHEMA.empty_table()


def assert_same_as_reference(bodies):
    table, results = decode_traces(bodies)
    assert all(isinstance(result, dict) for result in results), results
    reference = reference_table(bodies)
    assert table.schema == SPAN_BATCH_SCHEMA
    assert table.num_rows == reference.num_rows
    for name in table.column_names:
        assert table.column(name).to_pylist() == reference.column(name).to_pylist(), name
    for body, result in zip(bodies, results):
        decoded = decode_request("traces", body, PROTOBUF)
        assert result["accepted"] == decoded.accepted and result["rejected"] == 0
        assert result["resources"] == decoded.resources
        assert result["attributes"] == decoded.attributes
        assert result["services"] == decoded.services


def kv(key, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def span(i: int, attributes=(), **fields) -> Span:
    base = dict(trace_id=bytes([1 + i % 200]) * 16, span_id=(i + 1).to_bytes(8, "big"),
                name=f"op-{i}", kind=i % 6, start_time_unix_nano=1_000 + i,
                end_time_unix_nano=2_000 + 3 * i, attributes=list(attributes))
    base.update(fields)
    return Span(**base)


def request(*spans_per_resource, service="svc") -> bytes:
    message = ExportTraceServiceRequest()
    for r, spans in enumerate(spans_per_resource):
        resource_spans = message.resource_spans.add()
        resource_spans.resource.attributes.append(
            kv("service.name", AnyValue(string_value=f"{service}-{r}")))
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(InstrumentationScope(name=f"scope-{r}", version="1"))
        scope_spans.spans.extend(spans)
    return message.SerializeToString()


def test_synthetic_requests_of_nested_traces_decode_as_the_reference_does():
    assert_same_as_reference([trace_request(512, seed=seed).SerializeToString()
                              for seed in range(3)])


def test_the_load_generators_requests_decode_as_the_reference_does():
    tools = SHARED / "tools" / "otlp_load.py"
    if not tools.exists():
        pytest.skip(f"{tools} is not here")
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("otlp_load", tools)
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    rng = random.Random(5)
    assert_same_as_reference([load.build_request(rng, 512, 1_700_000_000_000_000_000)[0]
                              for _ in range(3)])


def test_the_real_opentelemetry_proto_example_decodes_as_the_reference_does():
    path = SHARED / "data" / "otlp" / "opentelemetry-proto" / "trace.protobuf-bin"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    assert_same_as_reference([path.read_bytes()])


def test_every_attribute_value_kind_and_text_that_json_escapes():
    values = [
        AnyValue(string_value="plain"), AnyValue(string_value='say "hi"\\ \n\t\x01 ünï ✓'),
        AnyValue(string_value="x" * 300), AnyValue(bool_value=True),
        AnyValue(bool_value=False), AnyValue(int_value=-(2**63)), AnyValue(int_value=2**63 - 1),
        AnyValue(int_value=0), AnyValue(double_value=1.5), AnyValue(double_value=float("nan")),
        AnyValue(bytes_value=b"\x00\xff"), AnyValue(),
        AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1),
                                                AnyValue(string_value="a")])),
        AnyValue(kvlist_value=KeyValueList(values=[kv("k", AnyValue(bool_value=True))])),
    ]
    spans = [span(i, [kv(f"key.{i}.{j}", value) for j, value in enumerate(values)])
             for i in range(5)]
    spans.append(span(9, [kv('ke"y\\', AnyValue(string_value="v")), kv("", AnyValue()),
                          kv("k" * 200, AnyValue(string_value="long key"))]))
    assert_same_as_reference([request(spans)])


def test_spans_without_attributes_events_links_status_and_parents():
    spans = [
        span(0),
        span(1, parent_span_id=bytes(8)),                         # all-zero parent: none
        span(2, parent_span_id=(1).to_bytes(8, "big"),
             status=Status(code=Status.STATUS_CODE_ERROR, message="boom \"x\"")),
        span(3, events=[Span.Event(name="e")] * 3, links=[Span.Link(trace_id=bytes(16))] * 2,
             status=Status(code=Status.STATUS_CODE_OK), trace_state="k=v", flags=257,
             dropped_attributes_count=4),
        span(4, [kv("a", AnyValue(string_value="b"))] * 1 +
             [kv(f"n{j}", AnyValue(int_value=j)) for j in range(150)]),  # > 127 bytes, fields
        span(5, name="ünïcode ✓ name"),
    ]
    assert_same_as_reference([request(spans, spans[:2], [])])


def test_several_bodies_of_several_resources_and_empty_ones():
    bodies = [request([span(i) for i in range(3)], [span(i) for i in range(3, 5)]),
              ExportTraceServiceRequest().SerializeToString(), request([]),
              request([span(7, [kv("x", AnyValue(string_value="y"))])])]
    assert_same_as_reference(bodies)


def test_a_body_with_a_span_the_specification_rejects_is_left_to_the_reference():
    bad = request([span(0), span(1, span_id=b"\x01\x02"), span(2)])
    repeated_key = request([span(3, [kv("k", AnyValue(string_value="a")),
                                     kv("k", AnyValue(string_value="b"))])])
    repeated_odd_key = request([span(6, [kv("k", AnyValue(string_value="a")),
                                         kv("k", AnyValue(double_value=1.5))])])
    good = request([span(4), span(5)])
    table, results = decode_traces([bad, good, repeated_key, repeated_odd_key])
    assert results[0] is None and results[2] is None and results[3] is None
    assert results[1]["accepted"] == 2 and table.num_rows == 2
    assert table.column("span_id").to_pylist() == [(5).to_bytes(8, "big").hex(),
                                                   (6).to_bytes(8, "big").hex()]


def test_an_invalid_body_is_refused_alone():
    good = request([span(0)])
    table, results = decode_traces([good, b"\xff\x00 not protobuf", good])
    assert isinstance(results[1], InvalidPayloadError)
    assert "ExportTraceServiceRequest" in str(results[1])
    assert results[0]["accepted"] == results[2]["accepted"] == 1 and table.num_rows == 2


def test_walk_reads_every_field_of_every_message_in_wire_order():
    import numpy as np

    body = Span(trace_id=b"t" * 16, name="n", kind=2, start_time_unix_nano=2**63 + 5,
                flags=7).SerializeToString()
    buf = np.frombuffer(body * 2 + bytes(16), np.uint8)
    fields = walk(buf, np.array([0, len(body)]), np.array([len(body), 2 * len(body)]))
    assert fields.message.tolist() == [0] * 5 + [1] * 5
    assert fields.number.tolist()[:5] == [1, 5, 6, 7, 16]
    assert fields.value.tolist()[2:5] == [2, 2**63 + 5, 7]
    assert fields.length.tolist()[:2] == [16, 1]


texts = st.text(max_size=40)
any_values = st.one_of(texts.map(lambda t: AnyValue(string_value=t)),
                       st.booleans().map(lambda b: AnyValue(bool_value=b)),
                       st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
                       st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
                       st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(texts, any_values), max_size=6), min_size=1, max_size=8),
       st.integers(0, 3))
def test_random_attributes_decode_as_the_reference_does(attribute_lists, parents):
    spans = []
    for i, attributes in enumerate(attribute_lists):
        unique = {key: value for key, value in attributes}        # no repeated keys
        spans.append(span(i, [kv(key, value) for key, value in unique.items()],
                          parent_span_id=(i % (parents + 1)).to_bytes(8, "big") if i else b""))
    assert_same_as_reference([request(spans)])
