"""Engines: one interface over which a replay drives ray_sched and the baselines alike.

An engine takes tasks at their arrival (``submit``), and hands back completions
with worker-measured start and finish times (``poll``). The replay's arrival
clock, its progress line and its results are the same for every engine, so a
comparison measures the schedulers, not the harness.
"""

from __future__ import annotations

import queue
from typing import Protocol

from ray_sched.task import Completion, Task


class Engine(Protocol):
    name: str
    #: Whether completions carry a placement time (``placed_wall``).
    places: bool

    def submit(self, tasks: list[Task]) -> None: ...

    def poll(self, timeout_s: float) -> list[Completion]: ...

    def running(self) -> int | None: ...

    def close(self) -> None: ...


class CompletionInbox:
    """A thread-safe inbox of completions: producers ``put``, the replay ``poll``s."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Completion]] = queue.SimpleQueue()

    def put(self, batch: list[Completion]) -> None:
        self._queue.put(batch)

    def poll(self, timeout_s: float) -> list[Completion]:
        """Everything that arrived; waits up to ``timeout_s`` for the first batch."""
        try:
            batch = list(self._queue.get(timeout=timeout_s) if timeout_s > 0
                         else self._queue.get_nowait())
        except queue.Empty:
            return []
        while True:
            try:
                batch.extend(self._queue.get_nowait())
            except queue.Empty:
                return batch


class SchedulerEngine:
    """ray_sched itself: tasks go through :class:`ray_sched.Scheduler`, the same path as the API."""

    places = True

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.name = scheduler.policy.name
        self._inbox = CompletionInbox()
        self._running: int | None = 0
        scheduler.add_listener(self._inbox.put)

    def submit(self, tasks: list[Task]) -> None:
        self.scheduler.submit_tasks(tasks)

    def poll(self, timeout_s: float) -> list[Completion]:
        return self._inbox.poll(timeout_s)

    def running(self) -> int | None:
        try:
            return self.scheduler.stats()["running"]
        except Exception:  # noqa: BLE001 - progress only
            return None

    def started(self, t0: float) -> None:
        """The replay's clock starts: the monitor's times count from here."""
        self.scheduler.set_epoch(t0)

    def check_fault(self, action: str, index: int) -> None:
        self.scheduler.check_fault(action, index)

    def inject_fault(self, action: str, index: int) -> None:
        self.scheduler.inject_fault(action, index)

    def monitor_output(self) -> dict:
        return self.scheduler.monitor_output()

    def close(self) -> None:
        self.scheduler.shutdown()
