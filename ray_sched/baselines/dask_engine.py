"""``dask``: the same replay on a dask.distributed LocalCluster with the same slots.

Key prefix = kind, so that Dask's per-prefix duration estimates work; the declared
priority is passed through (higher runs first in Dask, as in ours); parents are
passed as arguments so Dask releases children when their parents finish; a task's
``cpu`` becomes a ``slot`` resource so wide tasks take as many slots as with us.

For sleeping work the worker runs in-process (threads, ``processes=False``): sleeping
releases the GIL. For CPU-bound work (``processes=True``, what ``--work cpu`` uses) one
single-threaded worker process per slot, as Dask's users run CPU-bound Python: threads
would share one GIL and one core. A task then takes one slot whatever its ``cpu`` (a
task cannot span worker processes). Dask starts those processes with ``spawn``: a script
that runs this baseline with CPU work needs the ``if __name__ == "__main__":`` guard
(the command line and notebooks do not).
"""

from __future__ import annotations

import logging
import re

from ray_sched.engines import CompletionInbox
from ray_sched.errors import ConfigError
from ray_sched.task import Completion, Task
from ray_sched.work import synthetic_work

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def dask_key(task: Task) -> str:
    """``<kind>-<task_id>``: Dask's ``key_split`` then finds the kind as the task's prefix."""
    kind = _UNSAFE.sub("_", task.kind) or "task"
    return f"{kind}-{task.task_id}"


class DaskEngine:
    name = "dask"
    places = False

    def __init__(self, slots: int, *, processes: bool = False):
        try:
            from distributed import Client, LocalCluster
        except ImportError as error:  # pragma: no cover - dev extra missing
            raise ConfigError("the dask baseline needs dask[distributed]: "
                              "pip install 'ray_sched[dev]'") from error
        self.slots = slots
        self._slots_per_worker = 1 if processes else slots
        self.cluster = LocalCluster(n_workers=slots // self._slots_per_worker,
                                    threads_per_worker=self._slots_per_worker,
                                    processes=processes,
                                    resources={"slot": self._slots_per_worker},
                                    dashboard_address=":0", silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        self._futures: dict[str, object] = {}
        self._held: list[Task] = []
        self._inbox = CompletionInbox()
        # Warm the worker (import of the work function, thread pool) before timing starts.
        self.client.gather([self.client.submit(synthetic_work, 0.0, pure=False)
                            for _ in range(slots)])

    def submit(self, tasks: list[Task]) -> None:
        self._held.extend(tasks)
        progress = True
        while progress:
            progress = False
            still_held = []
            for task in self._held:
                if all(p in self._futures for p in task.parents):
                    self._submit_one(task)
                    progress = True
                else:
                    still_held.append(task)
            self._held = still_held

    def _submit_one(self, task: Task) -> None:
        parents = [self._futures[p] for p in task.parents]
        future = self.client.submit(
            synthetic_work, task.runtime_s, *parents, work=task.work, key=dask_key(task),
            priority=task.priority, resources={"slot": min(task.cpu, self._slots_per_worker)},
            pure=False)
        task.attempts = 1
        self._futures[task.task_id] = future
        future.add_done_callback(lambda f, t=task: self._done(t, f))

    def _done(self, task: Task, future) -> None:
        completion = Completion(task.task_id, "ok", worker="dask", node="dask-local",
                                attempts=1, submitted_wall=task.submitted_at)
        try:
            completion.start_wall, completion.finish_wall = future.result()
        except Exception as error:  # noqa: BLE001 - recorded, not lost
            completion.status, completion.error = "failed", f"{type(error).__name__}: {error}"
        self._inbox.put([completion])

    def poll(self, timeout_s: float) -> list[Completion]:
        return self._inbox.poll(timeout_s)

    def running(self) -> int | None:
        return None

    def close(self) -> None:
        self._futures.clear()
        self.client.close()
        self.cluster.close()
