"""Ordering policies: which queued task a local scheduler runs next.

An ordering is a small strategy object with one method, ``key(task)``; the
shared :class:`TaskQueue` does the rest. Smaller keys run first; the task's
arrival sequence number always breaks ties, so equal keys run in FIFO order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

from ray_sched.task import MAX_PRIORITY, Task


class OrderingPolicy:
    """Base class: ``key(task)`` maps a task to a sortable tuple (smaller runs first)."""

    name = "base"
    #: True when the policy reads the task's true runtime (only the clairvoyant oracle may).
    clairvoyant = False
    #: True when it needs the learner's predictions on each task.
    needs_predictions = False

    def key(self, task: Task) -> tuple:
        raise NotImplementedError

    def make_queue(self):
        """The queue that serves this ordering (a heap on static keys by default)."""
        return TaskQueue(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Fifo(OrderingPolicy):
    """First come, first served (by arrival at the global scheduler)."""

    name = "fifo"

    def key(self, task: Task) -> tuple:
        return (task.arrival_s,)


class DeclaredPriority(OrderingPolicy):
    """Highest declared priority first (9 most urgent); FIFO within a priority."""

    name = "priority"

    def key(self, task: Task) -> tuple:
        return (MAX_PRIORITY - task.priority, task.arrival_s)


class EarliestDeadline(OrderingPolicy):
    """Earliest absolute deadline first; tasks without a deadline after all that have one."""

    name = "edf"

    def key(self, task: Task) -> tuple:
        deadline = task.absolute_deadline_s
        return (math.inf if deadline is None else deadline, task.arrival_s)


class Oracle(OrderingPolicy):
    """Shortest *true* runtime first: the clairvoyant lower bound, for benchmarks only."""

    name = "oracle"
    clairvoyant = True

    def key(self, task: Task) -> tuple:
        runtime = task.runtime_s if task.runtime_s is not None else math.inf
        return (runtime, task.arrival_s)


ORDERINGS: dict[str, type[OrderingPolicy]] = {
    cls.name: cls for cls in (Fifo, DeclaredPriority, EarliestDeadline, Oracle)
}


class TaskQueue:
    """A priority queue of tasks ordered by an :class:`OrderingPolicy`.

    Removal by id (for stealing and cancellation) is lazy: the entry is marked
    and skipped when it reaches the top, so every operation stays O(log n).

    Example:
        >>> queue = TaskQueue(Fifo())
        >>> queue.push(Task("a", arrival_s=1.0)); queue.push(Task("b", arrival_s=0.5))
        >>> queue.pop().task_id
        'b'
    """

    def __init__(self, ordering: OrderingPolicy):
        self.ordering = ordering
        self._heap: list[tuple[tuple, int, int, Task]] = []
        self._live: dict[str, Task] = {}
        self._cpu = 0.0
        self._pushes = 0  # last tie-break: push order, so Tasks themselves are never compared

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._live.values()))

    @property
    def queued_cpu(self) -> float:
        """Sum of the ``cpu`` of queued tasks (slots they will need)."""
        return self._cpu

    def push(self, task: Task) -> None:
        if task.task_id in self._live:
            raise ValueError(f"task {task.task_id!r} is already queued")
        self._live[task.task_id] = task
        self._cpu += task.cpu
        self._pushes += 1
        heapq.heappush(self._heap, (self.ordering.key(task), task.seq, self._pushes, task))

    def _drop_dead(self) -> None:
        heap = self._heap
        while heap and self._live.get(heap[0][-1].task_id) is not heap[0][-1]:
            heapq.heappop(heap)

    def peek(self, now: float | None = None) -> Task | None:
        self._drop_dead()
        return self._heap[0][-1] if self._heap else None

    def first(self, k: int, now: float | None = None) -> list[Task]:
        """The tasks that run first, in order: here only the head (up to ``k`` allows
        queues that score everything at once to hand over several per pass)."""
        head = self.peek(now)
        return [] if head is None else [head]

    def last(self, k: int, now: float | None = None) -> list[Task]:
        """The (up to) ``k`` tasks that would run last, last first."""
        live = [entry for entry in self._heap if self._live.get(entry[-1].task_id) is entry[-1]]
        return [entry[-1] for entry in heapq.nlargest(max(k, 0), live)]

    def pop(self) -> Task:
        self._drop_dead()
        if not self._heap:
            raise IndexError("pop from an empty TaskQueue")
        task = heapq.heappop(self._heap)[-1]
        del self._live[task.task_id]
        self._cpu -= task.cpu
        return task

    def remove(self, task_id: str, *, started: bool = True) -> Task | None:
        """Take a queued task out (None when it is not queued); ``started`` matters only
        to queues that count what each tenant was served."""
        task = self._live.pop(task_id, None)
        if task is not None:
            self._cpu -= task.cpu
        return task

    def drain(self) -> list[Task]:
        """Remove and return every queued task, in order."""
        tasks = []
        while len(self):
            tasks.append(self.pop())
        return tasks
