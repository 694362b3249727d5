"""The GlobalScheduler actor: a thin Ray wrapper around :class:`GlobalCore`.

It creates one LocalScheduler actor per entry of its plan (pinned to that
entry's node), places arriving tasks, records completions once each and hands
them to the driver through ``take()`` (a long poll, so results stream back
without a busy loop).
"""

from __future__ import annotations

import asyncio

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.actors.local_scheduler import LocalScheduler
from ray_sched.policies import PLACEMENTS
from ray_sched.policies.global_core import GlobalCore
from ray_sched.policies.placement import WorkerLoad
from ray_sched.task import Completion, Task


@ray.remote(num_cpus=0)
class GlobalScheduler:
    def __init__(self, plan: list[dict], ordering: str, placement: str, seed: int | None = 0):
        me = ray.get_runtime_context().current_actor
        self.plan = plan
        self.locals = [
            LocalScheduler.options(
                name=None,
                scheduling_strategy=NodeAffinitySchedulingStrategy(entry["node_id"], soft=False),
            ).remote(entry["name"], entry["node_id"], entry["slots"], ordering, me)
            for entry in plan
        ]
        self.index_of = {entry["name"]: i for i, entry in enumerate(plan)}
        loads = [WorkerLoad(name=e["name"], slots=e["slots"], region=e.get("region"),
                            node=e["node_id"]) for e in plan]
        self.core = GlobalCore(PLACEMENTS[placement](seed=seed), loads)
        self.snapshots: dict[str, dict] = {}
        self._outbox: list[Completion] = []
        self._ready = asyncio.Event()
        self.n_recorded = 0

    async def ready(self) -> list[dict]:
        """Wait until every local scheduler is up; returns their descriptions."""
        return list(await asyncio.gather(*(local.ping.remote() for local in self.locals)))

    async def warmup(self) -> None:
        await asyncio.gather(*(local.warmup.remote() for local in self.locals))

    async def submit(self, tasks: list[Task]) -> None:
        placements, failed = self.core.admit(tasks)
        self._send(placements)
        self._record(failed)

    async def completed(self, local_name: str, completions: list[Completion],
                        snapshot: dict) -> None:
        self.snapshots[local_name] = snapshot
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

    async def shutdown(self) -> None:
        for local in self.locals:
            ray.kill(local)

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


