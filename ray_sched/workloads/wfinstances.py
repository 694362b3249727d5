"""WfCommons WfInstances (WfFormat 1.5 JSON) workflow executions to task traces.

A WfInstances file records one real run of a scientific workflow: its DAG
(``workflow.specification.tasks[]``: id, parents) and each task's measured
execution (``workflow.execution.tasks[]``: id, runtimeInSeconds,
command.program, avgCPU, coreCount, memoryInBytes, readBytes, writtenBytes,
priority, machines). It has no submit times, so every task of one workflow
arrives at 0 s and is released when all its parents have finished; the whole
DAG is kept in ``parent_id`` (several parents joined by ``;``).

=============  ==========================================================
trace column   from the workflow
=============  ==========================================================
task_id        ``id`` (``id#k`` for copy ``k`` with ``repeat``)
arrival_s      0 (copy ``k`` with ``repeat``: ``k`` times the copy gap)
runtime_s      ``runtimeInSeconds``; <= 0 or missing is dropped and counted
kind           ``command.program``
tenant         the workflow's ``name`` (or the ``tenant`` argument)
parent_id      the ``parents`` that were kept, joined by ``;``
cpu            ``coreCount`` where present, else 1; capped at ``max_cpu``
avg_cpu_pct    feature, ``avgCPU`` (percent of one core)
memory_bytes   feature, ``memoryInBytes``
read_bytes     feature, ``readBytes``
written_bytes  feature, ``writtenBytes``
wf_priority    feature, the workflow system's own ``priority`` (not 0..9)
machine        feature, the first of ``machines`` (a category)
=============  ==========================================================

Offered load: one workflow arrives whole at 0 s, so it has no arrival span and
``load`` cannot apply to it. With ``repeat=K`` (K >= 2) the converter lays out
K copies in time, with ids suffixed ``#k``, the same tenant and the feature
``copy = k``, evenly spaced so that the offered load on ``slots`` is ``load``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_sched.errors import ConvertError
from ray_sched.task import PARENT_SEPARATOR
from ray_sched.trace import topological_order
from ray_sched.workloads.window import (
    UNIT_COPY_GAP_S,
    ConvertReport,
    cap_cpu,
    check_parameters,
    finalize,
    open_text,
    repeat_frame,
    require_file,
    window_slice,
)

#: The WfFormat sections this converter needs, for error messages.
EXPECTED_LAYOUT = ("WfFormat 1.5: workflow.specification.tasks[] (id, parents) and "
                   "workflow.execution.tasks[] (id, runtimeInSeconds)")
#: Execution fields copied as features: WfFormat name -> trace column (units in the name).
FEATURE_FIELDS = {
    "avgCPU": "avg_cpu_pct",
    "memoryInBytes": "memory_bytes",
    "readBytes": "read_bytes",
    "writtenBytes": "written_bytes",
    # The workflow system's priority (Pegasus uses 20..90): not the contract's 0..9.
    "priority": "wf_priority",
}
_LOAD_HINT = ("; a single workflow arrives whole at 0 s: pass repeat >= 2 to lay copies "
              "out in time")


def convert_wfinstances(path: str | Path, *, max_tasks: int | None = None,
                        slots: int | None = None, load: float | None = None,
                        tenant: str | None = None, repeat: int = 1,
                        max_cpu: float | None = None,
                        time_scale: float = 1.0) -> tuple[pd.DataFrame, ConvertReport]:
    """Read a WfInstances JSON file (``.json`` or ``.json.gz``) into a validated trace frame.

    Args:
        path: the WfFormat 1.5 file.
        max_tasks: keep the first N usable tasks in a topological order (parents
            before children, file order among peers), so every kept task's
            parents are kept too (None: all).
        slots: the slot count the trace is meant for (default ``max_cpu``; the
            measured offered load refers to it).
        load: target offered load on ``slots``; needs ``repeat >= 2`` (see module).
        tenant: tenant name for every task (default: the workflow's ``name``).
        repeat: number of copies of the workflow laid out in time (>= 1).
        max_cpu: cap on ``cpu`` (default: ``slots``).
        time_scale: multiplies arrival and runtime after the load rescaling.

    Returns:
        (frame of shape (n_kept, n_columns), parents before children; the report).

    Raises:
        ConvertError: the file is missing, not JSON, or lacks a required section
            or field (the message names the file and what is missing), or a
            parent names no task, or the parents form a cycle.
        ConfigError: a parameter out of range, or ``load`` on a single copy.

    Example:
        >>> frame, report = convert_wfinstances("montage-chameleon-dss-10d-001.json",
        ...                                     repeat=4, slots=8, load=0.8)  # doctest: +SKIP
    """
    check_parameters(slots=slots, load=load, time_scale=time_scale, max_cpu=max_cpu,
                     max_rows=max_tasks, max_rows_name="max_tasks", repeat=repeat)
    path = require_file(path)
    document = _read_json(path)
    spec_tasks, exec_tasks = _sections(document, path)
    tasks = _task_table(spec_tasks, exec_tasks, path)
    report = ConvertReport(source=str(path), unit="tasks", n_read=len(tasks),
                           window_max=max_tasks, repeat=repeat)

    parents_of = _parent_positions(tasks, path)
    usable = (tasks["runtime_s"] > 0).to_numpy()
    report.n_dropped_nonpositive_runtime = int((~usable).sum())
    parents_of, report.n_parent_links_dropped = _drop_links_to(parents_of, usable)

    order = topological_order(parents_of)
    if len(order) < len(parents_of):
        raise ConvertError(f"{path}: the parents in workflow.specification.tasks form a cycle "
                           f"({len(parents_of) - len(order)} tasks on or below it)")
    usable_order = [i for i in order if usable[i]]
    kept = usable_order[window_slice(len(usable_order), 0, max_tasks, str(path), "tasks")]
    report.n_kept_base = len(kept)
    report.n_outside_window = len(usable_order) - len(kept)

    frame = tasks.iloc[kept].drop(columns="parents").reset_index(drop=True)
    ids = tasks["task_id"].to_numpy()
    links = [parents_of[i] for i in kept]
    report.n_parent_links = sum(len(p) for p in links)
    frame.insert(1, "arrival_s", 0.0)
    frame["parent_id"] = [PARENT_SEPARATOR.join(ids[list(p)]) if p else None for p in links]
    frame["tenant"] = tenant if tenant is not None else _workflow_name(document, path)
    report.max_cpu = slots if max_cpu is None else max_cpu
    frame["cpu"], report.n_cpu_capped = cap_cpu(frame["cpu"].to_numpy(), report.max_cpu)
    report.n_cpu_capped *= repeat

    frame = repeat_frame(frame, repeat, UNIT_COPY_GAP_S if load is not None else 0.0)
    if repeat > 1 and load is None:
        report.notes.append(f"All {repeat} copies arrive at 0 s (no load asked).")
    frame = finalize(frame, report, slots=slots, load=load, time_scale=time_scale,
                     load_hint=_LOAD_HINT)
    return frame, report


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        with open_text(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ConvertError(f"{path}: not valid JSON (line {error.lineno}, column "
                           f"{error.colno}: {error.msg})") from error
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ConvertError(f"{path}: cannot be read: {error}") from error


def _sections(document: Any, path: Path) -> tuple[list, list]:
    """``workflow.specification.tasks`` and ``workflow.execution.tasks``, or a ConvertError."""
    workflow = _child(document, "workflow", [], path)
    spec = _child(_child(workflow, "specification", ["workflow"], path), "tasks",
                  ["workflow", "specification"], path)
    execution = _child(_child(workflow, "execution", ["workflow"], path), "tasks",
                       ["workflow", "execution"], path)
    for name, tasks in (("workflow.specification.tasks", spec),
                        ("workflow.execution.tasks", execution)):
        if not isinstance(tasks, list):
            raise ConvertError(f"{path}: {name} is a {type(tasks).__name__}, expected a list "
                               f"({EXPECTED_LAYOUT})")
    if not spec:
        raise ConvertError(f"{path}: workflow.specification.tasks is empty")
    return spec, execution


def _child(node: Any, key: str, trail: list[str], path: Path) -> Any:
    where = ".".join(trail + [key])
    if not isinstance(node, dict) or key not in node:
        version = ""
        if trail == [] and isinstance(node, dict) and "schemaVersion" in node:
            version = f"; schemaVersion is {node['schemaVersion']!r}"
        raise ConvertError(f"{path}: missing {where} (expected {EXPECTED_LAYOUT}{version})")
    return node[key]


def _workflow_name(document: dict, path: Path) -> str:
    name = document.get("name")
    return str(name) if isinstance(name, str) and name.strip() else path.name.split(".")[0]


def _task_table(spec_tasks: list, exec_tasks: list, path: Path) -> pd.DataFrame:
    """One row per specification task, joined with its execution record.

    Columns: task_id, runtime_s (NaN when unknown), kind, cpu, the feature
    columns that occur in the file, and ``parents`` (a list of ids).
    """
    for section, tasks in (("specification", spec_tasks), ("execution", exec_tasks)):
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("id"), str):
                raise ConvertError(f"{path}: workflow.{section}.tasks[{index}] has no string "
                                   f"'id'")
    spec = pd.DataFrame({
        "task_id": [t["id"] for t in spec_tasks],
        "parents": [t.get("parents") or [] for t in spec_tasks],
    })
    duplicated = spec["task_id"].duplicated()
    if duplicated.any():
        position = int(np.argmax(duplicated.to_numpy()))
        raise ConvertError(f"{path}: duplicate task id {spec['task_id'].iloc[position]!r} in "
                           f"workflow.specification.tasks[{position}]")
    executed = pd.json_normalize(exec_tasks, max_level=1) if exec_tasks else pd.DataFrame(
        {"id": []})
    executed = executed.drop_duplicates("id", keep="first").set_index("id")
    unknown = executed.index.difference(spec["task_id"])
    if len(unknown):
        raise ConvertError(f"{path}: workflow.execution.tasks names {len(unknown)} task(s) "
                           f"missing from workflow.specification.tasks, e.g. {unknown[0]!r}")
    executed = executed.reindex(spec["task_id"])

    def column(name: str) -> pd.Series:
        return (executed[name] if name in executed.columns
                else pd.Series(np.nan, index=executed.index, dtype=object))

    runtime = pd.to_numeric(column("runtimeInSeconds"), errors="coerce")
    garbled = runtime.isna() & column("runtimeInSeconds").notna()
    if garbled.any():
        task_id = runtime.index[int(np.argmax(garbled.to_numpy()))]
        raise ConvertError(f"{path}: task {task_id!r} has a non-numeric runtimeInSeconds "
                           f"({column('runtimeInSeconds')[task_id]!r})")
    table = spec.assign(
        runtime_s=runtime.to_numpy(dtype=float),
        kind=column("command.program").to_numpy(),
        cpu=pd.to_numeric(column("coreCount"), errors="coerce").fillna(1.0).to_numpy(),
    )
    for field, name in FEATURE_FIELDS.items():
        if field in executed.columns:
            table[name] = pd.to_numeric(executed[field], errors="coerce").to_numpy()
    if "machines" in executed.columns:
        table["machine"] = executed["machines"].map(
            lambda m: str(m[0]) if isinstance(m, list) and m else None).to_numpy()
    return table


def _parent_positions(tasks: pd.DataFrame, path: Path) -> list[tuple[int, ...]]:
    """Row positions of each task's parents; a ConvertError for a parent that names no task."""
    position_of = {task_id: i for i, task_id in enumerate(tasks["task_id"])}
    parents_of = []
    for task_id, parents in zip(tasks["task_id"], tasks["parents"]):
        if not isinstance(parents, list):
            raise ConvertError(f"{path}: task {task_id!r} has 'parents' of type "
                               f"{type(parents).__name__}, expected a list of ids")
        missing = [p for p in parents if p not in position_of]
        if missing:
            raise ConvertError(f"{path}: task {task_id!r} names parent {missing[0]!r}, which "
                               f"is not in workflow.specification.tasks")
        parents_of.append(tuple(dict.fromkeys(position_of[p] for p in parents)))
    return parents_of


def _drop_links_to(parents_of: list[tuple[int, ...]],
                   usable: np.ndarray) -> tuple[list[tuple[int, ...]], int]:
    """Remove parent links that point at dropped rows (and the links of dropped rows).

    Returns:
        (the parent positions, with dropped rows keeping none; edges removed
        from usable children).
    """
    kept, removed = [], 0
    for child, parents in enumerate(parents_of):
        if not usable[child]:
            kept.append(())
            continue
        alive = tuple(p for p in parents if usable[p])
        removed += len(parents) - len(alive)
        kept.append(alive)
    return kept, removed
