"""What the control plane costs in CPU: every process that schedules, measured alike for
ray_sched and the baselines.

- ``driver``: the process that submits the tasks and collects their results (for Dask
  with its in-process cluster this includes Dask's scheduler and, with ``--work cpu``,
  the work itself: its worker threads run there);
- ``actors``: ray_sched's own actors (global and local schedulers, learner, monitor),
  each reporting its own process's CPU time, wherever it runs (0 for the baselines);
- ``ray_system``: Ray's raylet and GCS server on this machine (both engines on Ray use
  them; None where none runs here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: Ray's own processes on a node, by process name.
RAY_SYSTEM_PROCESSES = ("raylet", "gcs_server")


def process_cpu_s() -> float:
    """CPU seconds (user + system) of this whole process, every thread included."""
    return time.process_time()


def _ray_system_processes() -> list:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency of ray
        return []
    found = []
    for process in psutil.process_iter(["name"]):
        if (process.info.get("name") or "") in RAY_SYSTEM_PROCESSES:
            found.append(process)
    return found


@dataclass
class CpuReading:
    driver_s: float
    actors_s: dict[str, float]
    ray_system_s: float | None


class ControlPlaneCpu:
    """Reads the control plane's CPU clocks before and after a run.

    Args:
        actors: a callable returning ``{role: cumulative CPU seconds}`` of the engine's own
            actors (an engine without actors: None).
    """

    def __init__(self, actors=None):
        self._actors = actors
        self._system = _ray_system_processes()

    def read(self) -> CpuReading:
        actors = {}
        if self._actors is not None:
            try:
                actors = dict(self._actors())
            except Exception:  # noqa: BLE001 - a lost actor leaves its share out
                actors = {}
        system = None
        if self._system:
            system = 0.0
            for process in self._system:
                try:
                    times = process.cpu_times()
                    system += times.user + times.system
                except Exception:  # noqa: BLE001, S112 - a process gone meanwhile
                    continue
        return CpuReading(process_cpu_s(), actors, system)

    @staticmethod
    def summary(before: CpuReading, after: CpuReading, n_tasks: int) -> dict:
        """The summary fields: CPU seconds per 1,000 tasks of the driver, of ray_sched's
        actors (those read at both ends), of both together (``control_cpu_s_per_1k``), and
        of Ray's system processes on this machine."""
        per_1k = 1000.0 / max(1, n_tasks)
        by_role = {role: max(0.0, after.actors_s[role] - start)
                   for role, start in before.actors_s.items() if role in after.actors_s}
        actors = sum(by_role.values())
        driver = max(0.0, after.driver_s - before.driver_s)
        fields = {"driver_cpu_s_per_1k": driver * per_1k,
                  "actors_cpu_s_per_1k": actors * per_1k,
                  # Each of our actors apart (global, local:<name>, learner, monitor).
                  "actor_cpu_s_per_1k": {role: seconds * per_1k
                                         for role, seconds in sorted(by_role.items())},
                  "control_cpu_s_per_1k": (driver + actors) * per_1k,
                  "ray_system_cpu_s_per_1k": None}
        if before.ray_system_s is not None and after.ray_system_s is not None:
            fields["ray_system_cpu_s_per_1k"] = (after.ray_system_s
                                                 - before.ray_system_s) * per_1k
        return fields
