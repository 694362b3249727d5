"""The schedulers' state machines, with no Ray in them: events in, actions out.

- :class:`~ray_sched.core.global_core.GlobalCore`: the ledger, placement, task-tree
  release, recovery, work stealing and forecast steering;
- :class:`~ray_sched.core.local_core.LocalCore`: one local scheduler's queue, slots and
  launches: what starts, batched or alone, inline or remote;
- :mod:`~ray_sched.core.actions`: what they return for an engine to carry out (the Ray
  actors, or the simulator on virtual time).
"""

from ray_sched.core.actions import Action, Hint, Learn, Place, Record, Start, Steal
from ray_sched.core.global_core import GlobalCore
from ray_sched.core.local_core import LocalCore

__all__ = ["Action", "GlobalCore", "Hint", "Learn", "LocalCore", "Place", "Record", "Start",
           "Steal"]
