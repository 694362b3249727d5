"""Fault injection for users: ``ray-sched replay … --chaos kill-local@5s``.

A spec is ``ACTION[:INDEX]@TIME`` with TIME in seconds from the replay's start (``5s``,
``5``, ``2.5s``); several may be given, comma-separated or with the flag repeated:

- ``kill-local[:I]``: kill local scheduler I (default 0) for good; the global scheduler
  re-places every task it held that has no recorded completion and starts a replacement.
- ``kill-learner``: kill the Learner actor; it restarts from its last checkpoint while the
  heuristic fallback keeps scheduling going.
- ``kill-global``: kill the GlobalScheduler actor; Ray restarts it and it rebuilds its
  ledger from what the local schedulers hold and what the driver has not seen recorded.
- ``kill-node[:I]``: on a multi-node cluster, kill the Ray node of local scheduler I
  (default: the first one not on the driver's node) by killing its raylet; the driver's
  (head) node is never killed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ray_sched.errors import ConfigError

#: What can be killed, and what happens then.
ACTIONS = {
    "kill-local": "kill a local scheduler (index after ':', default 0): its tasks are "
                  "re-placed and a replacement starts",
    "kill-learner": "kill the learner: the fallback predicts until it is back from its "
                    "checkpoint",
    "kill-global": "kill the global scheduler: Ray restarts it and it rebuilds its ledger",
    "kill-node": "kill the node of a local scheduler (index after ':', default the first off "
                 "the driver's node): its tasks are re-placed on live nodes",
}
#: Actions that take a local scheduler index.
INDEXED = ("kill-local", "kill-node")
_SPEC = re.compile(r"^(?P<action>[a-z-]+)(?::(?P<index>\d+))?@(?P<time>\d+(?:\.\d*)?)s?$")


@dataclass(frozen=True, order=True)
class ChaosEvent:
    """One fault: ``action`` on ``index`` at ``at_s`` seconds into the replay (for
    ``kill-node``, -1 means the first local scheduler off the driver's node)."""

    at_s: float
    action: str
    index: int = 0

    def __str__(self) -> str:
        target = f":{self.index}" if self.action in INDEXED and self.index >= 0 else ""
        return f"{self.action}{target}@{self.at_s:g}s"


def parse_chaos(specs: str | list[str] | None) -> list[ChaosEvent]:
    """Events from specs (each may hold several, comma-separated), in time order.

    Raises:
        ConfigError: a spec that is not ``ACTION[:INDEX]@TIME``, or an unknown action.
    """
    if not specs:
        return []
    texts = [specs] if isinstance(specs, str) else list(specs)
    events = []
    for text in texts:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            match = _SPEC.match(part)
            if match is None:
                raise ConfigError(f"--chaos {part!r}: expected ACTION[:INDEX]@SECONDS, e.g. "
                                  f"kill-local@5s or kill-local:1@2.5s")
            action = match["action"]
            if action not in ACTIONS:
                raise ConfigError(f"--chaos {part!r}: unknown action {action!r}; one of "
                                  f"{', '.join(ACTIONS)}")
            if match["index"] is not None and action not in INDEXED:
                raise ConfigError(f"--chaos {part!r}: only {' and '.join(INDEXED)} take an "
                                  f"index")
            default = -1 if action == "kill-node" else 0  # -1: the first off the driver's node
            index = default if match["index"] is None else int(match["index"])
            events.append(ChaosEvent(float(match["time"]), action, index))
    return sorted(events)
