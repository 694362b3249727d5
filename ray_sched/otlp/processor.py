"""Trace processors: whole traces buffered by trace id, decided after ``decision_wait_s``.

The data plane of ``ray-sched serve`` (see :mod:`ray_sched.otlp.pipeline`) sends every span
of a trace to the same processor (:func:`partition_of`, a hash of the trace id), whichever
request or protocol carried it. A :class:`TraceProcessor` holds each trace from its first
span for ``decision_wait_s``, then assembles the whole span tree
(:func:`~ray_sched.otlp.spantree.assemble`), tail-samples it once
(:class:`~ray_sched.otlp.processing.TailSampler`) and writes it:

- ``spans/``: every span, with its whole trace's assembly columns, the decision (``sampled``,
  ``sample_reason``) and ``late`` (it arrived after its trace was decided);
- ``traces/``: one row per decided trace (:data:`TRACE_TABLE_FIELDS`), written once the trace
  has waited one more ``decision_wait_s`` for late spans (counted in ``late_spans``);
- span metrics (to the aggregator) and, with a forwarder, the kept spans as OTLP.

Bounds: at most ``max_traces`` traces wait; past that the oldest are decided at once
(``decided_early``). Decisions are remembered for the last ``decided_cache`` traces, so
that late spans follow their trace's decision; a span of a trace decided longer ago than
that is treated as a new trace. Traces deeper than ``max_depth`` are handled by
``on_max_depth``: ``flag`` (written, ``trace_depth_exceeded``), ``truncate`` (spans below
``max_depth`` are not written, counted) or ``drop`` (the trace is not written, counted).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_sched.errors import ConfigError
from ray_sched.otlp.columnar import SPAN_BATCH_SCHEMA
from ray_sched.otlp.export import DEFAULT_FLUSH_INTERVAL_S, ParquetSink
from ray_sched.otlp.processing import (
    SAMPLE_REASONS,
    LogCounts,
    MetricSeries,
    SpanMetrics,
    TailSampler,
    log_counts_partial,
    metric_series_partial,
    span_metrics_partial,
)
from ray_sched.otlp.schema import (
    ASSEMBLY_FIELDS,
    LOG_FIELDS,
    METRIC_POINT_FIELDS,
    SAMPLING_FIELDS,
    Columns,
    to_table,
)
from ray_sched.otlp.spantree import DEFAULT_MAX_DEPTH, assemble, traces
from ray_sched.params import check_range

#: How long a trace waits for its spans after its first one (the Collector's decision_wait
#: is often set to a few seconds; spans of one request tree are usually sent within one).
DEFAULT_DECISION_WAIT_S = 2.0
#: Traces waiting at most, per processor (the Collector's num_traces defaults to 50,000).
DEFAULT_MAX_TRACES = 50_000
#: Decisions remembered per processor, for late spans.
DEFAULT_DECIDED_CACHE = 200_000
ON_MAX_DEPTH = ("flag", "truncate", "drop")

#: Columns of ``traces/``: one row per decided trace.
TRACE_TABLE_FIELDS = pa.schema([
    ("trace_id", pa.string()),
    ("root_service", pa.string()),
    ("root_name", pa.string()),
    ("spans", pa.int32()),
    ("depth", pa.int32()),
    ("duration_ns", pa.int64()),
    ("start_ns", pa.int64()),
    ("critical_path_ns", pa.int64()),
    ("critical_path_spans", pa.int32()),
    ("error", pa.bool_()),
    ("orphans", pa.int32()),
    ("has_cycle", pa.bool_()),
    ("depth_exceeded", pa.bool_()),
    ("sampled", pa.bool_()),
    ("sample_reason", pa.string()),
    ("decided_early", pa.bool_()),            # decided before decision_wait (max_traces)
    ("late_spans", pa.int32()),               # spans that arrived after the decision
    ("decided_at_ns", pa.int64()),            # unix ns
])

def new_totals() -> dict:
    """Running aggregates per item table: span metrics, metric series, log counts."""
    return {"spans": SpanMetrics(), "metrics": MetricSeries(), "logs": LogCounts()}


def _numpy(table: pa.Table, names: tuple[str, ...]) -> Columns:
    out = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        out[name] = column.to_numpy()
    return out


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns back to their value type (the exported layout)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


_FORWARDED = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
              "status_code", "status_message", "service", "scope", "attributes",
              "resource_attributes")
_ASSEMBLY_INPUT = ("trace_id", "span_id", "parent_span_id", "start_ns", "end_ns",
                   "duration_ns", "status_code", "service", "name", "kind")


class TraceProcessor:
    """One partition of the traces: buffer, decide, write (see the module docstring).

    Plain object: the pipeline's processor actors host one each; tests drive it directly.

    Args:
        export_dir: where ``spans/``, ``traces/``, ``metrics/``, ``logs/`` go.
        ship: called with (table name, partial aggregate) to deliver span metrics, metric
            series and log counts (to the aggregator); None keeps them in ``totals``.
        decision_wait_s, max_traces, decided_cache, max_depth, on_max_depth: see the
            module docstring.
        sample_probability, slow_quantile, rate_limit_per_s: the tail sampler's.
        flush_interval_s: the longest a written row waits before it is in a Parquet file.
        forwarder: sends kept spans on (an :class:`~ray_sched.otlp.forward.Forwarder`).
        background_writes: Parquet part files are written on a thread of their own.
        clock: seconds (monotonic); injected by tests.
    """

    def __init__(self, *, export_dir: str, ship: Callable[[str, Columns], None] | None = None,
                 decision_wait_s: float = DEFAULT_DECISION_WAIT_S,
                 max_traces: int = DEFAULT_MAX_TRACES,
                 decided_cache: int = DEFAULT_DECIDED_CACHE,
                 max_depth: int = DEFAULT_MAX_DEPTH, on_max_depth: str = "flag",
                 sample_probability: float = 0.1, slow_quantile: float = 0.95,
                 rate_limit_per_s: float | None = None,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S, forwarder=None,
                 background_writes: bool = False, clock: Callable[[], float] = time.monotonic):
        try:
            check_range("decision_wait_s", decision_wait_s, 0)
            check_range("max_traces", max_traces, 1)
            check_range("decided_cache", decided_cache, 1)
            check_range("max_depth", max_depth, 1)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if on_max_depth not in ON_MAX_DEPTH:
            raise ConfigError(f"on_max_depth must be one of {ON_MAX_DEPTH}, got "
                              f"{on_max_depth!r}")
        self.decision_wait_s = float(decision_wait_s)
        self.max_traces = int(max_traces)
        self.decided_cache = int(decided_cache)
        self.max_depth = int(max_depth)
        self.on_max_depth = on_max_depth
        self.clock = clock
        self.ship = ship
        self.forwarder = forwarder
        self.sampler = TailSampler(probability=sample_probability, slow_quantile=slow_quantile,
                                   rate_limit_per_s=rate_limit_per_s, clock=clock)
        self.sink = ParquetSink(export_dir, flush_interval_s=flush_interval_s,
                                background=background_writes)
        self.totals = new_totals()
        self._tables: list[pa.Table] = []
        self._first_seen: dict[str, float] = {}           # waiting traces, oldest first
        self._decided: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._held: collections.deque = collections.deque()   # (release at, trace rows)
        self._late: dict[str, int] = {}                   # late spans of held rows
        self.counts = dict.fromkeys(
            ("spans_in", "spans_buffered", "spans_written", "traces_decided",
             "traces_decided_early", "late_spans", "depth_exceeded_traces",
             "spans_truncated", "traces_dropped_max_depth", "metric_points", "log_records"), 0)

    # -- input ------------------------------------------------------------------------------
    def add_spans(self, table: pa.Table, now: float | None = None) -> None:
        """Take spans of this partition (``SPAN_BATCH_SCHEMA``), from any request; ``now``
        is when they arrived (default: the clock)."""
        if table.num_rows == 0:
            return
        self.counts["spans_in"] += table.num_rows
        now = self.clock() if now is None else now
        ids = table.column("trace_id")
        late = []
        first_seen, decided = self._first_seen, self._decided
        for trace_id in pc.unique(ids).to_pylist():
            if trace_id in first_seen:
                continue
            if trace_id in decided:
                late.append(trace_id)
            else:
                first_seen[trace_id] = now
        if late:
            mask = pc.is_in(ids, value_set=pa.array(late, pa.string()))
            self._write_late(table.filter(mask))
            table = table.filter(pc.invert(mask))
        if table.num_rows:
            self._tables.append(table)
            self.counts["spans_buffered"] += table.num_rows
        overflow = len(first_seen) - self.max_traces
        if overflow > 0:
            oldest = [trace_id for trace_id, _ in zip(first_seen, range(overflow))]
            self._decide(oldest, early=True)

    def metrics(self, columns: Columns) -> int:
        return self._items("metrics", columns, METRIC_POINT_FIELDS, metric_series_partial,
                           "metric_points")

    def logs(self, columns: Columns) -> int:
        return self._items("logs", columns, LOG_FIELDS, log_counts_partial, "log_records")

    def _items(self, table_name: str, columns: Columns, schema: pa.Schema, partial,
               count: str) -> int:
        """Metric points or log records: written as they come (no trace to wait for)."""
        table = to_table(columns, schema)
        self.sink.write(table_name, table)
        self._aggregate(table_name, partial(columns))
        self.counts[count] += table.num_rows
        return table.num_rows

    # -- decisions --------------------------------------------------------------------------
    def tick(self) -> int:
        """Decide the traces whose wait is over, release held trace rows, write what is
        due. Returns the traces decided."""
        now = self.clock()
        due = []
        for trace_id, seen in self._first_seen.items():
            if seen + self.decision_wait_s > now:
                break
            due.append(trace_id)
        if due:
            self._decide(due)
        self._release_rows(now)
        self.sink.flush_due()
        return len(due)

    def _decide(self, trace_ids: list[str], *, early: bool = False) -> None:
        for trace_id in trace_ids:
            del self._first_seen[trace_id]
        wanted = pa.array(trace_ids, pa.string())
        due, kept = [], []
        for table in self._tables:
            mask = pc.is_in(table.column("trace_id"), value_set=wanted)
            hits = pc.sum(mask).as_py() or 0
            if hits == table.num_rows:
                due.append(table)
            elif hits == 0:
                kept.append(table)
            else:
                due.append(table.filter(mask))
                kept.append(table.filter(pc.invert(mask)))
        self._tables = kept
        spans = pa.concat_tables(due) if due else SPAN_BATCH_SCHEMA.empty_table()
        self.counts["spans_buffered"] -= spans.num_rows
        self.counts["traces_decided"] += len(trace_ids)
        if early:
            self.counts["traces_decided_early"] += len(trace_ids)
        if spans.num_rows:
            self._write_decided(spans, early)

    def _write_decided(self, spans: pa.Table, early: bool) -> None:
        columns = _numpy(spans, _ASSEMBLY_INPUT)
        assembled = assemble(columns, max_depth=self.max_depth)
        decided = self.sampler.decide(assembled)
        summary = traces(decided, also=("sampled", "sample_reason"))
        sampled, reason = summary.pop("sampled"), summary.pop("sample_reason")
        exceeded = summary["depth_exceeded"]
        self.counts["depth_exceeded_traces"] += int(exceeded.sum())
        for trace_id, code in zip(summary["trace_id"].tolist(),
                                  _REASON_INDEX.get_indexer(reason).tolist()):
            self._remember(trace_id, code)
        keep = np.ones(spans.num_rows, dtype=bool)
        if exceeded.any() and self.on_max_depth != "flag":
            deep = decided["trace_depth_exceeded"]
            if self.on_max_depth == "drop":
                keep &= ~deep
                self.counts["traces_dropped_max_depth"] += int(exceeded.sum())
            else:
                keep &= ~deep | (decided["depth"] <= self.max_depth)
                self.counts["spans_truncated"] += int((~keep).sum())
        late = np.zeros(spans.num_rows, dtype=bool)
        self._write_spans(spans, decided, late, keep)
        rows = {name: summary[name] for name in summary}
        rows.update(sampled=sampled, sample_reason=reason,
                    decided_early=np.full(len(sampled), early),
                    late_spans=np.zeros(len(sampled), dtype=np.int32),
                    decided_at_ns=np.full(len(sampled), time.time_ns(), dtype=np.int64))
        self._held.append((self.clock() + self.decision_wait_s, rows))
        for trace_id in summary["trace_id"].tolist():
            self._late[trace_id] = 0

    def _write_late(self, spans: pa.Table) -> None:
        """Spans of traces already decided: they follow the decision, assembled among
        themselves (their parents were written with the trace), flagged ``late``."""
        self.counts["late_spans"] += spans.num_rows
        columns = _numpy(spans, _ASSEMBLY_INPUT)
        assembled = assemble(columns, max_depth=self.max_depth)
        codes = np.array([self._decided[t] for t in assembled["trace_id"].tolist()],
                         dtype=np.int64)
        names = np.array(SAMPLE_REASONS, dtype=object)[codes]
        decided = {**assembled, "sampled": ~np.isin(codes, _NOT_KEPT), "sample_reason": names}
        for trace_id in assembled["trace_id"].tolist():
            if trace_id in self._late:
                self._late[trace_id] += 1
        self._write_spans(spans, decided, np.ones(spans.num_rows, dtype=bool),
                          np.ones(spans.num_rows, dtype=bool))

    def _write_spans(self, spans: pa.Table, decided: Columns, late: np.ndarray,
                     keep: np.ndarray) -> None:
        extra = {name: decided[name] for name in (*ASSEMBLY_FIELDS.names,
                                                   *SAMPLING_FIELDS.names)}
        extra["late"] = late
        table = _plain(spans)
        for name, values in extra.items():
            table = table.append_column(name, pa.array(values))
        if not keep.all():
            table = table.filter(pa.array(keep))
            decided = {name: values[keep] for name, values in decided.items()}
        self.sink.write("spans", table)
        self.counts["spans_written"] += table.num_rows
        self._aggregate("spans", span_metrics_partial(decided))
        if self.forwarder is not None:
            full = _numpy(table, _FORWARDED)
            self.forwarder.add(full, np.asarray(table.column("sampled").to_numpy(), dtype=bool))

    def _remember(self, trace_id: str, code: int) -> None:
        decided = self._decided
        decided[trace_id] = code
        if len(decided) > self.decided_cache:
            decided.popitem(last=False)

    def _release_rows(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            _, rows = self._held.popleft()
            late = self._late
            rows["late_spans"] = np.array([late.pop(t, 0) for t in rows["trace_id"].tolist()],
                                          dtype=np.int32)
            self.sink.write("traces", to_table(rows, TRACE_TABLE_FIELDS))

    def _aggregate(self, table_name: str, partial: Columns) -> None:
        if self.ship is not None:
            self.ship(table_name, partial)
        else:
            self.totals[table_name].merge(partial)

    # -- lifecycle --------------------------------------------------------------------------
    def waiting_traces(self) -> int:
        return len(self._first_seen)

    def stats(self) -> dict:
        return {**self.counts, "traces_waiting": len(self._first_seen),
                "sampler": self.sampler.stats()}

    def close(self) -> dict:
        """Decide every waiting trace, write everything; returns rows written per table."""
        if self._first_seen:
            self._decide(list(self._first_seen))
        self._release_rows(float("inf"))
        written = self.sink.flush()
        if self.forwarder is not None:
            forwarded = self.forwarder.close()
            written["forwarded_spans"] = forwarded["sent"]
            written["forward_dropped_spans"] = forwarded["dropped"]
        return written


_NOT_KEPT = np.array([SAMPLE_REASONS.index("dropped"), SAMPLE_REASONS.index("rate_limited")])
_REASON_INDEX = pd.Index(SAMPLE_REASONS)      # reason name -> code, for a whole array


