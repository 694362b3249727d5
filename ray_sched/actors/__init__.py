"""The Ray wiring: GlobalScheduler and LocalScheduler actors and the work they launch.

The actors are imported on first use, not with the package: every Ray worker that runs a
task imports ``ray_sched.actors.execute``, and the global scheduler's imports (the learner,
scikit-learn, scipy) cost each such process seconds of CPU it does not need.
"""

from __future__ import annotations

import importlib

__all__ = ["GlobalScheduler", "LocalScheduler"]

_WHERE = {"GlobalScheduler": "ray_sched.actors.global_scheduler",
          "LocalScheduler": "ray_sched.actors.local_scheduler"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
