"""Parallel Workloads Archive logs (Standard Workload Format) to task traces.

SWF: ``;`` lines are the header; every data line holds 18 whitespace-separated
numbers, -1 meaning unknown (see ``shared/data/traces/SOURCES.md``). The
mapping onto the trace contract:

=============  ==========================================================
trace column   from the SWF job
=============  ==========================================================
task_id        ``str(job)``
arrival_s      ``submit - min(submit)`` over the window, seconds
runtime_s      ``run``, seconds; ``run <= 0`` or unknown is dropped and counted
tenant         ``"u<user>"``
kind           ``"app<app>"`` (unknown app: the contract's default kind)
region         ``"p<partition>"``, only when the log records partitions
cpu            ``alloc_procs`` (``req_procs`` when unknown), capped at ``max_cpu``
group          feature, ``"g<group>"`` (a category), when the log records groups
queue          feature, ``"q<queue>"``, when the log records queues
req_time_s     feature, the user's runtime estimate, when the log records it
procs          feature, the processor count before capping
=============  ==========================================================
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ray_sched.errors import ConvertError
from ray_sched.workloads.window import (
    ConvertReport,
    cap_cpu,
    check_parameters,
    finalize,
    open_text,
    require_file,
    window_slice,
)

#: The 18 SWF fields, in file order, named with their units.
SWF_COLUMNS = (
    "job", "submit_s", "wait_s", "run_s", "alloc_procs", "avg_cpu_s", "used_mem_kb",
    "req_procs", "req_time_s", "req_mem_kb", "status", "user", "group", "app", "queue",
    "partition", "prev_job", "think_s",
)
#: SWF writes -1 (any negative value) for a field the log does not know.
UNKNOWN = -1
#: Header and comment lines start with this character.
COMMENT = ";"


def convert_swf(path: str | Path, *, start_job: int = 0, max_jobs: int | None = None,
                slots: int | None = None, load: float | None = None,
                max_cpu: float | None = None,
                time_scale: float = 1.0) -> tuple[pd.DataFrame, ConvertReport]:
    """Read an SWF log (``.swf`` or ``.swf.gz``) into a validated task-trace frame.

    Args:
        path: the log file; gzip is chosen by the ``.gz`` suffix.
        start_job: index of the first job of the window, counted among *usable*
            jobs (those with ``run > 0``), in file order.
        max_jobs: at most this many usable jobs from ``start_job`` (None: to the end).
        slots: the slot count the trace is meant for; the default ``max_cpu`` and
            the measured offered load refer to it.
        load: target offered load on ``slots`` (needs ``slots``); arrivals, not
            runtimes, are stretched or compressed to reach it.
        max_cpu: cap on ``cpu`` (default: ``slots``; no cap when both are None).
        time_scale: multiplies arrival and runtime after the load rescaling.

    Returns:
        (frame of shape (n_kept, n_columns), sorted by ``arrival_s``; the report).

    Raises:
        ConvertError: the file is missing, unreadable, or a data line is
            truncated, too long or non-numeric (the message names file and line).
        ConfigError: a parameter out of range, or a window past the last job.

    Example:
        >>> frame, report = convert_swf("NASA-iPSC-1993-3.1-cln.swf.gz", max_jobs=500,
        ...                             slots=8, load=0.85)  # doctest: +SKIP
        >>> print(report.summary())  # doctest: +SKIP
    """
    check_parameters(slots=slots, load=load, time_scale=time_scale, max_cpu=max_cpu,
                     start=start_job, max_rows=max_jobs)
    path = require_file(path)
    jobs = read_swf(path)
    report = ConvertReport(source=str(path), unit="jobs", n_read=len(jobs),
                           window_start=start_job, window_max=max_jobs)

    usable = jobs["run_s"].to_numpy() > 0
    report.n_dropped_nonpositive_runtime = int((~usable).sum())
    usable_jobs = jobs[usable]
    window = usable_jobs.iloc[window_slice(len(usable_jobs), start_job, max_jobs, str(path),
                                           "jobs")]
    report.n_kept_base = len(window)
    report.n_outside_window = len(usable_jobs) - len(window)

    report.max_cpu = slots if max_cpu is None else max_cpu
    frame = _to_trace_columns(window, has_known=_known_columns(jobs))
    frame["cpu"], report.n_cpu_capped = cap_cpu(frame["cpu"].to_numpy(), report.max_cpu)
    frame = frame.sort_values("arrival_s", kind="stable", ignore_index=True)
    frame = finalize(frame, report, slots=slots, load=load, time_scale=time_scale)
    return frame, report


def read_swf(path: Path) -> pd.DataFrame:
    """All data lines of an SWF log as floats, one column per field of :data:`SWF_COLUMNS`.

    Raises:
        ConvertError: unreadable file, no data lines, a line without exactly 18
            fields or with a non-numeric field, a negative submit time, or a
            duplicate job number; naming the file and the 1-based line.
    """
    try:
        raw = pd.read_csv(path, sep=r"\s+", comment=COMMENT, header=None,
                          names=list(SWF_COLUMNS), index_col=False)
    except pd.errors.ParserError:
        raise _bad_line_error(path, None) from None
    except pd.errors.EmptyDataError:
        raise ConvertError(f"{path}: no SWF data lines (only header or empty)") from None
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
        raise ConvertError(f"{path}: cannot be read as SWF: {error}") from error
    if raw.empty:
        raise ConvertError(f"{path}: no SWF data lines (only header or empty)")

    jobs = raw.apply(pd.to_numeric, errors="coerce").astype(float)
    bad_rows = jobs.isna().any(axis=1).to_numpy()
    if bad_rows.any():
        raise _bad_line_error(path, int(np.argmax(bad_rows)))
    negative_submit = jobs["submit_s"].to_numpy() < 0
    if negative_submit.any():
        row = int(np.argmax(negative_submit))
        raise ConvertError(f"{path}, line {_line_of_row(path, row)}: submit time "
                           f"{jobs['submit_s'].iloc[row]:g} is unknown or negative; "
                           f"SWF requires it")
    job = jobs["job"].to_numpy()
    not_integral = job != np.floor(job)
    if not_integral.any():
        row = int(np.argmax(not_integral))
        raise ConvertError(f"{path}, line {_line_of_row(path, row)}: job number "
                           f"{job[row]!r} is not an integer")
    duplicated = jobs["job"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        raise ConvertError(f"{path}, line {_line_of_row(path, row)}: duplicate job number "
                           f"{int(job[row])}")
    return jobs


def _known_columns(jobs: pd.DataFrame) -> set[str]:
    """Fields the log records at all (not every value unknown); decided on the whole log so
    that every window of one log has the same columns."""
    return {c for c in SWF_COLUMNS if (jobs[c].to_numpy() > UNKNOWN).any()}


def _label(prefix: str, values: pd.Series) -> np.ndarray:
    """Integer ids as ``"<prefix><id>"``; unknown (negative) ids as None."""
    numbers = values.to_numpy()
    text = prefix + np.where(numbers >= 0, numbers, 0).astype(np.int64).astype(str).astype(object)
    return np.where(numbers >= 0, text, None)


def _to_trace_columns(window: pd.DataFrame, has_known: set[str]) -> pd.DataFrame:
    """Map the SWF fields of the window's jobs onto trace columns (no cap, no rescale)."""
    submit = window["submit_s"].to_numpy()
    alloc = window["alloc_procs"].to_numpy()
    requested = window["req_procs"].to_numpy()
    procs = np.where(alloc > 0, alloc, np.where(requested > 0, requested, np.nan))
    frame = pd.DataFrame({
        "task_id": window["job"].to_numpy().astype(np.int64).astype(str),
        "arrival_s": submit - submit.min(),
        "runtime_s": window["run_s"].to_numpy(),
        "kind": _label("app", window["app"]),
        "tenant": _label("u", window["user"]),
        # A job with no known processor count occupies one slot.
        "cpu": np.where(np.isnan(procs), 1.0, procs),
    })
    if "partition" in has_known:
        frame["region"] = _label("p", window["partition"])
    if "group" in has_known:
        frame["group"] = _label("g", window["group"])
    if "queue" in has_known:
        frame["queue"] = _label("q", window["queue"])
    if "req_time_s" in has_known:
        req_time = window["req_time_s"].to_numpy()
        frame["req_time_s"] = np.where(req_time > 0, req_time, np.nan)
    frame["procs"] = procs
    return frame


# ----------------------------------------------------------------------------- error location


def _data_lines(path: Path):
    """Yield (1-based file line number, fields) of each data line, as pandas sees them."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split(COMMENT, 1)[0].split()
            if fields:
                yield number, fields


def _line_of_row(path: Path, row: int) -> int:
    """File line number of the 0-based data row ``row``."""
    for index, (number, _) in enumerate(_data_lines(path)):
        if index == row:
            return number
    return -1


def _bad_line_error(path: Path, row: int | None) -> ConvertError:
    """Find the first malformed data line (at ``row`` when known) and say what is wrong."""
    for index, (number, fields) in enumerate(_data_lines(path)):
        if row is not None and index < row:
            continue
        if len(fields) != len(SWF_COLUMNS):
            how = "truncated" if len(fields) < len(SWF_COLUMNS) else "too long"
            return ConvertError(f"{path}, line {number}: {how} SWF line: {len(fields)} fields, "
                                f"expected {len(SWF_COLUMNS)}")
        for name, value in zip(SWF_COLUMNS, fields):
            try:
                finite = math.isfinite(float(value))
            except ValueError:
                finite = False
            if not finite:
                return ConvertError(f"{path}, line {number}: field '{name}' is not a number "
                                    f"(got {value!r})")
    return ConvertError(f"{path}: malformed SWF data (no single line to blame)")
