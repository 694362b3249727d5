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


def candidates(task: Task, loads: Sequence[WorkerLoad]) -> list[int]:
    """Indices of live local schedulers in the task's region, or of all live ones."""
    alive = [i for i, w in enumerate(loads) if w.alive]
    if not alive:
        raise RuntimeError("no live local scheduler to place on")
    if task.region is not None:
        local = [i for i in alive if loads[i].region == task.region]
        if local:
            return local
    return alive


class PlacementPolicy:
    """Base class: ``choose(task, loads)`` returns the index of the chosen local scheduler."""

    name = "base"
    clairvoyant = False
    needs_predictions = False

    def __init__(self, *, seed: int | None = 0):
        self._rng = random.Random(seed)

    def choose(self, task: Task, loads: Sequence[WorkerLoad]) -> tuple[int, str]:
        """Returns (index into ``loads``, a short reason for the decision log)."""
        options = candidates(task, loads)
        if len(options) == 1:
            return options[0], "only candidate"
        return self._pick(task, loads, options)

    def _pick(self, task: Task, loads: Sequence[WorkerLoad],
              options: list[int]) -> tuple[int, str]:
        raise NotImplementedError

    def _least(self, loads: Sequence[WorkerLoad], options: list[int], measure) -> int:
        # Random tie-break so equal loads do not all pile on the first scheduler.
        best = min(measure(loads[i]) for i in options)
        tied = [i for i in options if measure(loads[i]) == best]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RoundRobin(PlacementPolicy):
    """Each candidate in turn, ignoring load."""

    name = "round-robin"

    def __init__(self, *, seed: int | None = 0):
        super().__init__(seed=seed)
        self._turns: dict[tuple[int, ...], int] = {}  # one turn per candidate set (region)

    def _pick(self, task, loads, options):
        key = tuple(options)
        turn = self._turns.get(key, -1) + 1
        self._turns[key] = turn
        return options[turn % len(options)], "round-robin turn"


class LeastLoaded(PlacementPolicy):
    """The candidate with the least outstanding slot demand per slot."""

    name = "least-loaded"

    def _pick(self, task, loads, options):
        index = self._least(loads, options, lambda w: w.load)
        return index, f"least loaded ({loads[index].load:.2f} per slot)"


class PowerOfTwo(PlacementPolicy):
    """Two random candidates, the less loaded of them (Mitzenmacher's power of two choices)."""

    name = "power-of-two"

    def _pick(self, task, loads, options):
        a, b = self._rng.sample(options, 2)
        index = a if loads[a].load <= loads[b].load else b
        return index, f"power-of-two between {loads[a].name} and {loads[b].name}"


class LeastWork(PlacementPolicy):
    """The candidate whose true backlog per slot is smallest (clairvoyant: oracle only)."""

    name = "least-work"
    clairvoyant = True

    def _pick(self, task, loads, options):
        index = self._least(loads, options, lambda w: w.true_backlog_s / w.slots)
        return index, f"least true backlog ({loads[index].true_backlog_s:.3f} s)"


PLACEMENTS: dict[str, type[PlacementPolicy]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, PowerOfTwo, LeastWork)
}
