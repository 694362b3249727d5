"""Per-task results and the run summary (TRACE_FORMAT.md, sections 2 and 3).

One row per task goes to ``OUT/tasks.parquet``; one object to ``OUT/summary.json``.
Both carry :data:`SCHEMA_VERSION`; :func:`read_results` refuses any other.

Definitions used by :func:`summarize` (times in seconds, "ok" means ``status == "ok"``):

- **JCT** (job completion time) = ``finish_s - arrival_s``, over ok tasks.
  ``jct_mean_s``, ``jct_p50_s``, ``jct_p95_s``, ``jct_p99_s``, ``jct_max_s``; percentiles
  use numpy's default (linear interpolation).
- **makespan_s** = ``max(finish_s) - min(arrival_s)`` over every task that has a
  ``finish_s`` (ok or failed); 0 when none has.
- **slowdown** = JCT / runtime, where runtime is ``runtime_s`` (the true service time,
  after time scaling) when present and > 0, else ``measured_runtime_s``; tasks whose
  runtime is neither are left out. ``slowdown_mean`` and ``slowdown_p95`` over ok tasks.
- **deadline_miss_rate** = misses / ``deadline_tasks``. A task has a deadline when
  ``deadline_s`` is set or ``deadline_met`` holds a verdict; it misses unless it is ok
  *and* ``deadline_met`` is True (so a failed task with a deadline is a miss). None
  when no task has a deadline. :func:`deadline_met` computes the column.
- **throughput_tps** = ``n_ok / makespan_s``; None when the makespan is 0.
- **utilization** = ``sum(measured_runtime_s * cpu)`` over ok tasks /
  (``slots * makespan_s``); ``cpu`` defaults to 1; None when the makespan is 0.
- **jain_fairness_tenants** = Jain's index ``(sum x)^2 / (n * sum x^2)`` where ``x`` is
  each tenant's mean slowdown over its ok tasks and ``n`` the number of such tenants
  (``tenant`` defaults to ``"default"``). 1.0 with one tenant, None with no ok task.
- **prediction_mae_s** = mean ``|predicted_runtime_s - measured_runtime_s|`` over ok rows
  with a prediction; **prediction_mape** = mean ``|pred - meas| / meas`` over those rows
  with ``meas > 0``. None when there are no such rows (policies that predict nothing).
- **sched_overhead_ms_mean** (and ``_p99``) = ``(placed_s - arrival_s) * 1000`` over rows
  with a ``placed_s`` (ok or failed); None when no row has one. For a task that waited
  for its parents, from ``ready_s`` (when its last parent finished) instead, when the
  results have that column: the wait for parents is not scheduling overhead.

Every value is kept at full precision; a value that cannot be computed is None, never
NaN, so ``summary.json`` is strict JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_sched.errors import ConfigError, ResultsError
from ray_sched.task import DEFAULT_KIND, DEFAULT_TENANT

#: Version of the tasks.parquet / summary.json layout written here; bump on any change
#: a reader must know about (readers refuse versions they do not know).
SCHEMA_VERSION = 1
#: Parquet key-value metadata key holding :data:`SCHEMA_VERSION`.
SCHEMA_METADATA_KEY = b"ray_sched.schema_version"

TASKS_FILE = "tasks.parquet"
TASKS_CSV_FILE = "tasks.csv"
SUMMARY_FILE = "summary.json"

#: The contract's per-task columns, in order (TRACE_FORMAT.md section 2).
RESULT_COLUMNS = (
    "task_id", "policy", "worker", "node", "arrival_s", "start_s", "finish_s",
    "predicted_runtime_s", "measured_runtime_s", "deadline_met", "attempts", "status",
    "error",
)
#: Columns the replay adds after the contract ones (see :func:`validate_results`).
EXTRA_COLUMNS = ("runtime_s", "kind", "tenant", "region", "priority", "cpu", "deadline_s",
                 "placed_s")
#: The contract's summary fields, in order (TRACE_FORMAT.md section 3).
SUMMARY_FIELDS = (
    "policy", "n_tasks", "n_ok", "n_failed", "makespan_s", "jct_mean_s", "jct_p50_s",
    "jct_p95_s", "jct_p99_s", "slowdown_mean", "deadline_miss_rate", "throughput_tps",
    "utilization", "jain_fairness_tenants", "prediction_mae_s", "prediction_mape",
    "sched_overhead_ms_mean",
)
STATUSES = ("ok", "failed")

_STRING_COLUMNS = ("task_id", "policy", "worker", "node", "status", "error", "kind", "tenant",
                   "region")
_FLOAT_COLUMNS = ("arrival_s", "start_s", "finish_s", "predicted_runtime_s",
                  "measured_runtime_s", "runtime_s", "deadline_s", "placed_s", "cpu")
# A missing extra column (or an empty cell in one) means the trace contract's default.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "runtime_s": np.nan, "kind": DEFAULT_KIND, "tenant": DEFAULT_TENANT, "region": pd.NA,
    "priority": 0, "cpu": 1.0, "deadline_s": np.nan, "placed_s": np.nan,
}
# Empty cells of these mean the default too; an empty runtime_s/deadline_s/placed_s is "none".
_FILLED_EXTRAS = ("kind", "tenant", "priority", "cpu")
# An ok task must say when it ran: without these its JCT and busy time are unknown.
_REQUIRED_WHEN_OK = ("start_s", "finish_s", "measured_runtime_s")

#: Columns of :func:`comparison_table` / :func:`markdown_table`; ``"ok"`` is n_ok/n_tasks.
TABLE_FIELDS = (
    "ok", "jct_mean_s", "jct_p50_s", "jct_p95_s", "jct_p99_s", "slowdown_mean",
    "deadline_miss_rate", "utilization", "jain_fairness_tenants", "sched_overhead_ms_mean",
)
_SHORT_HEADERS = {"jain_fairness_tenants": "jain"}
_MISSING_CELL = "-"


def _fail(source: str, message: str, *, row: int | None = None,
          column: str | None = None) -> ResultsError:
    """The error for a results frame or file that breaks the contract (one place to change)."""
    return ResultsError(str(source), message, row=row, column=column)


# ---------------------------------------------------------------------------- deadline_met


def _floats(values: Any) -> np.ndarray:
    """Scalars or array-likes (None / NaN / pd.NA for missing) as a float ndarray."""
    if np.ndim(values) == 0:
        return np.array(np.nan if values is None or pd.isna(values) else float(values))
    return pd.array(list(values) if not hasattr(values, "dtype") else values,
                    dtype="Float64").to_numpy(dtype=float, na_value=np.nan)


def deadline_met(arrival_s: Any, finish_s: Any, deadline_s: Any, *, ok: Any = True) -> Any:
    """Whether a task finished by ``arrival_s + deadline_s`` (the ``deadline_met`` column).

    Works on scalars or on equal-length array-likes (numpy broadcasting).

    Args:
        arrival_s: arrival time(s), seconds since the replay's start.
        finish_s: finish time(s); missing (None/NaN) means the task never finished.
        deadline_s: relative deadline(s), seconds; missing means no deadline.
        ok: whether the task succeeded; a failed task never meets its deadline.

    Returns:
        For scalars: True, False, or ``pd.NA`` when there is no deadline. Otherwise a
        nullable-boolean array (a Series, on the first Series argument's index, when any
        argument is a Series).

    Example:
        >>> deadline_met(1.0, 3.0, 2.5)
        True
        >>> deadline_met(1.0, 4.0, 2.5), deadline_met(1.0, 2.0, None)
        (False, <NA>)
    """
    arguments = (arrival_s, finish_s, deadline_s, ok)
    arrival, finish, deadline = (_floats(v) for v in arguments[:3])
    succeeded = np.asarray(ok, dtype=bool) if np.ndim(ok) else np.array(bool(ok))
    arrival, finish, deadline, succeeded = np.broadcast_arrays(arrival, finish, deadline,
                                                               succeeded)
    has_deadline = ~np.isnan(deadline)
    met = succeeded & ~np.isnan(finish) & (finish <= arrival + deadline)
    if all(np.ndim(v) == 0 for v in arguments):
        return bool(met) if has_deadline else pd.NA
    verdicts = pd.arrays.BooleanArray(met & has_deadline, ~has_deadline)
    index = next((v.index for v in arguments if isinstance(v, pd.Series)), None)
    return verdicts if index is None else pd.Series(verdicts, index=index, name="deadline_met")


# ------------------------------------------------------------------------------ validation


def _string_column(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype("string")


def _float_column(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = values.isna() & raw.notna()
    if bad.any():
        position = int(np.argmax(bad.to_numpy()))
        raise _fail(source, f"not a number (got {raw.iloc[position]!r})",
                    row=position + 1, column=column)
    return values


def _int_column(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = _float_column(frame, column, source)
    bad = values.isna() | (values != np.floor(values)) | (values < 0)
    if bad.any():
        position = int(np.argmax(bad.to_numpy()))
        raise _fail(source, f"must be an integer >= 0 (got {frame[column].iloc[position]!r})",
                    row=position + 1, column=column)
    return values.astype("int64")


def validate_results(results: pd.DataFrame, *, source: str = "<results>") -> pd.DataFrame:
    """Check a per-task results frame against the contract and return a normalised copy.

    Normalised: columns :data:`RESULT_COLUMNS`, then :data:`EXTRA_COLUMNS` (a missing one
    is added with its default: NaN times, ``kind``/``tenant`` ``"default"``, ``priority``
    0, ``cpu`` 1), then any other column as given. Ids, names, status and error are
    ``string`` (``error`` is ``""`` when there is none); times and ``cpu`` float64;
    ``deadline_met`` nullable ``boolean``; ``attempts`` and ``priority`` int64. The
    input is not modified.

    Raises:
        ResultsError: a missing contract column, an empty or duplicate ``task_id`` (the
            message names the id and both rows), a status other than ok/failed, more than
            one policy, a non-numeric time, a bad ``attempts``, or an ok task without
            ``start_s``/``finish_s``/``measured_runtime_s``.
    """
    if not isinstance(results, pd.DataFrame):
        raise _fail(source, f"expected a pandas DataFrame, got {type(results).__name__}")
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise _fail(source, f"missing result column(s) {missing}; found "
                            f"{list(results.columns)}", column=missing[0])
    frame = results.reset_index(drop=True).copy()
    for column, default in _EXTRA_DEFAULTS.items():
        if column not in frame.columns:
            frame[column] = default
        elif column in _FILLED_EXTRAS:
            values = frame[column].astype(object)  # a categorical may lack the default
            frame[column] = values.where(values.notna(), default)
    for column in _STRING_COLUMNS:
        frame[column] = _string_column(frame, column)
    for column in _FLOAT_COLUMNS:
        frame[column] = _float_column(frame, column, source)
    frame["error"] = frame["error"].fillna("")
    for column in ("attempts", "priority"):
        frame[column] = _int_column(frame, column, source)
    try:
        frame["deadline_met"] = frame["deadline_met"].astype("boolean")
    except (TypeError, ValueError) as error:
        raise _fail(source, f"not a boolean: {error}", column="deadline_met") from error

    ids = frame["task_id"]
    empty = (ids.isna() | (ids.str.strip() == "")).to_numpy(dtype=bool, na_value=True)
    if empty.any():
        raise _fail(source, "empty task_id", row=int(np.argmax(empty)) + 1, column="task_id")
    duplicated = ids.duplicated(keep="first").to_numpy()
    if duplicated.any():
        position = int(np.argmax(duplicated))
        first = int(np.argmax((ids == ids.iloc[position]).to_numpy()))
        raise _fail(source, f"duplicate task_id {ids.iloc[position]!r} (first seen at row "
                            f"{first + 1}); each task must appear exactly once",
                    row=position + 1, column="task_id")
    bad_status = (~frame["status"].isin(STATUSES)).to_numpy(dtype=bool, na_value=True)
    if bad_status.any():
        position = int(np.argmax(bad_status))
        raise _fail(source, f"status must be one of {list(STATUSES)} (got "
                            f"{frame['status'].iloc[position]!r} for task "
                            f"{ids.iloc[position]!r})", row=position + 1, column="status")
    policies = frame["policy"].dropna().unique().tolist()
    if frame["policy"].isna().any() or len(policies) > 1:
        raise _fail(source, f"every row must name the same policy (got {policies}"
                            f"{' and empty ones' if frame['policy'].isna().any() else ''})",
                    column="policy")
    _first_missing(frame, source, ("arrival_s",), np.ones(len(frame), dtype=bool))
    _first_missing(frame, source, _REQUIRED_WHEN_OK, (frame["status"] == "ok").to_numpy())
    ordered = list(RESULT_COLUMNS) + list(EXTRA_COLUMNS)
    return frame[ordered + [c for c in frame.columns if c not in ordered]]


def _first_missing(frame: pd.DataFrame, source: str, columns: Sequence[str],
                   rows: np.ndarray) -> None:
    for column in columns:
        bad = rows & frame[column].isna().to_numpy()
        if bad.any():
            position = int(np.argmax(bad))
            raise _fail(source, f"missing value for task {frame['task_id'].iloc[position]!r} "
                                f"(status {frame['status'].iloc[position]!r})",
                        row=position + 1, column=column)


# ------------------------------------------------------------------------------- summarize


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _jain(per_tenant: np.ndarray) -> float | None:
    if not len(per_tenant):
        return None
    squares = float(np.sum(per_tenant ** 2))
    if squares == 0.0:  # every tenant at slowdown 0: perfectly equal
        return 1.0
    return float(np.sum(per_tenant)) ** 2 / (len(per_tenant) * squares)


def summarize(results: pd.DataFrame, *, policy: str, slots: int) -> dict[str, Any]:
    """The run summary (``summary.json``) of a per-task results frame.

    Args:
        results: one row per task (see :func:`validate_results`); frame of shape
            (n_tasks, >= 13), times in seconds since the replay's start.
        policy: the policy name; every row's ``policy`` must equal it.
        slots: total concurrent task slots of the run (> 0), for ``utilization``.

    Returns:
        :data:`SUMMARY_FIELDS` in contract order (definitions in the module docstring),
        then ``schema_version``, ``slots``, ``jct_max_s``, ``slowdown_p95``,
        ``deadline_tasks``, ``n_tenants``, ``n_predicted``, ``n_retried`` and
        ``sched_overhead_ms_p99``. Floats at full precision; None where undefined.

    Raises:
        ConfigError: ``slots`` is not a positive integer.
        ResultsError: the frame breaks the contract, or names another policy.

    Example:
        >>> summary = summarize(results, policy="learned", slots=8)  # doctest: +SKIP
        >>> summary["jct_p95_s"]  # doctest: +SKIP
    """
    if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots <= 0:
        raise ConfigError(f"slots must be a positive integer, got {slots!r}")
    frame = validate_results(results)
    named = frame["policy"].unique().tolist()
    if named and named != [policy]:
        raise _fail("<results>", f"rows name policy {named[0]!r} but the summary is for "
                                 f"{policy!r}", column="policy")

    ok = (frame["status"] == "ok").to_numpy()
    n_ok = int(ok.sum())
    arrival = frame["arrival_s"].to_numpy()
    finish = frame["finish_s"].to_numpy()
    finished = ~np.isnan(finish)
    makespan = float(finish[finished].max() - arrival[finished].min()) if finished.any() \
        else 0.0

    jct = finish[ok] - arrival[ok]
    runtime = frame["runtime_s"].to_numpy()
    measured = frame["measured_runtime_s"].to_numpy()
    denominator = np.where(runtime > 0, runtime, measured)[ok]
    has_slowdown = denominator > 0  # NaN compares False: no runtime known at all
    slowdown = jct[has_slowdown] / denominator[has_slowdown]
    tenants = frame["tenant"].to_numpy(dtype=object)[ok][has_slowdown]
    per_tenant = (pd.Series(slowdown).groupby(tenants, sort=True).mean().to_numpy()
                  if len(slowdown) else np.array([]))

    has_deadline = (frame["deadline_s"].notna() | frame["deadline_met"].notna()).to_numpy()
    met = frame["deadline_met"].to_numpy(dtype=bool, na_value=False) & ok
    deadline_tasks = int(has_deadline.sum())
    misses = int((has_deadline & ~met).sum())

    predicted = frame["predicted_runtime_s"].to_numpy()
    with_prediction = ok & ~np.isnan(predicted) & ~np.isnan(measured)
    error = np.abs(predicted - measured)[with_prediction]
    relative = with_prediction & (measured > 0)
    relative_error = np.abs(predicted - measured)[relative] / measured[relative]

    placed = frame["placed_s"].to_numpy()
    # A task held for its parents is placed when the last of them finishes: its overhead
    # counts from then (``ready_s``, when the results carry it), not from its arrival.
    ready = (np.fmax(arrival, pd.to_numeric(frame["ready_s"], errors="coerce").to_numpy())
             if "ready_s" in frame.columns else arrival)
    overhead_ms = (placed - ready)[~np.isnan(placed)] * 1000.0
    busy_slot_s = float(np.sum(measured[ok] * frame["cpu"].to_numpy()[ok]))

    return {
        "policy": policy,
        "n_tasks": len(frame),
        "n_ok": n_ok,
        "n_failed": int(len(frame) - n_ok),
        "makespan_s": makespan,
        "jct_mean_s": _mean(jct),
        "jct_p50_s": _percentile(jct, 50),
        "jct_p95_s": _percentile(jct, 95),
        "jct_p99_s": _percentile(jct, 99),
        "slowdown_mean": _mean(slowdown),
        "deadline_miss_rate": misses / deadline_tasks if deadline_tasks else None,
        "throughput_tps": n_ok / makespan if makespan > 0 else None,
        "utilization": busy_slot_s / (int(slots) * makespan) if makespan > 0 else None,
        "jain_fairness_tenants": _jain(per_tenant),
        "prediction_mae_s": _mean(error),
        "prediction_mape": _mean(relative_error),
        "sched_overhead_ms_mean": _mean(overhead_ms),
        "schema_version": SCHEMA_VERSION,
        "slots": int(slots),
        "jct_max_s": float(jct.max()) if len(jct) else None,
        "slowdown_p95": _percentile(slowdown, 95),
        "deadline_tasks": deadline_tasks,
        "n_tenants": int(frame["tenant"].nunique()),
        "n_predicted": int(with_prediction.sum()),
        "n_retried": int((frame["attempts"] > 1).sum()),
        "sched_overhead_ms_p99": _percentile(overhead_ms, 99),
    }


# ---------------------------------------------------------------------------- write / read


def _json_value(value: Any) -> Any:
    """numpy scalars as Python ones; NaN, infinities and pd.NA as None."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _ordered_summary(summary: dict[str, Any], source: str) -> dict[str, Any]:
    missing = [f for f in SUMMARY_FIELDS if f not in summary]
    if missing:
        raise _fail(source, f"summary lacks field(s) {missing}")
    version = summary.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _fail(source, f"summary has schema_version {version!r}; this version of "
                            f"ray_sched writes {SCHEMA_VERSION}")
    ordered = {f: summary[f] for f in SUMMARY_FIELDS}
    ordered["schema_version"] = SCHEMA_VERSION
    ordered.update((k, v) for k, v in summary.items() if k not in ordered)
    return _json_value(ordered)


def _replace_atomically(path: Path, write: Any) -> None:
    # A crash mid-write must not leave a truncated file under the final name.
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def write_results(out_dir: str | Path, results: pd.DataFrame, summary: dict[str, Any], *,
                  csv: bool = False) -> dict[str, Path]:
    """Validate and write ``tasks.parquet``, ``summary.json`` and optionally ``tasks.csv``.

    Args:
        out_dir: the run's output folder; created when missing.
        results: the per-task frame (normalised by :func:`validate_results` on the way).
        summary: the output of :func:`summarize`; contract fields go first, then the rest.
        csv: also write ``tasks.csv`` (same columns; empty cells for missing values).

    Returns:
        The paths written, keyed by file name (``"tasks.parquet"``, ``"summary.json"``,
        and ``"tasks.csv"`` when asked).

    Raises:
        ResultsError: the frame breaks the contract (nothing is written), the summary
            lacks a contract field, or the two name different policies.

    Example:
        >>> write_results("out/run1", results, summarize(results, policy="fifo", slots=4))
        ... # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    frame = validate_results(results, source=str(out_dir / TASKS_FILE))
    document = _ordered_summary(summary, str(out_dir / SUMMARY_FILE))
    named = frame["policy"].unique().tolist()
    if named and named != [document["policy"]]:
        raise _fail(str(out_dir), f"results name policy {named[0]!r} but the summary is for "
                                  f"{document['policy']!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {TASKS_FILE: out_dir / TASKS_FILE, SUMMARY_FILE: out_dir / SUMMARY_FILE}

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}),
                SCHEMA_METADATA_KEY: str(SCHEMA_VERSION).encode()}
    table = table.replace_schema_metadata(metadata)
    _replace_atomically(written[TASKS_FILE], lambda p: pq.write_table(table, p))
    if csv:
        written[TASKS_CSV_FILE] = out_dir / TASKS_CSV_FILE
        _replace_atomically(written[TASKS_CSV_FILE], lambda p: frame.to_csv(p, index=False))
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    _replace_atomically(written[SUMMARY_FILE], lambda p: p.write_text(text, encoding="utf-8"))
    return written


def _check_version(found: Any, source: Path) -> None:
    if found != SCHEMA_VERSION:
        shown = "no schema_version" if found is None else f"schema_version {found!r}"
        raise _fail(str(source), f"has {shown}; this version of ray_sched reads "
                                 f"schema_version {SCHEMA_VERSION} only (written by a newer "
                                 f"ray_sched, or by another tool?)")


def read_results(out_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back what :func:`write_results` wrote.

    Args:
        out_dir: a run's output folder holding ``tasks.parquet`` and ``summary.json``.

    Returns:
        ``(results, summary)``: the frame normalised as by :func:`validate_results`, and
        the summary dict in file order.

    Raises:
        ResultsError: a file is missing or unreadable, or carries a schema version
            other than :data:`SCHEMA_VERSION` (the message names the file, the version
            found and the one supported).
    """
    out_dir = Path(out_dir)
    tasks_path, summary_path = out_dir / TASKS_FILE, out_dir / SUMMARY_FILE
    for path in (tasks_path, summary_path):
        if not path.is_file():
            raise _fail(str(path), "no such file; expected the output of a replay or "
                                   "simulate run (tasks.parquet and summary.json)")
    try:
        table = pq.read_table(tasks_path)
    except (OSError, pa.ArrowException) as error:
        raise _fail(str(tasks_path), f"cannot be read as parquet: {error}") from error
    raw_version = (table.schema.metadata or {}).get(SCHEMA_METADATA_KEY)
    try:
        found = None if raw_version is None else int(raw_version.decode())
    except (UnicodeDecodeError, ValueError):
        found = raw_version.decode(errors="replace")
    _check_version(found, tasks_path)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(str(summary_path), f"cannot be read as JSON: {error}") from error
    if not isinstance(summary, dict):
        raise _fail(str(summary_path), f"expected a JSON object, got {type(summary).__name__}")
    _check_version(summary.get("schema_version"), summary_path)
    return validate_results(table.to_pandas(), source=str(tasks_path)), summary


# ---------------------------------------------------------------------------------- tables


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return _MISSING_CELL
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def _ratio(value: Any, reference: Any) -> str:
    if value is None or reference is None or not reference or not math.isfinite(reference):
        return _MISSING_CELL
    return f"{value / reference:.2f}x"


def _table_rows(summaries: Sequence[dict[str, Any]], baseline: str | None,
                fields: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cell text shared by both table renderers (policy is always the first)."""
    known = {"ok"}.union(*(s.keys() for s in summaries)) if summaries else set(fields)
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ConfigError(f"unknown table field(s) {unknown}; summaries have "
                          f"{sorted(known - {'ok'})} and 'ok' (n_ok/n_tasks)")
    matches = [s for s in summaries if s.get("policy") == baseline] if baseline else []
    if len(matches) > 1:
        raise ConfigError(f"baseline {baseline!r} appears {len(matches)} times; "
                          f"compare one run per policy")
    header = ["policy"] + [_SHORT_HEADERS.get(f, f) for f in fields]
    if matches:
        header.append(f"jct_mean_vs_{baseline}")
    rows = []
    for summary in summaries:
        row = [str(summary.get("policy", _MISSING_CELL))]
        for field in fields:
            if field == "ok":
                row.append(f"{_cell(summary.get('n_ok'))}/{_cell(summary.get('n_tasks'))}")
            else:
                row.append(_cell(summary.get(field)))
        if matches:
            row.append(_ratio(summary.get("jct_mean_s"), matches[0].get("jct_mean_s")))
        rows.append(row)
    return header, rows


def comparison_table(summaries: Sequence[dict[str, Any]], *,
                     baseline: str | None = "ray-default",
                     fields: Sequence[str] = TABLE_FIELDS) -> str:
    """A fixed-width plain-text table of summaries, one row per policy.

    Args:
        summaries: outputs of :func:`summarize` (or dicts read from ``summary.json``).
        baseline: a policy name; when one summary has it, a column
            ``jct_mean_vs_<baseline>`` shows each ``jct_mean_s`` over the baseline's
            (``0.83x`` = 17% lower). None for no such column.
        fields: summary keys to show after ``policy``; ``"ok"`` shows ``n_ok/n_tasks``.

    Returns:
        The table, lines joined by newlines (no trailing newline); missing values ``-``,
        floats with 3 decimals.

    Raises:
        ConfigError: a field no summary has, or the baseline appearing more than once.

    Example:
        >>> print(comparison_table([s_default, s_learned]))  # doctest: +SKIP
    """
    header, rows = _table_rows(summaries, baseline, fields)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Policy names read left to right; numbers line up on the right.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(summaries: Sequence[dict[str, Any]], *,
                   baseline: str | None = "ray-default",
                   fields: Sequence[str] = TABLE_FIELDS) -> str:
    """The same table as :func:`comparison_table`, as GitHub markdown (numbers right-aligned).

    Raises:
        ConfigError: as :func:`comparison_table`.
    """
    header, rows = _table_rows(summaries, baseline, fields)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])
