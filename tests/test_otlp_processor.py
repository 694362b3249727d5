"""TraceProcessor: whole traces from spans that arrive in pieces, one decision per trace,
late spans, the bounds (max_traces, max_depth) and the written tables. No Ray: a fake clock
drives the decision wait."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_sched.errors import ConfigError
from ray_sched.otlp.columnar import to_batch_table
from ray_sched.otlp.processor import TraceProcessor
from ray_sched.otlp.schema import SPAN_FIELDS, STATUS_ERROR, numpy_dtype
from ray_sched.otlp.traceid import partition_of

pytestmark = pytest.mark.unit

MS = 1_000_000


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def trace_id(n: int) -> str:
    return f"{n:032x}"


def span_id(n: int) -> str:
    return f"{n + 1:016x}"


def spans(rows: list[dict]):
    """A span batch (SPAN_BATCH_SCHEMA) from dicts with trace, span, parent (span numbers,
    parent None for a root), and optionally error, service, name, start, end."""
    columns = {f.name: [] for f in SPAN_FIELDS}
    for row in rows:
        start = row.get("start", row["span"] * MS)
        end = row.get("end", start + 10 * MS)
        values = {"trace_id": trace_id(row["trace"]), "span_id": span_id(row["span"]),
                  "parent_span_id": "" if row.get("parent") is None
                  else span_id(row["parent"]), "name": row.get("name", f"op{row['span']}"),
                  "kind": 1, "start_ns": start, "end_ns": end, "duration_ns": end - start,
                  "status_code": STATUS_ERROR if row.get("error") else 0,
                  "status_message": "", "service": row.get("service", "svc"), "scope": "s",
                  "attributes": "{}", "resource_attributes": "{}", "events": 0, "links": 0}
        for name, value in values.items():
            columns[name].append(value)
    return to_batch_table({f.name: np.array(columns[f.name], dtype=numpy_dtype(f.type))
                           for f in SPAN_FIELDS})


def chain(trace: int, n: int, *, first: int = 0, error_at: int | None = None) -> list[dict]:
    """Spans first..n-1 of a chain (span k's parent is k-1), each nested in its parent."""
    return [{"trace": trace, "span": k, "parent": None if k == 0 else k - 1,
             "start": k * MS, "end": (2 * n - k) * MS, "error": k == error_at}
            for k in range(first, n)]


def processor(tmp_path, clock, **options):
    return TraceProcessor(export_dir=str(tmp_path), clock=clock, flush_interval_s=3600,
                          **options)


def written(tmp_path, processor_):
    processor_.close()
    return (pd.read_parquet(tmp_path / "spans"), pd.read_parquet(tmp_path / "traces"))


def test_a_trace_split_over_three_requests_is_assembled_and_decided_once(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock, sample_probability=0.0)
    whole = chain(1, 12, error_at=11)
    for part in (whole[8:], whole[:4], whole[4:8]):   # the deepest part first
        p.add_spans(spans(part))
        clock.now += 0.5
        assert p.tick() == 0                          # still within decision_wait_s
    clock.now = 2.0
    assert p.tick() == 1
    rows, traces = written(tmp_path, p)
    assert len(rows) == 12 and not rows["orphan"].any() and not rows["late"].any()
    assert rows["trace_spans"].eq(12).all() and rows["trace_depth"].eq(11).all()
    assert rows["trace_error"].all() and rows["subtree_error"].all()
    assert rows["sample_reason"].eq("error").all() and rows["sampled"].all()
    assert rows["on_critical_path"].all() and rows["critical_path_spans"].eq(12).all()
    assert sorted(rows["depth"]) == list(range(12))
    assert len(traces) == 1
    row = traces.iloc[0]
    assert (row.spans, row.depth, row.error, row.sample_reason, row.orphans) == (
        12, 11, True, "error", 0)
    assert row.critical_path_spans == 12 and not row.decided_early
    assert p.stats()["traces_decided"] == 1


def test_late_spans_follow_the_decision_and_are_counted(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock, sample_probability=0.0, decision_wait_s=1.0)
    whole = chain(2, 6, error_at=0)
    p.add_spans(spans(whole[:4]))
    clock.now = 1.0
    p.tick()
    clock.now = 1.5                                   # within the row's wait for late spans
    p.add_spans(spans(whole[4:5]))
    clock.now = 5.0
    p.tick()
    p.add_spans(spans(whole[5:]))                     # after the row was written
    rows, traces = written(tmp_path, p)
    late = rows[rows["late"]]
    assert len(late) == 2 and late["sample_reason"].eq("error").all() and late["sampled"].all()
    assert p.stats()["late_spans"] == 2 and p.stats()["traces_decided"] == 1
    assert traces["late_spans"].tolist() == [1]


def test_past_max_traces_the_oldest_are_decided_early(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock, max_traces=3)
    for t in range(5):
        p.add_spans(spans(chain(10 + t, 2)))
        clock.now += 0.1
    assert p.waiting_traces() == 3
    assert p.stats()["traces_decided_early"] == 2
    rows, traces = written(tmp_path, p)
    early = traces.set_index("trace_id")["decided_early"]
    assert early[trace_id(10)] and early[trace_id(11)] and not early[trace_id(14)]
    assert len(rows) == 10


@pytest.mark.parametrize("policy,spans_written", [("flag", 10), ("truncate", 6), ("drop", 0)])
def test_the_depth_limit_policies(tmp_path, policy, spans_written):
    clock = Clock()
    p = processor(tmp_path, clock, max_depth=5, on_max_depth=policy)
    p.add_spans(spans(chain(3, 10) + chain(4, 3)))
    clock.now = 10.0
    p.tick()
    p.close()
    rows = pd.read_parquet(tmp_path / "spans")
    deep = rows[rows["trace_id"] == trace_id(3)]
    assert len(deep) == spans_written and len(rows) == spans_written + 3
    assert deep["trace_depth_exceeded"].all()
    stats = p.stats()
    assert stats["depth_exceeded_traces"] == 1
    assert stats["spans_truncated"] == (4 if policy == "truncate" else 0)
    assert stats["traces_dropped_max_depth"] == (1 if policy == "drop" else 0)


def test_a_100000_deep_chain_sent_in_50_requests_is_one_tree(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock, max_depth=1000)
    n = 100_000
    whole = [{"trace": 5, "span": k, "parent": None if k == 0 else k - 1,
              "start": k, "end": 2 * n - k} for k in range(n)]
    for part in np.array_split(np.arange(n), 50)[::-1]:
        p.add_spans(spans([whole[k] for k in part]))
    clock.now = 10.0
    p.tick()
    rows, traces = written(tmp_path, p)
    assert len(rows) == n and rows["depth"].max() == n - 1 and not rows["orphan"].any()
    assert traces["depth"].tolist() == [n - 1] and traces["depth_exceeded"].tolist() == [True]


def test_a_cycle_is_flagged_not_looped(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock)
    p.add_spans(spans([{"trace": 6, "span": 0, "parent": 1}, {"trace": 6, "span": 1,
                                                               "parent": 0},
                       {"trace": 6, "span": 2, "parent": None}]))
    clock.now = 10.0
    p.tick()
    rows, traces = written(tmp_path, p)
    assert rows["in_cycle"].sum() == 2 and traces["has_cycle"].tolist() == [True]


def test_the_rate_limit_caps_kept_traces_per_root_service_but_never_errors(tmp_path):
    clock = Clock()
    p = processor(tmp_path, clock, sample_probability=1.0, rate_limit_per_s=2)
    batch = []
    for t in range(10):
        batch += [dict(row, service="a") for row in chain(100 + t, 2, error_at=0 if t < 3
                                                           else None)]
    p.add_spans(spans(batch))
    clock.now = 10.0
    p.tick()
    _, traces = written(tmp_path, p)
    reasons = traces["sample_reason"].value_counts().to_dict()
    assert reasons == {"error": 3, "probabilistic": 2, "rate_limited": 5}
    assert traces.loc[traces["sample_reason"] == "rate_limited", "sampled"].eq(False).all()


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="on_max_depth"):
        TraceProcessor(export_dir=str(tmp_path), on_max_depth="explode")
    with pytest.raises(ConfigError, match="max_traces"):
        TraceProcessor(export_dir=str(tmp_path), max_traces=0)


def test_partitions_are_stable_spread_and_the_same_for_any_id_form():
    ids = [f"{n * 2654435761 % 2**128:032x}" for n in range(4000)]
    import pyarrow as pa

    owners = partition_of(pa.array(ids), 4)
    assert owners.tolist() == partition_of(ids, 4).tolist()
    counts = np.bincount(owners, minlength=4)
    assert counts.min() > 800
    odd = partition_of(["abc", "abc", "0" * 31], 3)
    assert odd[0] == odd[1] and set(odd.tolist()) <= {0, 1, 2}
