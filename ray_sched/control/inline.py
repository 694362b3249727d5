"""Hybrid sync/async execution: run a task inline, on the local scheduler's own threads,
when it is predicted to take less time than launching it as a Ray task would cost.

Plain Python with an injectable clock; the LocalScheduler actor asks :meth:`choose` per
task and reports every remote launch's measured cost with :meth:`observe_launch`: the time
the remote path added to the work itself, from the launch to the result being back at the
local scheduler (the start latency, plus the result's way back). The threshold is that
cost, learnt online, so it follows the machine: a loaded node launches slower and keeps
more tasks inline.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

#: Launch cost assumed before any remote launch is measured (Ray on 2 cores: 1-3 ms).
INITIAL_LAUNCH_COST_S = 0.002
#: Weight of each new measurement in the launch cost's moving average.
LAUNCH_COST_ALPHA = 0.05
#: Mode switches kept for :meth:`InlineDecider.history`.
HISTORY_SIZE = 256
#: A task predicted (p90) at or above this never runs inline, whatever the launch cost:
#: the local scheduler's threads are for tiny tasks, not for hiding work from Ray.
MAX_INLINE_P90_S = 0.05


@dataclass(frozen=True)
class ModeSwitch:
    """One change of mode for a kind of task, with why."""

    wall: float
    kind: str
    mode: str                 # "inline" | "remote"
    predicted_p90_s: float | None
    launch_cost_s: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


class InlineDecider:
    """Inline or remote, per task.

    Args:
        enabled: False sends every task remote (``--no-inline``).
        initial_launch_cost_s: the launch cost until one is measured.
        alpha: weight of a new launch measurement in the moving average.
        clock: wall clock (for the history).
    """

    def __init__(self, *, enabled: bool = True,
                 initial_launch_cost_s: float = INITIAL_LAUNCH_COST_S,
                 alpha: float = LAUNCH_COST_ALPHA, clock=time.time):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if initial_launch_cost_s < 0:
            raise ValueError(f"initial_launch_cost_s must be >= 0, got {initial_launch_cost_s}")
        self.enabled = enabled
        self.alpha = alpha
        self.clock = clock
        self.launch_cost_s_ = float(initial_launch_cost_s)
        self.n_launches_ = 0
        self.n_inline_ = 0
        self.n_remote_ = 0
        self._mode: dict[str, str] = {}
        self._history: deque[ModeSwitch] = deque(maxlen=HISTORY_SIZE)

    def observe_launch(self, cost_s: float) -> None:
        """A remote task's result came back ``cost_s`` seconds later than its work alone
        would have taken."""
        if cost_s < 0 or cost_s != cost_s:
            return  # clocks of two processes: a negative gap is noise
        self.n_launches_ += 1
        self.launch_cost_s_ += self.alpha * (cost_s - self.launch_cost_s_)

    def eligible(self, predicted_p90_s: float | None) -> bool:
        """Whether :meth:`choose` would run a task so predicted inline (nothing counted)."""
        return (self.enabled and predicted_p90_s is not None
                and predicted_p90_s < min(MAX_INLINE_P90_S, self.launch_cost_s_))

    def choose(self, kind: str, predicted_p90_s: float | None) -> bool:
        """True: run inline. Tasks without a prediction, and every task when disabled,
        go remote."""
        inline = self.eligible(predicted_p90_s)
        if not self.enabled or predicted_p90_s is None:
            reason = "disabled" if not self.enabled else "no prediction"
        elif predicted_p90_s >= MAX_INLINE_P90_S:
            reason = f"p90 {predicted_p90_s:.3g} s >= {MAX_INLINE_P90_S} s"
        else:
            word = "<" if inline else ">="
            reason = (f"p90 {predicted_p90_s * 1e3:.3g} ms {word} launch cost "
                      f"{self.launch_cost_s_ * 1e3:.3g} ms")
        mode = "inline" if inline else "remote"
        if self._mode.get(kind) != mode:
            self._mode[kind] = mode
            self._history.append(ModeSwitch(self.clock(), kind, mode, predicted_p90_s,
                                            self.launch_cost_s_, reason))
        if inline:
            self.n_inline_ += 1
        else:
            self.n_remote_ += 1
        return inline

    def count_batch(self, n: int, inline: bool) -> None:
        """``n`` tasks went together (a launch batch: remote in one launch, or inline one
        after another on one thread), decided for the batch rather than each."""
        if inline:
            self.n_inline_ += n
        else:
            self.n_remote_ += n

    def history(self) -> list[dict]:
        """Every mode switch (per kind), oldest first, bounded."""
        return [switch.as_dict() for switch in self._history]

    def stats(self) -> dict:
        return {"enabled": self.enabled, "launch_cost_s": self.launch_cost_s_,
                "launches_measured": self.n_launches_, "inline": self.n_inline_,
                "remote": self.n_remote_, "switches": len(self._history)}
