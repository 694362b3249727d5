"""``ray-default``: every task goes straight to Ray at its arrival; Ray's own scheduler
queues and places it. No ordering or placement of ours, no handicap: the same
synthetic work, the same warm workers, parents passed as arguments so that Ray
releases children when their parents finish."""

from __future__ import annotations

import ray

from ray_sched.actors.execute import run_synthetic, warm_workers
from ray_sched.task import Completion, Task


class RayDefaultEngine:
    name = "ray-default"
    places = False

    def __init__(self, slots: int, *, warmup: bool = True):
        self.slots = slots
        self._refs: dict[str, ray.ObjectRef] = {}      # every submitted task's ref (parents)
        self._pending: dict[ray.ObjectRef, Task] = {}
        self._held: list[Task] = []                    # children whose parents are not in yet
        self._options: dict[float, object] = {}
        self._node = ray.get_runtime_context().get_node_id()
        if warmup:
            warm_workers(slots)

    def _launcher(self, cpu: float):
        launcher = self._options.get(cpu)
        if launcher is None:
            launcher = self._options[cpu] = run_synthetic.options(num_cpus=cpu)
        return launcher

    def submit(self, tasks: list[Task]) -> None:
        self._held.extend(tasks)
        progress = True
        while progress:  # a child may come in the same batch as its parents
            progress = False
            still_held = []
            for task in self._held:
                if all(p in self._refs for p in task.parents):
                    parents = [self._refs[p] for p in task.parents]
                    ref = self._launcher(min(task.cpu, self.slots)).remote(
                        task.runtime_s, *parents, work=task.work)
                    task.attempts = 1
                    self._refs[task.task_id] = ref
                    self._pending[ref] = task
                    progress = True
                else:
                    still_held.append(task)
            self._held = still_held

    def poll(self, timeout_s: float) -> list[Completion]:
        if not self._pending:
            return []
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s, fetch_local=False)
        if not ready:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        completions = []
        for ref in ready:
            task = self._pending.pop(ref)
            completion = Completion(task.task_id, "ok", worker="ray", node=self._node,
                                    attempts=1, submitted_wall=task.submitted_at)
            try:
                completion.start_wall, completion.finish_wall = ray.get(ref)
            except Exception as error:  # noqa: BLE001 - a failed task is recorded, not lost
                completion.status, completion.error = "failed", f"{type(error).__name__}: {error}"
            completions.append(completion)
        return completions

    def running(self) -> int | None:
        return None

    def close(self) -> None:
        self._refs.clear()
        self._pending.clear()
