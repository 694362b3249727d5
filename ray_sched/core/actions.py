"""What the scheduler cores decide, for an engine to carry out.

The cores (:class:`~ray_sched.core.global_core.GlobalCore`,
:class:`~ray_sched.core.local_core.LocalCore`) own every decision and return these; the
Ray actors carry them out with actor calls, the simulator on virtual time. Each is a
plain record: no Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ray_sched.task import Completion, Task


@dataclass(slots=True)
class Place:
    """Send ``tasks`` to the local scheduler at ``index`` (to queue and run there)."""

    index: int
    tasks: list[Task]


@dataclass(slots=True)
class Record:
    """These completions are recorded, once each: hand them to whoever waits for them.
    ``tasks`` are the records of those tasks (by id) while the ledger still had them, for
    the monitor; empty when nobody asked."""

    completions: list[Completion]
    tasks: dict[str, Task] = field(default_factory=dict)


@dataclass(slots=True)
class Learn:
    """Feed the learner these tasks (without payloads) with their measured runtimes."""

    tasks: list[Task]
    runtimes_s: list[float]


@dataclass(slots=True)
class Hint:
    """Tell the local scheduler at ``index`` the slots its next window is forecast to
    need (adaptive concurrency pre-scales to it)."""

    index: int
    busy_slots: float


@dataclass(frozen=True, slots=True)
class Steal:
    """Ask the local scheduler at ``victim`` to give up to ``max_tasks`` of its queued
    tasks, none predicted under ``min_runtime_s``, and hand the answer to
    ``GlobalCore.on_given_up``: the tasks then go to ``thief``."""

    victim: int
    thief: int
    max_tasks: int
    min_runtime_s: float
    reason: str


@dataclass(slots=True)
class Start:
    """Start ``tasks`` on one slot of a local scheduler, one after another: ``mode`` is
    ``inline`` (on the local scheduler's own thread), ``remote`` (one Ray task, alone or
    a launch batch) or ``stage`` (on one of the task's stage actors; always alone)."""

    tasks: list[Task]
    mode: str


Action = Place | Record | Learn | Hint | Steal | Start
