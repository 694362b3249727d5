"""The logic of one local scheduler: a queue, a pool of slots, and what starts next.

Plain Python, no Ray: the LocalScheduler actor wraps it with Ray I/O and the
simulator drives it on virtual time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray_sched.core.actions import Start
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
        inline: a :class:`ray_sched.control.inline.InlineDecider` (None: every task is
            remote); it also holds the launch cost measured.
        batcher: a :class:`ray_sched.control.batching.LaunchBatcher` (None: one task per
            launch).
    """

    def __init__(self, name: str, slots: float, ordering: OrderingPolicy, *,
                 clock=time.time, inline=None, batcher=None):
        if not slots > 0:
            raise ValueError(f"slots must be > 0, got {slots!r}")
        self.name = name
        self.slots = float(slots)
        self.clock = clock
        self.queue = ordering.make_queue()
        self.running: dict[str, Task] = {}
        self.busy_cpu = 0.0
        # Tasks started together on one slot (a launch batch): each task's batch, and per
        # batch the tasks still running and the slots it holds until the last is done.
        self._batch_of: dict[str, int] = {}
        self._batch_left: dict[int, list] = {}
        self._batches = 0
        self.inline = inline
        self.batcher = batcher

    def enqueue(self, tasks: list[Task]) -> None:
        for task in tasks:
            if task.task_id in self.running or task.task_id in self.queue:
                continue  # a duplicate delivery of a task already here: run it once
            self.queue.push(task)

    def _demand(self, task: Task) -> float:
        # A task wider than the whole scheduler still runs, alone.
        return min(task.cpu, self.slots)

    def starts(self) -> list[Start]:
        """What starts now, and how (:class:`~ray_sched.core.actions.Start`): the launches
        of :meth:`next_launches` under the batcher's rule at the launch cost measured; a
        batch runs inline when each of its tasks would alone (predicted shorter than a
        launch), else as one Ray task; a task alone runs on its stage's actors, inline
        when the decider says so, else as a Ray task. Each started task's ``attempts``
        grows by one."""
        inline, batcher = self.inline, self.batcher
        if batcher is not None and batcher.enabled and inline is not None:
            launches = self.next_launches(*batcher.rule(inline.launch_cost_s_))
        else:
            launches = [[task] for task in self.next_runnable()]
        starts = []
        for tasks in launches:
            for task in tasks:
                task.attempts += 1
            if len(tasks) > 1:
                here = inline is not None and all(inline.eligible(latest_p90(t)) for t in tasks)
                if inline is not None:
                    inline.count_batch(len(tasks), here)
                batcher.record(len(tasks))
                starts.append(Start(tasks, "inline" if here else "remote"))
                continue
            task = tasks[0]
            if task.stage is not None:
                mode = "stage"
            elif inline is not None and inline.choose(task.kind, latest_p90(task)):
                mode = "inline"
            else:
                mode = "remote"
            starts.append(Start(tasks, mode))
        return starts

    def next_runnable(self) -> list[Task]:
        """Pop every task that can start now, in order, and count it as running."""
        return [task for launch in self.next_launches() for task in launch]

    def next_launches(self, expected_s=None, budget_s: float = 0.0,
                      max_batch: int = 1) -> list[list[Task]]:
        """Pop every task that can start now, in order, grouped by launch.

        Without ``expected_s`` each task is its own launch on its own slots. With it,
        consecutive tasks of the queue's order share one slot and one launch while each is
        expected (``expected_s(task)``, None: never batched) to take less than
        ``budget_s`` together, up to ``max_batch`` tasks and no more than a fair share of
        the queue per free slot (so that every free slot gets work). Only tasks that fit
        in one slot are batched. The slot of a batch frees when its last task finishes.
        """
        started: list[list[Task]] = []
        queue = self.queue
        if not len(queue):
            return started
        batching = expected_s is not None and max_batch > 1 and budget_s > 0
        if self.busy_cpu + queue.queued_cpu <= self.slots + 1e-9:
            # Everything queued fits: all of it starts now, whatever the order says.
            for task in list(queue):
                queue.remove(task.task_id)
                self._start(task)
                started.append([task])
            return started
        now = self.clock()
        free_slots = max(1, int(self.slots - self.busy_cpu + 1e-9))
        share = max(1, -(-len(queue) // free_slots))  # ceil: the queue over the free slots
        batch: list[Task] = []
        batch_s = 0.0
        # The heads in order, scored once for every slot free now (+1: a task may need
        # less than a slot); strict order: the first that does not fit stops the start.
        while len(queue):
            free = self.slots - self.busy_cpu
            want = max(1, int(free + 1e-9)) + 1
            heads = queue.first(want * min(max_batch, share) if batching else want, now)
            blocked = False
            for head in heads:
                cost = expected_s(head) if batching and head.cpu <= 1.0 else None
                if (batch and cost is not None and batch_s + cost <= budget_s + 1e-12
                        and head.cpu <= batch[0].cpu and len(batch) < min(max_batch, share)):
                    queue.remove(head.task_id)
                    self.running[head.task_id] = head
                    batch.append(head)
                    batch_s += cost
                    continue
                if batch:
                    self._close_batch(batch)
                    batch = []
                demand = self._demand(head)
                if self.busy_cpu + demand > self.slots + 1e-9:
                    blocked = True
                    break
                queue.remove(head.task_id)
                self._start(head)
                if cost is not None and cost < budget_s:
                    batch, batch_s = [head], cost  # may take the next heads along
                    started.append(batch)
                else:
                    started.append([head])
            if blocked or not heads:
                break
        if batch:
            self._close_batch(batch)
        return started

    def _start(self, task: Task) -> None:
        self.busy_cpu += self._demand(task)
        self.running[task.task_id] = task

    def _close_batch(self, batch: list[Task]) -> None:
        """The tasks of one launch share its first task's slots until the last is done."""
        if len(batch) < 2:
            return
        self._batches += 1
        key = self._batches
        for task in batch:
            self._batch_of[task.task_id] = key
        self._batch_left[key] = [len(batch), self._demand(batch[0])]

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

    def finish(self, task_id: str, runtime_s: float | None = None) -> Task | None:
        """Free the slots of a running task; returns it (None if it was not running).
        ``runtime_s``: how long it ran (ok), for the batcher's runtimes of its kind."""
        task = self.running.pop(task_id, None)
        if task is None:
            return None
        if runtime_s is not None and self.batcher is not None:
            self.batcher.observe(task.kind, runtime_s)
        key = self._batch_of.pop(task_id, None)
        if key is None:
            self.busy_cpu = max(0.0, self.busy_cpu - self._demand(task))
            return task
        left = self._batch_left[key]
        left[0] -= 1
        if left[0] <= 0:
            del self._batch_left[key]
            self.busy_cpu = max(0.0, self.busy_cpu - left[1])
        return task

    def snapshot(self) -> LocalSnapshot:
        return LocalSnapshot(self.name, self.slots, self.busy_cpu, len(self.queue),
                             len(self.running), self.queue.queued_cpu)


def latest_p90(task: Task) -> float | None:
    """The task's p90 as last predicted (re-predicted while queued, else at admission)."""
    return task.latest_p90_s if task.latest_p90_s is not None else task.predicted_p90_s
