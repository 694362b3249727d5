"""Amortised launches: tiny tasks go to Ray several to one task, on one slot.

A Ray task launch costs the local scheduler, the raylet and the worker a fixed amount of
CPU and latency whatever the task does; for tasks of a millisecond that cost is most of
the work. The local scheduler therefore starts consecutive tasks of its queue's order
together, as one Ray task that runs them one after another (each still recorded with its
own start and finish), when they are expected to be short beside the launch cost it has
measured (:class:`ray_sched.control.inline.InlineDecider`).

Plain Python with no Ray: the LocalScheduler actor asks :meth:`LaunchBatcher.rule` per
pass over its queue, and reports completions (:meth:`LaunchBatcher.observe`) and batches
(:meth:`LaunchBatcher.record`).
"""

from __future__ import annotations

import math

from ray_sched.task import Task

#: A batch carries about this many times the launch cost in expected work, so that the
#: launch is at most a fifth of what the slot spends on the batch.
WORK_PER_LAUNCH = 4.0
#: The most tasks one launch carries (also bounds what one failed worker takes down).
MAX_BATCH = 64
#: A task is tiny, and may share a launch, when it is expected to take less than this many
#: launch costs: the launch is then a third or more of its slot time.
TINY_LAUNCHES = 2.0
#: A kind's measured runtimes stand in for predictions once this many have finished here.
MIN_OBSERVED = 8
#: Weight of a new runtime in a kind's moving mean and variance.
RUNTIME_ALPHA = 0.05
#: p90 of a normal distribution, in standard deviations above its mean.
Z90 = 1.2816


class LaunchBatcher:
    """Which queued tasks may share a launch, and how much work one launch carries.

    Only tiny tasks are batched: those expected to take less than a couple of launch
    costs. A task's expected runtime is, in this order: its latest re-prediction (``latest_p90_s``),
    the p90 of the runtimes measured here for its kind (once :data:`MIN_OBSERVED` have
    finished), its prediction at admission (``predicted_p90_s``). A task with none of them,
    or of a named stage, is never batched: an unknown task may be long.

    Args:
        enabled: False launches every task alone (``--no-batch``).
        work_per_launch: a batch's expected work, in launch costs.
        tiny_launches: a task may be batched when expected shorter than this many launch
            costs.
        max_batch: the most tasks per launch.
    """

    def __init__(self, *, enabled: bool = True, work_per_launch: float = WORK_PER_LAUNCH,
                 tiny_launches: float = TINY_LAUNCHES, max_batch: int = MAX_BATCH):
        if not work_per_launch > 0:
            raise ValueError(f"work_per_launch must be > 0, got {work_per_launch!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        if not 0 < tiny_launches <= work_per_launch:
            raise ValueError(f"tiny_launches must be in (0, work_per_launch], got "
                             f"{tiny_launches!r}")
        self.enabled = enabled
        self.work_per_launch = float(work_per_launch)
        self.tiny_launches = float(tiny_launches)
        self.max_batch = max_batch
        self._kinds: dict[str, list[float]] = {}  # kind -> [n, mean, variance]
        self.n_batches_ = 0
        self.n_batched_tasks_ = 0
        self.largest_ = 0

    def observe(self, kind: str, runtime_s: float | None) -> None:
        """A task of ``kind`` ran ``runtime_s`` seconds here."""
        if runtime_s is None or not runtime_s >= 0 or math.isinf(runtime_s):
            return
        state = self._kinds.get(kind)
        if state is None:
            self._kinds[kind] = [1, runtime_s, 0.0]
            return
        state[0] += 1
        alpha = max(RUNTIME_ALPHA, 1.0 / state[0])
        delta = runtime_s - state[1]
        state[1] += alpha * delta
        state[2] = (1 - alpha) * (state[2] + alpha * delta * delta)

    def kind_p90_s(self, kind: str) -> float | None:
        """The p90 of ``kind``'s runtimes measured here (None until enough have run)."""
        state = self._kinds.get(kind)
        if state is None or state[0] < MIN_OBSERVED:
            return None
        return state[1] + Z90 * math.sqrt(state[2])

    def expected_s(self, task: Task) -> float | None:
        """How long ``task`` is expected to take (a p90), None when unknown or of a stage."""
        if task.stage is not None:
            return None
        if task.latest_p90_s is not None:
            return task.latest_p90_s
        measured = self.kind_p90_s(task.kind)
        return measured if measured is not None else task.predicted_p90_s

    def rule(self, launch_cost_s: float):
        """What :meth:`ray_sched.core.local_core.LocalCore.next_launches` needs, for a
        launch that costs ``launch_cost_s``: ``(expected_s, budget_s, max_batch)``, where a
        task is batched only when it is tiny (expected shorter than :attr:`tiny_launches`
        launch costs) and a launch carries :attr:`work_per_launch` launch costs of expected
        work."""
        if not self.enabled or not launch_cost_s > 0:
            return None, 0.0, 1

        def tiny_s(task: Task) -> float | None:
            expected = self.expected_s(task)
            return expected if expected is not None and expected < limit_s else None
        limit_s = self.tiny_launches * launch_cost_s
        return tiny_s, self.work_per_launch * launch_cost_s, self.max_batch

    def record(self, size: int) -> None:
        """A launch of ``size`` tasks went out."""
        if size > 1:
            self.n_batches_ += 1
            self.n_batched_tasks_ += size
            self.largest_ = max(self.largest_, size)

    def stats(self) -> dict:
        return {"batching": self.enabled, "batches": self.n_batches_,
                "batched_tasks": self.n_batched_tasks_, "largest_batch": self.largest_,
                "mean_batch": (self.n_batched_tasks_ / self.n_batches_
                               if self.n_batches_ else None)}
