"""The GlobalScheduler actor: the Ray engine of :class:`GlobalCore`.

Every decision is the core's (placement, release of children, recovery's ledger, work
stealing, forecast steering): events go in, actions (:mod:`ray_sched.core.actions`) come
out, and this actor carries them out over Ray. It finds or starts one LocalScheduler
actor per entry of its plan (pinned to that entry's node), keeps the learner's snapshot
to predict with, feeds the monitor, replaces lost local schedulers, and hands recorded
completions to the driver through ``take()`` (a long poll, so results stream back
without a busy loop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import warnings

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.actors.learner_actor import LearnerActor
from ray_sched.actors.learner_link import LearnerLink
from ray_sched.actors.local_scheduler import LocalScheduler
from ray_sched.actors.monitor_actor import MonitorActor
from ray_sched.control import Controls
from ray_sched.control.forecast import WorkloadForecaster
from ray_sched.control.priority import set_process_nice
from ray_sched.control.stealing import STEAL_EVERY_S
from ray_sched.core.actions import Action, Hint, Learn, Place, Record, Steal
from ray_sched.core.global_core import GlobalCore
from ray_sched.monitor.cpu import process_cpu_s
from ray_sched.policies import ORDERINGS, PLACEMENTS
from ray_sched.policies.placement import WorkerLoad
from ray_sched.task import Completion, Task

log = logging.getLogger(__name__)

#: The monitor's sampling period: local scheduler snapshots, learner error, lost actors.
MONITOR_EVERY_S = 1.0
#: A local scheduler's snapshot that takes longer is skipped for that second.
SNAPSHOT_TIMEOUT_S = 2.0
#: Node liveness (a GCS call) is checked every this many seconds.
NODE_CHECK_EVERY_S = 2.0
#: How long a replacement local scheduler may take to start before the next tick retries.
REPLACEMENT_START_TIMEOUT_S = 60.0
#: The namespace of the named detached actors (local schedulers, learner, monitor).
ACTOR_NAMESPACE = "ray_sched"


def actor_options(prefix: str | None, role: str, *, detached: bool) -> dict:
    """Options naming ``role``'s actor under ``prefix`` (none without a prefix); an actor
    of that name that is alive already is returned instead of a new one."""
    if prefix is None:
        return {}
    options = {"name": f"{prefix}/{role}", "namespace": ACTOR_NAMESPACE,
               "get_if_exists": True}
    if detached:
        options["lifetime"] = "detached"
    return options


def start_learner(prefix: str | None, node_id: str, learner_options: dict, nice: dict, *,
                  detached: bool):
    return LearnerActor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
        **actor_options(prefix, "learner", detached=detached)).remote(**learner_options, **nice)


def start_monitor(prefix: str | None, node_id: str, monitor_options: dict, nice: dict, *,
                  detached: bool):
    # On this node for good: it lives and dies with the global scheduler's node.
    return MonitorActor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        **actor_options(prefix, "monitor", detached=detached)).remote(**monitor_options, **nice)


def start_local(prefix: str | None, entry: dict, ordering: str, global_handle, learner,
                stages: dict | None, controls: dict, *, detached: bool):
    return LocalScheduler.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(entry["node_id"], soft=False),
        **actor_options(prefix, entry["name"], detached=detached),
    ).remote(entry["name"], entry["node_id"], entry["slots"], ordering, global_handle, learner,
             stages, controls["inline"], controls)


@ray.remote(num_cpus=0)
class GlobalScheduler:
    def __init__(self, plan: list[dict], ordering: str, placement: str, seed: int | None = 0,
                 learner_options: dict | None = None, stages: dict | None = None,
                 monitor_options: dict | None = None, inline: bool = True,
                 controls: dict | None = None, name_prefix: str | None = None,
                 started_by_driver: bool = False):
        context = ray.get_runtime_context()
        me = context.current_actor
        here = context.get_node_id()
        # With a name prefix, the local schedulers, the learner and the monitor are named
        # actors that outlive this actor, and a restart of it (max_restarts) finds them
        # again by name instead of starting new ones. The driver's Scheduler then calls
        # recover() to rebuild the ledger (see recover()). With started_by_driver, the
        # driver started them (owned by it, so not detached: the Ray tasks they launch run
        # in the driver's job's worker processes, which later schedulers reuse); this actor
        # finds them by name. Otherwise it starts them, detached. Replacements of lost
        # local schedulers are always started here, detached.
        self.name_prefix = name_prefix
        self.started_by_driver = started_by_driver and name_prefix is not None
        self.incarnation = uuid.uuid4().hex
        with warnings.catch_warnings():  # Ray marks the state API it uses as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            self._awaiting_recovery = bool(context.was_current_actor_reconstructed)
        self._held_back: list[tuple] = []  # completions that arrived before recover()
        self.controls = Controls.of(controls, inline=inline)
        self.priority = set_process_nice(self.controls.control_nice)
        nice = {"control_nice": self.controls.control_nice}
        # The learner, when the policy needs predictions; the fallback serves while it
        # is unreachable (dead, restarting, slow) and before it answers at all.
        self.learner = None
        if learner_options is not None:
            self.learner = start_learner(name_prefix, here, learner_options, nice,
                                         detached=not self.started_by_driver)
        self.plan = [dict(entry) for entry in plan]
        self._local_args = (ordering, me, self.learner, stages, self.controls.as_dict())
        # Predictions from the learner's latest snapshot, in this process; local
        # schedulers whose queues re-predict their tasks get every new snapshot.
        refresh = hasattr(ORDERINGS[ordering]().make_queue(), "refresh")
        self.link = None if self.learner is None else LearnerLink(
            self.learner, self._hand_on_model if refresh else None, self._track)
        # At a first start the driver starts its local schedulers after this actor (they
        # need its handle), and ready() finds them. After a restart every one must be
        # there before any call: one lost meanwhile (its node gone before the health check
        # replaced it) is started again now.
        self.locals = [None] * len(self.plan)
        if not self.started_by_driver or self._awaiting_recovery:
            self._find_locals()
        self._recovering: set[int] = set()
        self._closing = False
        self.n_replacements = 0
        loads = [WorkerLoad(name=e["name"], slots=e["slots"], region=e.get("region"),
                            node=e["node_id"]) for e in plan]
        self.core = GlobalCore(
            PLACEMENTS[placement](seed=seed), loads,
            steal=self.controls.steal, adaptive=self.controls.adaptive,
            forecaster=WorkloadForecaster() if self.controls.forecast else None,
            learning=self.learner is not None, keep_tasks=monitor_options is not None)
        self.snapshots: dict[str, dict] = {}
        self._outbox: list[Completion] = []
        self._ready = asyncio.Event()
        self.n_recorded = 0
        # The monitor, fed once a second from _monitor_loop (None: no monitoring).
        self.monitor = None
        if monitor_options is not None:
            self.monitor = start_monitor(name_prefix, here, monitor_options, nice,
                                         detached=not self.started_by_driver)
        self._monitor_records: list[tuple] = []
        self._background: set[asyncio.Task] = set()
        self._monitor_task: asyncio.Task | None = None
        self._lost: set[str] = set()
        self._learner_reachable = True
        self._nodes_checked = 0.0
        self.epoch = time.time()
        # Adaptive control: work stealing and the workload forecast, at each tick.
        self._control_task: asyncio.Task | None = None
        self._index_of = {entry["name"]: index for index, entry in enumerate(self.plan)}

    def _start_local(self, entry: dict):
        """A local scheduler started here (detached: it outlives this actor)."""
        ordering, me, learner, stages, controls = self._local_args
        return start_local(self.name_prefix, entry, ordering, me, learner, stages, controls,
                           detached=True)

    def _existing_local(self, entry: dict):
        """The named local scheduler of ``entry``, or None when it is not there (yet)."""
        if self.name_prefix is None:
            return None
        try:
            return ray.get_actor(f"{self.name_prefix}/{entry['name']}",
                                 namespace=ACTOR_NAMESPACE)
        except ValueError:
            return None

    def _find_locals(self) -> None:
        """Fill in the local schedulers the driver started after this actor."""
        for index, entry in enumerate(self.plan):
            if self.locals[index] is None:
                self.locals[index] = self._existing_local(entry) or self._start_local(entry)

    async def ready(self) -> list[dict]:
        """Wait until every local scheduler (and the learner) is up; returns their descriptions."""
        self._find_locals()
        described = list(await asyncio.gather(*(local.ping.remote() for local in self.locals)))
        if self.learner is not None:
            described.append({"learner": await self.learner.info.remote()})
            await self.link.first_snapshot()
        if self.monitor is not None:
            await self.monitor.ping.remote()
        self._start_loops()
        return described

    def _start_loops(self) -> None:
        """The health check with the monitor's feed, and the control loop (once each)."""
        if self._monitor_task is None:
            self._monitor_task = asyncio.ensure_future(self._monitor_loop())
        if self._control_task is None and (self.core.forecaster is not None or (
                self.core.steal and len(self.locals) > 1)):
            self._control_task = asyncio.ensure_future(self._control_loop())

    async def warmup(self) -> None:
        await asyncio.gather(*(local.warmup.remote() for local in self.locals))

    async def submit(self, tasks: list[Task]) -> None:
        now = time.time()
        for task in tasks:
            task.received_wall = now
        if self.link is not None:
            self.link.predict(tasks)
        self._carry_out(self.core.on_arrivals(tasks))

    def _carry_out(self, actions: list[Action]) -> None:
        """Do what the core decided (work steals go through :meth:`_steal`)."""
        for action in actions:
            if isinstance(action, Place):
                self.locals[action.index].enqueue.remote(action.tasks)
            elif isinstance(action, Record):
                self._record(action.completions, action.tasks)
            elif isinstance(action, Learn):
                self.link.observe(action.tasks, action.runtimes_s)
            elif isinstance(action, Hint):
                self.locals[action.index].hint_demand.remote(action.busy_slots)
            elif isinstance(action, Steal):
                self._track(self._steal(action))

    def _hand_on_model(self, model_ref) -> None:
        """Every local scheduler re-predicts its queue with the learner's new snapshot."""
        for local in self.locals:
            local.set_model.remote(model_ref)

    def _track(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def completed(self, local_name: str, completions: list[Completion],
                        snapshot: dict) -> None:
        if self._awaiting_recovery:  # restarted: the ledger is rebuilt first
            self._held_back.append((local_name, completions, snapshot))
            return
        self.snapshots[local_name] = snapshot
        self._carry_out(self.core.on_completions(self._index_of.get(local_name), completions,
                                                 snapshot))

    async def take(self, wait_s: float = 0.5) -> tuple[str, list[Completion]]:
        """(this incarnation's id, completions recorded since the last call); waits up to
        ``wait_s`` for the first. A new id tells the driver this actor was restarted."""
        if not self._outbox:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=wait_s)
            except TimeoutError:
                return self.incarnation, []
        batch, self._outbox = self._outbox, []
        return self.incarnation, batch

    async def recover(self, tasks: list[Task], failed_ids: list[str]) -> dict:
        """After a restart of this actor: rebuild the ledger from what the local schedulers
        hold and what the driver has not seen recorded.

        Args:
            tasks: every task the driver submitted whose completion it has not received.
            failed_ids: tasks recorded as failed (for the parents of waiting tasks; every
                other recorded parent was ok).

        A task a live local scheduler holds (queued, running, or finished with its
        completion not yet acknowledged: local schedulers resend until it is) goes back
        into the ledger there and completes as usual. Every other task is admitted anew:
        those that were waiting for parents or in transit, and those the old incarnation
        recorded but the driver had not yet taken, which run again (``attempts`` does not
        count that lost run). The old incarnation's decision log, forecast and steal
        counts are gone; the monitor and the learner, named actors, keep theirs.

        Returns:
            ``{"restarted": False}`` when this incarnation never lost state, else the counts
            ``held`` and ``placed_again``.
        """
        self._find_locals()
        if not self._awaiting_recovery:
            return {"restarted": False}
        pings = await asyncio.gather(*(local.ping.remote() for local in self.locals),
                                     return_exceptions=True)
        for index, ping in enumerate(pings):
            if isinstance(ping, dict):  # a replacement may live on another node
                self.plan[index]["node_id"] = ping["node_id"]
                self.core.loads.nodes[index] = ping["node_id"]
        held = await asyncio.gather(*(local.held.remote() for local in self.locals),
                                    return_exceptions=True)
        for entry, ids in zip(self.plan, held):
            if isinstance(ids, BaseException):
                log.warning("recovery: %s did not answer (%s); its tasks are placed again",
                            entry["name"], ids)
        if self.link is not None and self.link.model is None:
            await self.link.first_snapshot()
        if self.link is not None and tasks:
            self.link.predict(tasks)  # the driver's copies carry no prediction
        # Completions that reached this incarnation before now count as held where they
        # ran: they are recorded right after the ledger is rebuilt.
        self._carry_out(self.core.rebuild(
            tasks, failed_ids, [None if isinstance(ids, BaseException) else ids for ids in held],
            [(self._index_of.get(name), completions) for name, completions, _ in self._held_back]))
        kept, again = self.core.n_rebuilt
        self._awaiting_recovery = False
        held_back, self._held_back = self._held_back, []
        for local_name, completions, snapshot in held_back:
            await self.completed(local_name, completions, snapshot)
        # The health check replaces any local scheduler that did not answer above.
        self._start_loops()
        log.warning("restarted: %d task(s) held by local schedulers, %d placed anew",
                    kept, again)
        return {"restarted": True, "held": kept, "placed_again": again}

    async def stats(self) -> dict:
        """Outstanding tasks and the latest snapshot of each local scheduler."""
        running = sum(s.get("running", 0) for s in self.snapshots.values())
        return {"outstanding": self.core.outstanding(), "recorded": self.n_recorded,
                "running": running,
                # The learner's snapshot predictions are made with: its version and the
                # completions it had learnt from (None before the first).
                "model": None if self.link is None else self.link.version(),
                "locals": {name: dict(s) for name, s in self.snapshots.items()},
                "loads": [{"name": w.name, "outstanding_tasks": w.outstanding_tasks,
                           "outstanding_cpu": w.outstanding_cpu, "slots": w.slots,
                           "region": w.region} for w in self.core.workers]}

    async def story(self, task_id: str) -> list[dict]:
        return self.core.story(task_id)

    async def inline_stats(self) -> dict:
        """Each local scheduler's hybrid-execution stats, by name."""
        stats = await asyncio.gather(*(local.inline_stats.remote() for local in self.locals))
        return {entry["name"]: one for entry, one in zip(self.plan, stats)}

    async def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of each of ray_sched's actors by role: this one, every local
        scheduler, the learner and the monitor (one that does not answer is left out)."""
        actors = {f"local:{entry['name']}": local
                  for entry, local in zip(self.plan, self.locals)}
        if self.learner is not None:
            actors["learner"] = self.learner
        if self.monitor is not None:
            actors["monitor"] = self.monitor
        answers = await asyncio.gather(
            *(asyncio.wait_for(actor.cpu_seconds.remote(), SNAPSHOT_TIMEOUT_S)
              for actor in actors.values()), return_exceptions=True)
        seconds = {role: float(answer) for role, answer in zip(actors, answers)
                   if not isinstance(answer, BaseException)}
        seconds["global"] = process_cpu_s()
        return seconds

    async def incarnation_id(self) -> str:
        """Changes when Ray restarts this actor (the driver then calls :meth:`recover`)."""
        return self.incarnation

    async def plan_now(self) -> list[dict]:
        """The local schedulers as they stand: name, node, slots, region (replacements may
        have moved to another node)."""
        return [dict(entry) for entry in self.plan]

    async def local_handles(self) -> list:
        """The LocalScheduler actors' handles, in plan order (for fault injection)."""
        self._find_locals()
        return list(self.locals)

    async def learner_actor(self):
        """The Learner actor's handle (None for policies that predict nothing)."""
        return self.learner

    async def learner_info(self) -> dict | None:
        if self.learner is None:
            return None
        info = await self.learner.info.remote()
        info["stats"] = await self.learner.stats.remote()
        info["fallback_batches"] = self.link.n_fallback_batches
        return info

    async def close_stages(self) -> list:
        """Close every stage actor of every local scheduler (they flush what they hold)."""
        results = await asyncio.gather(*(local.close_stages.remote() for local in self.locals))
        return [r for local_results in results for r in local_results]

    async def shutdown(self) -> dict | None:
        """Stop the local schedulers and the monitor (flushing its telemetry); checkpoint
        the learner. Returns the learner's info."""
        if self._monitor_task is not None:
            self._monitor_task.cancel()  # first: the locals killed next are not to be replaced
            self._monitor_task = None
        if self._control_task is not None:
            self._control_task.cancel()
            self._control_task = None
        self._closing = True
        if self.link is not None:
            self.link.close()
        for local in self.locals:
            ray.kill(local)
        if self.monitor is not None:
            try:
                await asyncio.wait_for(self.monitor.close.remote(), timeout=30)
            except Exception as error:  # noqa: BLE001 - shutting down anyway
                log.warning("monitor close failed: %s", error)
            ray.kill(self.monitor)
        info = None
        if self.learner is not None:
            try:
                await asyncio.wait_for(self.learner.checkpoint.remote(), timeout=30)
                info = await asyncio.wait_for(self.learner_info(), timeout=30)
            except Exception as error:  # noqa: BLE001 - shutting down anyway
                log.warning("learner checkpoint at shutdown failed: %s", error)
            ray.kill(self.learner)
        return info

    def _record(self, completions: list[Completion], tasks: dict[str, Task]) -> None:
        if completions:
            self.n_recorded += len(completions)
            self._outbox.extend(completions)
            self._ready.set()
            if self.monitor is not None:
                self._monitor_records.extend(monitor_record(c, tasks.get(c.task_id))
                                             for c in completions)

    # -- adaptive control: work stealing, forecasts, adaptive slots ----------------------
    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(STEAL_EVERY_S)
            try:
                # One steal at a time, each planned on the load table its predecessor left.
                for action in self.core.on_tick(skip=self._recovering):
                    if isinstance(action, Steal):
                        await self._steal(action)
                    else:
                        self._carry_out([action])
            except Exception:  # noqa: BLE001 - control must never stop scheduling
                log.exception("control pass failed")

    async def _steal(self, steal: Steal) -> None:
        """Ask the victim for its tasks that would run last; the core moves them."""
        victim = self.locals[steal.victim]
        try:
            task_ids = await victim.give_up.remote(steal.max_tasks, steal.min_runtime_s)
        except ray.exceptions.RayActorError:
            return  # the health check replaces it and places its tasks again
        if self.locals[steal.victim] is not victim or steal.thief in self._recovering:
            return  # replaced meanwhile: its tasks were placed again already
        self._carry_out(self.core.on_given_up(steal, task_ids))

    async def control_stats(self) -> dict:
        """Work stealing counts, the forecast's error and burst warnings, and each local
        scheduler's adaptive-concurrency history (None where it is off)."""
        concurrency = await asyncio.gather(
            *(local.concurrency_stats.remote() for local in self.locals),
            return_exceptions=True)
        return {
            "controls": self.controls.as_dict(),
            "steals": self.core.n_steals, "tasks_stolen": self.core.n_tasks_stolen,
            "forecast": None if self.core.forecaster is None else {
                **self.core.forecaster.stats(),
                "burst_warnings": self.core.forecaster.history()},
            "concurrency": {entry["name"]: (None if isinstance(one, BaseException) else one)
                            for entry, one in zip(self.plan, concurrency)},
        }

    # -- the monitor's feed and the health check ----------------------------------------
    async def _monitor_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            # On a fixed grid, so that a slow tick does not stretch the period.
            next_tick = max(next_tick + MONITOR_EVERY_S, time.monotonic())
            await asyncio.sleep(next_tick - time.monotonic())
            try:
                await self._monitor_tick()
            except Exception:  # noqa: BLE001 - monitoring must never stop scheduling
                log.exception("monitor sample failed")

    async def _monitor_tick(self) -> None:
        """Replace every local scheduler found dead (its actor, or its node); then send the
        monitor (when there is one) this second's records, every local scheduler's state,
        the learner's recent error, and any local scheduler, learner or node found lost."""
        now = time.time()
        check = now - self._nodes_checked >= NODE_CHECK_EVERY_S
        # A local scheduler that sent completions within the period has told its state
        # already; the others are asked (which also finds the dead ones).
        states = list(await asyncio.gather(
            *(self._state_of(entry["name"], local, now)
              for entry, local in zip(self.plan, self.locals)), return_exceptions=True))
        dead = {index: state for index, state in enumerate(states)
                if isinstance(state, ray.exceptions.RayActorError)}
        if check:
            # A call to an actor on a lost node can hang until Ray notices: check the nodes.
            self._nodes_checked = now
            nodes = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
            alive = {n["NodeID"] for n in nodes if n.get("Alive")}
            for index, entry in enumerate(self.plan):
                if entry["node_id"] not in alive:
                    self._report_lost(now, "node", entry["node_id"], "Ray reports it dead")
                    dead.setdefault(index, RuntimeError(f"node {entry['node_id']} lost"))
        for index, error in dead.items():
            self._report_lost(now, "local_scheduler", self.plan[index]["name"], error)
            await self._replace_local(index, error)
        if self.monitor is None:
            return
        loads = self.core.loads
        sample = []
        for index, (entry, state) in enumerate(zip(self.plan, states)):
            if isinstance(state, BaseException) or index in dead:
                continue  # dead (replaced above) or slow this second
            state = dict(state)
            state.pop("sent_wall", None)
            state["region"] = entry.get("region") or ""
            state["backlog_predicted_s"] = float(loads.predicted_backlog_s[index])
            state["backlog_actual_s"] = float(loads.true_backlog_s[index])
            sample.append(state)
        learner_error = None if self.link is None else self.link.recent_error
        if self.learner is not None and check:  # its liveness, with the node check
            try:
                learner_error = await asyncio.wait_for(self.learner.recent_error.remote(),
                                                       MONITOR_EVERY_S)
                self._learner_reachable = True
                self._lost.discard("learner")  # back: its next loss is reported again
            except Exception as error:  # noqa: BLE001 - dead, restarting or slow
                if self._learner_reachable:
                    self._learner_reachable = False
                    self._report_lost(now, "learner", "learner", error)
        records, self._monitor_records = self._monitor_records, []
        try:
            await asyncio.wait_for(self.monitor.update.remote(
                now, records, sample, learner_error, self.core.n_decisions), SNAPSHOT_TIMEOUT_S)
        except ray.exceptions.RayActorError as error:
            log.warning("the monitor died (%s); it restarts without its history", error)
        except TimeoutError:
            log.warning("the monitor is slow: a sample was skipped")

    async def _state_of(self, name: str, local, now: float) -> dict:
        """A local scheduler's state: the one it sent with completions within the
        monitor's period, else asked now."""
        snapshot = self.snapshots.get(name)
        if snapshot is not None and now - snapshot.get("sent_wall", 0.0) < MONITOR_EVERY_S:
            return snapshot
        return await asyncio.wait_for(local.snapshot.remote(), SNAPSHOT_TIMEOUT_S)

    def _report_lost(self, now: float, what: str, name: str, detail) -> None:
        """Tell the monitor (once per loss) that an actor or node is gone."""
        if self.monitor is not None and name not in self._lost:
            self._lost.add(name)
            self.monitor.lost.remote(now, what, name, str(detail)[:200])

    async def _replace_local(self, index: int, error: BaseException) -> None:
        """A local scheduler died (its actor, or its node): start a replacement on a live
        node (its own when that is alive), then place again every task it held that has no
        recorded completion. Until the replacement is up, new tasks may still be placed on
        the dead one; they are among those placed again."""
        if index in self._recovering or self._closing:
            return
        self._recovering.add(index)
        entry = self.plan[index]
        try:
            node = await self._live_node(entry["node_id"])
            replacement = self._start_local({**entry, "node_id": node})
            try:
                await asyncio.wait_for(replacement.ping.remote(), REPLACEMENT_START_TIMEOUT_S)
            except Exception as failure:  # noqa: BLE001 - the next tick tries again
                log.error("replacement for %s did not start: %s", entry["name"], failure)
                ray.kill(replacement)
                return
            self.locals[index] = replacement
            entry["node_id"] = node
            self.snapshots.pop(entry["name"], None)
            self._lost.discard(entry["name"])
            self.n_replacements += 1
            actions = self.core.on_lost(index, f"{entry['name']} lost ({type(error).__name__})",
                                        replaced=True, where=f"on node {node[:12]}")
            log.warning("%s was lost; replaced on node %s, %d task(s) placed again",
                        entry["name"], node[:12], sum(len(a.tasks) for a in actions))
            self._carry_out(actions)
        finally:
            self._recovering.discard(index)

    async def _live_node(self, preferred: str) -> str:
        """``preferred`` when alive, else this actor's node, else the live node with the most
        CPUs."""
        nodes = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
        alive = {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in nodes if n.get("Alive")}
        if preferred in alive:
            return preferred
        here = ray.get_runtime_context().get_node_id()
        if alive.get(here, 0.0) > 0:
            return here
        return max(alive, key=alive.get) if alive else here

    async def set_epoch(self, epoch: float) -> None:
        """The wall time the run's relative times count from (the replay's start)."""
        self.epoch = epoch
        if self.monitor is not None:
            await self.monitor.set_epoch.remote(epoch)

    async def alerts_since(self, index: int) -> list[dict]:
        if self.monitor is None:
            return []
        return await self.monitor.alerts_since.remote(index)

    async def monitor_output(self) -> dict:
        """After a last sample: the monitor's time series and totals, and the decision log
        (frames, times from the epoch)."""
        output = {"decisions": self.core.decision_frame(self.epoch)}
        if self.monitor is not None:
            await self._monitor_tick()
            try:
                output["timeseries"] = await self.monitor.timeseries.remote()
                output["totals"] = await self.monitor.totals.remote()
            except ray.exceptions.RayActorError as error:  # the run's results still count
                log.warning("the monitor's output is lost: %s", error)
        return output




def monitor_record(completion: Completion, task: Task | None) -> tuple:
    """The monitor's record of one recorded completion (``core.RECORD_FIELDS``)."""
    now = time.time()
    finish = completion.finish_wall or now
    arrival = completion.submitted_wall or completion.received_wall or finish
    jct = finish - arrival
    ok = completion.status == "ok"
    missed = math.nan
    if task is not None and task.deadline_s is not None:
        missed = 0.0 if ok and jct <= task.deadline_s else 1.0
    error = math.nan
    measured, predicted = completion.measured_runtime_s, completion.predicted_runtime_s
    if ok and measured and predicted and measured > 0 and predicted > 0:
        error = abs(math.log(predicted) - math.log(measured))
    if task is None:
        return finish, jct, ok, missed, "", "", "", error
    return finish, jct, ok, missed, task.region or "", task.tenant, task.kind, error
