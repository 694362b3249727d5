"""The GlobalScheduler actor: a thin Ray wrapper around :class:`GlobalCore`.

It creates one LocalScheduler actor per entry of its plan (pinned to that
entry's node), places arriving tasks, records completions once each and hands
them to the driver through ``take()`` (a long poll, so results stream back
without a busy loop).
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.actors.learner_actor import LearnerActor
from ray_sched.actors.local_scheduler import LocalScheduler
from ray_sched.learner import FallbackPredictor
from ray_sched.policies import PLACEMENTS
from ray_sched.policies.global_core import GlobalCore
from ray_sched.policies.placement import WorkerLoad
from ray_sched.task import Completion, Task, without_payload

log = logging.getLogger(__name__)

#: How long a batch waits for the learner's predictions before the fallback answers.
PREDICT_TIMEOUT_S = 1.0


@ray.remote(num_cpus=0)
class GlobalScheduler:
    def __init__(self, plan: list[dict], ordering: str, placement: str, seed: int | None = 0,
                 learner_options: dict | None = None, stages: dict | None = None):
        me = ray.get_runtime_context().current_actor
        here = ray.get_runtime_context().get_node_id()
        # The learner, when the policy needs predictions; the fallback serves while it
        # is unreachable (dead, restarting, slow) and before it answers at all.
        self.learner = None
        if learner_options is not None:
            self.learner = LearnerActor.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
            ).remote(**learner_options)
        self.fallback = FallbackPredictor()
        self.n_fallback_batches = 0
        self.plan = plan
        self.locals = [
            LocalScheduler.options(
                name=None,
                scheduling_strategy=NodeAffinitySchedulingStrategy(entry["node_id"], soft=False),
            ).remote(entry["name"], entry["node_id"], entry["slots"], ordering, me,
                     self.learner, stages)
            for entry in plan
        ]
        loads = [WorkerLoad(name=e["name"], slots=e["slots"], region=e.get("region"),
                            node=e["node_id"]) for e in plan]
        self.core = GlobalCore(PLACEMENTS[placement](seed=seed), loads)
        self.snapshots: dict[str, dict] = {}
        self._outbox: list[Completion] = []
        self._ready = asyncio.Event()
        self.n_recorded = 0

    async def ready(self) -> list[dict]:
        """Wait until every local scheduler (and the learner) is up; returns their descriptions."""
        described = list(await asyncio.gather(*(local.ping.remote() for local in self.locals)))
        if self.learner is not None:
            described.append({"learner": await self.learner.info.remote()})
        return described

    async def warmup(self) -> None:
        await asyncio.gather(*(local.warmup.remote() for local in self.locals))

    async def submit(self, tasks: list[Task]) -> None:
        now = time.time()
        for task in tasks:
            task.received_wall = now
        if self.learner is not None:
            await self._predict(tasks)
        placements, failed = self.core.admit(tasks)
        self._send(placements)
        self._record(failed)

    async def _predict(self, tasks: list[Task]) -> None:
        try:
            predictions = await asyncio.wait_for(self.learner.predict.remote(tasks),
                                                 timeout=PREDICT_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the fallback keeps scheduling going
            self.n_fallback_batches += 1
            if self.n_fallback_batches == 1 or self.n_fallback_batches % 100 == 0:
                log.warning("learner unavailable (%s); heuristic fallback in use", error)
            predictions = self.fallback.predict(tasks)
        predictions.apply(tasks)

    def _observe(self, completions: list[Completion]) -> None:
        tasks, measured = [], []
        for completion in completions:
            entry = self.core.ledger.get(completion.task_id)
            runtime = completion.measured_runtime_s
            if entry is not None and completion.status == "ok" and runtime is not None:
                tasks.append(without_payload(entry.task))
                measured.append(runtime)
        if tasks:
            self.fallback.observe(tasks, measured)
            self.learner.observe.remote(tasks, measured)

    async def completed(self, local_name: str, completions: list[Completion],
                        snapshot: dict) -> None:
        self.snapshots[local_name] = snapshot
        if self.learner is not None:
            self._observe(completions)
        recorded, placements = self.core.complete(completions)
        self._send(placements)
        self._record(recorded)

    async def take(self, wait_s: float = 0.5) -> list[Completion]:
        """Completions recorded since the last call; waits up to ``wait_s`` for the first."""
        if not self._outbox:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=wait_s)
            except TimeoutError:
                return []
        batch, self._outbox = self._outbox, []
        return batch

    async def stats(self) -> dict:
        """Outstanding tasks and the latest snapshot of each local scheduler."""
        running = sum(s.get("running", 0) for s in self.snapshots.values())
        return {"outstanding": self.core.outstanding(), "recorded": self.n_recorded,
                "running": running,
                "locals": {name: dict(s) for name, s in self.snapshots.items()},
                "loads": [{"name": w.name, "outstanding_tasks": w.outstanding_tasks,
                           "outstanding_cpu": w.outstanding_cpu, "slots": w.slots,
                           "region": w.region} for w in self.core.workers]}

    async def story(self, task_id: str) -> list[dict]:
        return self.core.story(task_id)

    async def learner_actor(self):
        """The Learner actor's handle (None for policies that predict nothing)."""
        return self.learner

    async def learner_info(self) -> dict | None:
        if self.learner is None:
            return None
        info = await self.learner.info.remote()
        info["stats"] = await self.learner.stats.remote()
        info["fallback_batches"] = self.n_fallback_batches
        return info

    async def close_stages(self) -> list:
        """Close every stage actor of every local scheduler (they flush what they hold)."""
        results = await asyncio.gather(*(local.close_stages.remote() for local in self.locals))
        return [r for local_results in results for r in local_results]

    async def shutdown(self) -> dict | None:
        """Stop the local schedulers; checkpoint the learner. Returns the learner's info."""
        for local in self.locals:
            ray.kill(local)
        info = None
        if self.learner is not None:
            try:
                await asyncio.wait_for(self.learner.checkpoint.remote(), timeout=30)
                info = await asyncio.wait_for(self.learner_info(), timeout=30)
            except Exception as error:  # noqa: BLE001 - shutting down anyway
                log.warning("learner checkpoint at shutdown failed: %s", error)
            ray.kill(self.learner)
        return info

    def _send(self, placements: list[tuple[int, Task]]) -> None:
        by_worker: dict[int, list[Task]] = {}
        for index, task in placements:
            by_worker.setdefault(index, []).append(task)
        for index, tasks in by_worker.items():
            self.locals[index].enqueue.remote(tasks)

    def _record(self, completions: list[Completion]) -> None:
        if completions:
            self.n_recorded += len(completions)
            self._outbox.extend(completions)
            self._ready.set()


