"""The Ray wiring: GlobalScheduler and LocalScheduler actors and the work they launch."""

from ray_sched.actors.global_scheduler import GlobalScheduler
from ray_sched.actors.local_scheduler import LocalScheduler

__all__ = ["GlobalScheduler", "LocalScheduler"]
