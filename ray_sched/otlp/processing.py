"""Processing of decoded OTLP batches: tail sampling of traces and running aggregates (span
metrics, metric series, log counts), all vectorised over columns.

Every function here takes a batch of :data:`~ray_sched.otlp.schema.Columns` and returns new
columns; none mutates its input. The three aggregates share one mechanism: a batch is first
turned into *partial* rows (one per group) by an :class:`_Aggregation`, and a running total
merges partials with the very same aggregation, so merging two partials equals the partial of
the concatenated batches.

Example:
    >>> sampler = TailSampler(probability=0.1)
    >>> kept = sampler.decide(assembled)               # + "sampled", "sample_reason"
    >>> span_metrics = SpanMetrics()
    >>> span_metrics.merge(span_metrics_partial(kept))
    >>> table = span_metrics.rows(window_start_ns, window_end_ns)
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_sched.errors import ConfigError
from ray_sched.otlp.schema import (
    LOG_FIELDS,
    METRIC_POINT_FIELDS,
    SPAN_FIELDS,
    STATUS_ERROR,
    Columns,
    empty_columns,
)
from ray_sched.otlp.traceid import SAMPLING_BITS, sampling_value
from ray_sched.params import check_range

# --- tail sampling -------------------------------------------------------------------------

#: Share of ordinary traces kept: the Collector's probabilistic sampler is often run at 10%.
DEFAULT_PROBABILITY = 0.1
#: A trace slower than this quantile of its operation's recent traces is "slow" (p95: about
#: one ordinary trace in twenty would qualify, so the slow ones are kept, not the bulk).
DEFAULT_SLOW_QUANTILE = 0.95
#: Durations an operation needs before its quantile is trusted (fewer: a p95 of noise).
DEFAULT_MIN_SAMPLES = 20
#: Recent trace durations kept per operation (8 KiB each: recent enough to follow drift).
DEFAULT_WINDOW = 1024
#: Operations tracked at most (LRU beyond it): bounds memory to about 80 MiB at the defaults.
DEFAULT_MAX_OPERATIONS = 10_000
#: Rows allocated for operations at first; doubled as needed (up to max_operations).
INITIAL_OPERATIONS = 64
#: Bits of a trace's sampling value (see ray_sched.otlp.traceid).
SAMPLING_RANDOM_BITS = SAMPLING_BITS

#: Why a trace was kept (or not), in the order a trace is checked; codes index this tuple.
#: "rate_limited": kept as slow or probabilistic, but over its root service's rate limit.
SAMPLE_REASONS = ("error", "slow", "probabilistic", "dropped", "rate_limited")
_ERROR, _SLOW, _PROBABILISTIC, _DROPPED, _RATE_LIMITED = range(len(SAMPLE_REASONS))
_REASON_NAMES = np.array(SAMPLE_REASONS, dtype=object)

def _check_fraction(name: str, value: object, **openness: bool) -> float:
    try:
        return check_range(name, value, 0.0, 1.0, **openness)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def trace_randomness(trace_ids: np.ndarray) -> np.ndarray:
    """The sampling value of each trace id: uniform in [0, 2**56) whatever the ids are
    (:func:`ray_sched.otlp.traceid.sampling_value`, a hash of all 16 bytes).

    Args:
        trace_ids: hex strings (32 chars per the schema), shape (n,).

    Returns:
        uint64 array of shape (n,).
    """
    return sampling_value(trace_ids)


class _DurationWindows:
    """The last ``window`` trace durations of each of at most ``max_operations`` operations:
    one ring buffer per operation, all rows of one 2-D array so that a batch's operations are
    read and written at once; the least recently seen operation's row is reused first."""

    def __init__(self, *, window: int, max_operations: int):
        self.window = window
        self.max_operations = max_operations
        self.rows: OrderedDict[tuple[str, str], int] = OrderedDict()  # LRU order, oldest first
        self.values = np.zeros((0, window), dtype=np.int64)
        self.filled = np.zeros(0, dtype=np.int64)     # durations held per row (<= window)
        self.position = np.zeros(0, dtype=np.int64)   # next slot written per row
        self.allocated = 0                            # rows ever handed out

    def lookup(self, keys: list[tuple[str, str]]) -> np.ndarray:
        """Row of each operation, -1 for one not tracked; shape (n_keys,)."""
        get = self.rows.get
        return np.fromiter((get(key, -1) for key in keys), dtype=np.int64, count=len(keys))

    def quantiles(self, rows: np.ndarray, q: float, min_samples: int) -> np.ndarray:
        """``np.quantile`` (linear) of each row's durations; NaN for rows of -1 or with fewer
        than ``min_samples`` durations.

        Full windows (the steady state) share one partition; filling ones (their durations
        are in slots ``[0, filled)``) share one sort, with the empty slots sorted last.
        """
        out = np.full(len(rows), np.nan)
        if not len(self.filled):
            return out
        filled = np.where(rows >= 0, self.filled[np.maximum(rows, 0)], 0)
        ready = filled >= min_samples
        full = np.flatnonzero(ready & (filled == self.window))
        if len(full):
            rank = q * (self.window - 1)
            low = math.floor(rank)
            high = min(low + 1, self.window - 1)
            part = np.partition(self.values[rows[full]], (low, high), axis=1)
            out[full] = part[:, low] + (part[:, high] - part[:, low]) * (rank - low)
        filling = np.flatnonzero(ready & (filled < self.window))
        if len(filling):
            n = filled[filling]
            block = self.values[rows[filling], :n.max()]
            block[np.arange(block.shape[1]) >= n[:, None]] = np.iinfo(np.int64).max
            block.sort(axis=1)
            rank = q * (n - 1)
            low = np.floor(rank).astype(np.int64)
            high = np.minimum(low + 1, n - 1)
            at_low = np.take_along_axis(block, low[:, None], axis=1)[:, 0]
            at_high = np.take_along_axis(block, high[:, None], axis=1)[:, 0]
            out[filling] = at_low + (at_high - at_low) * (rank - low)
        return out

    def add(self, keys: list[tuple[str, str]], groups: _Grouping,
            duration_ns: np.ndarray) -> None:
        """Append each group's durations (in row order) to its operation's window.

        Args:
            keys: the operation of each group of ``groups``.
            groups: the batch's traces grouped by operation.
            duration_ns: one duration per trace, shape (n_traces,).
        """
        # More operations than can be tracked: the first ones would be evicted at once.
        skipped = max(0, len(keys) - self.max_operations)
        keys = keys[skipped:]
        rows = self._rows_for(keys)
        codes = groups.codes[groups.order]                # each trace's group, grouped
        rank = np.arange(len(codes)) - groups.starts[codes]
        kept = np.minimum(groups.counts, self.window)     # the last `window` of each group
        first_kept = groups.counts - kept
        write = (codes >= skipped) & (rank >= first_kept[codes])
        group = codes[write] - skipped
        slot = (self.position[rows][group] + rank[write] - first_kept[codes[write]]) % self.window
        self.values[rows[group], slot] = duration_ns[groups.order[write]]
        self.position[rows] = (self.position[rows] + kept[skipped:]) % self.window
        self.filled[rows] = np.minimum(self.filled[rows] + kept[skipped:], self.window)

    def _rows_for(self, keys: list[tuple[str, str]]) -> np.ndarray:
        """Rows of ``keys`` (at most max_operations), which become the most recently seen in
        their order; new keys take the rows of the operations this evicts, or fresh ones."""
        rows = self.lookup(keys)
        for key in keys:
            if key in self.rows:
                self.rows.move_to_end(key)
            else:
                self.rows[key] = -1                   # placeholder: a row is assigned below
        freed = [self.rows.popitem(last=False)[1]
                 for _ in range(len(self.rows) - self.max_operations)]
        for i in np.flatnonzero(rows < 0).tolist():
            row = freed.pop() if freed else self._new_row()
            self.filled[row] = self.position[row] = 0
            self.rows[keys[i]] = rows[i] = row
        return rows

    def _new_row(self) -> int:
        if self.allocated == len(self.filled):
            self._grow()
        self.allocated += 1
        return self.allocated - 1

    def _grow(self) -> None:
        capacity = min(self.max_operations, max(2 * len(self.filled), INITIAL_OPERATIONS))
        extra = capacity - len(self.filled)
        self.values = np.concatenate((self.values, np.zeros((extra, self.window), np.int64)))
        self.filled = np.concatenate((self.filled, np.zeros(extra, np.int64)))
        self.position = np.concatenate((self.position, np.zeros(extra, np.int64)))


class TailSampler:
    """Keeps whole traces: every error, every slow one, and a deterministic share of the rest.

    A trace is checked in order: ``"error"`` if ``trace_error``; ``"slow"`` if its operation
    (``root_service``, ``root_name``) has at least ``min_samples`` past trace durations and
    this trace's ``trace_duration_ns`` is above their ``slow_quantile`` (as it stood before
    this batch); ``"probabilistic"`` if its trace id's sampling value, over 2**56, is below
    ``probability`` (a hash of the whole id: every replica agrees, as with the Collector's
    probabilistic sampler, and the share is right even for ids that are not random);
    else ``"dropped"``. With ``rate_limit_per_s``, a root service keeps at most that many
    slow or probabilistic traces a second (a token bucket holding one second's worth);
    the others become ``"rate_limited"`` (not kept). Errors are always kept. Afterwards
    each trace's duration joins its operation's window.

    Per-trace columns (``trace_error``, ``trace_duration_ns``, ``root_*``) are read from the
    first span of each trace in the batch (assembly repeats them on every span). A trace
    split over two batches is counted (and recorded) once per batch.

    Args:
        probability: share of ordinary traces kept, in [0, 1].
        slow_quantile: quantile of an operation's durations above which a trace is slow,
            in (0, 1).
        min_samples: past durations an operation needs before traces can be slow.
        window: past durations kept per operation (the most recent ones).
        max_operations: operations tracked; the least recently seen are forgotten first.
        rate_limit_per_s: kept traces a second per root service beyond errors; None: no
            limit.
        clock: seconds, for the rate limit's buckets.

    Raises:
        ConfigError: a parameter out of range, quoting the value.
    """

    def __init__(self, *, probability: float = DEFAULT_PROBABILITY,
                 slow_quantile: float = DEFAULT_SLOW_QUANTILE,
                 min_samples: int = DEFAULT_MIN_SAMPLES, window: int = DEFAULT_WINDOW,
                 max_operations: int = DEFAULT_MAX_OPERATIONS,
                 rate_limit_per_s: float | None = None,
                 clock: Callable[[], float] | None = None):
        _check_fraction("probability", probability)
        if rate_limit_per_s is not None:
            try:
                check_range("rate_limit_per_s", rate_limit_per_s, 0, low_open=True)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        self.rate_limit_per_s = rate_limit_per_s
        self.clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}   # service -> (tokens, at)
        _check_fraction("slow_quantile", slow_quantile, low_open=True, high_open=True)
        for name, value in (("min_samples", min_samples), ("window", window),
                            ("max_operations", max_operations)):
            _check_count(name, value)
        self.probability = probability
        self.slow_quantile = slow_quantile
        self.min_samples = min_samples
        self.window = window
        self.max_operations = max_operations
        # Exact integer form of "randomness / 2**56 < probability".
        self.keep_below_ = np.uint64(math.ceil(probability * 2 ** SAMPLING_RANDOM_BITS))
        self.durations_ = _DurationWindows(window=window, max_operations=max_operations)
        self.traces_seen_ = 0
        self.reason_counts_ = np.zeros(len(SAMPLE_REASONS), dtype=np.int64)

    def decide(self, columns: Columns) -> Columns:
        """Decide every trace of an assembled batch, then learn its durations.

        Args:
            columns: span columns plus assembly columns (``trace_id``, ``trace_error``,
                ``trace_duration_ns``, ``root_service``, ``root_name``), shape (n_spans,).

        Returns:
            A new dict: the input columns plus ``sampled`` (bool) and ``sample_reason``
            (object str, one of :data:`SAMPLE_REASONS`), shape (n_spans,), the same for
            every span of a trace.

        Example:
            >>> out = TailSampler(probability=0.0).decide(batch)
            >>> out["sample_reason"][out["sampled"]]   # only "error" and "slow"
        """
        out = dict(columns)
        traces = _Grouping.of(columns, ("trace_id",))
        if traces.n_groups == 0:
            out["sampled"] = np.zeros(0, dtype=bool)
            out["sample_reason"] = np.empty(0, dtype=object)
            return out
        first = traces.first_rows()
        error = np.asarray(columns["trace_error"])[first].astype(bool)
        duration_ns = np.asarray(columns["trace_duration_ns"])[first].astype(np.int64)
        roots = {"service": np.asarray(columns["root_service"])[first],
                 "name": np.asarray(columns["root_name"])[first]}
        operations = _Grouping.of(roots, ("service", "name"))
        op_first = operations.first_rows()
        keys = list(zip(roots["service"][op_first].tolist(), roots["name"][op_first].tolist()))

        slow_ns = self.durations_.quantiles(self.durations_.lookup(keys), self.slow_quantile,
                                            self.min_samples)
        slow = duration_ns > slow_ns[operations.codes]          # NaN (no threshold): False
        lucky = trace_randomness(np.asarray(columns["trace_id"])[first]) < self.keep_below_
        reason = np.select([error, slow, lucky], [_ERROR, _SLOW, _PROBABILISTIC], _DROPPED)
        if self.rate_limit_per_s is not None:
            self._rate_limit(reason, roots["service"])

        self.durations_.add(keys, operations, duration_ns)
        self.traces_seen_ += traces.n_groups
        self.reason_counts_ += np.bincount(reason, minlength=len(SAMPLE_REASONS))
        span_reason = reason[traces.codes]
        out["sampled"] = (span_reason != _DROPPED) & (span_reason != _RATE_LIMITED)
        out["sample_reason"] = _REASON_NAMES[span_reason]
        return out

    def _rate_limit(self, reason: np.ndarray, service: np.ndarray) -> None:
        """Turn the slow and probabilistic traces over each root service's token bucket into
        ``_RATE_LIMITED`` (in place), in batch order."""
        limited = np.flatnonzero((reason == _SLOW) | (reason == _PROBABILISTIC))
        if not len(limited):
            return
        now = self.clock()
        rate = self.rate_limit_per_s
        groups = _Grouping.of({"service": service[limited]}, ("service",))
        rank = np.empty(len(limited), dtype=np.int64)
        rank[groups.order] = np.arange(len(limited)) - np.repeat(groups.starts, groups.counts)
        names = service[limited][groups.first_rows()].tolist()
        allowed = np.empty(groups.n_groups, dtype=np.int64)
        for g, name in enumerate(names):
            tokens, at = self._buckets.get(name, (rate, now))
            tokens = min(rate, tokens + (now - at) * rate)
            allowed[g] = int(tokens)
            self._buckets[name] = (tokens - min(int(tokens), int(groups.counts[g])), now)
        over = rank >= allowed[groups.codes]
        reason[limited[over]] = _RATE_LIMITED

    def threshold_ns(self, service: str, name: str) -> float | None:
        """The current slow threshold (ns) of an operation, or None while it has fewer than
        ``min_samples`` durations (or is not tracked)."""
        rows = self.durations_.lookup([(service, name)])
        threshold = float(self.durations_.quantiles(rows, self.slow_quantile,
                                                    self.min_samples)[0])
        return None if math.isnan(threshold) else threshold

    def stats(self) -> dict:
        """Counters since construction: ``traces_seen``, ``traces_kept``, ``by_reason``
        (traces per reason, ``"dropped"`` included), ``operations_tracked`` and
        ``durations_held`` (over all tracked operations, at most ``window`` each)."""
        by_reason = dict(zip(SAMPLE_REASONS, self.reason_counts_.tolist()))
        rows = list(self.durations_.rows.values())
        return {"traces_seen": self.traces_seen_,
                "traces_kept": (self.traces_seen_ - by_reason["dropped"]
                                - by_reason["rate_limited"]),
                "by_reason": by_reason,
                "operations_tracked": len(rows),
                "durations_held": int(self.durations_.filled[rows].sum())}


# --- grouping and reducers (shared by the aggregates) --------------------------------------

@dataclass(frozen=True)
class _Grouping:
    """Rows grouped by key columns, groups numbered in order of first appearance.

    ``codes`` (n_rows,) is each row's group; ``order`` sorts rows by group (stably, so rows of
    a group keep their order) and ``starts`` (n_groups,) is where each group begins in it.
    """

    codes: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.starts)

    def first_rows(self) -> np.ndarray:
        return self.order[self.starts]

    @classmethod
    def of(cls, columns: Columns, keys: tuple[str, ...]) -> _Grouping:
        combined, cardinality, dense = None, 1, False
        for key in keys:
            codes, n_values, dense = _key_codes(np.asarray(columns[key]))
            if combined is None:
                combined, cardinality = codes, n_values
                continue
            if cardinality * n_values > _MAX_COMBINED_CODES:  # renumber before it overflows
                combined, uniques = pd.factorize(combined)
                cardinality = len(uniques)
            combined = combined * n_values + codes
            cardinality *= n_values
            dense = False
        if not dense:
            combined = pd.factorize(combined)[0]
        codes = combined.astype(np.int64, copy=False)
        counts = np.bincount(codes)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
        return cls(codes=codes, order=np.argsort(codes, kind="stable"), starts=starts,
                   counts=counts)


#: Combined key codes stay below this (int64 with room), renumbering when they would not.
_MAX_COMBINED_CODES = 2 ** 62
#: Integer keys spanning at most this many values are coded by value, without hashing.
_DIRECT_CODE_RANGE = 1 << 16


def _key_codes(values: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Codes of one key column: (int64 codes, an upper bound on their count, whether they are
    numbered 0.. in order of first appearance). Small-range integers (span kinds) are coded
    by value; anything else is hashed (pd.factorize: about 3x np.unique's sort on strings)."""
    if values.dtype.kind in "biu" and len(values):
        values = values.astype(np.int64)
        low = int(values.min())
        span = int(values.max()) - low + 1
        if span <= _DIRECT_CODE_RANGE:
            return values - low, span, False
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), max(len(uniques), 1), True


class _Reducer:
    """How one column of a group's rows becomes that group's value (``reduce``), and how two
    such values of the same groups become one (``combine``, ``old`` and ``new`` aligned)."""

    def reduce(self, name: str, rows: Columns, groups: _Grouping) -> np.ndarray:
        raise NotImplementedError

    def combine(self, name: str, old: Columns, new: Columns) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class _UfuncReducer(_Reducer):
    ufunc: np.ufunc

    def reduce(self, name: str, rows: Columns, groups: _Grouping) -> np.ndarray:
        return self.ufunc.reduceat(rows[name][groups.order], groups.starts, axis=0)

    def combine(self, name: str, old: Columns, new: Columns) -> np.ndarray:
        return self.ufunc(old[name], new[name])


@dataclass(frozen=True)
class _LastBy(_Reducer):
    """The value of the row with the greatest ``by`` (ties: the later row)."""

    by: str

    def reduce(self, name: str, rows: Columns, groups: _Grouping) -> np.ndarray:
        order = np.lexsort((rows[self.by], groups.codes))  # stable: equal times keep row order
        return rows[name][order[groups.starts + groups.counts - 1]]

    def combine(self, name: str, old: Columns, new: Columns) -> np.ndarray:
        return np.where(new[self.by] >= old[self.by], new[name], old[name])


_SUM, _MIN, _MAX = _UfuncReducer(np.add), _UfuncReducer(np.minimum), _UfuncReducer(np.maximum)


@dataclass(frozen=True)
class _Aggregation:
    """Group rows by ``keys`` and reduce every other column with its reducer.

    ``derive`` turns an input batch into one row per item with the output's column names
    (e.g. ``calls`` = 1 per span), so that the same reducers merge partials.
    """

    keys: tuple[str, ...]
    reducers: Mapping[str, _Reducer]
    derive: Callable[[Columns], Columns]
    input_schema: pa.Schema

    def partial(self, columns: Columns) -> Columns:
        return self.aggregate(self.derive(columns))

    def aggregate(self, rows: Columns) -> Columns:
        groups = _Grouping.of(rows, self.keys)
        if groups.n_groups == 0:
            return {name: rows[name][:0] for name in (*self.keys, *self.reducers)}
        first = groups.first_rows()
        out = {key: rows[key][first] for key in self.keys}
        for name, reducer in self.reducers.items():
            out[name] = reducer.reduce(name, rows, groups)
        return out

    def empty(self) -> Columns:
        return self.partial(empty_columns(self.input_schema))


class _RunningTotals:
    """Running aggregates of one :class:`_Aggregation`: ``merge`` partials, ``rows`` to
    export, ``reset``; ``len`` is the number of groups.

    The totals are columns (one row per group) plus a dict from group key to row, so a merge
    costs the partial's size, not the totals'.
    """

    aggregation: _Aggregation

    def __init__(self):
        self.reset()

    def merge(self, partial: Columns) -> None:
        """Add a partial (the output of this aggregate's ``*_partial`` function; rows of the
        same group, as in concatenated partials, are aggregated first)."""
        aggregation = self.aggregation
        partial = {name: np.asarray(partial[name]) for name in self.totals_}
        keys = list(zip(*(partial[key].tolist() for key in aggregation.keys)))
        if len(set(keys)) < len(keys):
            partial = aggregation.aggregate(partial)
            keys = list(zip(*(partial[key].tolist() for key in aggregation.keys)))
        n_before = len(self.index_)
        index = self.index_
        rows = np.fromiter((index.setdefault(key, len(index)) for key in keys),
                           dtype=np.int64, count=len(keys))
        seen = rows < n_before
        if seen.any():
            old = {name: self.totals_[name][rows[seen]] for name in aggregation.reducers}
            new = {name: partial[name][seen] for name in aggregation.reducers}
            for name, reducer in aggregation.reducers.items():
                self.totals_[name][rows[seen]] = reducer.combine(name, old, new)
        if not seen.all():  # new groups take the next rows, in order
            self.totals_ = {name: np.concatenate((values, partial[name][~seen]))
                            for name, values in self.totals_.items()}

    def rows(self) -> Columns:
        """A copy of the totals, one row per group."""
        return {name: values.copy() for name, values in self.totals_.items()}

    def as_partial(self) -> Columns:
        """A copy of the totals in the layout of a partial, for another instance to merge."""
        return _RunningTotals.rows(self)

    def reset(self) -> None:
        """Forget every total."""
        self.totals_ = self.aggregation.empty()
        self.index_: dict[tuple, int] = {}

    def __len__(self) -> int:
        return len(self.index_)


def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.int64)


# --- span metrics ----------------------------------------------------------------------------

#: Explicit histogram bounds (ms) of the Collector's spanmetrics connector. Bucket ``i`` counts
#: durations d with ``bounds[i-1] < d <= bounds[i]`` (upper bound inclusive, as in OTLP
#: explicit-bucket histograms); the first bucket starts at 0, one more bucket holds d > 15 s.
DURATION_BOUNDS_MS = (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000,
                      15000)
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_DURATION_BOUNDS_NS = np.array(DURATION_BOUNDS_MS, dtype=np.int64) * _NS_PER_MS
N_DURATION_BUCKETS = len(DURATION_BOUNDS_MS) + 1


def duration_buckets(duration_ns: np.ndarray) -> np.ndarray:
    """Bucket index (0 .. len(DURATION_BOUNDS_MS)) of each duration, shape (n,)."""
    return np.searchsorted(_DURATION_BOUNDS_NS, duration_ns, side="left")


def _span_rows(columns: Columns) -> Columns:
    duration = np.asarray(columns["duration_ns"], dtype=np.int64)
    n = len(duration)
    buckets = np.zeros((n, N_DURATION_BUCKETS), dtype=np.int64)
    buckets[np.arange(n), duration_buckets(duration)] = 1
    return {"service": np.asarray(columns["service"]),
            "operation": np.asarray(columns["name"]),
            "span_kind": np.asarray(columns["kind"], dtype=np.int8),
            "calls": _ones(n),
            "errors": (np.asarray(columns["status_code"]) == STATUS_ERROR).astype(np.int64),
            "duration_sum_ns": duration, "duration_min_ns": duration,
            "duration_max_ns": duration, "buckets": buckets}


_SPAN_METRICS = _Aggregation(
    keys=("service", "operation", "span_kind"),
    reducers={"calls": _SUM, "errors": _SUM, "duration_sum_ns": _SUM, "duration_min_ns": _MIN,
              "duration_max_ns": _MAX, "buckets": _SUM},
    derive=_span_rows, input_schema=SPAN_FIELDS)


def span_metrics_partial(columns: Columns) -> Columns:
    """Per (service, name, kind) of a span batch: ``service``, ``operation``, ``span_kind``,
    ``calls``, ``errors`` (status ERROR), ``duration_sum_ns``, ``duration_min_ns``,
    ``duration_max_ns`` (shape (n_groups,)) and ``buckets`` (int64, shape
    (n_groups, N_DURATION_BUCKETS), counts per :data:`DURATION_BOUNDS_MS` bucket)."""
    return _SPAN_METRICS.partial(columns)


def histogram_quantile_ns(buckets: np.ndarray, q: float, min_ns: np.ndarray,
                          max_ns: np.ndarray) -> np.ndarray:
    """Estimate the q-quantile (ns) of each row's duration histogram.

    Linear interpolation inside the bucket holding rank ``q * count``, between its bounds
    narrowed to the observed [min, max] (so the open last bucket ends at the max, and the
    estimate never leaves the bucket nor the data's range).

    Args:
        buckets: counts, shape (n, N_DURATION_BUCKETS). min_ns, max_ns: shape (n,).

    Returns:
        float64 array of shape (n,); NaN for a row with no count.
    """
    buckets = np.asarray(buckets, dtype=np.float64)
    if len(buckets) == 0:
        return np.zeros(0)
    cumulative = np.cumsum(buckets, axis=1)
    total = cumulative[:, -1]
    rank = q * total
    index = np.minimum((cumulative < rank[:, None]).sum(axis=1), N_DURATION_BUCKETS - 1)
    rows = np.arange(len(buckets))
    edges = np.concatenate(([0.0], _DURATION_BOUNDS_NS.astype(np.float64), [np.inf]))
    low = np.maximum(edges[index], min_ns)
    high = np.minimum(edges[index + 1], max_ns)
    before = cumulative[rows, index] - buckets[rows, index]
    in_bucket = buckets[rows, index]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip((rank - before) / in_bucket, 0.0, 1.0)
        estimate = low + (high - low) * share
    return np.where(total > 0, estimate, np.nan)


class SpanMetrics(_RunningTotals):
    """Running span metrics (RED: rate, errors, duration) per (service, operation, kind).

    Example:
        >>> metrics = SpanMetrics()
        >>> metrics.merge(span_metrics_partial(batch))
        >>> metrics.rows(start_ns, end_ns)["duration_p95_ms"]
    """

    aggregation = _SPAN_METRICS

    def rows(self, window_start_ns: int, window_end_ns: int) -> Columns:
        """The totals for export, one row per group.

        Args:
            window_start_ns, window_end_ns: the window the totals cover (unix ns); calls
                over its length give ``rate_per_s``.

        Returns:
            ``service``, ``operation``, ``span_kind``, ``calls``, ``errors``, ``error_rate``,
            ``rate_per_s``, ``duration_sum_ns``, ``duration_min_ns``, ``duration_max_ns``,
            ``duration_p50_ms``, ``duration_p95_ms`` (histogram estimates), ``bucket_counts``
            and ``bounds_ms`` (JSON lists), ``window_start_ns``, ``window_end_ns``.

        Raises:
            ConfigError: a window that does not end after it starts.
        """
        if not window_end_ns > window_start_ns:
            raise ConfigError(f"window_end_ns must be after window_start_ns, got "
                              f"[{window_start_ns!r}, {window_end_ns!r}]")
        totals = self.totals_
        n = len(self)
        calls = totals["calls"]
        low, high = totals["duration_min_ns"], totals["duration_max_ns"]
        bounds = json.dumps(list(DURATION_BOUNDS_MS))
        # str() of a list of Python ints is its JSON text, at a fraction of json.dumps' cost.
        bucket_counts = np.array(list(map(str, totals["buckets"].tolist())), dtype=object)
        with np.errstate(invalid="ignore", divide="ignore"):
            error_rate = totals["errors"] / calls
        return {
            "service": totals["service"].copy(), "operation": totals["operation"].copy(),
            "span_kind": totals["span_kind"].copy(), "calls": calls.copy(),
            "errors": totals["errors"].copy(), "error_rate": error_rate,
            "rate_per_s": calls / ((window_end_ns - window_start_ns) / _NS_PER_S),
            "duration_sum_ns": totals["duration_sum_ns"].copy(),
            "duration_min_ns": low.copy(), "duration_max_ns": high.copy(),
            "duration_p50_ms": histogram_quantile_ns(totals["buckets"], 0.5, low, high)
            / _NS_PER_MS,
            "duration_p95_ms": histogram_quantile_ns(totals["buckets"], 0.95, low, high)
            / _NS_PER_MS,
            "bucket_counts": bucket_counts.reshape(n),
            "bounds_ms": np.full(n, bounds, dtype=object),
            "window_start_ns": np.full(n, window_start_ns, dtype=np.int64),
            "window_end_ns": np.full(n, window_end_ns, dtype=np.int64),
        }


# --- metric series ---------------------------------------------------------------------------

def _metric_rows(columns: Columns) -> Columns:
    value = np.asarray(columns["value"], dtype=np.float64)
    time_ns = np.asarray(columns["time_ns"], dtype=np.int64)
    return {"series": np.asarray(columns["series"]), "metric": np.asarray(columns["metric"]),
            "service": np.asarray(columns["service"]), "type": np.asarray(columns["type"]),
            "points": _ones(len(value)), "value_sum": value, "value_min": value,
            "value_max": value, "last_value": value, "last_time_ns": time_ns,
            "first_time_ns": time_ns}


# Keyed by all four: a series normally fixes the others, and if not, nothing is merged away.
_METRIC_SERIES = _Aggregation(
    keys=("series", "metric", "service", "type"),
    reducers={"points": _SUM, "value_sum": _SUM, "value_min": _MIN, "value_max": _MAX,
              "last_value": _LastBy("last_time_ns"), "last_time_ns": _MAX,
              "first_time_ns": _MIN},
    derive=_metric_rows, input_schema=METRIC_POINT_FIELDS)


def metric_series_partial(columns: Columns) -> Columns:
    """Per time series of a metric-point batch: ``series``, ``metric``, ``service``, ``type``,
    ``points``, ``value_sum``, ``value_min``, ``value_max``, ``last_value`` (of the point with
    the latest ``time_ns``; ties: the later point), ``last_time_ns``, ``first_time_ns``."""
    return _METRIC_SERIES.partial(columns)


class MetricSeries(_RunningTotals):
    """Running per-series summaries of metric points (see :func:`metric_series_partial`)."""

    aggregation = _METRIC_SERIES


# --- log counts ------------------------------------------------------------------------------

#: OpenTelemetry severity ranges: numbers 1-4 TRACE, 5-8 DEBUG, ... 21-24 FATAL; 0 (and any
#: number outside 1-24, which the log data model does not define) is UNSPECIFIED.
SEVERITY_RANGES = ("UNSPECIFIED", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_NAMES = np.array(SEVERITY_RANGES, dtype=object)
_SEVERITY_PER_RANGE = 4
_MAX_SEVERITY = _SEVERITY_PER_RANGE * (len(SEVERITY_RANGES) - 1)


def severity_range(severity_number: np.ndarray) -> np.ndarray:
    """The severity range name of each severity number, object array of shape (n,)."""
    number = np.asarray(severity_number, dtype=np.int64)
    valid = (number >= 1) & (number <= _MAX_SEVERITY)
    index = np.where(valid, (number + _SEVERITY_PER_RANGE - 1) // _SEVERITY_PER_RANGE, 0)
    return _SEVERITY_NAMES[index]


def _log_rows(columns: Columns) -> Columns:
    severity = severity_range(columns["severity_number"])
    return {"service": np.asarray(columns["service"]), "severity": severity,
            "records": _ones(len(severity))}


_LOG_COUNTS = _Aggregation(keys=("service", "severity"), reducers={"records": _SUM},
                          derive=_log_rows, input_schema=LOG_FIELDS)


def log_counts_partial(columns: Columns) -> Columns:
    """Per (service, severity range) of a log batch: ``service``, ``severity`` (one of
    :data:`SEVERITY_RANGES`), ``records``."""
    return _LOG_COUNTS.partial(columns)


class LogCounts(_RunningTotals):
    """Running log record counts per (service, severity range)."""

    aggregation = _LOG_COUNTS
