"""One task's story from a run's output: ``ray-sched story DIR TASK_ID``.

It merges the task's row of ``DIR/tasks.parquet`` (arrival, the times it was received,
placed, queued, launched, started and finished; its predictions, attempts and status) with
its lines of the decision log ``DIR/decisions.parquet`` (every placement and move with its
reason), in time order.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import pandas as pd

from ray_sched.errors import ConfigError
from ray_sched.metrics import read_results
from ray_sched.monitor import DECISIONS_FILE

#: The task row's times, in the order they happen, with what each means.
_MILESTONES = (("arrival_s", "arrived"),
               ("received_s", "received by the global scheduler"),
               ("placed_s", "placed (sent to its local scheduler)"),
               ("queued_s", "queued at {worker}"),
               ("launched_s", "launched by {worker}"),
               ("start_s", "started on node {node}"),
               ("finish_s", "finished"))


def task_story(run_dir: str | Path, task_id: str) -> list[str]:
    """The story's lines (no trailing newlines).

    Raises:
        ResultsError: DIR holds no readable results.
        ConfigError: no task ``task_id`` in the run (the nearest ids are suggested).
    """
    run_dir = Path(run_dir)
    results, summary = read_results(run_dir)
    rows = results[results["task_id"] == task_id]
    if rows.empty:
        near = difflib.get_close_matches(task_id, results["task_id"].astype(str).tolist(), n=3)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(f"{run_dir}: no task {task_id!r} among its {len(results)} "
                          f"tasks{hint}")
    row = rows.iloc[0]
    lines = [_header(row, summary)]
    events = []
    for column, text in _MILESTONES:
        when = _value(row, column)
        if when is not None:
            events.append((when, 0, text.format(worker=row.get("worker") or "?",
                                                node=_short(row.get("node")))))
    decisions = _decisions(run_dir, task_id)
    for decision in decisions.itertuples(index=False):
        events.append((float(decision.t_s), 1, _decision_text(decision)))
    events.sort(key=lambda e: (e[0], e[1]))
    lines += [f"  {when:10.3f} s  {text}" for when, _order, text in events]
    lines += _outcome(row)
    if decisions.empty:
        lines.append(f"  (no decision log for it in {run_dir / DECISIONS_FILE}: baselines "
                     f"write none, and a long run keeps only the newest decisions)")
    return lines


def _header(row, summary: dict) -> str:
    parts = [f"task {row['task_id']}", f"policy {summary.get('policy', row['policy'])}"]
    for column in ("kind", "tenant", "region"):
        value = row.get(column)
        if isinstance(value, str) and value:
            parts.append(f"{column} {value}")
    for column, unit in (("priority", ""), ("cpu", " slot(s)"), ("runtime_s", " s of work"),
                         ("deadline_s", " s")):
        value = _value(row, column)
        if value is not None:
            parts.append(f"{column.removesuffix('_s')} {value:.3g}{unit}")
    predicted, p90 = _value(row, "predicted_runtime_s"), _value(row, "predicted_p90_s")
    if predicted is not None:
        parts.append(f"predicted {predicted:.3g} s" + (f" (p90 {p90:.3g} s)" if p90 else ""))
    return ", ".join(parts)


def _decisions(run_dir: Path, task_id: str) -> pd.DataFrame:
    path = run_dir / DECISIONS_FILE
    if not path.exists():
        return pd.DataFrame(columns=["t_s", "event", "target", "reason"])
    frame = pd.read_parquet(path, filters=[("task_id", "==", task_id)])
    return frame.sort_values("t_s", kind="stable")


def _decision_text(decision) -> str:
    text = f"decision: {decision.event}"
    if decision.target:
        text += f" -> {decision.target}"
    if decision.reason:
        text += f" ({decision.reason})"
    predicted = getattr(decision, "predicted_runtime_s", None)
    if predicted is not None and not math.isnan(predicted):
        text += f", predicted {predicted:.3g} s"
    return text


def _outcome(row) -> list[str]:
    status = row["status"]
    parts = [f"  outcome: {status} after {int(row['attempts'])} attempt(s)"]
    measured = _value(row, "measured_runtime_s")
    arrival, finish = _value(row, "arrival_s"), _value(row, "finish_s")
    if measured is not None:
        parts.append(f"ran {measured:.3f} s")
    if arrival is not None and finish is not None:
        parts.append(f"JCT {finish - arrival:.3f} s")
    met = row.get("deadline_met")
    if met is not None and not pd.isna(met):
        parts.append("deadline met" if bool(met) else "deadline MISSED")
    lines = [", ".join(parts)]
    if row.get("error"):
        lines.append(f"  error: {row['error']}")
    return lines


def _value(row, column: str) -> float | None:
    value = row.get(column)
    if value is None or pd.isna(value):
        return None
    return float(value)


def _short(node) -> str:
    return str(node)[:12] if node else "?"
