"""The logic of one local scheduler: a queue, a pool of slots, and what starts next.

Plain Python, no Ray: the LocalScheduler actor wraps it with Ray I/O and the
simulator drives it on virtual time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray_sched.policies.ordering import OrderingPolicy
from ray_sched.task import Task


@dataclass(slots=True)
class LocalSnapshot:
    """A local scheduler's state, for load reports, progress and the monitor."""

    name: str
    slots: float
    busy_cpu: float
    queued: int
    running: int
    queued_cpu: float


class LocalCore:
    """A local scheduler's queue and slots.

    Strict order: when the next task by the ordering needs more slots than are
    free, nothing behind it jumps ahead (no backfilling), so an ordering's
    promise holds exactly.

    Args:
        name: the local scheduler's name (for reports).
        slots: concurrent slots it owns (> 0).
        ordering: the ordering policy of its queue.
    """

    def __init__(self, name: str, slots: float, ordering: OrderingPolicy, *,
                 clock=time.time):
        if not slots > 0:
            raise ValueError(f"slots must be > 0, got {slots!r}")
        self.name = name
        self.slots = float(slots)
        self.clock = clock
        self.queue = ordering.make_queue()
        self.running: dict[str, Task] = {}
        self.busy_cpu = 0.0

    def enqueue(self, tasks: list[Task]) -> None:
        for task in tasks:
            if task.task_id in self.running or task.task_id in self.queue:
                continue  # a duplicate delivery of a task already here: run it once
            self.queue.push(task)

    def _demand(self, task: Task) -> float:
        # A task wider than the whole scheduler still runs, alone.
        return min(task.cpu, self.slots)

    def next_runnable(self) -> list[Task]:
        """Pop every task that can start now, in order, and count it as running."""
        started = []
        queue = self.queue
        if len(queue) and self.busy_cpu + queue.queued_cpu <= self.slots + 1e-9:
            # Everything queued fits: all of it starts now, whatever the order says.
            for task in list(queue):
                queue.remove(task.task_id)
                self.busy_cpu += self._demand(task)
                self.running[task.task_id] = task
                started.append(task)
            return started
        now = self.clock()
        # The heads in order, scored once for every slot free now (+1: a task may need
        # less than a slot); strict order: the first that does not fit stops the start.
        while len(queue):
            free = self.slots - self.busy_cpu
            heads = queue.first(max(1, int(free + 1e-9)) + 1, now)
            blocked = False
            for head in heads:
                demand = self._demand(head)
                if self.busy_cpu + demand > self.slots + 1e-9:
                    blocked = True
                    break
                queue.remove(head.task_id)
                self.busy_cpu += demand
                self.running[head.task_id] = head
                started.append(head)
            if blocked or not heads:
                break
        return started

    def give_up(self, max_tasks: int, min_runtime_s: float = 0.0) -> list[Task]:
        """Take out (up to) ``max_tasks`` queued tasks for another local scheduler: those
        that would run last, skipping any predicted (p50) shorter than ``min_runtime_s``.
        Running tasks never move."""
        if max_tasks <= 0 or not len(self.queue):
            return []
        given = []
        for task in self.queue.last(max_tasks * 2, self.clock()):
            if len(given) >= max_tasks:
                break
            if (task.predicted_runtime_s or 0.0) < min_runtime_s:
                continue
            removed = self.queue.remove(task.task_id, started=False)
            if removed is not None:
                given.append(removed)
        return given

    def finish(self, task_id: str) -> Task | None:
        """Free the slots of a running task; returns it (None if it was not running)."""
        task = self.running.pop(task_id, None)
        if task is not None:
            self.busy_cpu = max(0.0, self.busy_cpu - self._demand(task))
        return task

    def snapshot(self) -> LocalSnapshot:
        return LocalSnapshot(self.name, self.slots, self.busy_cpu, len(self.queue),
                             len(self.running), self.queue.queued_cpu)
