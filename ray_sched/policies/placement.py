"""Placement policies: which local scheduler receives a task.

Every policy first narrows the candidates to the local schedulers of the
task's region (when the task names a region that has any), then applies its
own rule among them. Policies see a load snapshot per local scheduler and
never talk to Ray.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ray_sched.task import Task


@dataclass(slots=True)
class WorkerLoad:
    """What the global scheduler knows of one local scheduler when it places a task.

    ``outstanding_cpu`` counts slots wanted by every task placed there and not yet
    completed (queued and running); ``true_backlog_s`` sums their true runtimes times
    their cpu, in slot-seconds (read only by the oracle); ``predicted_backlog_s`` the
    same with predicted (mean) runtimes.
    """

    name: str
    slots: float
    region: str | None = None
    node: str = ""
    outstanding_cpu: float = 0.0
    outstanding_tasks: int = 0
    true_backlog_s: float = 0.0
    predicted_backlog_s: float = 0.0
    alive: bool = True

    @property
    def load(self) -> float:
        """Outstanding slot demand per slot: 1.0 means every slot is spoken for."""
        return self.outstanding_cpu / self.slots


class LoadTable:
    """The loads of every local scheduler as numpy columns, so that a placement reads whole
    columns instead of looping over thousands of records in Python.

    Indexing (``table[i]``) gives a :class:`WorkerLoad` snapshot of one row.

    Args:
        workers: one record per local scheduler (index = worker id).
    """

    COLUMNS = ("slots", "outstanding_cpu", "outstanding_tasks", "true_backlog_s",
               "predicted_backlog_s")

    def __init__(self, workers: Sequence[WorkerLoad]):
        self.names = [w.name for w in workers]
        self.regions = [w.region for w in workers]
        self.nodes = [w.node for w in workers]
        self.slots = np.array([w.slots for w in workers], dtype=np.float64)
        self.outstanding_cpu = np.array([w.outstanding_cpu for w in workers], dtype=np.float64)
        self.outstanding_tasks = np.array([w.outstanding_tasks for w in workers], dtype=np.int64)
        self.true_backlog_s = np.array([w.true_backlog_s for w in workers], dtype=np.float64)
        self.predicted_backlog_s = np.array([w.predicted_backlog_s for w in workers],
                                            dtype=np.float64)
        self.alive = np.array([w.alive for w in workers], dtype=bool)
        # Expected extra wait per slot where the forecast sees a burst coming (seconds).
        self.forecast_wait_s = np.zeros(len(workers), dtype=np.float64)
        # False while a local scheduler refuses new tasks (its node's memory is short).
        self.admitting = np.ones(len(workers), dtype=bool)
        self._candidates: dict[str | None, np.ndarray] = {}

    @classmethod
    def of(cls, loads: LoadTable | Sequence[WorkerLoad]) -> LoadTable:
        return loads if isinstance(loads, LoadTable) else cls(loads)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> WorkerLoad:
        i = int(index)
        return WorkerLoad(name=self.names[i], slots=float(self.slots[i]),
                          region=self.regions[i], node=self.nodes[i],
                          outstanding_cpu=float(self.outstanding_cpu[i]),
                          outstanding_tasks=int(self.outstanding_tasks[i]),
                          true_backlog_s=float(self.true_backlog_s[i]),
                          predicted_backlog_s=float(self.predicted_backlog_s[i]),
                          alive=bool(self.alive[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def load(self, options: np.ndarray) -> np.ndarray:
        """Outstanding slot demand per slot of ``options``."""
        return self.outstanding_cpu[options] / self.slots[options]

    def set_alive(self, index: int, alive: bool) -> None:
        self.alive[index] = alive
        self._candidates.clear()

    def set_admitting(self, index: int, admitting: bool) -> None:
        if bool(self.admitting[index]) != admitting:
            self.admitting[index] = admitting
            self._candidates.clear()

    def candidates(self, region: str | None) -> np.ndarray:
        """Indices of live local schedulers in ``region``, or of all live ones (cached until
        a scheduler's liveness changes). Those not admitting are left out while any other
        live one admits."""
        cached = self._candidates.get(region)
        if cached is None:
            alive = np.flatnonzero(self.alive)
            if not len(alive):
                raise RuntimeError("no live local scheduler to place on")
            admitting = np.flatnonzero(self.alive & self.admitting)
            if len(admitting):
                alive = admitting
            cached = alive
            if region is not None:
                local = np.array([i for i in alive.tolist() if self.regions[i] == region],
                                 dtype=np.int64)
                if len(local):
                    cached = local
            self._candidates[region] = cached
        return cached

    def add(self, index: int, cpu: float, true_work_s: float, predicted_work_s: float) -> None:
        """A task placed on ``index``: its slots and work count there until it completes."""
        self.outstanding_cpu[index] += cpu
        self.outstanding_tasks[index] += 1
        self.true_backlog_s[index] += true_work_s
        self.predicted_backlog_s[index] += predicted_work_s

    def release(self, index: int, cpu: float, true_work_s: float,
                predicted_work_s: float) -> None:
        """A task of ``index`` completed (clipped at zero; exactly zero once idle)."""
        tasks = max(0, int(self.outstanding_tasks[index]) - 1)
        self.outstanding_tasks[index] = tasks
        if tasks == 0:  # no float residue on an idle scheduler
            self.outstanding_cpu[index] = self.true_backlog_s[index] = 0.0
            self.predicted_backlog_s[index] = 0.0
            return
        self.outstanding_cpu[index] = max(0.0, self.outstanding_cpu[index] - cpu)
        self.true_backlog_s[index] = max(0.0, self.true_backlog_s[index] - true_work_s)
        self.predicted_backlog_s[index] = max(0.0, self.predicted_backlog_s[index]
                                              - predicted_work_s)


def candidates(task: Task, loads: LoadTable | Sequence[WorkerLoad]) -> list[int]:
    """Indices of live local schedulers in the task's region, or of all live ones."""
    return LoadTable.of(loads).candidates(task.region).tolist()


class PlacementPolicy:
    """Base class: ``choose(task, loads)`` returns the index of the chosen local scheduler."""

    name = "base"
    clairvoyant = False
    needs_predictions = False

    def __init__(self, *, seed: int | None = 0):
        self._rng = random.Random(seed)

    def choose(self, task: Task, loads: LoadTable | Sequence[WorkerLoad]) -> tuple[int, str]:
        """Returns (index into ``loads``, a short reason for the decision log)."""
        table = LoadTable.of(loads)
        options = table.candidates(task.region)
        if len(options) == 1:
            return int(options[0]), "only candidate"
        index, reason = self._pick(task, table, options)
        return int(index), reason

    def _pick(self, task: Task, loads: LoadTable, options: np.ndarray) -> tuple[int, str]:
        raise NotImplementedError

    def _least(self, options: np.ndarray, values: np.ndarray) -> int:
        """The option of least value; ties broken at random so that equal loads do not all
        pile on the first scheduler."""
        tied = options[values == values.min()]
        return int(tied[0]) if len(tied) == 1 else self._rng.choice(tied.tolist())

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RoundRobin(PlacementPolicy):
    """Each candidate in turn, ignoring load."""

    name = "round-robin"

    def __init__(self, *, seed: int | None = 0):
        super().__init__(seed=seed)
        self._turns: dict[tuple[int, ...], int] = {}  # one turn per candidate set (region)

    def _pick(self, task, loads, options):
        key = options.tobytes()
        turn = self._turns.get(key, -1) + 1
        self._turns[key] = turn
        return options[turn % len(options)], "round-robin turn"


class LeastLoaded(PlacementPolicy):
    """The candidate with the least outstanding slot demand per slot."""

    name = "least-loaded"

    def _pick(self, task, loads, options):
        index = self._least(options, loads.load(options))
        return index, f"least loaded ({loads.load(index):.2f} per slot)"


class PowerOfTwo(PlacementPolicy):
    """Two random candidates, the less loaded of them (Mitzenmacher's power of two choices)."""

    name = "power-of-two"

    def _pick(self, task, loads, options):
        i, j = self._rng.sample(range(len(options)), 2)
        a, b = int(options[i]), int(options[j])
        index = a if loads.load(a) <= loads.load(b) else b
        return index, f"power-of-two between {loads.names[a]} and {loads.names[b]}"


def expected_wait_s(task: Task, loads: LoadTable, options: np.ndarray,
                    backlog_s: np.ndarray) -> np.ndarray:
    """Per option, how long ``task`` would wait to start: 0 where a slot is free for it,
    else the backlog (slot-seconds, of all ``loads``) over the slots. A tiny load term
    orders the otherwise equal free schedulers, least loaded first."""
    slots = loads.slots[options]
    free = loads.outstanding_cpu[options] + min(task.cpu, 1.0) <= slots + 1e-9
    return np.where(free, 0.0, backlog_s[options] / slots) + 1e-6 * loads.load(options)


class LeastWork(PlacementPolicy):
    """Where the task starts first by the true backlogs (clairvoyant: oracle only): a free
    slot, else the least true backlog per slot."""

    name = "least-work"
    clairvoyant = True

    def _pick(self, task, loads, options):
        index = self._least(options, expected_wait_s(task, loads, options, loads.true_backlog_s))
        return index, f"least true backlog ({loads.true_backlog_s[index]:.3f} s)"


PLACEMENTS: dict[str, type[PlacementPolicy]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, PowerOfTwo, LeastWork)
}
