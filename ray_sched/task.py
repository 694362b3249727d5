"""The Task record: the shared vocabulary of every scheduler, policy and engine."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: Columns of the trace contract with a fixed meaning; every other column is a feature.
REQUIRED_COLUMNS = ("task_id", "arrival_s", "runtime_s")
OPTIONAL_COLUMNS = ("kind", "tenant", "region", "priority", "deadline_s", "parent_id", "cpu")
RESERVED_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

DEFAULT_KIND = "default"
DEFAULT_TENANT = "default"
PARENT_SEPARATOR = ";"
MAX_PRIORITY = 9


@dataclass(slots=True)
class Task:
    """One unit of work as the schedulers see it.

    Times are seconds. ``arrival_s`` is relative to the start of a replay (or
    the Scheduler's start for API tasks). ``runtime_s`` is the true service time
    of a replayed task: only the ``oracle`` policy and the synthetic work may read
    it; it is ``None`` for real functions.
    """

    task_id: str
    arrival_s: float = 0.0
    runtime_s: float | None = None
    kind: str = DEFAULT_KIND
    tenant: str = DEFAULT_TENANT
    region: str | None = None
    priority: int = 0
    deadline_s: float | None = None
    parents: tuple[str, ...] = ()
    cpu: float = 1.0
    features: dict[str, Any] = field(default_factory=dict)
    work: str = "sleep"                # synthetic work for replays: sleep or cpu (work.py)
    # Filled in by the schedulers on the way through.
    submitted_at: float = 0.0          # wall clock (time.time()) when handed to the scheduler
    predicted_runtime_s: float | None = None   # the learner's p50
    predicted_p90_s: float | None = None
    predicted_mean_s: float | None = None
    latest_p90_s: float | None = None  # re-predicted while queued (drives inline vs remote)
    priority_declared: bool = True     # False: the trace left it empty, the learner predicts it
    effective_priority: float | None = None  # declared, or predicted when not declared
    payload: Any = None                # an ObjectRef of (fn, args, kwargs) for API tasks
    stage: str | None = None           # run on a stage actor; payload: (method, args, kwargs)
    attempts: int = 0
    received_wall: float | None = None  # set by the global scheduler on receipt
    queued_wall: float | None = None   # set by the local scheduler on receipt
    seq: int = 0                       # arrival order at the global scheduler (FIFO tie-break)

    @property
    def absolute_deadline_s(self) -> float | None:
        """``arrival_s + deadline_s``, or None when the task has no deadline."""
        return None if self.deadline_s is None else self.arrival_s + self.deadline_s


@dataclass(slots=True)
class Completion:
    """What a local scheduler reports when a task has finished (or failed).

    ``start_wall``/``finish_wall`` are ``time.time()`` on the worker that ran it.
    """

    task_id: str
    status: str                        # "ok" or "failed"
    worker: str = ""
    node: str = ""
    start_wall: float | None = None
    finish_wall: float | None = None
    placed_wall: float | None = None
    submitted_wall: float | None = None
    received_wall: float | None = None  # when the global scheduler received it
    queued_wall: float | None = None   # when the local scheduler received it
    launched_wall: float | None = None  # when the local scheduler launched it
    attempts: int = 1
    error: str = ""
    predicted_runtime_s: float | None = None
    predicted_p90_s: float | None = None
    value_ref: Any = None              # ObjectRef of the function's return value (API tasks)

    @property
    def measured_runtime_s(self) -> float | None:
        if self.start_wall is None or self.finish_wall is None:
            return None
        return self.finish_wall - self.start_wall


def without_payload(task: Task) -> Task:
    """The task without its payload, for the learner (it needs features, not the function)."""
    return replace(task, payload=None) if task.payload is not None else task
