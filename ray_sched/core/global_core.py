"""The logic of the global scheduler: the ledger, task-tree release, placement, recovery,
work stealing and forecast steering.

Plain Python, no Ray. Events go in (``on_arrivals``, ``on_completions``, ``on_tick``,
``on_given_up``, ``on_lost``, ``rebuild``) and actions come out
(:mod:`ray_sched.core.actions`): the GlobalScheduler actor carries them out over Ray, the
simulator on virtual time. Invariant: a task stays in the ledger from admission until
its completion is recorded, and it is recorded once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import pandas as pd

from ray_sched.control.stealing import MIN_STEAL_RUNTIME_S, plan_steals
from ray_sched.core.actions import Action, Hint, Learn, Place, Record, Steal
from ray_sched.policies.placement import LoadTable, PlacementPolicy, WorkerLoad
from ray_sched.task import Completion, Task, without_payload

#: Decisions kept for ``story()``; enough for a long replay, bounded for a service.
DECISION_LOG_SIZE = 100_000
#: The workload forecast is acted on at most this often (its windows are a second).
FORECAST_EVERY_S = 1.0
#: The forecast looks this many of its windows ahead (a burst is acted on that early).
FORECAST_HORIZON_WINDOWS = 2


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
        steal: plan work stealing at each tick (with more than one local scheduler).
        forecaster: a :class:`ray_sched.control.forecast.WorkloadForecaster` fed with
            arrivals and acted on at ticks (None: no forecast).
        adaptive: with a forecaster, tell each local scheduler the slots it will need
            (:class:`~ray_sched.core.actions.Hint`).
        learning: completions come back with a :class:`~ray_sched.core.actions.Learn`
            action (a learner is fed).
        keep_tasks: recorded completions carry their task records (for the monitor).
    """

    def __init__(self, placement: PlacementPolicy, workers: list[WorkerLoad], *,
                 clock=time.time, decision_log_size: int = DECISION_LOG_SIZE,
                 steal: bool = False, forecaster=None, adaptive: bool = False,
                 learning: bool = False, keep_tasks: bool = False):
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
        self.steal = steal
        self.forecaster = forecaster
        self.adaptive = adaptive
        self.learning = learning
        self.keep_tasks = keep_tasks
        self.n_steals = 0
        self.n_tasks_stolen = 0
        self.n_rebuilt = (0, 0)  # the last rebuild: tasks kept where held, admitted anew
        self._forecast_checked = -math.inf

    # -- events in, actions out ----------------------------------------------------------
    def on_arrivals(self, tasks: list[Task]) -> list[Action]:
        """New tasks: placements, and the completions of those failed at once (a failed
        parent). Arrivals feed the forecast."""
        if self.forecaster is not None:
            self.forecaster.observe([t.kind for t in tasks], [t.region for t in tasks],
                                    [_work_s(t) for t in tasks])
        placements, failed = self.admit(tasks)
        actions = self.places(placements)
        if failed:
            actions.append(Record(failed, {t.task_id: t for t in tasks}))
        return actions

    def on_completions(self, index: int | None, completions: list[Completion],
                       state: dict | None = None) -> list[Action]:
        """Completions from the local scheduler at ``index``, with its ``state`` (slots,
        admitting) when it sent one: what to learn, children to place, what is recorded."""
        if index is not None and state is not None:
            self.on_local_state(index, state.get("slots"), state.get("admitting", True))
        actions: list[Action] = []
        # Each completion's task while the ledger still has it (a duplicate: None).
        known = [(c, entry.task) for c in completions
                 if (entry := self.ledger.get(c.task_id)) is not None]
        if self.learning:
            learn = [(without_payload(task), c.measured_runtime_s) for c, task in known
                     if c.status == "ok" and c.measured_runtime_s is not None]
            if learn:
                actions.append(Learn([task for task, _ in learn], [r for _, r in learn]))
        tasks = {c.task_id: task for c, task in known} if self.keep_tasks else {}
        recorded, placements = self.complete(completions)
        actions.extend(self.places(placements))
        if recorded:
            actions.append(Record(recorded, tasks))
        return actions

    def on_local_state(self, index: int, slots: float | None, admitting: bool) -> None:
        """A local scheduler's slots (adaptive concurrency moves them) and whether it admits
        new tasks (not while its node's memory is short) go into the load table."""
        loads = self.loads
        if slots and slots != loads.slots[index]:
            loads.slots[index] = slots
        if admitting != bool(loads.admitting[index]):
            loads.set_admitting(index, admitting)
            self.log_event("admitting" if admitting else "not-admitting", loads.names[index],
                           "memory back under its resume level" if admitting
                           else "its node's memory is short: placing elsewhere")

    def on_tick(self, skip: set[int] = frozenset()) -> list[Action]:
        """A control pass: work steals to ask for (none involving the local schedulers in
        ``skip``, e.g. being replaced) and, at most every :data:`FORECAST_EVERY_S`, the
        forecast's steering (see :meth:`steer`)."""
        actions: list[Action] = []
        if self.steal and len(self.loads) > 1:
            actions.extend(Steal(s.victim, s.thief, s.max_tasks, MIN_STEAL_RUNTIME_S, s.reason)
                           for s in plan_steals(self.loads)
                           if s.victim not in skip and s.thief not in skip)
        now = self.clock()
        if self.forecaster is not None and now - self._forecast_checked >= FORECAST_EVERY_S:
            self._forecast_checked = now
            actions.extend(self.steer())
        return actions

    def on_given_up(self, steal: Steal, task_ids: list[str]) -> list[Action]:
        """The victim of ``steal`` gave up ``task_ids``: they move to the thief."""
        moved = self.move(task_ids, steal.victim, steal.thief, steal.reason)
        if not moved:
            return []
        self.n_steals += 1
        self.n_tasks_stolen += len(moved)
        return [Place(steal.thief, moved)]

    def on_lost(self, index: int, reason: str, *, replaced: bool,
                where: str = "") -> list[Action]:
        """The local scheduler at ``index`` is lost (``replaced``: a fresh one stands there
        already, ``where`` says where): every task it held goes out again."""
        placements = self.lose_worker(index, reason, replaced=replaced)
        if replaced:
            placed = f"{len(placements)} task(s) placed again"
            self.log_event("replaced", self.loads.names[index],
                           f"{where}; {placed}" if where else placed)
        return self.places(placements)

    def steer(self) -> list[Action]:
        """Per region: when the forecast work overflows its slots within the horizon,
        steer tasks free to go elsewhere away from it (an expected wait in the load table)
        and, when adaptive, tell each of its local schedulers the slots it will need."""
        loads, forecaster = self.loads, self.forecaster
        horizon = FORECAST_HORIZON_WINDOWS
        forecast = forecaster.forecast(horizon, by="region")
        actions: list[Action] = []
        for region, members in self.regions().items():
            capacity = float(loads.slots[members].sum())
            need = forecast.get(region, {}).get("work_s_per_s", 0.0)
            burst = forecaster.burst_ahead(region, capacity, horizon)
            excess_s = max(0.0, need - capacity) * horizon * forecaster.window_s
            loads.forecast_wait_s[members] = excess_s / capacity if burst else 0.0
            if self.adaptive:
                actions.extend(Hint(index, need * float(loads.slots[index]) / capacity)
                               for index in members)
        return actions

    def rebuild(self, tasks: list[Task], failed_ids: list[str],
                held: list[list[str] | None],
                held_back: list[tuple[int | None, list[Completion]]]) -> list[Action]:
        """A restarted global scheduler's ledger, from what survived it.

        Args:
            tasks: every task the driver submitted whose completion it has not received.
            failed_ids: tasks recorded as failed (for the parents of waiting tasks; every
                other recorded parent was ok).
            held: per local scheduler, the ids it holds (queued, running, finished and
                not acknowledged), None where it did not answer.
            held_back: completions that reached the restarted scheduler before this, with
                the index of the local scheduler that sent them: they count as held there.

        A held task goes back into the ledger where it is and completes as usual; every
        other task is admitted anew (it may run again).

        Returns:
            The placements, and a record of the tasks failed now.
        """
        where = {task_id: index for index, ids in enumerate(held) if ids is not None
                 for task_id in ids}
        for index, completions in held_back:
            if index is not None:
                where.update((c.task_id, index) for c in completions)
        pending = {task.task_id for task in tasks}
        failed = set(failed_ids)
        for task in tasks:
            for parent in task.parents:
                if parent not in pending:
                    self.finished[parent] = parent not in failed
        kept = [(task, where[task.task_id]) for task in tasks if task.task_id in where]
        again = [task for task in tasks if task.task_id not in where]
        self.adopt(kept, "held by its local scheduler when the global scheduler restarted")
        placements, failed_now = self.admit(again)
        actions = self.places(placements)
        if failed_now:
            actions.append(Record(failed_now, {t.task_id: t for t in again}))
        self.n_rebuilt = (len(kept), len(again))
        return actions

    def places(self, placements: list[tuple[int, Task]]) -> list[Action]:
        """Placements as one :class:`~ray_sched.core.actions.Place` per local scheduler."""
        by_worker: dict[int, list[Task]] = {}
        for index, task in placements:
            by_worker.setdefault(index, []).append(task)
        return [Place(index, by_worker[index]) for index in sorted(by_worker)]

    def regions(self) -> dict[str, list[int]]:
        """Local scheduler indices per region (``""`` for those without one)."""
        groups: dict[str, list[int]] = {}
        for index, region in enumerate(self.loads.regions):
            groups.setdefault(region or "", []).append(index)
        return groups

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


def _work_s(task: Task) -> float:
    """A task's predicted work in slot-seconds, for the forecast (0 when unpredicted)."""
    runtime = task.predicted_mean_s or task.predicted_runtime_s or 0.0
    return max(0.0, float(runtime)) * task.cpu
