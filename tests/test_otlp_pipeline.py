"""The pipeline's pure parts without Ray: real payloads through decode → assembly → sampling
→ export, the Parquet sink, the aggregator, admission limits, the synthetic generator."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_sched.errors import ConfigError, OverloadedError
from ray_sched.otlp.decode import decode_request, read_payload_file
from ray_sched.otlp.export import TABLES, ParquetSink
from ray_sched.otlp.pipeline import Aggregator, OtlpPipeline, PipelineConfig
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
    """What OtlpProcessor.traces does, minus the actor: assemble, sample, tabulate."""
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


@pytest.mark.parametrize("name,value", [("decoders", 0), ("sample_probability", 1.5),
                                        ("memory_limit", 0), ("max_depth", 0),
                                        ("max_pending_requests", 0)])
def test_pipeline_config_refuses_bad_values_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        PipelineConfig(export_dir="x", **{name: value})


def admission(**config):
    """An OtlpPipeline with only its admission state (no Ray): _admit is pure."""
    pipeline = OtlpPipeline.__new__(OtlpPipeline)
    pipeline.config = PipelineConfig(export_dir="x", **config)
    pipeline.pending_requests = pipeline.pending_bytes = 0
    pipeline.closing = False
    pipeline._memory_checked = pipeline._memory_used = 0.0
    return pipeline


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
    assert OtlpPipeline.check_content_type("Application/JSON; charset=utf-8") == \
        "application/json"
    assert OtlpPipeline.check_content_type("application/x-protobuf") == \
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


def test_decoder_gives_the_task_features_of_its_payload_including_the_deepest_tree():
    from ray_sched.otlp.pipeline import Decoder
    body = trace_request(512, seed=9).SerializeToString()
    summary, columns = Decoder().decode("traces", body, "application/x-protobuf", None, 1 << 22)
    features = summary["features"]
    assert features["items"] == 512 and features["traces"] == 512 // SPANS_PER_TRACE
    assert features["deepest_tree"] == columns["trace_depth"].max() + 1 >= 3
    assert features["signal"] == "traces" and features["body_bytes"] == len(body)
    assert features["services"] > 1 and features["attributes"] > 512


def test_decoder_answers_a_refusal_instead_of_raising():
    from ray_sched.otlp.pipeline import Decoder
    summary, columns = Decoder().decode("logs", b"\xff\x00junk", "application/x-protobuf",
                                        None, 1 << 20)
    assert columns is None and summary["error"] == "InvalidPayloadError"
