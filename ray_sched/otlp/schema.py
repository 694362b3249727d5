"""Column layouts shared by the OTLP stages: decode produces them, assembly and sampling add
to them, export writes them.

A batch is a plain ``dict[str, numpy.ndarray]`` (every array of the same length, one row per
item), so that stages work on whole columns and Ray moves the arrays without pickling each
item. The arrow schemas below fix the exported Parquet layouts; other tools read them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: Version of the exported Parquet layouts (stored in each file's metadata).
EXPORT_SCHEMA_VERSION = 1

Columns = dict[str, np.ndarray]

#: Trace ids and span ids are lowercase hex strings of these lengths ("" for no parent).
TRACE_ID_HEX = 32
SPAN_ID_HEX = 16

#: OTLP status codes (``Status.StatusCode``).
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
#: The service name OpenTelemetry SDKs report when none was configured.
UNKNOWN_SERVICE = "unknown_service"

#: One row per decoded span. Object columns hold Python str; JSON columns hold a JSON object
#: text (``"{}"`` when empty) of the attributes with OTLP AnyValues turned into JSON values.
SPAN_FIELDS = pa.schema([
    ("trace_id", pa.string()),             # 32 lowercase hex chars
    ("span_id", pa.string()),              # 16 lowercase hex chars
    ("parent_span_id", pa.string()),       # 16 hex chars, or "" for a root
    ("name", pa.string()),
    ("kind", pa.int8()),                   # SpanKind: 0 unspecified .. 5 consumer
    ("start_ns", pa.int64()),              # unix nanoseconds
    ("end_ns", pa.int64()),
    ("duration_ns", pa.int64()),           # end_ns - start_ns (>= 0)
    ("status_code", pa.int8()),            # STATUS_UNSET / STATUS_OK / STATUS_ERROR
    ("status_message", pa.string()),
    ("service", pa.string()),              # resource attribute service.name
    ("scope", pa.string()),                # instrumentation scope name
    ("attributes", pa.string()),           # JSON object
    ("resource_attributes", pa.string()),  # JSON object
    ("events", pa.int32()),                # number of span events
    ("links", pa.int32()),                 # number of span links
])

#: Columns that span-tree assembly adds, one value per span (per-trace values repeated).
ASSEMBLY_FIELDS = pa.schema([
    ("depth", pa.int32()),                 # 0 for a root (or an orphan); -1 inside a cycle
    ("self_ns", pa.int64()),               # duration minus its children's, clipped at 0
    ("subtree_spans", pa.int32()),         # spans under it, itself included
    ("subtree_error", pa.bool_()),         # an error at it or anywhere under it
    ("on_critical_path", pa.bool_()),
    ("orphan", pa.bool_()),                # names a parent that is not in the batch
    ("in_cycle", pa.bool_()),              # its ancestor chain loops
    ("trace_spans", pa.int32()),
    ("trace_depth", pa.int32()),           # deepest depth in the trace
    ("trace_duration_ns", pa.int64()),     # last end minus first start
    ("trace_error", pa.bool_()),
    ("trace_depth_exceeded", pa.bool_()),  # deeper than max_depth: flagged only
    ("trace_has_cycle", pa.bool_()),
    ("trace_orphans", pa.int32()),
    ("critical_path_ns", pa.int64()),      # summed self time along the critical path
    ("critical_path_spans", pa.int32()),
    ("root_service", pa.string()),
    ("root_name", pa.string()),
])

#: Columns that tail sampling adds.
SAMPLING_FIELDS = pa.schema([
    ("sampled", pa.bool_()),
    ("sample_reason", pa.string()),        # "error", "slow", "probabilistic" or "dropped"
])

#: One row per metric data point.
METRIC_POINT_FIELDS = pa.schema([
    ("service", pa.string()),
    ("scope", pa.string()),
    ("metric", pa.string()),
    ("unit", pa.string()),
    ("type", pa.string()),                 # gauge, sum, histogram, exponential_histogram, summary
    ("series", pa.string()),               # metric name + sorted attributes: one time series
    ("start_ns", pa.int64()),
    ("time_ns", pa.int64()),
    ("value", pa.float64()),               # number points: the value; others: the sum
    ("count", pa.int64()),                 # histogram/summary count; 1 for number points
    ("monotonic", pa.bool_()),
    ("temporality", pa.int8()),            # AggregationTemporality; 0 where not applicable
    ("attributes", pa.string()),           # JSON object
    ("detail", pa.string()),               # JSON: buckets, bounds, quantiles ("{}" for numbers)
])

#: One row per log record.
LOG_FIELDS = pa.schema([
    ("service", pa.string()),
    ("scope", pa.string()),
    ("time_ns", pa.int64()),
    ("observed_time_ns", pa.int64()),
    ("severity_number", pa.int8()),
    ("severity_text", pa.string()),
    ("body", pa.string()),                 # a string body as is; anything else as JSON
    ("event_name", pa.string()),
    ("trace_id", pa.string()),             # "" when absent
    ("span_id", pa.string()),
    ("attributes", pa.string()),           # JSON object
    ("resource_attributes", pa.string()),
])


def empty_columns(schema: pa.Schema) -> Columns:
    """Zero-row columns of a schema, with the numpy dtypes the stages use."""
    return {f.name: np.empty(0, dtype=numpy_dtype(f.type)) for f in schema}


def numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    if pa.types.is_string(arrow_type):
        return np.dtype(object)
    return np.dtype(arrow_type.to_pandas_dtype())


def to_table(columns: Columns, *schemas: pa.Schema) -> pa.Table:
    """An arrow table of ``columns`` in the order (and types) of ``schemas``; extra columns
    are kept after them."""
    fields = [f for schema in schemas for f in schema]
    names = [f.name for f in fields]
    arrays = [pa.array(columns[f.name], type=f.type) for f in fields]
    for name, values in columns.items():
        if name not in names:
            names.append(name)
            arrays.append(pa.array(values))
    return pa.Table.from_arrays(arrays, names=names)
