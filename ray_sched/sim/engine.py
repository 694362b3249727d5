"""Discrete-event simulation of the two-level scheduler.

The very objects the actors wrap (:class:`GlobalCore`, :class:`LocalCore`, the
ordering and placement policies and the :class:`Learner`) run here on a virtual
clock: arrivals and completions are events in a heap; a task occupies its slots for
``launch_overhead_s + runtime_s``. No Ray, no sleeping: a 1,500-task trace takes
well under a second, so policies can be compared and tuned quickly.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import itertools

import numpy as np

from ray_sched.errors import ConfigError
from ray_sched.learner import Learner
from ray_sched.learner.learner import ObservationBuffer
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
#: Arrivals this close together are predicted and placed as one batch (the replay submits
#: tasks due within this window together; it imports this constant).
ARRIVAL_BATCH_WINDOW_S = 0.001
#: Completions reach the global scheduler (and the learner) in batches this long: a local
#: scheduler reports all completions of one event-loop turn in one call. The local
#: scheduler itself starts its next task at once.
COMPLETION_BATCH_S = 0.001


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(tasks: list[Task], *, policy: str, slots: int, nodes: int = 1,
             local_schedulers: int | None = None, regions: list[str] | None = None,
             launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S, seed: int | None = 0,
             learner: Learner | None = None, refresh_every_s: float | None = REFRESH_EVERY_S,
             arrival_batch_s: float = ARRIVAL_BATCH_WINDOW_S
             ) -> tuple[dict[str, Completion], Learner | None]:
    """Run ``tasks`` under ``policy`` on ``slots`` slots spread over ``nodes`` virtual nodes.

    Arrivals are handled in batches of ``arrival_batch_s`` (each task waits at most that
    long: 1 ms by default, against a 7 ms launch overhead; 0 handles each arrival instant
    on its own, exactly and more slowly). Completions reach the global scheduler and the
    learner in COMPLETION_BATCH_S batches; the learner learns in the Learner actor's
    mini-batches.

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
    if not arrival_batch_s >= 0:
        raise ConfigError(f"arrival_batch_s must be >= 0, got {arrival_batch_s}")
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
    tasks = [_fresh_copy(task) for task in tasks]
    by_id = {task.task_id: task for task in tasks}
    arrivals = sorted(tasks, key=lambda t: (t.arrival_s, t.task_id))
    arrival_times = [t.arrival_s for t in arrivals]
    finishes: list[tuple[float, int, int, Task, float]] = []
    order = itertools.count()
    completions: dict[str, Completion] = {}
    # Learning goes through the same mini-batching as the Learner actor's.
    learning = ObservationBuffer(learner, clock) if learner is not None else None
    # Completions reach the global scheduler in batches, as local schedulers send them.
    reported: list[Completion] = []
    reported_since = np.inf
    names = [local.name for local in locals_]
    node_ids = [e["node_id"] for e in plan]

    def dispatch(index: int) -> None:
        local = locals_[index]
        for task in local.next_runnable():
            task.attempts += 1
            start = clock.now + launch_overhead_s
            heapq.heappush(finishes, (start + task.runtime_s, next(order), index, task, start))

    def deliver(placements: list[tuple[int, Task]]) -> None:
        by_worker: dict[int, list[Task]] = {}
        for index, task in placements:
            by_worker.setdefault(index, []).append(task)
        for index in sorted(by_worker):
            locals_[index].enqueue(by_worker[index])
            dispatch(index)

    def report() -> None:
        nonlocal reported, reported_since
        batch, reported, reported_since = reported, [], np.inf
        recorded, placements = core.complete(batch)
        for completion in recorded:
            completions[completion.task_id] = completion
        if learning is not None:
            ok = [c for c in recorded if c.status == "ok"]
            if ok:
                learning.add([by_id[c.task_id] for c in ok],
                             [c.finish_wall - c.start_wall for c in ok])
        deliver(placements)

    last_refresh = 0.0
    next_arrival = 0
    n = len(arrivals)
    while next_arrival < n or finishes or reported:
        # Arrivals are handled in ticks: the first one waiting opens a batch that closes
        # arrival_batch_s later with every task arrived by then (the replay also submits
        # tasks due within that window together); earlier events go first.
        tick_time = (arrival_times[next_arrival] + arrival_batch_s if next_arrival < n
                     else np.inf)
        finish_time = finishes[0][0] if finishes else np.inf
        report_time = reported_since + COMPLETION_BATCH_S
        if report_time <= finish_time and report_time <= tick_time:
            clock.now = report_time
            report()
        elif finish_time <= tick_time:
            clock.now = finish_time
            _, _, index, task, start = heapq.heappop(finishes)
            locals_[index].finish(task.task_id)
            if not reported:
                reported_since = finish_time
            reported.append(Completion(task.task_id, "ok", worker=names[index],
                                       node=node_ids[index], start_wall=start,
                                       finish_wall=finish_time, attempts=task.attempts))
            dispatch(index)
        else:
            clock.now = tick_time
            last = bisect.bisect_right(arrival_times, tick_time, lo=next_arrival)
            batch = arrivals[next_arrival:last]
            next_arrival = last
            for task in batch:
                task.submitted_at = task.arrival_s
            if learner is not None:
                learning.flush_if_stale()
                learner.predict(batch).apply(batch)
                if refresh_every_s is not None and clock.now - last_refresh >= refresh_every_s:
                    last_refresh = clock.now
                    refresh_queues([local.queue for local in locals_], learner)
            placements, failed = core.admit(batch)
            for completion in failed:
                completions[completion.task_id] = completion
            deliver(placements)
    if learning is not None:
        learning.flush()
    return completions, learner


def _fresh_copy(task: Task) -> Task:
    """A copy to simulate on (its own features and attempts); ~20x faster than
    dataclasses.replace, which re-runs __init__."""
    copied = copy.copy(task)
    copied.features = dict(task.features)
    copied.attempts = 0
    return copied


def refresh_queues(queues, learner) -> None:
    """Re-predict the tasks due first in every queue that orders by predictions, in one
    predict call (the LocalScheduler actor re-predicts the same REFRESH_MAX_TASKS)."""
    chosen = [(queue, queue.head(REFRESH_MAX_TASKS)) for queue in queues
              if hasattr(queue, "refresh") and len(queue) >= 2]
    waiting = [task for _, tasks in chosen for task in tasks]
    if not waiting:
        return
    predictions = learner.predict(waiting)
    start = 0
    for queue, tasks in chosen:
        stop = start + len(tasks)
        queue.refresh([t.task_id for t in tasks], predictions.p50_s[start:stop],
                      predictions.p90_s[start:stop], predictions.mean_s[start:stop])
        start = stop
