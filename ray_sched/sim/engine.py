"""Discrete-event simulation of the two-level scheduler.

The very objects the actors wrap (:class:`GlobalCore`, :class:`LocalCore`, the
ordering and placement policies and the :class:`Learner`) run here on a virtual
clock: arrivals and completions are events in a heap; a task occupies its slots for
``launch_overhead_s + runtime_s``. No Ray, no sleeping: a 1,500-task trace takes
well under a second, so policies can be compared and tuned quickly.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import gc
import heapq
import itertools

from ray_sched.core.actions import Learn, Place, Record
from ray_sched.core.global_core import GlobalCore
from ray_sched.core.local_core import LocalCore
from ray_sched.errors import ConfigError
from ray_sched.learner import Learner
from ray_sched.learner.learner import ObservationBuffer
from ray_sched.policies import resolve_policy
from ray_sched.policies.learned import REFRESH_EVERY_S, REFRESH_MAX_TASKS
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
#: Default network delay between the global and local schedulers: 0 on one machine (the
#: launch overhead, measured end to end, already holds this machine's actor hops).
DEFAULT_NETWORK_DELAY_S = 0.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(tasks: list[Task], *, policy: str, slots: int, nodes: int = 1,
             local_schedulers: int | None = None, regions: list[str] | None = None,
             launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S, seed: int | None = 0,
             learner: Learner | None = None, refresh_every_s: float | None = REFRESH_EVERY_S,
             arrival_batch_s: float = ARRIVAL_BATCH_WINDOW_S,
             network_delay_s: float = DEFAULT_NETWORK_DELAY_S,
             node_loss: list[tuple[float, int]] | None = None, stats: dict | None = None
             ) -> tuple[dict[str, Completion], Learner | None]:
    """Run ``tasks`` under ``policy`` on ``slots`` slots spread over ``nodes`` virtual nodes.

    Arrivals are handled in batches of ``arrival_batch_s`` (each task waits at most that
    long: 1 ms by default, against a 7 ms launch overhead; 0 handles each arrival instant
    on its own, exactly and more slowly). Completions reach the global scheduler and the
    learner in COMPLETION_BATCH_S batches; the learner learns in the Learner actor's
    mini-batches.

    Args:
        launch_overhead_s: from a slot's start to the task's start (the Ray task launch).
        network_delay_s: from the global scheduler's placement to the local scheduler's
            receipt, and from a completion to the global scheduler's.
        node_loss: ``(time_s, node_index)`` pairs: at that time every local scheduler of
            that node is lost with its queue and running tasks; the global scheduler
            re-places every task of it that has no recorded completion (``attempts`` counts
            the runs).
        stats: when given, filled with ``events`` (handled) and ``lost_runs``.

    Returns:
        (completions by task id, with virtual start/finish times in seconds; the learner
        used, or None for policies that predict nothing)

    Raises:
        ConfigError: an unknown policy or a baseline (baselines run only on Ray/Dask), or
            a negative time parameter, or a node_loss naming no node.
    """
    with _garbage_collector_paused():
        return _simulate(tasks, policy=policy, slots=slots, nodes=nodes,
                         local_schedulers=local_schedulers, regions=regions,
                         launch_overhead_s=launch_overhead_s, seed=seed, learner=learner,
                         refresh_every_s=refresh_every_s, arrival_batch_s=arrival_batch_s,
                         network_delay_s=network_delay_s, node_loss=node_loss, stats=stats)


@contextlib.contextmanager
def _garbage_collector_paused():
    """The cyclic garbage collector scans every live object on each full pass; with
    millions of tasks alive that halved the simulator's speed (131 s against 69 s on
    300,000 tasks), and a simulation makes no cycles to collect. Back on afterwards."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _simulate(tasks, *, policy, slots, nodes, local_schedulers, regions, launch_overhead_s,
              seed, learner, refresh_every_s, arrival_batch_s, network_delay_s, node_loss,
              stats):
    spec = resolve_policy(policy)
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    for name, value in (("launch_overhead_s", launch_overhead_s),
                        ("arrival_batch_s", arrival_batch_s),
                        ("network_delay_s", network_delay_s)):
        if not value >= 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    for when, node in node_loss or ():
        if not (isinstance(node, int) and 0 <= node < nodes) or not when >= 0:
            raise ConfigError(f"node_loss ({when}, {node}): the node must be 0..{nodes - 1} "
                              f"and the time >= 0")
    clock = _Clock()
    plan = plan_local_schedulers([NodeInfo(f"node-{i}", 1.0) for i in range(nodes)], slots,
                                 count=local_schedulers, regions=regions)
    locals_ = [LocalCore(e["name"], e["slots"], spec.make_ordering(), clock=clock)
               for e in plan]
    loads = [WorkerLoad(name=e["name"], slots=e["slots"], region=e["region"], node=e["node_id"])
             for e in plan]
    if learner is None and spec.needs_predictions:
        learner = Learner()
    core = GlobalCore(spec.make_placement(seed), loads, clock=clock,
                      learning=learner is not None)
    # Work on copies: a simulation leaves the caller's tasks as they were.
    tasks = [_fresh_copy(task) for task in tasks]
    arrivals = sorted(tasks, key=lambda t: (t.arrival_s, t.task_id))
    arrival_times = [t.arrival_s for t in arrivals]
    completions: dict[str, Completion] = {}
    # Learning goes through the same mini-batching as the Learner actor's.
    learning = ObservationBuffer(learner, clock) if learner is not None else None
    names = [local.name for local in locals_]
    node_ids = [e["node_id"] for e in plan]
    lost: set[int] = set()              # local schedulers gone with their node
    # One event heap: (time, rank, sequence, kind, data). At equal times a report goes
    # first, then finishes, deliveries, losses, and arrivals last.
    events: list[tuple] = []
    sequence = itertools.count()
    reported: list[Completion] = []     # completions on their way to the global scheduler
    counters = {"events": 0, "lost_runs": 0}

    def push(time_s: float, rank: int, kind: str, data) -> None:
        heapq.heappush(events, (time_s, rank, next(sequence), kind, data))

    def dispatch(index: int) -> None:
        local = locals_[index]
        for task in local.next_runnable():
            task.attempts += 1
            start = clock.now + launch_overhead_s
            push(start + task.runtime_s, _FINISH, "finish", (index, task, start, task.attempts))

    def carry_out(actions: list) -> None:
        """The core's actions on virtual time (the GlobalScheduler actor's, over Ray)."""
        for action in actions:
            if isinstance(action, Place):
                if network_delay_s:
                    push(clock.now + network_delay_s, _DELIVER, "deliver",
                         (action.index, action.tasks))
                else:
                    arrive(action.index, action.tasks)
            elif isinstance(action, Record):
                for completion in action.completions:
                    completions[completion.task_id] = completion
            elif isinstance(action, Learn):
                learning.add(action.tasks, action.runtimes_s)

    def arrive(index: int, batch: list[Task]) -> None:
        if index in lost:  # sent before the loss was known: the re-placement covers them
            return
        locals_[index].enqueue(batch)
        dispatch(index)

    def report() -> None:
        nonlocal reported
        batch, reported = reported, []
        carry_out(core.on_completions(None, batch))

    def admit_arrivals() -> None:
        nonlocal next_arrival, last_refresh
        last = bisect.bisect_right(arrival_times, clock.now, lo=next_arrival)
        batch = arrivals[next_arrival:last]
        next_arrival = last
        if next_arrival < n:
            push(arrival_times[next_arrival] + arrival_batch_s, _ARRIVAL, "arrivals", None)
        for task in batch:
            task.submitted_at = task.arrival_s
        if learner is not None:
            learning.flush_if_stale()
            learner.predict(batch).apply(batch)
            if refresh_every_s is not None and clock.now - last_refresh >= refresh_every_s:
                last_refresh = clock.now
                refresh_queues([local.queue for i, local in enumerate(locals_)
                                if i not in lost], learner)
        carry_out(core.on_arrivals(batch))

    def lose_node(node: int) -> None:
        for index, entry in enumerate(plan):
            if entry["node_id"] == f"node-{node}" and index not in lost:
                lost.add(index)
                carry_out(core.on_lost(index, f"node-{node} lost", replaced=False))

    last_refresh = 0.0
    next_arrival = 0
    n = len(arrivals)
    if n:
        push(arrival_times[0] + arrival_batch_s, _ARRIVAL, "arrivals", None)
    for when, node in node_loss or ():
        push(float(when), _LOSS, "loss", node)
    while events:
        clock.now, _, _, kind, data = heapq.heappop(events)
        counters["events"] += 1
        if kind == "finish":
            index, task, start, attempt = data
            if index in lost or task.attempts != attempt:
                counters["lost_runs"] += 1  # a run on a lost node: it never reports
                continue
            locals_[index].finish(task.task_id)
            if not reported:
                push(clock.now + COMPLETION_BATCH_S + network_delay_s, _REPORT, "report", None)
            reported.append(Completion(task.task_id, "ok", worker=names[index],
                                       node=node_ids[index], start_wall=start,
                                       finish_wall=clock.now, attempts=task.attempts))
            dispatch(index)
        elif kind == "report":
            report()
        elif kind == "deliver":
            arrive(*data)
        elif kind == "arrivals":
            admit_arrivals()
        elif kind == "loss":
            lose_node(data)
    if learning is not None:
        learning.flush()
    if stats is not None:
        stats.update(counters)
    return completions, learner


_REPORT, _FINISH, _DELIVER, _LOSS, _ARRIVAL = range(5)


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
