"""Work stealing and rebalancing between local schedulers.

Placement decides with the predictions of the moment; when they were wrong (a burst of
tasks thought short, a tenant whose tasks changed) one local scheduler ends up with a long
queue while another idles. A balance pass, every :data:`STEAL_EVERY_S`, reads the global
scheduler's load table (no call to any actor) and plans moves, after Dask's work
stealing:

- **Idle thieves.** A local scheduler with a whole slot free and nothing queued takes
  queued tasks from the one of its region with the longest predicted wait, as many as it
  has free slots, when that wait exceeds the cost of a move (:data:`MOVE_COST_S`).
- **Bottlenecks.** A local scheduler whose predicted wait exceeds
  :data:`BOTTLENECK_FACTOR` times its region's mean is flagged and gives the least
  waiting one enough tasks to even the two out.
- **Tiny tasks are never moved**: those predicted under :data:`MIN_STEAL_RUNTIME_S` would
  start before a move could finish (the local scheduler filters them when it gives up
  tasks).

The victim gives up the tasks that would run *last* by its own ordering (they gain the
most); only queued tasks move, never running ones, so no task runs twice. Moves stay
within a region. Plain Python on the load table; the GlobalScheduler actor does the
moving and logs every move in its decision log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ray_sched.policies.placement import LoadTable

#: How often the global scheduler runs a balance pass (Dask: every 100 ms to 1 s).
STEAL_EVERY_S = 0.5
#: What moving a task costs it: two actor calls (give up, enqueue) on a loaded node.
MOVE_COST_S = 0.02
#: Tasks predicted (p50) shorter than this are never moved.
MIN_STEAL_RUNTIME_S = 0.01
#: A local scheduler waiting this many times its region's mean is a bottleneck.
BOTTLENECK_FACTOR = 2.0
#: At most this many tasks move in one step (the next pass can move more).
MAX_TASKS_PER_MOVE = 64


@dataclass(frozen=True)
class Steal:
    """One planned move: up to ``max_tasks`` queued tasks from ``victim`` to ``thief``."""

    victim: int
    thief: int
    max_tasks: int
    reason: str


def predicted_wait_s(loads: LoadTable) -> np.ndarray:
    """Per local scheduler, how long a task queued now would wait: the predicted work
    beyond its slots (queued and running, in slot-seconds) over its slots; 0 with a free
    slot."""
    waiting = loads.outstanding_cpu > loads.slots + 1e-9
    return np.where(waiting, loads.predicted_backlog_s / loads.slots, 0.0)


def plan_steals(loads: LoadTable, *, move_cost_s: float = MOVE_COST_S,
                bottleneck_factor: float = BOTTLENECK_FACTOR,
                max_tasks: int = MAX_TASKS_PER_MOVE) -> list[Steal]:
    """The moves of one balance pass (at most one per thief and one per victim).

    Args:
        loads: the global scheduler's load table (outstanding slots and predicted
            backlog per local scheduler).
        move_cost_s: a move pays off only where the victim's wait exceeds this.
        bottleneck_factor: a wait this many times the region's mean is a bottleneck.
        max_tasks: cap on the tasks of one move.
    """
    wait = predicted_wait_s(loads)
    free = np.maximum(loads.slots - loads.outstanding_cpu, 0.0)
    queued = np.maximum(loads.outstanding_cpu - loads.slots, 0.0)
    per_task = loads.predicted_backlog_s / np.maximum(loads.outstanding_tasks, 1)
    steals: list[Steal] = []
    for members in _regions(loads):
        if len(members) < 2:
            continue
        busy: set[int] = set()
        victims = sorted((i for i in members if queued[i] > 0 and wait[i] > move_cost_s),
                         key=lambda i: -wait[i])
        thieves = sorted((i for i in members if free[i] >= 1.0 and queued[i] == 0),
                         key=lambda i: -free[i])
        for thief, victim in zip(thieves, victims):
            n = min(int(free[thief]), int(math.ceil(queued[victim])), max_tasks)
            steals.append(Steal(victim, thief, n, f"idle: {int(free[thief])} free slot(s); "
                                f"{loads.names[victim]} waits {wait[victim]:.3f} s"))
            busy.update((thief, victim))
        mean = float(wait[members].mean())
        for victim in victims:
            if victim in busy or not wait[victim] > bottleneck_factor * mean:
                continue
            others = [i for i in members if i not in busy and i != victim]
            if not others:
                break
            thief = min(others, key=lambda i: wait[i])
            gap = wait[victim] - wait[thief]
            if gap <= 2 * move_cost_s or per_task[victim] <= 0:
                continue
            # Half the gap in slot-seconds evens the two out; in the victim's tasks.
            work = gap / 2 * min(loads.slots[victim], loads.slots[thief])
            n = min(int(math.ceil(work / per_task[victim])), int(math.ceil(queued[victim])),
                    max_tasks)
            if n < 1:
                continue
            steals.append(Steal(victim, thief, n, f"bottleneck: {loads.names[victim]} waits "
                                f"{wait[victim]:.3f} s > {bottleneck_factor:g} x mean "
                                f"{mean:.3f} s"))
            busy.update((thief, victim))
    return steals


def _regions(loads: LoadTable) -> list[np.ndarray]:
    """The live local schedulers, grouped by region."""
    groups: dict[str | None, list[int]] = {}
    for index in np.flatnonzero(loads.alive).tolist():
        groups.setdefault(loads.regions[index], []).append(index)
    return [np.array(members, dtype=np.int64) for members in groups.values()]
