"""The pipeline's pure parts without Ray: real payloads through decode → assembly → sampling
→ export, the Parquet sink, the aggregator, admission limits, micro-batch decoding, the
synthetic generator."""

from __future__ import annotations

import gzip

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_sched.errors import ConfigError, OverloadedError
from ray_sched.otlp.decode import decode_request, read_payload_file
from ray_sched.otlp.export import TABLES, ParquetSink
from ray_sched.otlp.pipeline import Aggregator, Ingest, PipelineConfig, decode_batch
from ray_sched.otlp.processing import TailSampler, span_metrics_partial
from ray_sched.otlp.schema import (
    ASSEMBLY_FIELDS,
    EXPORT_SCHEMA_VERSION,
    SAMPLING_FIELDS,
    SPAN_FIELDS,
    to_table,
)
from ray_sched.otlp.spantree import assemble, traces
from ray_sched.otlp.synthetic import SPANS_PER_TRACE, trace_request
from tests.conftest import SHARED

pytestmark = pytest.mark.unit

OTLP_DATA = SHARED / "data" / "otlp"


def process(decoded):
    """What a TraceProcessor does to a decided trace: assemble, sample, tabulate."""
    assembled = assemble(decoded.columns)
    decided = TailSampler(probability=0.0).decide(assembled)
    return to_table(decided, SPAN_FIELDS, ASSEMBLY_FIELDS, SAMPLING_FIELDS).to_pandas()


def real_file(*parts):
    path = OTLP_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return path


@pytest.mark.parametrize("name", ["smartthings-mobile-web-install.json",
                                  "smartthings-oauth-authorization.json"])
def test_real_zipkin_traces_assemble_into_trees_without_cycles(name):
    decoded = read_payload_file(real_file("zipkin-smartthings", name))
    spans = process(decoded)
    assert len(spans) == decoded.accepted > 0
    assert not spans["in_cycle"].any()
    assert spans["trace_depth"].max() >= 2            # real nesting, not flat lists
    per_trace = traces(assemble(decoded.columns))
    assert (per_trace["root_service"] != "").all()
    assert (spans["self_ns"] <= spans["duration_ns"]).all()


def test_real_hotrod_trace_is_one_tree_rooted_at_the_frontend():
    decoded = read_payload_file(real_file("jaeger-hotrod", "getTrace-response.json"))
    spans = process(decoded)
    assert spans["trace_id"].nunique() == 1 and len(spans) == 40
    assert (spans["trace_orphans"] == 0).all()
    assert spans["root_service"].iloc[0] == "frontend"
    on_path = spans[spans["on_critical_path"]]
    assert 1 < len(on_path) <= spans["trace_depth"].iloc[0] + 1


def test_synthetic_request_holds_whole_nested_traces():
    request = trace_request(512, seed=3)
    decoded = decode_request("traces", request.SerializeToString(), "application/x-protobuf")
    assert decoded.accepted == 512 and decoded.rejected == 0
    spans = process(decoded)
    assert spans.groupby("trace_id").size().eq(SPANS_PER_TRACE).all()
    assert (spans["trace_orphans"] == 0).all() and spans["trace_depth"].max() >= 2
    assert len(decoded.services) > 1


def test_synthetic_request_refuses_a_bad_size():
    with pytest.raises(ConfigError, match="spans must be an integer >= 1"):
        trace_request(0)


def test_sink_writes_parts_atomically_with_the_schema_version(tmp_path):
    sink = ParquetSink(tmp_path, flush_rows=3)
    table = to_table(process(read_payload_file(
        real_file("opentelemetry-proto", "trace.json"))).to_dict("list"), SPAN_FIELDS)
    for _ in range(4):
        sink.write("spans", table)
    assert sink.rows_written["spans"] == 3 and sink.buffered_rows() == 1
    sink.flush()
    files = sorted((tmp_path / "spans").iterdir())
    assert all(f.suffix == ".parquet" and not f.name.startswith(".") for f in files)
    assert len(pd.read_parquet(tmp_path / "spans")) == 4
    metadata = pq.read_schema(files[0]).metadata
    assert metadata[b"ray_sched.schema_version"] == str(EXPORT_SCHEMA_VERSION).encode()
    assert {p.name for p in tmp_path.iterdir()} == set(TABLES)


def test_sink_refuses_an_unknown_table_and_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown export table 'nope'"):
        ParquetSink(tmp_path).write("nope", None)
    with pytest.raises(ConfigError, match="flush_rows"):
        ParquetSink(tmp_path, flush_rows=0)


def test_a_background_sink_writes_the_same_parts_and_reports_a_failed_write(tmp_path):
    import shutil

    import pyarrow as pa

    table = pa.table({"span_id": ["a", "b", "c"]})
    sink = ParquetSink(tmp_path / "ok", background=True)
    sink.write("spans", table)
    assert sink.flush()["spans"] == 3
    assert pd.read_parquet(tmp_path / "ok" / "spans")["span_id"].tolist() == ["a", "b", "c"]
    broken = ParquetSink(tmp_path / "broken", background=True)
    shutil.rmtree(tmp_path / "broken" / "spans")
    (tmp_path / "broken" / "spans").write_text("a file where the folder was")
    broken.write("spans", table)
    with pytest.raises(OSError, match="spans: 3 rows"):
        broken.flush()
    assert broken.rows_written["spans"] == 0 and len(broken.write_errors) == 1


def test_aggregator_merges_partials_of_several_processors_into_one_window(tmp_path):
    columns = decode_request("traces", trace_request(64, seed=1).SerializeToString(),
                             "application/x-protobuf").columns
    aggregator = Aggregator(tmp_path, metrics_window_s=3600)
    aggregator.merge("spans", span_metrics_partial(columns))
    aggregator.merge("spans", span_metrics_partial(columns))  # a second processor's share
    written = aggregator.close()
    rows = pd.read_parquet(tmp_path / "span_metrics")
    assert written["span_metrics"] == len(rows)
    assert rows["calls"].sum() == 2 * 64
    assert not rows.duplicated(["service", "operation", "span_kind"]).any()


@pytest.mark.parametrize("name,value", [("processors", 0), ("sample_probability", 1.5),
                                        ("memory_limit", 0), ("max_depth", 0),
                                        ("max_pending_requests", 0), ("decision_wait_s", -1),
                                        ("max_traces", 0), ("rate_limit_per_s", 0),
                                        ("on_max_depth", "explode"), ("memory_limit_mib", 0),
                                        ("batch_bytes", 0)])
def test_pipeline_config_refuses_bad_values_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        PipelineConfig(export_dir="x", **{name: value})


def admission(**config):
    """A processor's Ingest with only its admission state: _admit needs no Ray."""
    async def handoff(batch):
        raise AssertionError("not reached")
    return Ingest(PipelineConfig(export_dir="x", **config), handoff)


def test_admission_refuses_with_429_when_the_queue_is_full():
    pipeline = admission(max_pending_requests=2, max_pending_bytes=1000)
    pipeline._admit(10)
    pipeline.pending_requests = 2
    with pytest.raises(OverloadedError, match="max_pending_requests=2") as error:
        pipeline._admit(10)
    assert error.value.http_status == 429
    pipeline.pending_requests = 0
    with pytest.raises(OverloadedError, match="max_pending_bytes=1000"):
        pipeline._admit(1001)


def test_admission_refuses_with_503_over_this_processors_share_of_memory_limit_mib():
    pipeline = admission(memory_limit_mib=100)
    pipeline.memory_share = 0.5
    pipeline._memory_checked = float("inf")
    pipeline._memory_mib = 60.0
    with pytest.raises(OverloadedError, match="memory_limit_mib=100") as error:
        pipeline._admit(1)
    assert error.value.http_status == 503 and error.value.retry_after_s > 0
    pipeline._memory_mib = 40.0
    pipeline._admit(1)


def test_admission_refuses_with_503_over_the_memory_limit_and_when_closing():
    pipeline = admission(memory_limit=0.5)
    pipeline._memory_checked = float("inf")  # no fresh sample: use the value below
    pipeline._memory_used = 0.75
    with pytest.raises(OverloadedError, match="memory limit: 75%") as error:
        pipeline._admit(1)
    assert error.value.http_status == 503
    pipeline._memory_used = 0.1
    pipeline._admit(1)
    pipeline.closing = True
    with pytest.raises(OverloadedError, match="shutting down"):
        pipeline._admit(1)


def test_content_type_check_ignores_parameters_and_case():
    assert Ingest.check_content_type("Application/JSON; charset=utf-8") == \
        "application/json"
    assert Ingest.check_content_type("application/x-protobuf") == \
        "application/x-protobuf"


def test_serve_refuses_an_unset_token_variable_before_starting(capsys, monkeypatch):
    from ray_sched.cli import main
    monkeypatch.delenv("RAY_SCHED_TEST_TOKEN", raising=False)
    code = main(["serve", "--export-dir", "x", "--auth-token-env", "RAY_SCHED_TEST_TOKEN"])
    assert code == 2
    assert "RAY_SCHED_TEST_TOKEN" in capsys.readouterr().err


def test_serve_refuses_to_listen_on_nothing(capsys):
    from ray_sched.cli import main
    assert main(["serve", "--export-dir", "x", "--no-http", "--no-grpc"]) == 2
    assert "nothing would listen" in capsys.readouterr().err


def test_a_micro_batch_decodes_every_kind_of_request_and_refuses_each_bad_one_alone():
    traces_body = trace_request(512, seed=9).SerializeToString()
    json_body = real_file("opentelemetry-proto", "trace.json").read_bytes()
    metrics_body = real_file("opentelemetry-proto", "metrics.protobuf-bin").read_bytes()
    items = [("traces", traces_body, "application/x-protobuf", None),
             ("traces", b"\xff\x00junk", "application/x-protobuf", None),
             ("traces", gzip.compress(traces_body), "application/x-protobuf", "gzip"),
             ("traces", json_body, "application/json", None),
             ("metrics", metrics_body, "application/x-protobuf", None),
             ("logs", b"\xff\x00junk", "application/x-protobuf", None),
             ("traces", traces_body, "application/x-protobuf", "br")]
    batch = decode_batch(items, max_body_bytes=1 << 22)
    results = batch.results
    assert results[0] == {"accepted": 512, "rejected": 0, "message": ""} == results[2]
    assert results[1]["error"] == "InvalidPayloadError" == results[5]["error"]
    assert results[3]["accepted"] == decode_request(
        "traces", json_body, "application/json").accepted > 0
    assert results[4]["accepted"] > 0 and len(batch.metrics) == 1 and not batch.logs
    assert results[6]["error"] == "UnsupportedMediaTypeError"
    assert batch.spans.num_rows == 2 * 512 + results[3]["accepted"]


def test_a_micro_batch_keeps_a_partial_success_with_its_messages():
    request = trace_request(16, seed=3)
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01\x02"
    batch = decode_batch([("traces", request.SerializeToString(), "application/x-protobuf",
                           None)])
    result = batch.results[0]
    assert result["accepted"] == 15 and result["rejected"] == 1
    assert "spanId" in result["message"] and batch.spans.num_rows == 15
