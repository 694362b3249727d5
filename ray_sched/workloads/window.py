"""Windowing, rescaling and reporting shared by every workload source.

A converter reads its log into a *base frame* (trace columns, arrivals starting
at 0 s, runtimes in seconds, file or topological order) and hands it to
:func:`finalize`, which applies, in this order:

1. ``load``: multiply every ``arrival_s`` by one factor so that the offered
   load on ``slots`` equals ``load`` (runtimes are kept: they are the measured
   service times);
2. ``time_scale``: multiply ``arrival_s``, ``runtime_s`` and ``deadline_s``
   alike (offered load is unchanged), to compress days into minutes;
3. :func:`ray_sched.trace.validate_frame`, so that nothing leaves a converter
   that the trace contract would reject.

Offered load, the one definition every source uses::

    offered_load = sum(runtime_s * cpu) / (slots * arrival_span_s)
    arrival_span_s = max(arrival_s) - min(arrival_s)

It is the share of the slots the trace would keep busy if its work were spread
evenly over the interval in which it arrives.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ray_sched.errors import ConfigError, ConvertError
from ray_sched.task import PARENT_SEPARATOR, RESERVED_COLUMNS
from ray_sched.trace import validate_frame

#: Separator between a task id and its copy index in repeated workloads ("id#2").
COPY_SEPARATOR = "#"
#: Feature column holding the copy index of a repeated workload (0-based).
COPY_FEATURE = "copy"
#: Copies of a repeated workload are laid out this many seconds apart before
#: ``load`` rescales them; any positive unit works since rescaling is linear.
UNIT_COPY_GAP_S = 1.0


@dataclass
class ConvertReport:
    """What a converter read, dropped, kept and rescaled. Times are seconds.

    ``n_read == n_dropped_nonpositive_runtime + n_outside_window + n_kept_base``
    always holds; ``n_kept`` (the rows written) is ``n_kept_base * repeat``.
    """

    source: str
    unit: str                                  # "jobs" (SWF) or "tasks" (workflows)
    n_read: int = 0
    n_dropped_nonpositive_runtime: int = 0     # runtime <= 0 or unknown: dropped, never clamped
    n_outside_window: int = 0
    n_kept_base: int = 0
    n_kept: int = 0
    window_start: int = 0                      # index among usable rows (after the drop)
    window_max: int | None = None              # None: to the end
    n_cpu_capped: int = 0                      # rows whose cpu was lowered to max_cpu
    max_cpu: float | None = None
    n_parent_links: int = 0                    # parent edges kept (count of "a;b" parts)
    n_parent_links_dropped: int = 0            # edges to dropped tasks, removed
    repeat: int = 1
    slots: int | None = None
    load: float | None = None                  # the load asked for
    arrival_factor: float = 1.0                # multiplied into arrival_s to reach `load`
    time_scale: float = 1.0                    # multiplied into arrival, runtime, deadline
    n_rows: int = 0
    span_s: float = 0.0                        # arrival span of the written trace
    mean_runtime_s: float = 0.0
    offered_load: float | None = None          # measured on the written trace, on `slots`
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for a person: rows kept, drops with reasons, factors, load, span."""
        parts = [f"{self.source}: read {self.n_read:,} {self.unit}"]
        parts.append(f"dropped {self.n_dropped_nonpositive_runtime:,} with runtime <= 0 "
                     f"or unknown")
        if self.n_outside_window:
            end = "end" if self.window_max is None else f"max {self.window_max:,}"
            parts.append(f"left {self.n_outside_window:,} outside the window "
                         f"(start {self.window_start:,}, {end})")
        kept = f"kept {self.n_kept_base:,}"
        if self.repeat > 1:
            kept += f" x {self.repeat} copies = {self.n_kept:,} rows"
        parts.append(kept)
        text = "; ".join(parts) + "."
        if self.n_parent_links or self.n_parent_links_dropped:
            text += (f" Parent links: {self.n_parent_links:,} kept, "
                     f"{self.n_parent_links_dropped:,} removed (they named dropped tasks).")
        if self.n_cpu_capped:
            text += f" cpu capped at {self.max_cpu:g} on {self.n_cpu_capped:,} rows."
        if self.load is not None:
            text += (f" Arrivals x {self.arrival_factor:.6g} to reach offered load "
                     f"{self.load:g} on {self.slots} slots.")
        if self.time_scale != 1.0:
            text += f" Time scale {self.time_scale:g} (arrival, runtime, deadline)."
        text += " " + describe(self.n_rows, self.mean_runtime_s, self.span_s,
                               self.offered_load, self.slots)
        for note in self.notes:
            text += f" {note}"
        return text


def describe(n_rows: int, mean_runtime_s: float, span_s: float, load: float | None,
             slots: int | None) -> str:
    """One sentence with the headline numbers of a trace."""
    text = f"Result: {n_rows:,} rows, mean runtime {mean_runtime_s:.4g} s, span {span_s:.4g} s"
    if load is not None:
        text += f", offered load {load:.3f} on {slots} slots"
    return text + "."


def describe_frame(frame: pd.DataFrame, slots: int | None) -> str:
    """:func:`describe` for a frame (offered load only when ``slots`` is given)."""
    load = offered_load(frame, slots) if slots else None
    return describe(len(frame), float(frame["runtime_s"].mean()), arrival_span_s(frame),
                    None if load is None or math.isinf(load) else load, slots)


# ----------------------------------------------------------------------------- parameters


def check_parameters(*, slots: int | None = None, load: float | None = None,
                     time_scale: float = 1.0, max_cpu: float | None = None,
                     start: int = 0, max_rows: int | None = None,
                     max_rows_name: str = "max_jobs", repeat: int = 1,
                     n: int | None = None) -> None:
    """Validate the workload parameters in one place.

    Raises:
        ConfigError: quoting the bad value and the accepted range.
    """
    def bad(name: str, value: object, accepted: str) -> ConfigError:
        return ConfigError(f"{name} must be {accepted}, got {value!r}")

    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    for name, value in (("slots", slots), (max_rows_name, max_rows), ("n", n)):
        if value is not None and not (is_int(value) and value >= 1):
            raise bad(name, value, "an integer >= 1")
    if not (is_int(start) and start >= 0):
        raise bad("start_job", start, "an integer >= 0")
    if not (is_int(repeat) and repeat >= 1):
        raise bad("repeat", repeat, "an integer >= 1")
    for name, value in (("load", load), ("max_cpu", max_cpu)):
        if value is not None and not (_is_real(value) and value > 0 and math.isfinite(value)):
            raise bad(name, value, "a finite number > 0")
    if not (_is_real(time_scale) and time_scale > 0 and math.isfinite(time_scale)):
        raise bad("time_scale", time_scale, "a finite number > 0")
    if load is not None and slots is None:
        raise ConfigError(f"load={load!r} needs slots: offered load is relative to a slot count")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- building blocks


def open_text(path: Path) -> IO[str]:
    """Open a text file, gunzipping when the name ends in ``.gz``."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def require_file(path: str | Path) -> Path:
    """The path as a Path; ConvertError when it is not a readable file."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    return path


def window_slice(n_usable: int, start: int, max_rows: int | None, source: str,
                 unit: str) -> slice:
    """The rows ``[start, start + max_rows)`` of ``n_usable`` ordered rows.

    Raises:
        ConfigError: the window starts past the last usable row.
    """
    if start >= n_usable:
        raise ConfigError(f"{source}: the window starts at {unit[:-1]} index {start}, but only "
                          f"{n_usable} usable {unit} exist (valid start: 0..{n_usable - 1})")
    stop = n_usable if max_rows is None else min(n_usable, start + max_rows)
    return slice(start, stop)


def cap_cpu(cpu: np.ndarray, max_cpu: float | None) -> tuple[np.ndarray, int]:
    """Lower cpu values above ``max_cpu`` to it (a task wider than the cluster never runs).

    Returns:
        (array of shape (n_rows,), slots; how many rows were lowered).
    """
    cpu = np.asarray(cpu, dtype=float)
    if max_cpu is None:
        return cpu, 0
    over = cpu > max_cpu
    return np.where(over, float(max_cpu), cpu), int(over.sum())


def arrival_span_s(frame: pd.DataFrame) -> float:
    """``max(arrival_s) - min(arrival_s)``, seconds (0 for one row or one arrival instant)."""
    arrivals = frame["arrival_s"].to_numpy(dtype=float)
    return float(arrivals.max() - arrivals.min()) if len(arrivals) else 0.0


def work_slot_s(frame: pd.DataFrame) -> float:
    """Total work, slot-seconds: ``sum(runtime_s * cpu)`` (cpu defaults to 1)."""
    runtime = frame["runtime_s"].to_numpy(dtype=float)
    cpu = (frame["cpu"].fillna(1.0).to_numpy(dtype=float) if "cpu" in frame.columns
           else np.ones_like(runtime))
    return float(np.sum(runtime * cpu))


def offered_load(frame: pd.DataFrame, slots: int) -> float:
    """Offered load of a trace on ``slots`` (see the module docstring); ``inf`` with no span."""
    span = arrival_span_s(frame)
    work = work_slot_s(frame)
    return math.inf if span <= 0 else work / (slots * span)


def rescale_to_load(frame: pd.DataFrame, slots: int, load: float, *,
                    hint: str = "") -> tuple[pd.DataFrame, float]:
    """Multiply ``arrival_s`` by one factor so that :func:`offered_load` equals ``load``.

    Runtimes are kept. Arrivals are first shifted so the earliest is 0 s.

    Returns:
        (a new frame; the factor applied to arrivals).

    Raises:
        ConfigError: every row arrives at the same instant, so no factor helps.
    """
    span = arrival_span_s(frame)
    if span <= 0:
        raise ConfigError(f"load={load!r} cannot be reached: all {len(frame)} rows arrive at "
                          f"the same instant, so there is no arrival span to stretch{hint}")
    factor = work_slot_s(frame) / (slots * span * load)
    out = frame.copy()
    arrivals = out["arrival_s"].to_numpy(dtype=float)
    out["arrival_s"] = (arrivals - arrivals.min()) * factor
    return out, factor


def apply_time_scale(frame: pd.DataFrame, time_scale: float) -> pd.DataFrame:
    """Multiply ``arrival_s``, ``runtime_s`` and ``deadline_s`` (when present) by ``time_scale``."""
    if time_scale == 1.0:
        return frame
    out = frame.copy()
    for column in ("arrival_s", "runtime_s", "deadline_s"):
        if column in out.columns:
            out[column] = out[column].astype(float) * time_scale
    return out


def repeat_frame(frame: pd.DataFrame, copies: int, gap_s: float) -> pd.DataFrame:
    """Concatenate ``copies`` of a workload, copy ``k`` shifted by ``k * gap_s`` seconds.

    Task ids (and the ids inside ``parent_id``) get the suffix ``#k``, so each
    copy keeps its own DAG; tenants are unchanged; the copy index is the
    feature ``copy``. ``copies == 1`` returns the frame unchanged.
    """
    if copies == 1:
        return frame
    pieces = []
    has_parents = "parent_id" in frame.columns
    for k in range(copies):
        piece = frame.copy()
        suffix = f"{COPY_SEPARATOR}{k}"
        piece["task_id"] = piece["task_id"].astype(str) + suffix
        if has_parents:
            piece["parent_id"] = _suffix_parents(piece["parent_id"], suffix)
        piece["arrival_s"] = piece["arrival_s"].astype(float) + k * gap_s
        piece[COPY_FEATURE] = k
        pieces.append(piece)
    return pd.concat(pieces, ignore_index=True)


def _suffix_parents(parents: pd.Series, suffix: str) -> pd.Series:
    """``"a;b"`` -> ``"a#k;b#k"``; missing stays missing (vectorised string ops)."""
    present = parents.notna() & (parents.astype(str) != "")
    out = parents.copy().astype(object)
    out[present] = (parents[present].astype(str)
                    .str.replace(PARENT_SEPARATOR, suffix + PARENT_SEPARATOR, regex=False)
                    + suffix)
    return out


def contract_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in the order of TRACE_FORMAT.md (required, then optional), features last."""
    reserved = [c for c in RESERVED_COLUMNS if c in frame.columns]
    return frame[reserved + [c for c in frame.columns if c not in RESERVED_COLUMNS]]


def finalize(frame: pd.DataFrame, report: ConvertReport, *, slots: int | None,
             load: float | None, time_scale: float, load_hint: str = "") -> pd.DataFrame:
    """Rescale to ``load``, apply ``time_scale``, validate, and fill the report's outcome fields.

    Args:
        frame: the base frame (arrivals from 0 s, runtimes in seconds).
        report: filled in place with the factors and the measured result.
        slots: slot count for ``load`` and for the measured offered load.
        load: target offered load, or None to keep the arrivals.
        time_scale: factor for arrival, runtime and deadline (> 0).
        load_hint: appended to the error when ``load`` cannot be reached.

    Returns:
        The validated frame.
    """
    report.slots, report.load, report.time_scale = slots, load, time_scale
    if load is not None:
        frame, report.arrival_factor = rescale_to_load(frame, slots, load, hint=load_hint)
    frame = apply_time_scale(frame, time_scale)
    frame = validate_frame(contract_order(frame), source=report.source)
    report.n_rows = report.n_kept = len(frame)
    report.span_s = arrival_span_s(frame)
    report.mean_runtime_s = float(frame["runtime_s"].mean())
    if slots is not None:
        measured = offered_load(frame, slots)
        report.offered_load = None if math.isinf(measured) else measured
    return frame
