"""Discrete-event simulation of the two-level scheduler.

The very objects the actors wrap (:class:`GlobalCore`, :class:`LocalCore`, the
ordering and placement policies and the :class:`Learner`) run here on a virtual
clock: arrivals and completions are events in a heap; a task occupies its slots for
``launch_overhead_s + runtime_s``. No Ray, no sleeping: a 1,500-task trace takes
well under a second, so policies can be compared and tuned quickly.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

import numpy as np

from ray_sched.errors import ConfigError
from ray_sched.learner import Learner
from ray_sched.policies import resolve_policy
from ray_sched.policies.global_core import GlobalCore
from ray_sched.policies.learned import REFRESH_EVERY_S, REFRESH_MAX_TASKS
from ray_sched.policies.local import LocalCore
from ray_sched.policies.placement import WorkerLoad
from ray_sched.task import Completion, Task
from ray_sched.topology import NodeInfo, plan_local_schedulers

#: Default per-task launch overhead (s), the median arrival-to-start latency of the Ray
#: replay on an idle 2-core machine (benchmarks/README.md).
DEFAULT_LAUNCH_OVERHEAD_S = 0.007


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(tasks: list[Task], *, policy: str, slots: int, nodes: int = 1,
             local_schedulers: int | None = None, regions: list[str] | None = None,
             launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S, seed: int | None = 0,
             learner: Learner | None = None, refresh_every_s: float | None = REFRESH_EVERY_S
             ) -> tuple[dict[str, Completion], Learner | None]:
    """Run ``tasks`` under ``policy`` on ``slots`` slots spread over ``nodes`` virtual nodes.

    Returns:
        (completions by task id, with virtual start/finish times in seconds; the learner
        used, or None for policies that predict nothing)

    Raises:
        ConfigError: an unknown policy or a baseline (baselines run only on Ray/Dask).
    """
    spec = resolve_policy(policy)
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    if launch_overhead_s < 0:
        raise ConfigError(f"launch_overhead_s must be >= 0, got {launch_overhead_s}")
    clock = _Clock()
    plan = plan_local_schedulers([NodeInfo(f"node-{i}", 1.0) for i in range(nodes)], slots,
                                 count=local_schedulers, regions=regions)
    locals_ = [LocalCore(e["name"], e["slots"], spec.make_ordering(), clock=clock)
               for e in plan]
    loads = [WorkerLoad(name=e["name"], slots=e["slots"], region=e["region"], node=e["node_id"])
             for e in plan]
    core = GlobalCore(spec.make_placement(seed), loads, clock=clock)
    if learner is None and spec.needs_predictions:
        learner = Learner()
    # Work on copies: a simulation leaves the caller's tasks as they were.
    tasks = [dataclasses.replace(task, attempts=0, features=dict(task.features))
             for task in tasks]
    by_id = {task.task_id: task for task in tasks}
    arrivals = sorted(tasks, key=lambda t: (t.arrival_s, t.task_id))
    finishes: list[tuple[float, int, int, Task, float]] = []
    order = itertools.count()
    completions: dict[str, Completion] = {}

    def dispatch(index: int) -> None:
        local = locals_[index]
        for task in local.next_runnable():
            task.attempts += 1
            start = clock.now + launch_overhead_s
            heapq.heappush(finishes, (start + task.runtime_s, next(order), index, task, start))

    def deliver(placements: list[tuple[int, Task]]) -> None:
        touched = set()
        for index, task in placements:
            locals_[index].enqueue([task])
            touched.add(index)
        for index in sorted(touched):
            dispatch(index)

    def record(batch: list[Completion]) -> None:
        for completion in batch:
            completions[completion.task_id] = completion

    last_refresh = [0.0]
    next_arrival = 0
    n = len(arrivals)
    while next_arrival < n or finishes:
        arrival_time = arrivals[next_arrival].arrival_s if next_arrival < n else np.inf
        finish_time = finishes[0][0] if finishes else np.inf
        if finish_time <= arrival_time:
            clock.now = finish_time
            done = []
            while finishes and finishes[0][0] == finish_time:
                _, _, index, task, start = heapq.heappop(finishes)
                locals_[index].finish(task.task_id)
                done.append(Completion(task.task_id, "ok", worker=locals_[index].name,
                                       node=plan[index]["node_id"], start_wall=start,
                                       finish_wall=finish_time, attempts=task.attempts))
            recorded, placements = core.complete(done)
            record(recorded)
            if learner is not None:
                ok = [c for c in recorded if c.status == "ok"]
                learner.observe([by_id[c.task_id] for c in ok],
                                np.array([c.finish_wall - c.start_wall for c in ok]))
                if refresh_every_s is not None and clock.now - last_refresh[0] >= refresh_every_s:
                    last_refresh[0] = clock.now
                    for local in locals_:
                        refresh_queue(local.queue, learner)
            for index in {locals_.index(local) for local in locals_
                          if any(c.worker == local.name for c in done)}:
                dispatch(index)
            deliver(placements)
        else:
            clock.now = arrival_time
            batch = []
            while next_arrival < n and arrivals[next_arrival].arrival_s == arrival_time:
                task = arrivals[next_arrival]
                task.submitted_at = arrival_time
                batch.append(task)
                next_arrival += 1
            if learner is not None:
                learner.predict(batch).apply(batch)
            placements, failed = core.admit(batch)
            record(failed)
            deliver(placements)
    return completions, learner


def refresh_queue(queue, learner) -> None:
    """Re-predict the tasks waiting in a queue that orders by predictions."""
    if not hasattr(queue, "refresh") or len(queue) < 2:
        return
    waiting = queue.head(REFRESH_MAX_TASKS)  # as the LocalScheduler actor does
    predictions = learner.predict(waiting)
    queue.refresh([t.task_id for t in waiting], predictions.p50_s, predictions.p90_s,
                  predictions.mean_s)
