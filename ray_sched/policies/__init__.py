"""Scheduling policies as plain Python objects (no Ray): ordering and placement.

A policy name maps to an (ordering, placement) pair; ``"ORDERING+PLACEMENT"``
names any pair directly (e.g. ``"edf+power-of-two"``). The baselines
``ray-default`` and ``dask`` are not pairs: they hand every task to another
scheduler and are run by :mod:`ray_sched.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_sched.errors import ConfigError
from ray_sched.policies.learned import ExpectedCompletion, LearnedOrdering
from ray_sched.policies.ordering import ORDERINGS, OrderingPolicy, TaskQueue
from ray_sched.policies.placement import PLACEMENTS, PlacementPolicy, WorkerLoad

ORDERINGS[LearnedOrdering.name] = LearnedOrdering
PLACEMENTS[ExpectedCompletion.name] = ExpectedCompletion

#: Named policies: (ordering, placement).
POLICIES: dict[str, tuple[str, str]] = {
    "fifo": ("fifo", "least-loaded"),
    "round-robin": ("fifo", "round-robin"),
    "least-loaded": ("fifo", "least-loaded"),
    "power-of-two": ("fifo", "power-of-two"),
    "priority": ("priority", "least-loaded"),
    "edf": ("edf", "least-loaded"),
    "oracle": ("oracle", "least-work"),
    "ml": ("ml", "expected-completion"),
}
#: Policies that bypass our schedulers and measure another one.
BASELINES = ("ray-default", "dask")


@dataclass(frozen=True)
class PolicySpec:
    """A resolved policy name."""

    name: str
    ordering: str
    placement: str

    def make_ordering(self) -> OrderingPolicy:
        return ORDERINGS[self.ordering]()

    def make_placement(self, seed: int | None = 0) -> PlacementPolicy:
        return PLACEMENTS[self.placement](seed=seed)

    @property
    def needs_predictions(self) -> bool:
        """Whether the learner must predict each task before it is placed and ordered."""
        return (ORDERINGS[self.ordering].needs_predictions
                or PLACEMENTS[self.placement].needs_predictions)


def policy_names() -> list[str]:
    """Every name ``--policy`` accepts (besides ``ORDERING+PLACEMENT`` pairs)."""
    return list(POLICIES) + list(BASELINES)


def resolve_policy(name: str) -> PolicySpec:
    """Map a policy name (or ``ordering+placement``) to its pair.

    Raises:
        ConfigError: the name is unknown; the message lists what is accepted.
    """
    if name in POLICIES:
        ordering, placement = POLICIES[name]
        return PolicySpec(name, ordering, placement)
    if "+" in name:
        ordering, _, placement = name.partition("+")
        if ordering in ORDERINGS and placement in PLACEMENTS:
            return PolicySpec(name, ordering, placement)
        raise ConfigError(
            f"unknown policy pair {name!r}: orderings are {sorted(ORDERINGS)}, "
            f"placements are {sorted(PLACEMENTS)}")
    if name in BASELINES:
        raise ConfigError(f"{name!r} is a baseline, not an (ordering, placement) pair")
    raise ConfigError(f"unknown policy {name!r}; choose one of {policy_names()} "
                      f"or ORDERING+PLACEMENT")


__all__ = [
    "BASELINES", "ORDERINGS", "PLACEMENTS", "POLICIES", "OrderingPolicy", "PlacementPolicy",
    "PolicySpec", "TaskQueue", "WorkerLoad", "policy_names", "resolve_policy",
]
