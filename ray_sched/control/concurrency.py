"""Adaptive concurrency: how many tasks one local scheduler runs at once.

The slot count moves within ``[min_slots, max_slots]`` from the node's measured load: a
window's mean CPU above :data:`CPU_HIGH` gives fewer slots, below :data:`CPU_LOW` with work
waiting gives more, a workload forecast pre-scales ahead of demand, and memory above
:data:`MEM_STOP` stops admission (until it falls to :data:`MEM_RESUME`) so that the global
scheduler places elsewhere. Every change is an experiment: the window after it is compared
with the window before, and a change that made throughput or mean JCT worse by more than
:data:`TOLERANCE` is rolled back, its direction blocked for :data:`BLOCK_WINDOWS` windows.

Plain Python with an injectable clock; the LocalScheduler actor feeds it load samples
(:func:`node_load`), completions and its queue length, and calls
:meth:`ConcurrencyController.tick` every 0.25-1 s. Memory is O(1) per window (running sums)
plus a bounded history of changes with their reasons.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass

import psutil

#: Mean CPU (fraction of the node) above which the node is overloaded: shrink.
CPU_HIGH = 0.8
#: Mean CPU below which the node idles: grow, if tasks are waiting.
CPU_LOW = 0.4
#: Mean memory at or above which admission stops: swapping costs more than placing elsewhere.
MEM_STOP = 0.9
#: Mean memory at or below which admission resumes; the gap to MEM_STOP stops flapping.
MEM_RESUME = 0.85
#: Length of one decision window; long enough for a few completions to compare.
WINDOW_S = 2.0
#: A change that makes throughput drop or mean JCT rise by more than this is rolled back.
TOLERANCE = 0.05
#: Changes kept for :meth:`ConcurrencyController.history`.
HISTORY_SIZE = 256
#: Fewer completions than this in a window make a comparison noise: the change is kept.
MIN_COMPLETIONS = 5
#: Windows after a rollback during which the rolled-back direction is not tried again.
BLOCK_WINDOWS = 3
#: A demand hint older than this many windows is stale: the forecaster stopped talking.
HINT_MAX_AGE_WINDOWS = 2

#: Actions of a :class:`SlotChange`.
ACTIONS = ("grow", "shrink", "kept", "rolled-back", "stop-admitting", "resume-admitting",
           "pre-scale")


@dataclass(frozen=True)
class SlotChange:
    """One line of history: a slot change, its verdict, or an admission switch, with why.

    ``wall`` is the controller's clock. For "kept" and "rolled-back", ``old_slots`` and
    ``new_slots`` are those of the change judged (a rollback goes ``new`` -> ``old``), and
    the numbers are the window after the change; for the others they are the window that
    led to the decision. ``cpu``/``mem`` are window means (fractions), None when unmeasured.
    """

    wall: float
    old_slots: float
    new_slots: float
    action: str
    reason: str
    cpu: float | None
    mem: float | None
    throughput_tps: float | None
    jct_mean_s: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Window:
    """Running sums of one decision window: constant size however many samples arrive."""

    start: float
    cpu_sum: float = 0.0
    n_cpu: int = 0
    mem_sum: float = 0.0
    n_mem: int = 0
    completions: int = 0
    jct_sum_s: float = 0.0
    max_queued: int = 0
    admission_stopped: bool = False

    def cpu(self) -> float | None:
        return self.cpu_sum / self.n_cpu if self.n_cpu else None

    def mem(self) -> float | None:
        return self.mem_sum / self.n_mem if self.n_mem else None


@dataclass(frozen=True)
class _WindowResult:
    """A closed window, as the decision and the validation see it."""

    duration_s: float
    cpu: float | None
    mem: float | None
    completions: int
    throughput_tps: float
    jct_mean_s: float | None
    max_queued: int
    admission_stopped: bool


@dataclass(frozen=True)
class _Pending:
    """A change waiting for the next window's verdict."""

    old_slots: float
    new_slots: float
    action: str
    before: _WindowResult

    @property
    def direction(self) -> int:
        return 1 if self.new_slots > self.old_slots else -1


def _fraction(value) -> float | None:
    """A load sample clipped to [0, 1]; None for NaN or something that is not a number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(value):
        return None
    return min(1.0, max(0.0, value))


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


class ConcurrencyController:
    """The slot count of one local scheduler, adapted to the node's load.

    Args:
        slots: starting slot count (> 0).
        min_slots: lower bound; default ``max(1, slots / 2)`` (at most ``slots``).
        max_slots: upper bound; default ``slots * 2``.
        window_s: length of one decision window, seconds.
        step: slots added or removed by one grow or shrink.
        cpu_high: mean CPU fraction above which a window shrinks.
        cpu_low: mean CPU fraction below which a window with queued work grows.
        mem_stop: mean memory fraction at or above which admission stops.
        mem_resume: mean memory fraction at or below which admission resumes.
        tolerance: relative loss of throughput, or rise of mean JCT, that rolls a change back.
        clock: monotonic clock in seconds (windows and history).

    Raises:
        ValueError: a bad argument, named with its value and the allowed range.

    Example:
        >>> controller = ConcurrencyController(4, clock=lambda: 0.0)
        >>> controller.slots, controller.admitting
        (4.0, True)
    """

    def __init__(self, slots: float, *, min_slots: float | None = None,
                 max_slots: float | None = None, window_s: float = WINDOW_S,
                 step: float = 1.0, cpu_high: float = CPU_HIGH, cpu_low: float = CPU_LOW,
                 mem_stop: float = MEM_STOP, mem_resume: float = MEM_RESUME,
                 tolerance: float = TOLERANCE, clock=time.monotonic):
        if min_slots is None and _positive(slots):
            min_slots = min(float(slots), max(1.0, slots / 2))
        if max_slots is None and _positive(slots):
            max_slots = slots * 2.0
        self._check_params(slots=slots, min_slots=min_slots, max_slots=max_slots,
                           window_s=window_s, step=step, cpu_high=cpu_high, cpu_low=cpu_low,
                           mem_stop=mem_stop, mem_resume=mem_resume, tolerance=tolerance)
        self.min_slots = float(min_slots)
        self.max_slots = float(max_slots)
        self.window_s = float(window_s)
        self.step = float(step)
        self.cpu_high = float(cpu_high)
        self.cpu_low = float(cpu_low)
        self.mem_stop = float(mem_stop)
        self.mem_resume = float(mem_resume)
        self.tolerance = float(tolerance)
        self.clock = clock
        self._slots = float(slots)
        self._admitting = True
        self._window = _Window(start=clock())
        self._window_index = 0
        self._last: _WindowResult | None = None
        self._pending: _Pending | None = None
        self._blocked_direction = 0          # +1 up, -1 down, 0 none
        self._blocked_through_window = -1    # last window index at which it is blocked
        self._hint: tuple[float, float] | None = None   # (forecast slots, clock at hint)
        self._counts = {action: 0 for action in ACTIONS}
        self._n_blocked = 0
        self._history: deque[SlotChange] = deque(maxlen=HISTORY_SIZE)

    @staticmethod
    def _check_params(*, slots, min_slots, max_slots, window_s, step, cpu_high, cpu_low,
                      mem_stop, mem_resume, tolerance) -> None:
        """Every parameter rule, in one place; the message names the argument."""
        for name, value in (("slots", slots), ("min_slots", min_slots),
                            ("max_slots", max_slots), ("window_s", window_s), ("step", step)):
            if not _positive(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if min_slots > slots:
            raise ValueError(f"min_slots must be <= slots ({slots}), got {min_slots!r}")
        if max_slots < slots:
            raise ValueError(f"max_slots must be >= slots ({slots}), got {max_slots!r}")
        for name, value in (("cpu_high", cpu_high), ("cpu_low", cpu_low),
                            ("mem_stop", mem_stop), ("mem_resume", mem_resume)):
            if not _positive(value) or value > 1:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
        if cpu_low >= cpu_high:
            raise ValueError(f"cpu_low must be < cpu_high ({cpu_high}), got {cpu_low!r}")
        if mem_resume > mem_stop:
            raise ValueError(f"mem_resume must be <= mem_stop ({mem_stop}), got {mem_resume!r}")
        if not (isinstance(tolerance, int | float) and 0 <= tolerance < 1):
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")

    # -- state -------------------------------------------------------------------------

    @property
    def slots(self) -> float:
        """The current slot target."""
        return self._slots

    @property
    def admitting(self) -> bool:
        """False while memory is above ``mem_stop`` (until it falls to ``mem_resume``)."""
        return self._admitting

    # -- observations ------------------------------------------------------------------

    def observe_load(self, cpu_frac: float, mem_frac: float) -> None:
        """A load sample: CPU and memory in use, fractions of the node (0..1).

        Out-of-range values are clipped; a NaN (or non-number) drops that half of the sample.
        """
        cpu, mem = _fraction(cpu_frac), _fraction(mem_frac)
        if cpu is not None:
            self._window.cpu_sum += cpu
            self._window.n_cpu += 1
        if mem is not None:
            self._window.mem_sum += mem
            self._window.n_mem += 1

    def observe_completions(self, n: int, jct_sum_s: float) -> None:
        """``n`` tasks finished since the last call; ``jct_sum_s`` is the sum of their JCTs
        in seconds. A negative count or a negative/NaN sum is ignored."""
        if not n > 0 or not jct_sum_s >= 0 or math.isinf(jct_sum_s):
            return
        self._window.completions += int(n)
        self._window.jct_sum_s += float(jct_sum_s)

    def observe_queue(self, queued: int) -> None:
        """Tasks waiting now; a window grows only if some waited (more slots need work)."""
        if queued > self._window.max_queued:
            self._window.max_queued = int(queued)

    def hint_demand(self, forecast_busy_slots: float) -> None:
        """Slots the next window is expected to need, from a workload forecaster.

        The latest hint holds for :data:`HINT_MAX_AGE_WINDOWS` windows; NaN or negative
        hints are ignored.
        """
        if forecast_busy_slots >= 0 and not math.isinf(forecast_busy_slots):
            self._hint = (float(forecast_busy_slots), self.clock())

    # -- decisions ---------------------------------------------------------------------

    def tick(self) -> float | None:
        """Check memory now and, once a window is over, judge or make a slot change.

        Returns:
            The new slot count if it changed on this call, else None.
        """
        now = self.clock()
        self._check_memory(now)
        if now - self._window.start < self.window_s:
            return None
        result = self._close_window(now)
        before = self._slots
        if self._pending is not None:
            self._judge(result, now)
        else:
            self._decide(result, now)
        return self._slots if self._slots != before else None

    def _check_memory(self, now: float) -> None:
        mem = self._window.mem()
        if mem is None:
            return
        if self._admitting and mem >= self.mem_stop:
            self._admitting = False
            self._window.admission_stopped = True
            self._log(now, self._slots, self._slots, "stop-admitting",
                      f"memory {mem:.2f} >= {self.mem_stop}: the global scheduler places "
                      "elsewhere", self._window.cpu(), mem, None, None)
        elif not self._admitting and mem <= self.mem_resume:
            self._admitting = True
            self._log(now, self._slots, self._slots, "resume-admitting",
                      f"memory {mem:.2f} <= {self.mem_resume}", self._window.cpu(), mem,
                      None, None)

    def _close_window(self, now: float) -> _WindowResult:
        window = self._window
        duration_s = now - window.start
        result = _WindowResult(
            duration_s=duration_s, cpu=window.cpu(), mem=window.mem(),
            completions=window.completions,
            throughput_tps=window.completions / duration_s,
            jct_mean_s=window.jct_sum_s / window.completions if window.completions else None,
            max_queued=window.max_queued, admission_stopped=window.admission_stopped)
        # A late tick starts the next window now rather than catching up on missed ones.
        self._window = _Window(start=now, admission_stopped=not self._admitting)
        self._window_index += 1
        self._last = result
        return result

    def _judge(self, after: _WindowResult, now: float) -> None:
        """Keep the pending change, or roll it back if the window after it was worse."""
        change, self._pending = self._pending, None
        before = change.before
        numbers = (f"throughput {before.throughput_tps:.3g} -> {after.throughput_tps:.3g}/s, "
                   f"jct {_fmt(before.jct_mean_s)} -> {_fmt(after.jct_mean_s, ' s')}")
        rolled_back = False
        if min(before.completions, after.completions) < MIN_COMPLETIONS:
            reason = (f"inconclusive: {before.completions} and {after.completions} "
                      f"completions (< {MIN_COMPLETIONS}); {numbers}")
        elif before.admission_stopped or after.admission_stopped:
            reason = f"inconclusive: admission stopped for memory; {numbers}"
        else:
            throughput_worse = (after.throughput_tps
                                < before.throughput_tps * (1 - self.tolerance))
            jct_worse = after.jct_mean_s > before.jct_mean_s * (1 + self.tolerance)
            rolled_back = throughput_worse or jct_worse
            worse = " and ".join(name for name, bad in (("throughput", throughput_worse),
                                                         ("jct", jct_worse)) if bad)
            reason = (f"{change.action} made {worse} worse by > {self.tolerance:.0%}: {numbers}"
                      if rolled_back else f"{change.action} no worse: {numbers}")
        if rolled_back:
            self._slots = change.old_slots
            self._blocked_direction = change.direction
            self._blocked_through_window = self._window_index + BLOCK_WINDOWS
            action = "rolled-back"
        else:
            action = "kept"
        self._log(now, change.old_slots, change.new_slots, action, reason, after.cpu,
                  after.mem, after.throughput_tps, after.jct_mean_s)

    def _decide(self, window: _WindowResult, now: float) -> None:
        """Shrink on high CPU, grow on low CPU with work waiting, pre-scale on a hint."""
        cpu = window.cpu
        if cpu is None:
            return  # no load sample this window: nothing to decide on
        slots = self._slots
        target, action, reason = slots, None, ""
        if cpu > self.cpu_high:
            target = max(self.min_slots, slots - self.step)
            action, reason = "shrink", f"cpu {cpu:.2f} > {self.cpu_high}"
        elif self._admitting:  # no growth while memory is short
            if cpu < self.cpu_low and window.max_queued > 0:
                target = min(self.max_slots, slots + self.step)
                action = "grow"
                reason = f"cpu {cpu:.2f} < {self.cpu_low} with {window.max_queued} queued"
            hint = self._fresh_hint(now)
            if hint is not None and hint > slots and min(self.max_slots, hint) > target:
                target = min(self.max_slots, hint)
                action = "pre-scale"
                reason = f"forecast needs {hint:.3g} slots, cpu {cpu:.2f} < {self.cpu_high}"
        if action is None or target == slots:
            return  # already at the bound, or nothing to do
        direction = 1 if target > slots else -1
        if (direction == self._blocked_direction
                and self._window_index <= self._blocked_through_window):
            self._n_blocked += 1
            return
        self._slots = target
        self._pending = _Pending(slots, target, action, window)
        self._log(now, slots, target, action, f"{reason}: {slots:.3g} -> {target:.3g} slots",
                  cpu, window.mem, window.throughput_tps, window.jct_mean_s)

    def _fresh_hint(self, now: float) -> float | None:
        if self._hint is None:
            return None
        value, at = self._hint
        return value if now - at <= HINT_MAX_AGE_WINDOWS * self.window_s else None

    def _log(self, now, old_slots, new_slots, action, reason, cpu, mem, throughput_tps,
             jct_mean_s) -> None:
        self._counts[action] += 1
        self._history.append(SlotChange(now, old_slots, new_slots, action, reason, cpu, mem,
                                        throughput_tps, jct_mean_s))

    # -- reports -----------------------------------------------------------------------

    def history(self) -> list[dict]:
        """Every change, verdict and admission switch, oldest first, bounded by
        :data:`HISTORY_SIZE`."""
        return [change.as_dict() for change in self._history]

    def stats(self) -> dict:
        last = self._last
        # Blocked for the next window's decision, which will carry index windows + 1.
        blocked = (self._blocked_direction
                   if self._window_index < self._blocked_through_window else 0)
        return {
            "slots": self._slots, "min_slots": self.min_slots, "max_slots": self.max_slots,
            "admitting": self._admitting, "windows": self._window_index,
            "n_grow": self._counts["grow"], "n_shrink": self._counts["shrink"],
            "n_pre_scale": self._counts["pre-scale"], "n_kept": self._counts["kept"],
            "n_rolled_back": self._counts["rolled-back"],
            "n_stop_admitting": self._counts["stop-admitting"],
            "n_blocked": self._n_blocked,
            "pending": None if self._pending is None else self._pending.action,
            "blocked": {1: "up", -1: "down", 0: None}[blocked],
            "window_cpu": None if last is None else last.cpu,
            "window_mem": None if last is None else last.mem,
            "window_throughput_tps": None if last is None else last.throughput_tps,
            "window_jct_mean_s": None if last is None else last.jct_mean_s,
        }


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def node_load() -> tuple[float, float]:
    """(cpu fraction, memory fraction) of this node now, each in [0, 1], from psutil.

    CPU is the use since the previous call (``cpu_percent(interval=None)``, which never
    blocks; the very first call in a process reads 0.0).
    """
    cpu = psutil.cpu_percent(interval=None) / 100.0
    mem = psutil.virtual_memory().percent / 100.0
    return min(1.0, max(0.0, cpu)), min(1.0, max(0.0, mem))
