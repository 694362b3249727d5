"""The monitor's logic: completion records, state samples, windowed metrics and alerts.

Plain Python on numpy, no Ray: the Monitor actor wraps it, tests drive it with a fake clock.
Memory stays bounded on long runs: completion records are kept only as long as the longest
alert window needs them (plus the error baseline), and each time series halves the
resolution of its older half whenever it reaches ``max_points`` (so a day-long run keeps
full resolution for the recent past and coarser points before).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ray_sched.monitor.alerts import BASELINE_WINDOWS, Alert, AlertEngine, AlertRule

#: Points each time series keeps before it downsamples its older half (1 h at 1 s).
DEFAULT_MAX_POINTS = 3600
#: The window of the ``jct_p99_window_s`` column of the time series.
SERIES_WINDOW_S = 10.0
#: Columns of ``timeseries.parquet`` (one row per sample per scope).
SERIES_COLUMNS = ("t_s", "scope", "region", "queued", "running", "busy_cpu", "slots",
                  "utilization", "backlog_predicted_s", "backlog_actual_s", "completed",
                  "throughput_tps", "jct_p99_window_s", "learner_mae_log")
#: Columns that add up when two points merge (the others average).
_SUMMED = frozenset({"completed"})
_NUMERIC = SERIES_COLUMNS[3:]

#: A completion record, as the global scheduler sends it (one tuple per task).
RECORD_FIELDS = ("finish_wall", "jct_s", "ok", "deadline_missed", "region", "tenant", "kind",
                 "error_log")


class Series:
    """A bounded time series of numeric rows (``_NUMERIC`` columns) for one scope."""

    def __init__(self, scope: str, region: str, max_points: int = DEFAULT_MAX_POINTS):
        if max_points < 4:
            raise ValueError(f"max_points must be >= 4, got {max_points}")
        self.scope, self.region, self.max_points = scope, region, max_points
        self.times: list[float] = []
        self.rows: list[tuple[float, ...]] = []

    def append(self, wall: float, row: tuple[float, ...]) -> None:
        self.times.append(wall)
        self.rows.append(row)
        if len(self.rows) > self.max_points:
            self._downsample()

    def _downsample(self) -> None:
        """Merge the older half pairwise: half the points there, the recent half untouched."""
        half = (len(self.rows) // 2) & ~1
        old_t = np.asarray(self.times[:half]).reshape(-1, 2)
        old = np.asarray(self.rows[:half], dtype=float).reshape(-1, 2, len(_NUMERIC))
        merged = np.nanmean(old, axis=1) if np.isnan(old).any() else old.mean(axis=1)
        for column, name in enumerate(_NUMERIC):
            if name in _SUMMED:
                merged[:, column] = np.nansum(old[:, :, column], axis=1)
        self.times[:half] = old_t[:, 0].tolist()
        self.rows[:half] = [tuple(row) for row in merged]

    def window(self, since: float, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of one column for the points after ``since``."""
        index = _NUMERIC.index(column)
        start = int(np.searchsorted(self.times, since, side="right"))
        rows = self.rows[start:]
        return (np.asarray(self.times[start:]),
                np.array([row[index] for row in rows], dtype=float))

    def latest(self, column: str) -> float | None:
        return self.rows[-1][_NUMERIC.index(column)] if self.rows else None

    def frame(self, epoch: float) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(_NUMERIC))
        frame.insert(0, "region", self.region)
        frame.insert(0, "scope", self.scope)
        frame.insert(0, "t_s", np.asarray(self.times) - epoch)
        return frame


@dataclass
class _Batch:
    """Completion records received together, as columns."""

    finish: np.ndarray
    jct: np.ndarray
    ok: np.ndarray
    missed: np.ndarray          # 1 missed, 0 met, NaN no deadline
    region: np.ndarray          # object
    error: np.ndarray           # |log error|, NaN without a prediction
    last: float = field(init=False)

    def __post_init__(self):
        self.last = float(self.finish.max()) if len(self.finish) else -math.inf


class MonitorCore:
    """Windows over completions and samples; the alert rules judged on every sample.

    Args:
        rules: alert rules (may be empty).
        on_alert: called with each fired :class:`Alert` (log it, write it, send it).
        max_points: per time series, before downsampling.
        epoch: wall time that ``time_s`` and ``t_s`` count from (settable later).
    """

    def __init__(self, rules: Sequence[AlertRule] = (), *,
                 on_alert: Callable[[Alert], None] | None = None,
                 max_points: int = DEFAULT_MAX_POINTS, epoch: float = 0.0):
        self.epoch = epoch
        self.max_points = max_points
        self.alerts = AlertEngine(list(rules), self.window_value)
        self.on_alert = on_alert
        longest = max([r.window_s for r in rules] + [SERIES_WINDOW_S])
        #: Records older than this behind the newest are dropped (the error baseline).
        self.keep_s = longest * (BASELINE_WINDOWS + 1)
        self._batches: deque[_Batch] = deque()
        self.series: dict[str, Series] = {}
        self.lost_events: list[dict] = []
        self.n_ok = 0
        self.n_failed = 0
        self.by_tenant: dict[str, list[float]] = {}   # tenant -> [n_ok, jct sum]
        self.by_kind: dict[str, list[float]] = {}
        self._completed_since_sample = 0
        self.last_sample_wall: float | None = None

    # -- input -----------------------------------------------------------------------------
    def record(self, records: Sequence[tuple]) -> None:
        """Completion records (tuples of :data:`RECORD_FIELDS`), in any order."""
        if not records:
            return
        finish, jct, ok, missed, region, tenant, kind, error = zip(*records)
        ok_array = np.asarray(ok, dtype=bool)
        jct_array = np.asarray(jct, dtype=float)
        self._batches.append(_Batch(
            np.asarray(finish, dtype=float), jct_array, ok_array,
            np.asarray(missed, dtype=float), np.asarray(region, dtype=object),
            np.asarray(error, dtype=float)))
        n_ok = int(ok_array.sum())
        self.n_ok += n_ok
        self.n_failed += len(ok_array) - n_ok
        self._completed_since_sample += len(ok_array)
        for table, names in ((self.by_tenant, tenant), (self.by_kind, kind)):
            for name, good, seconds in zip(names, ok_array, jct_array):
                if good:
                    entry = table.setdefault(name, [0, 0.0])
                    entry[0] += 1
                    entry[1] += seconds
        newest = max(b.last for b in self._batches)
        while self._batches and self._batches[0].last < newest - self.keep_s:
            self._batches.popleft()

    def lost(self, now: float, what: str, name: str, detail: str = "") -> None:
        """A local scheduler, learner or node that stopped answering (``what`` says which)."""
        self.lost_events.append({"wall": now, "time_s": now - self.epoch, "what": what,
                                 "name": name, "detail": detail})

    def sample(self, now: float, locals_: Sequence[dict], *,
               learner_mae_log: float | None = None) -> list[Alert]:
        """The state once a second: one dict per local scheduler with ``name``, ``region``,
        ``queued``, ``running``, ``busy_cpu``, ``slots``, ``backlog_predicted_s`` and
        ``backlog_actual_s`` (slot-seconds of work placed there and not finished, by
        predicted and by true runtimes; the true ones are known in replays only).
        Appends a point to each scope's series (the cluster's too) and judges the rules.

        Returns:
            the alerts that fired now (also passed to ``on_alert``).
        """
        totals = np.zeros(6)
        for state in locals_:
            values = np.array([state.get("queued", 0), state.get("running", 0),
                               state.get("busy_cpu", 0.0), state.get("slots", 0.0),
                               state.get("backlog_predicted_s", 0.0),
                               state.get("backlog_actual_s", math.nan)], dtype=float)
            totals += values
            self._point(now, state["name"], state.get("region") or "", values)
        interval = None if self.last_sample_wall is None else now - self.last_sample_wall
        completed = self._completed_since_sample
        jct = self._window_column(now, SERIES_WINDOW_S, "jct", ok_only=True)
        self._point(now, "cluster", "", totals, completed=completed,
                    throughput=completed / interval if interval else math.nan,
                    jct_p99=float(np.percentile(jct, 99)) if len(jct) else math.nan,
                    learner=math.nan if learner_mae_log is None else learner_mae_log)
        self._completed_since_sample = 0
        self.last_sample_wall = now
        fired = self.alerts.evaluate(now, epoch=self.epoch)
        if self.on_alert is not None:
            for alert in fired:
                self.on_alert(alert)
        return fired

    def _point(self, now: float, scope: str, region: str, values: np.ndarray, *,
               completed: float = math.nan, throughput: float = math.nan,
               jct_p99: float = math.nan, learner: float = math.nan) -> None:
        series = self.series.get(scope)
        if series is None:
            series = self.series[scope] = Series(scope, region, self.max_points)
        queued, running, busy, slots, backlog, actual = values
        utilization = busy / slots if slots else math.nan
        series.append(now, (queued, running, busy, slots, utilization, backlog, actual,
                            completed, throughput, jct_p99, learner))

    # -- windows -----------------------------------------------------------------------------
    def _window_column(self, now: float, window_s: float, column: str, *,
                       region: str | None = None, ok_only: bool = False,
                       before: float | None = None) -> np.ndarray:
        """One record column over finishes in (now - window_s, now] (or up to ``before``)."""
        since, until = now - window_s, now if before is None else before
        parts = []
        for batch in self._batches:
            if batch.last <= since:
                continue
            keep = (batch.finish > since) & (batch.finish <= until)
            if region is not None:
                keep &= batch.region == region
            if ok_only:
                keep &= batch.ok
            parts.append(getattr(batch, column)[keep])
        return np.concatenate(parts) if parts else np.empty(0)

    def _queued(self, region: str | None, since: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, queued) summed over the local schedulers of a region (or the cluster)."""
        if region is None:
            series = self.series.get("cluster")
            return series.window(since, "queued") if series else (np.empty(0), np.empty(0))
        times, total = None, None
        for series in self.series.values():
            if series.region != region or series.scope == "cluster":
                continue
            t, values = series.window(since, "queued")
            if total is None:
                times, total = t, values
            else:
                n = min(len(total), len(values))
                times, total = times[-n:], total[-n:] + values[-n:]
        return (np.empty(0), np.empty(0)) if total is None else (times, total)

    def window_value(self, rule: AlertRule, now: float) -> float | None:
        """The rule's metric over its window ending at ``now``; None when there is too
        little to judge (fewer than ``min_tasks`` tasks, fewer than two samples)."""
        window, region, metric = rule.window_s, rule.region, rule.metric
        if metric == "lost":
            return float(sum(1 for e in self.lost_events if e["wall"] > now - window))
        if metric in ("queue_length", "queue_growth_tps", "utilization"):
            return self._sample_metric(metric, region, now - window)
        if metric in ("jct_p99_s", "jct_mean_s"):
            jct = self._window_column(now, window, "jct", region=region, ok_only=True)
            if len(jct) < rule.min_tasks:
                return None
            return float(np.percentile(jct, 99) if metric == "jct_p99_s" else jct.mean())
        if metric == "failure_rate":
            ok = self._window_column(now, window, "ok", region=region)
            return None if len(ok) < rule.min_tasks else float(1.0 - ok.mean())
        if metric == "deadline_miss_rate":
            missed = self._window_column(now, window, "missed", region=region)
            missed = missed[~np.isnan(missed)]
            return None if len(missed) < rule.min_tasks else float(missed.mean())
        error = self._window_column(now, window, "error", region=region)
        error = error[~np.isnan(error)]
        if len(error) < rule.min_tasks:
            return None
        if metric == "prediction_error_log":
            return float(error.mean())
        before = self._window_column(now - window, window * BASELINE_WINDOWS, "error",
                                     region=region)
        before = before[~np.isnan(before)]
        if len(before) < rule.min_tasks or before.mean() <= 0:
            return None
        return float(error.mean() / before.mean())

    def _sample_metric(self, metric: str, region: str | None, since: float) -> float | None:
        if metric == "utilization":
            scopes = [s for s in self.series.values()
                      if (s.scope == "cluster" if region is None
                          else s.region == region and s.scope != "cluster")]
            busy = sum(s.window(since, "busy_cpu")[1].sum() for s in scopes)
            slots = sum(s.window(since, "slots")[1].sum() for s in scopes)
            return float(busy / slots) if slots else None
        times, queued = self._queued(region, since)
        if metric == "queue_length":
            return float(queued[-1]) if len(queued) else None
        if len(times) < 2 or times[-1] - times[0] <= 0:
            return None
        return float(np.polyfit(times - times[0], queued, 1)[0])

    # -- output ------------------------------------------------------------------------------
    def timeseries(self) -> pd.DataFrame:
        """Every scope's series as one frame (:data:`SERIES_COLUMNS`), times from ``epoch``."""
        frames = [s.frame(self.epoch) for s in self.series.values()]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=float) for c in SERIES_COLUMNS})
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["t_s", "scope"], kind="stable").reset_index(drop=True)

    def totals(self) -> dict:
        """Counts and mean JCTs so far, per tenant and per kind; alerts fired; losses."""
        def means(table):
            return {k: {"n_ok": int(n), "jct_mean_s": s / n if n else None}
                    for k, (n, s) in sorted(table.items())}
        return {"n_ok": self.n_ok, "n_failed": self.n_failed,
                "by_tenant": means(self.by_tenant), "by_kind": means(self.by_kind),
                "alerts": [a.as_dict() for a in self.alerts.fired],
                "firing": self.alerts.firing(), "lost": list(self.lost_events)}
