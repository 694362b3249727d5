"""Adaptive control and recovery (issue 5).

Each controller is plain Python with an injectable clock, wired into the actors:

- :mod:`~ray_sched.control.inline`: hybrid sync/async execution (local scheduler);
- :mod:`~ray_sched.control.batching`: tiny tasks several to one Ray launch (local scheduler);
- :mod:`~ray_sched.control.stealing`: work stealing and rebalancing (global scheduler);
- :mod:`~ray_sched.control.concurrency`: adaptive slots from node CPU and memory
  (local scheduler);
- :mod:`~ray_sched.control.forecast`: arrival and work forecasts per kind and region
  (global scheduler), acted on before a burst;
- :mod:`~ray_sched.control.chaos`: fault injection for users (``--chaos``).

:class:`Controls` says which of them run; the CLI's ``--no-inline``, ``--no-batch``,
``--no-steal``, ``--no-forecast`` and ``--adaptive`` set it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ray_sched.control.priority import CONTROL_NICE, NICE_RANGE
from ray_sched.errors import ConfigError


@dataclass(frozen=True)
class Controls:
    """Which adaptive controllers run.

    Args:
        inline: tiny tasks run on the local scheduler's threads (hybrid execution).
        batch: consecutive tiny tasks of a queue share one Ray launch and one slot
            (:mod:`ray_sched.control.batching`).
        steal: idle local schedulers take queued work from backlogged ones.
        forecast: arrivals are forecast per kind and region; a region about to be busy
            pre-scales (with ``adaptive``) and is steered away from by tasks free to go
            elsewhere.
        adaptive: each local scheduler's slots move within ``[min_slots, max_slots]``
            from its node's CPU and memory use. Off by default: a replay compared with
            baselines keeps the slots it was given.
        min_slots, max_slots: per local scheduler, as a fraction of its configured slots
            (defaults 0.5 and 2.0).
        control_nice: the nice value of ray_sched's actors where the OS allows raising
            their priority (:mod:`ray_sched.control.priority`); 0 leaves them at normal
            priority (``--normal-priority``).
    """

    inline: bool = True
    batch: bool = True
    steal: bool = True
    forecast: bool = True
    adaptive: bool = False
    min_slots: float = 0.5
    max_slots: float = 2.0
    control_nice: int = CONTROL_NICE

    def __post_init__(self):
        for name in ("inline", "batch", "steal", "forecast", "adaptive"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"controls.{name} must be True or False, got "
                                  f"{getattr(self, name)!r}")
        for name in ("min_slots", "max_slots"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"controls.{name} must be a number > 0, got {value!r}")
        low, high = NICE_RANGE
        nice = self.control_nice
        if isinstance(nice, bool) or not isinstance(nice, int) or not low <= nice <= high:
            raise ConfigError(f"controls.control_nice must be an integer in [{low}, {high}], "
                              f"got {nice!r}")
        if self.min_slots > 1 or self.max_slots < 1:
            raise ConfigError(f"controls need min_slots <= 1 <= max_slots (fractions of the "
                              f"configured slots), got {self.min_slots} and {self.max_slots}")

    @classmethod
    def of(cls, value: Controls | dict | None, **overrides) -> Controls:
        """A Controls from itself, a dict of its fields, or None (the defaults); keyword
        overrides that are not None win.

        Raises:
            ConfigError: an unknown field or a bad value.
        """
        if isinstance(value, Controls):
            base = value.as_dict()
        elif value is None:
            base = {}
        elif isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"unknown control(s) {unknown}; known: {sorted(known)}")
            base = dict(value)
        else:
            raise ConfigError(f"controls must be a Controls or a dict, got "
                              f"{type(value).__name__}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def as_dict(self) -> dict:
        return asdict(self)
