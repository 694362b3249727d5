"""Workload forecasting: how many tasks, and how much work, will arrive per (kind,
region), per region and in total over the next windows, so that the scheduler can act
before a burst rather than after it (issue 5).

Plain Python with an injectable clock. The global scheduler hands every batch it receives
to :meth:`WorkloadForecaster.observe`; time is cut into fixed windows from the first call
on, and each closed window updates, for every tracked series, a damped Holt forecaster
(level + damped trend, exponential smoothing). A window without arrivals counts as zeros:
a stopped stream's forecast decays toward 0. Every close also scores the one-step-ahead
forecast against what arrived, beside the naive forecast (last window's value), so that
:meth:`WorkloadForecaster.error` shows whether forecasting beats doing nothing.

Not seasonal: a run of empty windows is closed in O(series) by the closed form of the
2x2 linear map that a zero applies to (level, trend); an additive season would make that
state m + 2 wide and position-dependent, for little gain at second-long windows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ray_sched.params import check_range
from ray_sched.task import DEFAULT_KIND

#: Length of one window, seconds: a burst is seen within a second, and a window holds
#: enough arrivals at scheduler rates (tens per second and up) for a stable count.
WINDOW_S = 1.0
#: Weight of the newest window in the level: a step in load is followed within 2-3 windows
#: while one window's Poisson noise moves the level by only half of it.
ALPHA = 0.5
#: Weight of the newest level change in the trend: a ramp is picked up in a few windows,
#: a single noisy window barely tilts it.
BETA = 0.3
#: Damping of the trend per window ahead: the trend adds at most phi / (1 - phi) = 4
#: windows of growth, so a forecast never runs away on a short rise.
PHI = 0.8
#: Beyond this many (kind, region) keys, a new key folds into ("other", region): a label
#: explosion must not grow memory and close time without bound.
MAX_KEYS = 1024
#: Beyond this many regions, a new region folds into "other", for the same reason.
MAX_REGIONS = 256
#: The label that folded kinds and regions are tracked under.
OTHER = "other"
#: A run of empty windows is scored window by window for at most this many windows; the
#: state then jumps over the rest in closed form and the rest counts as scored with zero
#: error. Exact to float precision with the defaults (the forecast shrinks by the
#: spectral radius sqrt((1 - alpha) * phi) = 0.63 per window: 0.63 ** 128 < 1e-25);
#: with alpha near 0 and phi near 1 the error of a very long gap is under-counted.
ZERO_RUN_SCORED = 128
#: Burst warnings kept for :meth:`WorkloadForecaster.history`.
HISTORY_SIZE = 256
#: A time on a window edge up to float rounding (0.1 + 0.2) closes that window.
_EDGE_TOLERANCE = 1e-9
#: Columns of every series array: arrivals per window, work (slot-seconds) per window.
_RATE, _WORK = 0, 1
_TOTAL_ROW = 0
_BY = ("region", "key", "total")


def _check_smoothing(alpha: float, beta: float, phi: float) -> tuple[float, float, float]:
    """The smoothing parameters, validated in one place (ValueError names the bad one)."""
    return (check_range("alpha", alpha, 0.0, 1.0, low_open=True),
            check_range("beta", beta, 0.0, 1.0),
            check_range("phi", phi, 0.0, 1.0, low_open=True))


def _check_count(value: int, name: str, minimum: int = 1) -> int:
    """An integer argument (a horizon, a bound), validated; ValueError names it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _holt_update(level, trend, first, value, alpha: float, beta: float, phi: float):
    """One window for a series (floats) or many (arrays that broadcast): new (level, trend).

    ``first`` marks series that have seen no window yet: they start at ``value``, flat.
    """
    new_level = np.where(first, value, alpha * value + (1 - alpha) * (level + phi * trend))
    new_trend = np.where(first, 0.0, beta * (new_level - level) + (1 - beta) * phi * trend)
    return new_level, new_trend


def _damped_steps(phi: float, horizon: int) -> np.ndarray:
    """Shape (horizon,): the trend's weight h windows ahead, sum of phi ** i for i <= h."""
    return np.cumsum(phi ** np.arange(1, horizon + 1, dtype=float))


def _zero_run(alpha: float, beta: float, phi: float, count: int) -> np.ndarray:
    """Shape (2, 2): the map of ``count`` windows of zeros on (level, trend).

    A zero makes the update linear: level' = (1 - a)(level + p trend) and
    trend' = b (level' - level) + (1 - b) p trend, i.e. the matrix below; its power is
    O(log count).
    """
    step = np.array([[1 - alpha, (1 - alpha) * phi],
                     [-alpha * beta, phi * (1 - alpha * beta)]])
    return np.linalg.matrix_power(step, count)


class HoltSeries:
    """One damped Holt series (level + damped trend), updated once per window.

    Args:
        alpha: weight of a new value in the level, in (0, 1].
        beta: weight of a new level change in the trend, in [0, 1] (0: no trend).
        phi: damping of the trend per window ahead, in (0, 1] (1: undamped Holt).

    Raises:
        ValueError: a parameter out of its range, named.

    Example:
        >>> series = HoltSeries()
        >>> for value in (10, 12, 14, 16):
        ...     series.update(value)
        >>> series.forecast(1) > series.level  # a rising trend lifts the forecast
        True
    """

    def __init__(self, *, alpha: float = ALPHA, beta: float = BETA, phi: float = PHI):
        self.alpha, self.beta, self.phi = _check_smoothing(alpha, beta, phi)
        self.level_ = 0.0
        self.trend_ = 0.0
        self.n_ = 0

    @property
    def n(self) -> int:
        """Windows seen."""
        return self.n_

    @property
    def level(self) -> float:
        return self.level_

    @property
    def trend(self) -> float:
        """Change per window."""
        return self.trend_

    def update(self, value: float) -> None:
        """One window's value (a count or an amount of work).

        Raises:
            ValueError: ``value`` is not a finite number.
        """
        value = check_range("value", float(value))
        level, trend = _holt_update(self.level_, self.trend_, self.n_ == 0, value,
                                    self.alpha, self.beta, self.phi)
        self.level_, self.trend_ = float(level), float(trend)
        self.n_ += 1

    def update_zeros(self, count: int) -> None:
        """``count`` windows of zeros at once, in O(log count); same as ``count`` updates
        with 0 up to float rounding."""
        if _check_count(count, "count", minimum=0) == 0:
            return
        if self.n_ == 0:
            self.update(0.0)
            count -= 1
        jump = _zero_run(self.alpha, self.beta, self.phi, count)
        self.level_, self.trend_ = (float(jump[0, 0] * self.level_ + jump[0, 1] * self.trend_),
                                    float(jump[1, 0] * self.level_ + jump[1, 1] * self.trend_))
        self.n_ += count

    def forecast(self, horizon: int = 1) -> float:
        """The value expected ``horizon`` windows ahead (not a sum over them), >= 0.

        Raises:
            ValueError: ``horizon`` is not an integer >= 1, or no window was seen yet.
        """
        horizon = _check_count(horizon, "horizon")
        if self.n_ == 0:
            raise ValueError("this HoltSeries has seen no window yet; call update() first")
        return max(0.0, self.level_ + float(_damped_steps(self.phi, horizon)[-1]) * self.trend_)


@dataclass(frozen=True)
class BurstWarning:
    """A change of :meth:`WorkloadForecaster.burst_ahead`'s answer for a region, with why."""

    at_s: float                 # clock time of the call
    region: str
    burst: bool
    work_s_per_s: float         # peak forecast over the horizon: busy slots needed
    capacity_slots: float
    horizon_windows: int

    def as_dict(self) -> dict:
        return asdict(self)


class WorkloadForecaster:
    """Arrival rate and work per (kind, region), per region and in total, forecast from
    what arrived, window by window.

    Window w covers ``[origin + w * window_s, origin + (w + 1) * window_s)``, where the
    origin is the time of the first call. A window closes when a call sees a time at or
    after its end; every window that ended by then closes, empty ones as zeros. Forecasts
    come from closed windows only: arrivals of the window now open are counted, not yet
    forecast from. Before any window closed, every forecast is 0.

    Args:
        window_s: length of one window, seconds (> 0).
        alpha, beta, phi: smoothing parameters, as for :class:`HoltSeries`.
        max_keys: (kind, region) keys tracked before new ones fold into (OTHER, region).
        max_regions: regions tracked before new ones fold into OTHER.
        clock: monotonic clock, seconds; used when a call gives no ``now``.

    Raises:
        ValueError: a parameter out of its range, named.

    Example:
        >>> forecaster = WorkloadForecaster(clock=lambda: 0.0)
        >>> forecaster.observe(["etl", "etl"], ["eu", None], [0.5, 1.5], now=0.0)
        >>> forecaster.advance(now=1.0)
        1
        >>> forecaster.forecast(1, by="total", now=1.0)
        {'': {'rate_tps': 2.0, 'work_s_per_s': 2.0}}
    """

    def __init__(self, *, window_s: float = WINDOW_S, alpha: float = ALPHA,
                 beta: float = BETA, phi: float = PHI, max_keys: int = MAX_KEYS,
                 max_regions: int = MAX_REGIONS, clock=time.monotonic):
        self.window_s = check_range("window_s", window_s, 0.0, low_open=True)
        self.alpha, self.beta, self.phi = _check_smoothing(alpha, beta, phi)
        self.max_keys = _check_count(max_keys, "max_keys")
        self.max_regions = _check_count(max_regions, "max_regions")
        self.clock = clock
        self.windows_closed_ = 0
        self.n_arrivals_ = 0
        self.n_folded_ = 0
        self._origin: float | None = None
        self._window = 0                                 # index of the open window
        self._key_rows: dict[tuple[str, str], int] = {}
        self._region_rows: dict[str, int] = {}
        self._size = 1                                   # row 0: the total
        capacity = 16
        self._region_of = np.zeros(capacity, dtype=np.intp)  # key row -> its region's row
        self._level = np.zeros((capacity, 2))
        self._trend = np.zeros((capacity, 2))
        self._last = np.zeros((capacity, 2))             # last closed window: the naive forecast
        self._pending = np.zeros((capacity, 2))          # the open window's arrivals so far
        self._n = np.zeros(capacity, dtype=np.int64)     # windows seen per row
        self._abs_error = np.zeros((capacity, 2))        # one-step |forecast - actual|, summed
        self._naive_error = np.zeros((capacity, 2))
        self._n_scored = np.zeros(capacity, dtype=np.int64)
        self._rate_ape = np.zeros(capacity)              # |error| / actual over actual > 0
        self._n_rate_ape = np.zeros(capacity, dtype=np.int64)
        self._burst: dict[str, bool] = {}
        self._history: deque[BurstWarning] = deque(maxlen=HISTORY_SIZE)

    # -- arrivals and windows ---------------------------------------------------------

    def observe(self, kinds: Sequence[str], regions: Sequence[str | None],
                work_s: Sequence[float], now: float | None = None) -> None:
        """One batch of arrivals, after closing every window that ended by ``now``.

        Args:
            kinds: shape (n_tasks,), the kind of each task (None: the default kind).
            regions: shape (n_tasks,), the region of each task (None: ``""``).
            work_s: shape (n_tasks,), predicted runtime x cpu of each task, slot-seconds.
            now: arrival time of the batch (default: the clock).

        Raises:
            ValueError: the three sequences differ in length, a work is negative or not
                finite, or ``now`` is not finite.
        """
        work = np.asarray(work_s, dtype=float)
        if work.ndim != 1 or not len(kinds) == len(regions) == len(work):
            raise ValueError(f"kinds, regions and work_s must be sequences of one length, got "
                             f"{len(kinds)}, {len(regions)} and shape {work.shape}")
        bad = ~np.isfinite(work) | (work < 0)
        if bad.any():
            position = int(np.argmax(bad))
            raise ValueError(f"work_s must be finite and >= 0, got {work[position]!r} at "
                             f"position {position}")
        self.advance(now)
        if len(work) == 0:
            return
        rows = np.fromiter((self._row_of(kind, region) for kind, region in zip(kinds, regions)),
                           dtype=np.intp, count=len(work))
        # Each task counts for its key, its key's region and the total.
        targets = np.concatenate((rows, self._region_of[rows],
                                  np.full(len(rows), _TOTAL_ROW, dtype=np.intp)))
        size = self._size
        self._pending[:size, _RATE] += np.bincount(targets, minlength=size)
        self._pending[:size, _WORK] += np.bincount(targets, weights=np.tile(work, 3),
                                                   minlength=size)
        self.n_arrivals_ += len(rows)

    def advance(self, now: float | None = None) -> int:
        """Close every window that ended by ``now`` (default: the clock).

        The open window closes with what arrived in it; the empty windows after it close
        as zeros, in O(series) however many there are (see :data:`ZERO_RUN_SCORED`). A
        time before the open window's start (a clock that stepped back) closes nothing.

        Returns:
            How many windows were closed.

        Raises:
            ValueError: ``now`` is not finite.
        """
        now = self._now(now)
        if self._origin is None:
            self._origin = now
            return 0
        target = math.floor((now - self._origin) / self.window_s + _EDGE_TOLERANCE)
        closed = target - self._window
        if closed <= 0:
            return 0
        size = self._size
        self._close(self._pending[:size].copy())
        self._pending[:size] = 0.0
        if closed > 1:
            self._close_zeros(closed - 1)
        self._window = target
        self.windows_closed_ += closed
        return closed

    # -- forecasts --------------------------------------------------------------------

    def forecast(self, horizon_windows: int = 1, *, by: str = "region",
                 now: float | None = None) -> dict:
        """Expected arrival rate and work over the next ``horizon_windows`` windows (the
        open one first), as the mean over them, per second.

        Args:
            horizon_windows: how many windows ahead to average over (>= 1).
            by: ``"region"``: ``{region: {...}}``; ``"key"``: ``{(kind, region): {...}}``;
                ``"total"``: ``{"": {...}}``. Each value is ``{"rate_tps": tasks/s,
                "work_s_per_s": slot-seconds/s, i.e. busy slots needed}``.
            now: closes the windows that ended by then first (default: the clock).

        Raises:
            ValueError: ``horizon_windows`` not an integer >= 1, or ``by`` unknown.
        """
        horizon_windows = _check_count(horizon_windows, "horizon_windows")
        if by not in _BY:
            raise ValueError(f"by must be one of {_BY}, got {by!r}")
        self.advance(now)
        return self._forecast(horizon_windows, by)

    def burst_ahead(self, region: str | None, capacity_slots: float,
                    horizon_windows: int = 2, now: float | None = None) -> bool:
        """True when the forecast work in ``region``, in busy slots, exceeds
        ``capacity_slots`` in any of the next ``horizon_windows`` windows.

        The peak over the horizon, not the mean: on a ramp the last window is the one
        that overflows, and warning a window early is the point. A region never seen is
        forecast idle. Every change of the answer per region is kept for
        :meth:`history`.

        Raises:
            ValueError: ``capacity_slots`` not > 0, or ``horizon_windows`` not >= 1.
        """
        capacity_slots = check_range("capacity_slots", capacity_slots, 0.0, low_open=True)
        horizon_windows = _check_count(horizon_windows, "horizon_windows")
        now = self._now(now)
        self.advance(now)
        region = "" if region is None else str(region)
        row = self._region_rows.get(region)
        peak = (0.0 if row is None else
                float(self._per_second(horizon_windows, "max")[row, _WORK]))
        burst = peak > capacity_slots
        if self._burst.get(region) != burst:
            self._burst[region] = burst
            self._history.append(BurstWarning(now, region, burst, peak, capacity_slots,
                                              horizon_windows))
        return burst

    def history(self) -> list[dict]:
        """Every change of :meth:`burst_ahead`'s answer (per region), oldest first, bounded."""
        return [warning.as_dict() for warning in self._history]

    # -- error and stats --------------------------------------------------------------

    def error(self) -> dict:
        """One-step-ahead forecast error of the closed windows, beside the naive one.

        Returns:
            ``{"total": e, "regions": {region: e}}`` where each ``e`` is
            ``{"n_windows", "rate_mae" (tasks/s), "rate_mape" (a fraction, over windows
            with arrivals; None without any), "work_mae" (busy slots), "naive_rate_mae",
            "naive_work_mae"}``; naive forecasts the last window's value. The MAEs are None
            before two windows closed.
        """
        return {"total": self._error_of(_TOTAL_ROW),
                "regions": {region: self._error_of(row)
                            for region, row in sorted(self._region_rows.items())}}

    def stats(self) -> dict:
        """Counts, the forecast for the open window per region, and :meth:`error`.

        Reads the state as it is: closes no window (call :meth:`advance` first for that).
        """
        return {"window_s": self.window_s, "keys": len(self._key_rows),
                "regions": len(self._region_rows), "windows_closed": self.windows_closed_,
                "arrivals": self.n_arrivals_, "folded_arrivals": self.n_folded_,
                "open_window_arrivals": int(self._pending[_TOTAL_ROW, _RATE]),
                "burst_warnings": len(self._history),
                "forecast": self._forecast(1, "region"), "error": self.error()}

    # -- internals --------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return check_range("now", self.clock() if now is None else now)

    def _row_of(self, kind: str | None, region: str | None) -> int:
        row = self._key_rows.get((kind, region))
        if row is not None:
            return row
        kind = DEFAULT_KIND if kind is None else str(kind)
        region = "" if region is None else str(region)
        folded = False
        region_row = self._region_rows.get(region)
        if region_row is None:
            if len(self._region_rows) >= self.max_regions:
                region, folded = OTHER, True
                region_row = self._region_rows.get(region)
            if region_row is None:
                region_row = self._region_rows[region] = self._new_row()
        row = self._key_rows.get((kind, region))
        if row is None:
            if len(self._key_rows) >= self.max_keys:
                kind, folded = OTHER, True
                row = self._key_rows.get((kind, region))
            if row is None:
                row = self._key_rows[(kind, region)] = self._new_row()
                self._region_of[row] = region_row
        self.n_folded_ += folded
        return row

    def _new_row(self) -> int:
        if self._size == len(self._n):
            for name in ("_region_of", "_level", "_trend", "_last", "_pending", "_n",
                         "_abs_error", "_naive_error", "_n_scored", "_rate_ape",
                         "_n_rate_ape"):
                array = getattr(self, name)
                grown = np.zeros((2 * len(array),) + array.shape[1:], dtype=array.dtype)
                grown[:len(array)] = array
                setattr(self, name, grown)
        self._size += 1
        return self._size - 1

    def _close(self, actual: np.ndarray) -> None:
        """One window for every row: score the one-step forecast, then update."""
        size = self._size
        level, trend, n = self._level[:size], self._trend[:size], self._n[:size]
        scored = n >= 1
        forecast = np.maximum(level + self.phi * trend, 0.0)
        error = np.abs(forecast - actual)
        self._abs_error[:size][scored] += error[scored]
        self._naive_error[:size][scored] += np.abs(self._last[:size] - actual)[scored]
        self._n_scored[:size][scored] += 1
        arrived = scored & (actual[:, _RATE] > 0)
        self._rate_ape[:size][arrived] += error[arrived, _RATE] / actual[arrived, _RATE]
        self._n_rate_ape[:size][arrived] += 1
        level[:], trend[:] = _holt_update(level, trend, (n == 0)[:, None], actual,
                                          self.alpha, self.beta, self.phi)
        self._last[:size] = actual
        n += 1

    def _close_zeros(self, count: int) -> None:
        """``count`` empty windows: scored one by one up to ZERO_RUN_SCORED, the rest in
        closed form (their forecast has decayed to ~0, so has their error)."""
        size = self._size
        zeros = np.zeros((size, 2))
        scored = min(count, ZERO_RUN_SCORED)
        for _ in range(scored):
            self._close(zeros)
        rest = count - scored
        if rest == 0:
            return
        jump = _zero_run(self.alpha, self.beta, self.phi, rest)
        level, trend = self._level[:size].copy(), self._trend[:size].copy()
        self._level[:size] = jump[0, 0] * level + jump[0, 1] * trend
        self._trend[:size] = jump[1, 0] * level + jump[1, 1] * trend
        self._n[:size] += rest
        self._n_scored[:size] += rest

    def _per_second(self, horizon: int, reduce: str) -> np.ndarray:
        """Shape (rows, 2): the mean or peak forecast over the next windows, per second."""
        size = self._size
        steps = _damped_steps(self.phi, horizon)
        ahead = np.maximum(self._level[:size, None, :]
                           + steps[None, :, None] * self._trend[:size, None, :], 0.0)
        combined = ahead.mean(axis=1) if reduce == "mean" else ahead.max(axis=1)
        return combined / self.window_s

    def _forecast(self, horizon: int, by: str) -> dict:
        values = self._per_second(horizon, "mean")

        def entry(row: int) -> dict:
            return {"rate_tps": float(values[row, _RATE]),
                    "work_s_per_s": float(values[row, _WORK])}

        if by == "total":
            return {"": entry(_TOTAL_ROW)}
        rows = self._region_rows if by == "region" else self._key_rows
        return {label: entry(row) for label, row in rows.items()}

    def _error_of(self, row: int) -> dict:
        n = int(self._n_scored[row])
        n_ape = int(self._n_rate_ape[row])

        def mean(total: np.ndarray, column: int) -> float | None:
            return float(total[row, column]) / n / self.window_s if n else None

        return {"n_windows": n,
                "rate_mae": mean(self._abs_error, _RATE),
                "rate_mape": float(self._rate_ape[row]) / n_ape if n_ape else None,
                "work_mae": mean(self._abs_error, _WORK),
                "naive_rate_mae": mean(self._naive_error, _RATE),
                "naive_work_mae": mean(self._naive_error, _WORK)}
