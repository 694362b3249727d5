"""A discrete-event simulator: the same policies, cores and learner on virtual time."""

from ray_sched.sim.engine import simulate

__all__ = ["simulate"]
