"""Reading, validating and writing task traces (TRACE_FORMAT.md, section 1).

Every check is vectorised over the frame; every walk over parent links is
iterative (Kahn's algorithm), so a chain 100,000 deep is as cheap as a flat trace.
Errors name the file, the 1-based data row and the column.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ray_sched.errors import TraceError
from ray_sched.task import (
    DEFAULT_KIND,
    DEFAULT_TENANT,
    MAX_PRIORITY,
    PARENT_SEPARATOR,
    REQUIRED_COLUMNS,
    RESERVED_COLUMNS,
    Task,
)

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".jsonl")
_ID_COLUMNS = ("task_id", "parent_id")
_STR_COLUMNS = ("kind", "tenant", "region")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise TraceError(str(path), f"unknown trace suffix; expected one of {', '.join(SUFFIXES)}")


def read_trace(path: str | Path) -> pd.DataFrame:
    """Read and validate a trace file, choosing the reader by suffix.

    Args:
        path: a ``.csv``, ``.csv.gz``, ``.parquet`` or ``.jsonl`` file.

    Returns:
        The validated frame (see :func:`validate_frame`), in file order.

    Raises:
        TraceError: the file is missing, unreadable, or breaks the contract; the
            message names the file, the row and the column.

    Example:
        >>> frame = read_trace("examples/mixed-300.csv")  # doctest: +SKIP
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise TraceError(str(path), "no such file")
    try:
        if suffix in (".csv", ".csv.gz"):
            frame = pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS + _STR_COLUMNS},
                                keep_default_na=True)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise TraceError(str(path), f"cannot be read as {suffix}: {error}") from error
    return validate_frame(frame, source=str(path))


def _id_text(series: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (1.0) become "1" so that parquet/json ids match."""
    if pd.api.types.is_float_dtype(series):
        as_int = series.dropna()
        if (as_int == np.floor(as_int)).all():
            return series.map(lambda v: None if pd.isna(v) else str(int(v)))
    if pd.api.types.is_integer_dtype(series):
        return series.astype(str)
    return series.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                      else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)))


def _first_bad(source: str, mask: np.ndarray | pd.Series, column: str, message: str,
               values: pd.Series | None = None) -> None:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        position = int(np.argmax(mask))
        count = int(mask.sum())
        shown = ""
        if values is not None:
            value = values.iloc[position]
            shown = f" (got {value.item() if isinstance(value, np.generic) else value!r})"
        more = f"; {count - 1} more row(s) like it" if count > 1 else ""
        raise TraceError(source, f"{message}{shown}{more}", row=position + 1, column=column)


def _numeric(frame: pd.DataFrame, source: str, column: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    _first_bad(source, values.isna() & raw.notna(), column, "not a number", raw)
    return values.astype(float)


def validate_frame(frame: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Check a trace frame against the contract and return a normalised copy.

    Normalised: ids are strings; ``arrival_s``/``runtime_s``/``deadline_s``/``cpu``
    floats; ``priority`` int (0 when absent); ``kind``/``tenant`` filled with
    ``"default"``. The input frame is not modified.

    Raises:
        TraceError: a missing required column, an empty or non-numeric value, a
            duplicate ``task_id``, ``runtime_s <= 0``, ``arrival_s < 0``, a priority
            outside 0..9, ``deadline_s``/``cpu`` <= 0, a ``parent_id`` naming no task,
            or a cycle among parents.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TraceError(source, f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TraceError(source, f"missing required column(s) {missing}; "
                                 f"found {list(frame.columns)}", column=missing[0])
    if len(frame) == 0:
        raise TraceError(source, "the trace has no tasks")
    frame = frame.reset_index(drop=True).copy()

    ids = _id_text(frame["task_id"])
    _first_bad(source, ids.isna() | (ids.str.strip() == ""), "task_id", "empty task_id")
    ids = ids.str.strip()
    duplicated = ids.duplicated(keep="first")
    if duplicated.any():
        position = int(np.argmax(duplicated.to_numpy()))
        first = int(np.argmax((ids == ids.iloc[position]).to_numpy()))
        raise TraceError(source, f"duplicate task_id {ids.iloc[position]!r} "
                                 f"(first seen at row {first + 1})",
                         row=position + 1, column="task_id")
    frame["task_id"] = ids

    for column in ("arrival_s", "runtime_s"):
        values = _numeric(frame, source, column)
        _first_bad(source, values.isna(), column, "empty value in a required column")
        _first_bad(source, ~np.isfinite(values), column, "not a finite number", frame[column])
        frame[column] = values
    _first_bad(source, frame["arrival_s"] < 0, "arrival_s", "arrival_s must be >= 0",
               frame["arrival_s"])
    _first_bad(source, frame["runtime_s"] <= 0, "runtime_s", "runtime_s must be > 0",
               frame["runtime_s"])

    if "priority" in frame.columns:
        values = _numeric(frame, source, "priority")
        bad = values.notna() & ((values != np.floor(values)) | (values < 0)
                                | (values > MAX_PRIORITY))
        _first_bad(source, bad, "priority", f"priority must be an integer 0..{MAX_PRIORITY}",
                   frame["priority"])
        # Nullable: an empty priority is "not declared" (the learner may predict one).
        frame["priority"] = values.astype("Int64")
    for column in ("deadline_s", "cpu"):
        if column in frame.columns:
            values = _numeric(frame, source, column)
            _first_bad(source, values.notna() & ~(values > 0), column,
                       f"{column} must be > 0", frame[column])
            _first_bad(source, values.notna() & ~np.isfinite(values), column,
                       "not a finite number", frame[column])
            frame[column] = values
    for column, default in (("kind", DEFAULT_KIND), ("tenant", DEFAULT_TENANT)):
        if column in frame.columns:
            frame[column] = frame[column].map(
                lambda v, d=default: d if v is None or (isinstance(v, float) and np.isnan(v))
                else str(v))
    if "region" in frame.columns:
        # object dtype, so that pandas keeps None (not NaN) for rows without a region
        frame["region"] = pd.Series(
            [None if _missing(v) else str(v) for v in frame["region"]], dtype=object,
            index=frame.index)
    if "parent_id" in frame.columns:
        frame["parent_id"] = _id_text(frame["parent_id"])
        _check_parents(frame, source)
    return frame


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def split_parents(value: object) -> tuple[str, ...]:
    """``"a;b"`` -> ``("a", "b")``; empty or missing -> ``()``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    return tuple(p for p in (part.strip() for part in str(value).split(PARENT_SEPARATOR)) if p)


def _check_parents(frame: pd.DataFrame, source: str) -> None:
    position_of = {task_id: i for i, task_id in enumerate(frame["task_id"])}
    parents_of: list[tuple[int, ...]] = []
    for row, value in enumerate(frame["parent_id"]):
        indices = []
        for parent in split_parents(value):
            index = position_of.get(parent)
            if index is None:
                raise TraceError(source, f"parent_id {parent!r} names no task in the trace",
                                 row=row + 1, column="parent_id")
            if index == row:
                raise TraceError(source, f"task {parent!r} names itself as its parent",
                                 row=row + 1, column="parent_id")
            indices.append(index)
        parents_of.append(tuple(indices))
    order = topological_order(parents_of)
    if len(order) < len(parents_of):
        in_cycle = sorted(set(range(len(parents_of))) - set(order))
        # Report the first row of the cycle that is not merely downstream of it.
        cycle_rows = _rows_on_cycle(parents_of, in_cycle)
        names = [frame["task_id"].iloc[i] for i in cycle_rows[:6]]
        raise TraceError(source, f"parent_id forms a cycle among tasks {names}",
                         row=cycle_rows[0] + 1, column="parent_id")


def topological_order(parents_of: list[tuple[int, ...]]) -> list[int]:
    """Kahn's algorithm over row indices; returns fewer rows than given when there is a cycle."""
    n = len(parents_of)
    children: list[list[int]] = [[] for _ in range(n)]
    indegree = np.zeros(n, dtype=np.int64)
    for child, parents in enumerate(parents_of):
        indegree[child] = len(parents)
        for parent in parents:
            children[parent].append(child)
    ready = deque(int(i) for i in np.flatnonzero(indegree == 0))
    order: list[int] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return order


def _rows_on_cycle(parents_of: list[tuple[int, ...]], candidates: list[int]) -> list[int]:
    """Walk parent links from a leftover row until a row repeats: that loop is a cycle."""
    remaining = set(candidates)
    node = candidates[0]
    seen: dict[int, int] = {}
    path: list[int] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(p for p in parents_of[node] if p in remaining)
    return sorted(path[seen[node]:])


def depths(frame: pd.DataFrame) -> np.ndarray:
    """Depth of each task in its tree or DAG (roots 0), computed iteratively.

    Returns:
        array of shape (n_tasks,), the longest parent chain above each task.
    """
    position_of = {task_id: i for i, task_id in enumerate(frame["task_id"])}
    column = frame["parent_id"] if "parent_id" in frame.columns else [None] * len(frame)
    parents_of = [tuple(position_of[p] for p in split_parents(v)) for v in column]
    depth = np.zeros(len(frame), dtype=np.int64)
    for node in topological_order(parents_of):
        if parents_of[node]:
            depth[node] = 1 + max(depth[p] for p in parents_of[node])
    return depth


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every column that is not reserved by the contract is a feature."""
    return [c for c in frame.columns if c not in RESERVED_COLUMNS]


def frame_to_tasks(frame: pd.DataFrame, time_scale: float = 1.0) -> list[Task]:
    """Turn a validated frame into Tasks, scaling arrival, runtime and deadline by ``time_scale``.

    Args:
        frame: the output of :func:`validate_frame` or :func:`read_trace`.
        time_scale: multiplies ``arrival_s``, ``runtime_s`` and ``deadline_s`` (> 0).
    """
    if not time_scale > 0:
        raise TraceError("<time-scale>", f"time_scale must be > 0, got {time_scale!r}")
    n = len(frame)
    features = feature_columns(frame)

    def column(name: str, default: object) -> Iterable:
        return frame[name].tolist() if name in frame.columns else [default] * n

    feature_rows = (frame[features].to_dict("records") if features else [{}] * n)
    tasks = []
    for (task_id, arrival, runtime, kind, tenant, region, priority, deadline, parent, cpu,
         feats) in zip(frame["task_id"].tolist(), frame["arrival_s"].tolist(),
                       frame["runtime_s"].tolist(), column("kind", DEFAULT_KIND),
                       column("tenant", DEFAULT_TENANT), column("region", None),
                       column("priority", 0), column("deadline_s", None),
                       column("parent_id", None), column("cpu", 1.0), feature_rows):
        clean = {k: v for k, v in feats.items()
                 if not (v is None or (isinstance(v, float) and np.isnan(v)))}
        tasks.append(Task(
            task_id=task_id,
            arrival_s=float(arrival) * time_scale,
            runtime_s=float(runtime) * time_scale,
            kind=kind, tenant=tenant, region=None if _missing(region) else region,
            priority=0 if _missing(priority) else int(priority),
            priority_declared=not _missing(priority),
            deadline_s=None if deadline is None or np.isnan(deadline)
            else float(deadline) * time_scale,
            parents=split_parents(parent),
            cpu=1.0 if cpu is None or np.isnan(cpu) else float(cpu),
            features=clean,
        ))
    return tasks


def write_trace(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a trace in the format its suffix names (after validating it).

    Raises:
        TraceError: the frame breaks the contract, or the suffix is unknown.
    """
    path = Path(path)
    suffix = _suffix(path)
    frame = validate_frame(frame, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".csv", ".csv.gz"):
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path
