"""The logic of the global scheduler: the ledger, task-tree release and placement.

Plain Python, no Ray. The GlobalScheduler actor wraps it; the simulator drives
it on virtual time. Invariant: a task stays in the ledger from admission until
its completion is recorded, and it is recorded once.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import pandas as pd

from ray_sched.policies.placement import LoadTable, PlacementPolicy, WorkerLoad
from ray_sched.task import Completion, Task

#: Decisions kept for ``story()``; enough for a long replay, bounded for a service.
DECISION_LOG_SIZE = 100_000


@dataclass(slots=True)
class LedgerEntry:
    task: Task
    state: str = "waiting"          # waiting (for parents) | placed
    worker: int | None = None
    placed_wall: float | None = None
    waiting_on: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Decision:
    """One line of the decision log: why a task went where it went."""

    wall: float
    task_id: str
    event: str                      # admitted | waiting | placed | completed | failed | ...
    target: str = ""
    reason: str = ""
    predicted_runtime_s: float | None = None

    def as_dict(self) -> dict:
        return {"wall": self.wall, "task_id": self.task_id, "event": self.event,
                "target": self.target, "reason": self.reason,
                "predicted_runtime_s": self.predicted_runtime_s}


class GlobalCore:
    """Ledger, dependency release and placement over a set of local schedulers.

    Args:
        placement: the placement policy.
        workers: one load record per local scheduler (index = worker id).
        clock: wall clock, replaceable for tests and the simulator.
    """

    def __init__(self, placement: PlacementPolicy, workers: list[WorkerLoad], *,
                 clock=time.time, decision_log_size: int = DECISION_LOG_SIZE):
        if not workers:
            raise ValueError("a global scheduler needs at least one local scheduler")
        self.placement = placement
        self.loads = LoadTable(workers)
        self.clock = clock
        self.ledger: dict[str, LedgerEntry] = {}
        self.finished: dict[str, bool] = {}       # task_id -> ok
        self.children: dict[str, list[str]] = {}  # parent id -> waiting children
        self.decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self.n_decisions = 0  # ever logged, for decisions/s
        self._seq = 0

    # -- admission and placement ---------------------------------------------------------
    def admit(self, tasks: list[Task]) -> tuple[list[tuple[int, Task]], list[Completion]]:
        """Take new tasks in; returns (placements to send, completions of tasks failed now)."""
        placements: list[tuple[int, Task]] = []
        failed: list[Completion] = []
        now = self.clock()
        for task in tasks:
            if task.task_id in self.ledger or task.task_id in self.finished:
                self._log(now, task.task_id, "duplicate-ignored", reason="already admitted")
                continue
            task.seq = self._seq
            self._seq += 1
            entry = LedgerEntry(task)
            self.ledger[task.task_id] = entry
            failed_parent = next((p for p in task.parents if self.finished.get(p) is False), None)
            if failed_parent is not None:
                failed.extend(self._fail_tree(task.task_id, f"parent {failed_parent!r} failed"))
                continue
            entry.waiting_on = {p for p in task.parents if p not in self.finished}
            if entry.waiting_on:
                for parent in entry.waiting_on:
                    self.children.setdefault(parent, []).append(task.task_id)
                self._log(now, task.task_id, "waiting",
                          reason=f"for {len(entry.waiting_on)} parent(s)")
            else:
                placements.append(self._place(entry, now))
        return placements, failed

    def _place(self, entry: LedgerEntry, now: float) -> tuple[int, Task]:
        task = entry.task
        index, reason = self.placement.choose(task, self.loads)
        self.loads.add(index, task.cpu, (task.runtime_s or 0.0) * task.cpu, _predicted_work(task))
        entry.state, entry.worker, entry.placed_wall = "placed", index, now
        self._log(now, task.task_id, "placed", self.loads.names[index], reason,
                  task.predicted_runtime_s)
        return index, task

    # -- failure -----------------------------------------------------------------------------
    def lose_worker(self, index: int, reason: str = "local scheduler lost", *,
                    replaced: bool = False) -> list[tuple[int, Task]]:
        """A local scheduler is gone (its actor died, its node was lost): place again every
        task it held that has no recorded completion. Returns the new placements.

        Each such task's ``attempts`` grows by one: the run it may have started there
        counts, whether or not it had started (the global scheduler cannot know).

        Args:
            replaced: a replacement already stands at ``index`` (empty, alive), so the
                tasks may go there too; otherwise ``index`` is marked dead.

        Raises:
            RuntimeError: no live local scheduler is left to place on.
        """
        now = self.clock()
        if not replaced:
            self.loads.set_alive(index, False)
        held = [entry for entry in self.ledger.values()
                if entry.state == "placed" and entry.worker == index]
        for entry in held:
            self._release_load(entry)
            entry.task.attempts += 1
            self._log(now, entry.task.task_id, "lost", self.loads.names[index], reason)
        return [self._place(entry, now) for entry in held]

    def move(self, task_ids: list[str], victim: int, thief: int, reason: str) -> list[Task]:
        """Tasks queued at ``victim`` (given up by it, never started) now belong to
        ``thief``: their load moves with them. Ids no longer placed at ``victim`` (recorded,
        or placed again after a loss meanwhile) are skipped. Returns the moved tasks."""
        now = self.clock()
        moved = []
        for task_id in task_ids:
            entry = self.ledger.get(task_id)
            if entry is None or entry.state != "placed" or entry.worker != victim:
                continue
            self._release_load(entry)
            task = entry.task
            self.loads.add(thief, task.cpu, (task.runtime_s or 0.0) * task.cpu,
                           _predicted_work(task))
            entry.worker = thief  # placed_wall stays the first placement's
            self._log(now, task_id, "stolen", self.loads.names[thief],
                      f"from {self.loads.names[victim]}: {reason}", task.predicted_runtime_s)
            moved.append(task)
        return moved

    def adopt(self, held: list[tuple[Task, int]], reason: str) -> None:
        """Tasks already at a local scheduler (queued or running there) enter the ledger as
        placed on it, without being sent again: a restarted global scheduler rebuilding its
        ledger. Tasks already known are skipped."""
        now = self.clock()
        for task, index in held:
            if task.task_id in self.ledger or task.task_id in self.finished:
                continue
            task.seq = self._seq
            self._seq += 1
            self.ledger[task.task_id] = LedgerEntry(task, "placed", index, now)
            self.loads.add(index, task.cpu, (task.runtime_s or 0.0) * task.cpu,
                           _predicted_work(task))
            self._log(now, task.task_id, "recovered", self.loads.names[index], reason)

    def log_event(self, event: str, target: str, reason: str = "") -> None:
        """A decision about a local scheduler rather than a task (``task_id`` is empty)."""
        self._log(self.clock(), "", event, target, reason)

    # -- completion ------------------------------------------------------------------------
    def complete(self, completions: list[Completion]
                 ) -> tuple[list[Completion], list[tuple[int, Task]]]:
        """Record completions once each and release children whose parents are all done.

        Returns:
            (completions recorded now, including children failed because a parent
            failed; placements of released children)
        """
        recorded: list[Completion] = []
        placements: list[tuple[int, Task]] = []
        now = self.clock()
        for completion in completions:
            entry = self.ledger.get(completion.task_id)
            if entry is None or entry.state != "placed":
                self._log(now, completion.task_id, "duplicate-completion-ignored",
                          reason=completion.status)
                continue
            del self.ledger[completion.task_id]
            self._release_load(entry)
            completion.placed_wall = entry.placed_wall
            completion.submitted_wall = entry.task.submitted_at
            completion.predicted_runtime_s = entry.task.predicted_runtime_s
            completion.predicted_p90_s = entry.task.predicted_p90_s
            completion.received_wall = entry.task.received_wall
            ok = completion.status == "ok"
            self.finished[completion.task_id] = ok
            recorded.append(completion)
            self._log(now, completion.task_id, "completed" if ok else "failed",
                      completion.worker, completion.error[:200])
            if ok:
                placements.extend(self._release_children(completion.task_id, now))
            else:
                recorded.extend(self._fail_children(completion.task_id))
        return recorded, placements

    def _release_load(self, entry: LedgerEntry) -> None:
        task = entry.task
        self.loads.release(entry.worker, task.cpu, (task.runtime_s or 0.0) * task.cpu,
                           _predicted_work(task))

    @property
    def workers(self) -> list[WorkerLoad]:
        """A snapshot of every local scheduler's load (index = worker id)."""
        return list(self.loads)

    def _release_children(self, parent_id: str, now: float) -> list[tuple[int, Task]]:
        placements = []
        for child_id in self.children.pop(parent_id, ()):
            entry = self.ledger.get(child_id)
            if entry is None or entry.state != "waiting":
                continue
            entry.waiting_on.discard(parent_id)
            if not entry.waiting_on:
                placements.append(self._place(entry, now))
        return placements

    def _fail_children(self, parent_id: str) -> list[Completion]:
        failed = []
        for child_id in self.children.pop(parent_id, ()):
            if child_id in self.ledger:
                failed.extend(self._fail_tree(child_id, f"parent {parent_id!r} failed"))
        return failed

    def _fail_tree(self, root_id: str, reason: str) -> list[Completion]:
        """Fail a waiting task and every waiting descendant, iteratively (trees can be deep)."""
        failed = []
        now = self.clock()
        stack = [(root_id, reason)]
        while stack:
            task_id, why = stack.pop()
            entry = self.ledger.pop(task_id, None)
            if entry is None:
                continue
            for parent in entry.waiting_on:
                siblings = self.children.get(parent)
                if siblings and task_id in siblings:
                    siblings.remove(task_id)
            self.finished[task_id] = False
            failed.append(Completion(task_id, "failed", attempts=0, error=why,
                                     submitted_wall=entry.task.submitted_at))
            self._log(now, task_id, "failed", reason=why)
            for child_id in self.children.pop(task_id, ()):
                stack.append((child_id, f"parent {task_id!r} failed"))
        return failed

    # -- queries ---------------------------------------------------------------------------
    def outstanding(self) -> int:
        """Tasks admitted and not yet recorded (waiting or placed)."""
        return len(self.ledger)

    def story(self, task_id: str) -> list[dict]:
        """Every logged decision about one task, oldest first."""
        return [d.as_dict() for d in self.decisions if d.task_id == task_id]

    def decision_frame(self, epoch: float = 0.0):
        """The decision log as a frame (``decisions.parquet``): ``t_s`` counts from
        ``epoch``, then ``task_id``, ``event``, ``target``, ``reason``,
        ``predicted_runtime_s``. The oldest are gone past ``decision_log_size``."""
        frame = pd.DataFrame([d.as_dict() for d in self.decisions],
                             columns=["wall", "task_id", "event", "target", "reason",
                                      "predicted_runtime_s"])
        frame.insert(0, "t_s", frame.pop("wall").astype(float) - epoch)
        frame["predicted_runtime_s"] = frame["predicted_runtime_s"].astype(float)
        return frame

    def _log(self, wall: float, task_id: str, event: str, target: str = "", reason: str = "",
             predicted: float | None = None) -> None:
        self.decisions.append(Decision(wall, task_id, event, target, reason, predicted))
        self.n_decisions += 1


def _predicted_work(task: Task) -> float:
    """Slot-seconds the learner expects a task to take (0 when nothing was predicted)."""
    return (task.predicted_mean_s or task.predicted_runtime_s or 0.0) * task.cpu
