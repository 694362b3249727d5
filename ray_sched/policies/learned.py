"""The learned policy: order by one score built from the learner's predictions, and place
where the predicted completion is soonest.

Ordering score (lower runs first), every term in natural-log units of runtime::

    score = log(predicted mean runtime)                   shortest expected first
          + WIDTH_WEIGHT * log(cpu)                       ... in slot-seconds (area)
          - PRIORITY_WEIGHT * priority                    declared (or predicted) 0..9
          - DEADLINE_WEIGHT * [deadline at risk]          now + p90 > deadline - margin,
                                                          while now + p50 still makes it
          - AGE_WEIGHT * log1p(wait / predicted p50)      aging: nothing starves
          + FAIRNESS_WEIGHT * tenant's excess share       served share - demanded share,
                                                          relative to the demanded share

The mean (not the median) of the predicted distribution is used, so that an uncertain
task with a heavy tail is not mistaken for a short one (3Sigma's lesson). A task that
takes several slots holds them all while it runs, and every task behind it waits for
all of them: ordering by predicted area (runtime x slots) is the parallel form of
shortest-first (with a wide task's runtime mispredicted, the cost scales with its width).
"""

from __future__ import annotations

import math

import numpy as np

from ray_sched.params import check_range
from ray_sched.policies.ordering import OrderingPolicy
from ray_sched.policies.placement import PlacementPolicy, expected_wait_s
from ray_sched.task import Task

#: A priority level is worth this many log units of runtime: 9 vs 0 = e^0.9 = 2.5x shorter
#: (0.2 cost 1-4% of mean JCT on bursty traces in the simulator for little gain).
PRIORITY_WEIGHT = 0.1
#: A task whose deadline is at risk (but still reachable) jumps e^1.5 = 4.5x ahead.
DEADLINE_WEIGHT = 1.5
#: Safety margin before a deadline, as a fraction of the task's predicted p90.
DEADLINE_MARGIN = 0.25
#: Aging: waiting as long as its own p50 is worth log1p(1) * AGE_WEIGHT = 0.35 log units.
AGE_WEIGHT = 0.5
#: A tenant served twice its demanded share loses FAIRNESS_WEIGHT log units.
FAIRNESS_WEIGHT = 0.5
#: Width: log(cpu) counts this much; 1 orders by predicted slot-seconds. On 6 windows of
#: the NASA iPSC log (1-8 slots a job), simulated: 2.29x -> 2.10x the clairvoyant
#: oracle's mean JCT (which orders by true runtime alone; window 5000: 2.96x -> 2.10x);
#: on the synthetic scenarios (2% of tasks take 2 slots) within noise.
WIDTH_WEIGHT = 1.0
#: Predictions used for tasks that reach the queue without any (learner unavailable).
FALLBACK_RUNTIME_S = 0.5
#: Local schedulers re-predict their waiting tasks this often (seconds): the learner has
#: seen more completions since they were queued (5-10% of mean JCT in bursts, simulated).
REFRESH_EVERY_S = 0.5
#: ... but only the ones due to run first, at most this many: past them a refresh of a long
#: queue (an overloaded receiver's) cost more CPU than its reordering could win back.
REFRESH_MAX_TASKS = 256
#: Cap on the fairness term, so one tenant's history cannot dominate every other term.
FAIRNESS_CAP = 2.0


class ScoredQueue:
    """A queue whose order is recomputed at each pop from per-task arrays (numpy, O(n)).

    Rows are kept in preallocated arrays and removed by swapping in the last row, so
    push and remove are O(1) and a pop scores the whole queue in one vectorised pass.
    """

    _FIELDS = ("log_mean", "log_p50", "p50", "p90", "priority", "deadline", "enqueued",
               "seq", "tenant", "log_cpu")

    def __init__(self, ordering: LearnedOrdering, capacity: int = 256):
        self.ordering = ordering
        self._tasks: list[Task | None] = [None] * capacity
        self._row: dict[str, int] = {}
        self._arrays = {name: np.zeros(capacity) for name in self._FIELDS}
        self._n = 0
        self._cpu = 0.0
        self._tenant_code: dict[str, int] = {}
        self.demand_s = np.zeros(8)   # predicted work arrived, per tenant code
        self.served_s = np.zeros(8)   # predicted work started, per tenant code

    def __len__(self) -> int:
        return self._n

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._row

    def __iter__(self):
        return iter([t for t in self._tasks[: self._n]])

    @property
    def queued_cpu(self) -> float:
        return self._cpu

    def _grow(self) -> None:
        size = 2 * len(self._tasks)
        self._tasks.extend([None] * (size - len(self._tasks)))
        for name, array in self._arrays.items():
            grown = np.zeros(size)
            grown[: len(array)] = array
            self._arrays[name] = grown

    def _tenant(self, tenant: str) -> int:
        code = self._tenant_code.get(tenant)
        if code is None:
            code = self._tenant_code[tenant] = len(self._tenant_code)
            if code >= len(self.demand_s):
                self.demand_s = np.concatenate([self.demand_s, np.zeros(len(self.demand_s))])
                self.served_s = np.concatenate([self.served_s, np.zeros(len(self.served_s))])
        return code

    def push(self, task: Task, now: float = 0.0) -> None:
        if task.task_id in self._row:
            raise ValueError(f"task {task.task_id!r} is already queued")
        if self._n == len(self._tasks):
            self._grow()
        row = self._n
        self._write_predictions(row, task)
        a = self._arrays
        # Waits and deadlines on the clock of the scheduler that took the task in.
        a["deadline"][row] = (math.inf if task.deadline_s is None
                              else task.submitted_at + task.deadline_s)
        a["enqueued"][row] = task.submitted_at
        a["seq"][row] = task.seq
        a["log_cpu"][row] = math.log(max(task.cpu, 1e-3))
        code = self._tenant(task.tenant)
        a["tenant"][row] = code
        self.demand_s[code] += math.exp(a["log_mean"][row]) * task.cpu
        self._tasks[row] = task
        self._row[task.task_id] = row
        self._n += 1
        self._cpu += task.cpu

    def queued(self) -> list[Task]:
        """The queued tasks (in no particular order)."""
        return self._tasks[: self._n]

    def refresh(self, task_ids: list[str], p50_s, p90_s, mean_s) -> None:
        """New runtime predictions for queued tasks (the learner has learned since they were
        queued); ids no longer queued are skipped. The tasks keep the prediction made
        before placement, which is what results report, and carry the new p90 as
        ``latest_p90_s`` (what decides inline or remote execution)."""
        for task_id, p50, p90, mean in zip(task_ids, p50_s, p90_s, mean_s):
            row = self._row.get(task_id)
            if row is not None:
                self._write_runtime(row, float(p50), float(p90), float(mean))
                self._tasks[row].latest_p90_s = float(p90)

    def _write_predictions(self, row: int, task: Task) -> None:
        p50 = task.predicted_runtime_s or FALLBACK_RUNTIME_S
        self._write_runtime(row, p50, task.predicted_p90_s or max(p50, FALLBACK_RUNTIME_S),
                            task.predicted_mean_s or p50)
        self._arrays["priority"][row] = (task.effective_priority
                                         if task.effective_priority is not None
                                         else task.priority)

    def _write_runtime(self, row: int, p50: float, p90: float, mean: float) -> None:
        a = self._arrays
        a["log_mean"][row] = math.log(max(mean, 1e-6))
        a["log_p50"][row] = math.log(max(p50, 1e-6))
        a["p50"][row], a["p90"][row] = p50, p90

    def _scores(self, now: float) -> np.ndarray:
        n = self._n
        a = {name: array[:n] for name, array in self._arrays.items()}
        return self.ordering.scores(a, now, self.demand_s, self.served_s)

    def peek(self, now: float | None = None) -> Task | None:
        """The task to run next at time ``now`` (default: the latest enqueue time, so aging
        and deadlines stay meaningful whatever clock the tasks were stamped with)."""
        if not self._n:
            return None
        if self._n == 1:
            return self._tasks[0]
        if now is None:
            now = float(self._arrays["enqueued"][: self._n].max())
        scores = self._scores(now)
        return self._tasks[int(np.argmin(scores))]

    def head(self, k: int, now: float | None = None) -> list[Task]:
        """The (up to) ``k`` tasks that would run first at time ``now``, in no order."""
        if self._n <= k:
            return self.queued()
        if now is None:
            now = float(self._arrays["enqueued"][: self._n].max())
        rows = np.argpartition(self._scores(now), k)[:k]
        return [self._tasks[int(row)] for row in rows]

    def first(self, k: int, now: float | None = None) -> list[Task]:
        """The (up to) ``k`` tasks that would run first at time ``now``, in order: one
        scoring pass serves every slot that freed at once."""
        if not self._n:
            return []
        if now is None:
            now = float(self._arrays["enqueued"][: self._n].max())
        if self._n == 1:
            return [self._tasks[0]]
        scores = self._scores(now)
        if k < self._n:
            rows = np.argpartition(scores, k)[:k]
            rows = rows[np.argsort(scores[rows], kind="stable")]
        else:
            rows = np.argsort(scores, kind="stable")
        return [self._tasks[int(row)] for row in rows]

    def last(self, k: int, now: float | None = None) -> list[Task]:
        """The (up to) ``k`` tasks that would run last at time ``now``, last first (what a
        local scheduler gives up to a thief)."""
        if self._n <= 1 or k <= 0:
            return self.queued()[:max(k, 0)]
        if now is None:
            now = float(self._arrays["enqueued"][: self._n].max())
        scores = -self._scores(now)
        rows = (np.argpartition(scores, k)[:k] if k < self._n else np.arange(self._n))
        rows = rows[np.argsort(scores[rows], kind="stable")]
        return [self._tasks[int(row)] for row in rows]

    def pop(self, now: float | None = None) -> Task:
        head = self.peek(now)
        if head is None:
            raise IndexError("pop from an empty ScoredQueue")
        return self.remove(head.task_id, started=True)

    def remove(self, task_id: str, *, started: bool = True) -> Task | None:
        """Take a task out; ``started`` counts its predicted work as served to its tenant."""
        row = self._row.pop(task_id, None)
        if row is None:
            return None
        task = self._tasks[row]
        if started:
            self.served_s[int(self._arrays["tenant"][row])] += (
                math.exp(self._arrays["log_mean"][row]) * task.cpu)
        last = self._n - 1
        if row != last:
            moved = self._tasks[last]
            self._tasks[row] = moved
            self._row[moved.task_id] = row
            for array in self._arrays.values():
                array[row] = array[last]
        self._tasks[last] = None
        self._n -= 1
        self._cpu -= task.cpu
        return task

    def drain(self) -> list[Task]:
        tasks = []
        while self._n:
            tasks.append(self.pop())
        return tasks


class LearnedOrdering(OrderingPolicy):
    """Order by the learner's predictions (see the module docstring for the score).

    Args:
        priority_weight, deadline_weight, age_weight, fairness_weight, width_weight: the
            score's weights (log units of runtime; 0 switches a term off).
    """

    name = "ml"
    needs_predictions = True

    def __init__(self, *, priority_weight: float = PRIORITY_WEIGHT,
                 deadline_weight: float = DEADLINE_WEIGHT, age_weight: float = AGE_WEIGHT,
                 fairness_weight: float = FAIRNESS_WEIGHT,
                 deadline_margin: float = DEADLINE_MARGIN, width_weight: float = WIDTH_WEIGHT):
        for label, value in (("priority_weight", priority_weight),
                             ("deadline_weight", deadline_weight), ("age_weight", age_weight),
                             ("fairness_weight", fairness_weight),
                             ("deadline_margin", deadline_margin),
                             ("width_weight", width_weight)):
            check_range(label, value, 0.0)
        self.priority_weight = priority_weight
        self.deadline_weight = deadline_weight
        self.age_weight = age_weight
        self.fairness_weight = fairness_weight
        self.deadline_margin = deadline_margin
        self.width_weight = width_weight

    def key(self, task: Task) -> tuple:  # a static approximation, for heap users
        return (math.log(max(task.predicted_mean_s or FALLBACK_RUNTIME_S, 1e-6))
                + self.width_weight * math.log(max(task.cpu, 1e-3))
                - self.priority_weight * (task.effective_priority or task.priority),
                task.arrival_s)

    def make_queue(self) -> ScoredQueue:
        return ScoredQueue(self)

    def scores(self, a: dict[str, np.ndarray], now: float, demand_s: np.ndarray,
               served_s: np.ndarray) -> np.ndarray:
        """Scores of the queued rows (arrays of shape (n,)); lower runs first."""
        score = a["log_mean"] - self.priority_weight * a["priority"]
        if self.width_weight:
            score = score + self.width_weight * a["log_cpu"]
        if self.age_weight:
            wait = np.maximum(now - a["enqueued"], 0.0)
            score = score - self.age_weight * np.log1p(wait / a["p50"])
        if self.deadline_weight:
            finite = np.isfinite(a["deadline"])
            if finite.any():
                at_risk = (finite & (now + a["p90"] > a["deadline"] - self.deadline_margin
                                     * a["p90"]) & (now + a["p50"] <= a["deadline"]))
                score = score - self.deadline_weight * at_risk
        if self.fairness_weight:
            total_demand = demand_s.sum()
            total_served = served_s.sum()
            if total_demand > 0 and total_served > 0:
                demand_share = demand_s / total_demand
                excess = np.where(demand_share > 0,
                                  (served_s / total_served - demand_share)
                                  / np.maximum(demand_share, 1e-9), 0.0)
                excess = np.clip(excess, -FAIRNESS_CAP, FAIRNESS_CAP)
                score = score + self.fairness_weight * excess[a["tenant"].astype(np.int64)]
        # FIFO among equals: a tiny tie-break by arrival sequence.
        return score + 1e-12 * a["seq"]


class ExpectedCompletion(PlacementPolicy):
    """Where the task is expected to finish first: at once plus its predicted runtime where
    a slot is free for it, else after the predicted backlog per slot, plus the wait the
    workload forecast expects where a burst is coming (``LoadTable.forecast_wait_s``; it
    matters to tasks free to go to more than one region). Among schedulers with a free
    slot, the least loaded (ties at random)."""

    name = "expected-completion"
    needs_predictions = True

    def _pick(self, task, loads, options):
        runtime = task.predicted_mean_s or task.predicted_runtime_s or FALLBACK_RUNTIME_S
        wait = (expected_wait_s(task, loads, options, loads.predicted_backlog_s)
                + loads.forecast_wait_s[options])
        index = self._least(options, wait + runtime)
        waited = float(wait[options == index][0])
        reason = ("a free slot" if waited < 1e-3
                  else f"backlog {float(loads.predicted_backlog_s[index]):.3f} s")
        return index, f"expected completion {waited + runtime:.3f} s ({reason})"
