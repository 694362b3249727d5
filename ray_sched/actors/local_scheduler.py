"""The LocalScheduler actor: a thin Ray wrapper around :class:`LocalCore`.

It receives placed tasks, runs the next ones by its ordering as Ray tasks
pinned to its node (or, for a task of a named stage, on one of that stage's
actors on its node: one actor per slot, so a free one is always there), and
reports completions to the global scheduler in batches (every completion that
arrives in one event-loop turn goes in one call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.actors.execute import (
    StageActor,
    run_inline_batch,
    run_synthetic,
    run_synthetic_batch,
    run_user_call,
    run_user_call_batch,
    warm_workers_async,
)
from ray_sched.control import Controls
from ray_sched.control.batching import LaunchBatcher
from ray_sched.control.concurrency import ConcurrencyController, node_load
from ray_sched.control.inline import InlineDecider
from ray_sched.control.priority import set_process_nice
from ray_sched.core.local_core import LocalCore
from ray_sched.monitor.cpu import process_cpu_s
from ray_sched.policies import ORDERINGS
from ray_sched.policies.learned import REFRESH_EVERY_S, REFRESH_MAX_TASKS
from ray_sched.task import Completion, Task

log = logging.getLogger(__name__)

#: Adaptive concurrency samples the node's load this often (its windows are longer).
CONCURRENCY_SAMPLE_S = 0.5
#: A batch of completions the global scheduler did not take is sent again after this long.
RESEND_AFTER_S = 0.5
#: Completions go to the global scheduler at most this often, together: each call costs
#: both actors a few hundred microseconds of CPU whatever it carries, and a finished task's
#: slot is refilled here at once whatever this says (only the release of its children,
#: decided globally, waits this long at most).
COMPLETIONS_EVERY_S = 0.02


@ray.remote(num_cpus=0)
class LocalScheduler:
    def __init__(self, name: str, node_id: str, slots: float, ordering: str, global_handle,
                 learner=None, stages: dict | None = None, inline: bool = True,
                 controls: dict | None = None):
        self.name = name
        self._learner = learner  # its snapshots re-predict queued tasks (set_model)
        self._model = None
        self._refresher: asyncio.Task | None = None
        self.node_id = node_id
        controls = Controls.of(controls, inline=inline)
        # Hybrid execution (tasks predicted shorter than a Ray launch run on this actor's
        # threads, one per slot) and amortised launches (consecutive tiny tasks share one
        # Ray task and one slot): the core decides both, per start.
        self.core = LocalCore(name, slots, ORDERINGS[ordering](),
                              inline=InlineDecider(enabled=controls.inline),
                              batcher=LaunchBatcher(enabled=controls.batch))
        self._global = global_handle
        self._strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        self._launchers: dict[tuple[str, float], object] = {}
        self._outbox: list[Completion] = []
        self._flush_pending = False
        self._send_pending = False
        self._sent_at = 0.0  # time.monotonic() of the last completions sent
        # Completions sent and not yet acknowledged by the global scheduler: resent until
        # they are (it may be restarting); it records each task once whatever it receives.
        self._unacked: dict[int, list[Completion]] = {}
        self._sends = 0
        self._watchers: set[asyncio.Task] = set()
        self._stage_factories = dict(stages or {})
        self._stage_actors: dict[str, list] = {}   # every actor of each stage
        self._stage_free: dict[str, list] = {}     # those not running a task now
        self.priority = set_process_nice(controls.control_nice)
        # Adaptive concurrency: the slot count follows the node's CPU and memory.
        self._concurrency = None
        if controls.adaptive:
            self._concurrency = ConcurrencyController(
                slots, min_slots=min(float(slots), max(1.0, slots * controls.min_slots)),
                max_slots=slots * controls.max_slots)
        self._jct = [0, 0.0]  # completions and their summed JCT here, since the last sample
        self._warm = int(slots)  # worker processes started for this node (warmup, pre-warm)
        self._warming = None
        self._controller: asyncio.Task | None = None
        most = slots * (controls.max_slots if controls.adaptive else 1.0)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, int(most)), thread_name_prefix=f"{name}-inline")

    def _stage_pool(self, stage: str) -> list:
        free = self._stage_free.get(stage)
        if free is None:
            actors = [StageActor.options(scheduling_strategy=self._strategy)
                      .remote(self._stage_factories[stage])
                      for _ in range(max(1, int(self.core.slots)))]
            self._stage_actors[stage] = actors
            free = self._stage_free[stage] = list(actors)
        return free

    async def close_stages(self) -> list:
        """Call ``close()`` on every stage actor (flushing their buffers); returns the results."""
        calls = [actor.close.remote() for actors in self._stage_actors.values()
                 for actor in actors]
        return list(await asyncio.gather(*calls))

    async def ping(self) -> dict:
        return {"name": self.name, "node_id": self.node_id, "slots": self.core.slots,
                "priority": self.priority}

    async def warmup(self) -> None:
        """Start this node's workers for every slot (and every stage's actors) before any
        timing starts."""
        await warm_workers_async(int(self.core.slots), {"scheduling_strategy": self._strategy})
        for stage in self._stage_factories:
            await asyncio.gather(*(actor.ping.remote() for actor in self._stage_pool(stage)))

    async def enqueue(self, tasks: list[Task]) -> None:
        now = time.time()
        for task in tasks:
            task.queued_wall = now
        self.core.enqueue(tasks)
        self._dispatch()
        if self._concurrency is not None and self._controller is None:
            self._controller = asyncio.ensure_future(self._concurrency_loop())
        if (self._learner is not None and self._refresher is None
                and hasattr(self.core.queue, "refresh")):
            self._refresher = asyncio.ensure_future(self._refresh_loop())

    async def set_model(self, model) -> None:
        """The learner's latest snapshot (a :class:`ray_sched.learner.Learner`), which the
        queue is re-predicted with."""
        self._model = model

    async def _refresh_loop(self) -> None:
        """Every REFRESH_EVERY_S, re-predict the tasks still waiting with the learner's
        latest snapshot, here: the learner has seen more completions since they were queued
        (benchmarks/README.md has its effect)."""
        while True:
            await asyncio.sleep(REFRESH_EVERY_S)
            queue = self.core.queue
            if len(queue) < 2 or self._model is None:
                continue
            waiting = list(queue.head(REFRESH_MAX_TASKS))
            predictions = self._model.predict(waiting)
            queue.refresh([t.task_id for t in waiting], predictions.p50_s,
                          predictions.p90_s, predictions.mean_s)

    async def cpu_seconds(self) -> float:
        """This actor's process CPU seconds so far (the control plane's cost)."""
        return process_cpu_s()

    async def snapshot(self) -> dict:
        return self._snapshot()

    def _snapshot(self) -> dict:
        state = vars_of(self.core.snapshot())
        state["admitting"] = self._concurrency is None or self._concurrency.admitting
        state["sent_wall"] = time.time()
        return state

    async def held(self) -> list[str]:
        """Ids of every task here whose completion the global scheduler has not
        acknowledged: queued, running, finished and not yet flushed, or sent and not yet
        taken (a restarted global scheduler's ledger)."""
        unacked = [c.task_id for batch in self._unacked.values() for c in batch]
        return (list(self.core.running) + [task.task_id for task in self.core.queue]
                + [completion.task_id for completion in self._outbox] + unacked)

    async def give_up(self, max_tasks: int, min_runtime_s: float) -> list[str]:
        """Work stealing: take out (up to) ``max_tasks`` queued tasks, those that would run
        last here, none predicted under ``min_runtime_s``; returns their ids."""
        return [task.task_id for task in self.core.give_up(max_tasks, min_runtime_s)]

    async def hint_demand(self, busy_slots: float) -> None:
        """A forecast: the slots the next window is expected to need here. The adaptive
        controller pre-scales to it, and worker processes for the slots beyond those already
        warm start now, before the burst reaches them."""
        if self._concurrency is None:
            return
        self._concurrency.hint_demand(busy_slots)
        want = int(math.ceil(min(busy_slots, self._concurrency.max_slots)))
        if want > self._warm and self._warming is None:
            extra, self._warm = want - self._warm, want
            self._warming = asyncio.ensure_future(warm_workers_async(
                extra, {"scheduling_strategy": self._strategy, "num_cpus": 0}))
            self._warming.add_done_callback(self._warmed)

    def _warmed(self, future) -> None:
        self._warming = None
        if future.exception() is not None:
            self._warm = int(self.core.slots)  # try again at the next hint

    async def concurrency_stats(self) -> dict | None:
        """Adaptive concurrency: the slots now, the counts, and every change with its
        effect (None when it is off)."""
        if self._concurrency is None:
            return None
        return {**self._concurrency.stats(), "warm_workers": self._warm,
                "history": self._concurrency.history()}

    async def _concurrency_loop(self) -> None:
        """Sample the node's load and this queue, and apply the controller's slot count."""
        controller = self._concurrency
        while True:
            await asyncio.sleep(CONCURRENCY_SAMPLE_S)
            controller.observe_load(*node_load())
            controller.observe_queue(len(self.core.queue))
            n, jct_sum = self._jct
            self._jct = [0, 0.0]
            controller.observe_completions(n, jct_sum)
            slots = controller.tick()
            if slots is not None:
                self.core.slots = slots
                self._dispatch()

    def _launcher(self, kind: str, cpu: float, n: int = 1):
        """The Ray function for a launch of ``kind`` (``synthetic``, ``call``, and their
        ``-batch`` forms carrying ``n`` tasks), pinned to this node."""
        key = (kind, cpu, n if kind == "call-batch" else 1)
        launcher = self._launchers.get(key)
        if launcher is None:
            options = {"scheduling_strategy": self._strategy, "num_cpus": cpu}
            if kind == "call-batch":  # the metas, then each task's value as its own object
                options["num_returns"] = n + 1
            remote = {"synthetic": run_synthetic, "call": run_user_call,
                      "synthetic-batch": run_synthetic_batch,
                      "call-batch": run_user_call_batch}[kind]
            launcher = remote.options(**options)
            self._launchers[key] = launcher
        return launcher

    async def inline_stats(self) -> dict:
        """The hybrid path and launch batches: launch cost learnt, tasks run inline and
        remote, mode switches, batches and the tasks they carried."""
        return {**self.core.inline.stats(), **self.core.batcher.stats(),
                "history": self.core.inline.history()}

    def _dispatch(self) -> None:
        """Carry out the core's starts."""
        for start in self.core.starts():
            if start.mode == "inline":
                self._run_inline(start.tasks)
            elif len(start.tasks) > 1:
                self._launch_batch(start.tasks)
            else:
                self._start_one(start.tasks[0])

    def _start_one(self, task: Task) -> None:
        """``task`` on a stage actor (it has a stage), or as a Ray task of its own."""
        cpu = min(task.cpu, self.core.slots)
        actor = None
        if task.stage is not None:
            free = self._stage_pool(task.stage)
            # One actor per slot, so one is free unless a task takes more than one slot.
            actor = free.pop() if free else self._stage_actors[task.stage][task.seq % len(
                self._stage_actors[task.stage])]
            meta_ref, value_ref = actor.call.remote(task.payload)
        elif task.payload is None:
            meta_ref = self._launcher("synthetic", cpu).remote(task.runtime_s,
                                                               work=task.work)
            value_ref = None
        else:
            meta_ref, value_ref = self._launcher("call", cpu).remote(task.payload)
        self._track(self._watch(task, meta_ref, value_ref, time.time(), actor))

    def _launch_batch(self, tasks: list[Task]) -> None:
        """One Ray task runs ``tasks`` one after another on one slot."""
        cpu = min(tasks[0].cpu, self.core.slots)
        if all(task.payload is None for task in tasks):
            meta_ref = self._launcher("synthetic-batch", cpu).remote(
                [(task.runtime_s, task.work) for task in tasks])
            value_refs = [None] * len(tasks)
        else:
            refs = self._launcher("call-batch", cpu, len(tasks)).remote(
                [task.payload for task in tasks])
            meta_ref, value_refs = refs[0], refs[1:]
        self._track(self._watch_batch(tasks, meta_ref, value_refs, time.time()))

    async def _watch_batch(self, tasks: list[Task], meta_ref, value_refs: list,
                           launched_wall: float) -> None:
        completions = [self._completion(task, launched_wall, value_ref)
                       for task, value_ref in zip(tasks, value_refs)]
        try:
            for completion, meta in zip(completions, await meta_ref):
                self._apply(completion, meta)
            work = sum(c.finish_wall - c.start_wall for c in completions)
            self.core.inline.observe_launch(time.time() - launched_wall - work)
        except Exception as error:  # noqa: BLE001 - a lost worker or a Ray error: report it
            for completion in completions:
                completion.status = "failed"
                completion.error = f"{type(error).__name__}: {error}"[:2000]
        for task, completion in zip(tasks, completions):
            self._done(task, completion)

    def _track(self, coroutine) -> None:
        watcher = asyncio.ensure_future(coroutine)
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _completion(self, task: Task, launched_wall: float, value_ref=None) -> Completion:
        return Completion(task.task_id, "ok", worker=self.name, node=self.node_id,
                          attempts=task.attempts, value_ref=value_ref,
                          queued_wall=task.queued_wall, launched_wall=launched_wall)

    async def _watch(self, task: Task, meta_ref, value_ref, launched_wall: float,
                     actor=None) -> None:
        completion = self._completion(task, launched_wall, value_ref)
        try:
            self._apply(completion, await meta_ref)
            if actor is None:
                # What running inline would have saved: the time the remote path added to
                # the work itself, from the launch to the result being back here.
                self.core.inline.observe_launch(
                    time.time() - launched_wall
                    - (completion.finish_wall - completion.start_wall))
        except Exception as error:  # noqa: BLE001 - a lost worker or a Ray error: report it
            completion.status = "failed"
            completion.error = f"{type(error).__name__}: {error}"[:2000]
        if actor is not None and actor not in self._stage_free[task.stage]:
            self._stage_free[task.stage].append(actor)
        self._done(task, completion)

    def _run_inline(self, tasks: list[Task]) -> None:
        """``tasks`` one after another on one of this actor's threads (their slot's)."""
        launched = time.time()
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, run_inline_batch,
            [(task.payload, task.runtime_s, task.work) for task in tasks])
        self._track(self._watch_inline(tasks, future, launched))

    async def _watch_inline(self, tasks: list[Task], future, launched_wall: float) -> None:
        completions = [self._completion(task, launched_wall) for task in tasks]
        try:
            results = await future
        except Exception as error:  # noqa: BLE001 - the executor itself failed
            results = [error] * len(tasks)
        for task, completion, result in zip(tasks, completions, results):
            if isinstance(result, BaseException):  # e.g. the payload could not be fetched
                completion.status = "failed"
                completion.error = f"{type(result).__name__}: {result}"[:2000]
            else:
                meta, completion.value_ref = result
                self._apply(completion, meta)
            self._done(task, completion)

    @staticmethod
    def _apply(completion: Completion, meta: tuple) -> None:
        completion.start_wall, completion.finish_wall = meta[0], meta[1]
        if len(meta) > 2 and meta[2]:
            completion.status, completion.error = "failed", meta[2]

    def _done(self, task: Task, completion: Completion) -> None:
        self.core.finish(task.task_id, completion.measured_runtime_s
                         if completion.status == "ok" else None)
        self._outbox.append(completion)
        if completion.finish_wall is not None and task.queued_wall is not None:
            self._jct[0] += 1
            self._jct[1] += completion.finish_wall - task.queued_wall
        if not self._flush_pending:
            # Once per event-loop turn: every slot freed in this turn is filled by one
            # pass over the queue, and every completion goes in one call.
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._dispatch()
        if not self._outbox or self._send_pending:
            return
        wait = self._sent_at + COMPLETIONS_EVERY_S - time.monotonic()
        if wait <= 0:
            self._send_outbox()
        else:
            self._send_pending = True
            asyncio.get_running_loop().call_later(wait, self._send_outbox)

    def _send_outbox(self) -> None:
        self._send_pending = False
        batch, self._outbox = self._outbox, []
        if batch:
            self._sent_at = time.monotonic()
            self._send(batch)

    def _send(self, batch: list[Completion]) -> None:
        self._sends += 1
        key = self._sends
        self._unacked[key] = batch
        self._track(self._deliver(key, self._global.completed.remote(
            self.name, batch, self._snapshot())))

    async def _deliver(self, key: int, ack) -> None:
        """Wait for the global scheduler to take a batch; resend it while it cannot (dead,
        restarting): a completion is never dropped here."""
        try:
            await ack
            self._unacked.pop(key, None)
        except ray.exceptions.RayActorError:  # dead or restarting: resend
            await asyncio.sleep(RESEND_AFTER_S)
            batch = self._unacked.pop(key, None)
            if batch:
                self._send(batch)
        except Exception:  # noqa: BLE001 - it failed on them: resending would fail again
            log.exception("the global scheduler failed on %d completion(s); kept as held",
                          len(self._unacked.get(key, ())))


def vars_of(snapshot) -> dict:
    return {name: getattr(snapshot, name) for name in snapshot.__slots__}
