"""Features: tasks -> a sparse matrix, batched, robust to anything new.

Every task contributes:

- one-hot *categorical* entries for ``kind``, ``tenant``, ``region`` and every string
  feature (``"codec=otlp-json"``), hashed into ``n_buckets`` columns, so a new tenant,
  kind or column never changes the matrix's shape;
- *numeric* entries for every numeric feature: ``sign(v) * log1p(|v|)``, standardised
  with running (exponentially weighted) statistics per column, placed in the hashed
  column of the feature's name and again in the column of ``kind|name`` (a per-kind
  slope, since runtime scales differently with size for different kinds).

``runtime_s`` is never a feature (tasks carry it outside ``features``; the encoder
never reads it). Bucket indices are cached per string, so a batch of 1,000 tasks
costs a few microseconds per task.
"""

from __future__ import annotations

import math
import zlib
from itertools import chain

import numpy as np
import scipy.sparse as sp

from ray_sched.params import check_range
from ray_sched.task import Task

#: Default width of the hashed feature space: collisions stay rare for a few hundred
#: distinct kinds, tenants, columns and string values.
DEFAULT_BUCKETS = 4096
#: Weight of the newest value in the running mean/variance of a numeric column; about
#: the last 1/alpha values count, so the scaling follows drift.
SCALE_ALPHA = 0.01
#: Numeric columns are clipped at this many standard deviations (heavy tails).
CLIP_SIGMAS = 5.0
#: Cached strings -> bucket before the caches are reset (bounds memory on endless ids).
CACHE_LIMIT = 200_000
#: Batches up to this many tasks are encoded task by task, larger ones column by column.
ROW_BY_ROW_MAX = 32
#: Numbers as features: Python's and numpy's (bool counts as 0/1).
_NUMBERS = (int, float, np.number)


def _as_float(value) -> float:
    """A feature value as a number; NaN when it is none (None, a list, text...)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _bucket(text: str, n_buckets: int) -> int:
    # crc32 is stable across processes (Python's hash() is salted per process).
    return zlib.crc32(text.encode("utf-8")) % n_buckets


class FeatureEncoder:
    """Turn tasks into a CSR matrix of shape (n_tasks, n_buckets).

    Args:
        n_buckets: columns of the hashed space.
        scale_alpha: weight of a new value in a numeric column's running statistics.

    Learned state: ``numeric_stats_`` (column -> [count, mean, var]).
    """

    def __init__(self, *, n_buckets: int = DEFAULT_BUCKETS, scale_alpha: float = SCALE_ALPHA):
        check_range("n_buckets", n_buckets, 16)
        check_range("scale_alpha", scale_alpha, 0.0, 1.0, low_open=True, high_open=True)
        self.n_buckets = n_buckets
        self.scale_alpha = scale_alpha
        self.numeric_stats_: dict[str, list[float]] = {}
        self._buckets: dict[str, int] = {}
        self._categorical_cache: dict[tuple, tuple[int, ...]] = {}
        self._numeric_cache: dict[tuple[str, str], tuple[int, int]] = {}

    def _index(self, text: str) -> int:
        index = self._buckets.get(text)
        if index is None:
            if len(self._buckets) > CACHE_LIMIT:  # bounded on unbounded vocabularies
                self._buckets.clear()
                self._categorical_cache.clear()
                self._numeric_cache.clear()
            index = self._buckets[text] = _bucket(text, self.n_buckets)
        return index

    @staticmethod
    def _squash(value: float) -> float:
        return math.copysign(math.log1p(abs(value)), value)

    def update(self, tasks: list[Task]) -> None:
        """Fold the numeric features of ``tasks`` into the running statistics."""
        alpha = self.scale_alpha
        stats = self.numeric_stats_
        for task in tasks:
            for name, value in task.features.items():
                if isinstance(value, str) or not isinstance(value, _NUMBERS):
                    continue
                value = float(value)
                if not math.isfinite(value):
                    continue
                x = self._squash(float(value))
                entry = stats.get(name)
                if entry is None:
                    stats[name] = [1.0, x, 1.0]
                    continue
                entry[0] += 1
                rate = max(alpha, 1.0 / entry[0])  # exact mean at first, then forgetting
                delta = x - entry[1]
                entry[1] += rate * delta
                entry[2] = (1 - rate) * (entry[2] + rate * delta * delta)

    def transform(self, tasks: list[Task]) -> sp.csr_matrix:
        """Encode a batch. Does not change the encoder (see :meth:`update`).

        Batches of ROW_BY_ROW_MAX tasks or fewer are encoded task by task (numpy's
        per-call cost would dominate); larger ones column by column: each feature is read
        across the batch at once and, when numeric, scaled in one numpy operation. Both
        give the same matrix. The categorical columns of each (kind, tenant, region) are
        cached.

        Returns:
            CSR matrix of shape (len(tasks), n_buckets), float64.
        """
        if len(tasks) <= ROW_BY_ROW_MAX:
            return self._transform_rows(tasks)
        n = len(tasks)
        index = self._index
        per_task = [self._categorical(task) for task in tasks]
        lengths = np.fromiter(map(len, per_task), dtype=np.int64, count=n)
        row_parts = [np.repeat(np.arange(n, dtype=np.int64), lengths)]
        index_parts = [np.fromiter(chain.from_iterable(per_task), dtype=np.int64,
                                   count=int(lengths.sum()))]
        data_parts = [np.ones(len(index_parts[0]))]
        dicts = [task.features for task in tasks]
        kind_codes: np.ndarray | None = None   # per row, an index into `kinds`
        for name in sorted(set().union(*dicts)):
            values = [features.get(name) for features in dicts]
            strings = [row for row, value in enumerate(values) if isinstance(value, str)]
            if strings:
                row_parts.append(np.asarray(strings, dtype=np.int64))
                index_parts.append(np.fromiter((index(name + "=" + values[row])
                                                for row in strings), dtype=np.int64,
                                               count=len(strings)))
                data_parts.append(np.ones(len(strings)))
                if len(strings) == n:
                    continue
                for row in strings:
                    values[row] = None
            entry = self.numeric_stats_.get(name)
            if entry is None:
                continue  # never seen as a number: no scale yet, contributes nothing
            z, keep = self._scaled(values, entry)
            rows = np.flatnonzero(keep)
            if not len(rows):
                continue
            if kind_codes is None:
                codes: dict[str, int] = {}
                kind_codes = np.fromiter((codes.setdefault(task.kind, len(codes))
                                          for task in tasks), dtype=np.int64, count=n)
                kinds = list(codes)
            row_parts += [rows, rows]
            index_parts += [np.full(len(rows), index("num:" + name), dtype=np.int64),
                            self._numeric_columns(name, kinds)[kind_codes[rows]]]
            data_parts += [z[rows], z[rows]]
        rows = np.concatenate(row_parts)
        order = np.argsort(rows, kind="stable")
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        matrix = sp.csr_matrix((np.concatenate(data_parts)[order],
                                np.concatenate(index_parts)[order], indptr),
                               shape=(n, self.n_buckets))
        matrix.sum_duplicates()  # colliding entries of one row add up
        return matrix

    def _categorical(self, task: Task) -> tuple[int, ...]:
        key = (task.kind, task.tenant, task.region)
        columns = self._categorical_cache.get(key)
        if columns is None:
            index = self._index
            columns = [index("kind=" + task.kind), index("tenant=" + task.tenant)]
            if task.region is not None:
                columns.append(index("region=" + task.region))
            columns = self._categorical_cache[key] = tuple(columns)
        return columns

    def _transform_rows(self, tasks: list[Task]) -> sp.csr_matrix:
        """:meth:`transform`, task by task (for small batches)."""
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        stats = self.numeric_stats_
        index = self._index
        for task in tasks:
            columns = self._categorical(task)
            indices.extend(columns)
            data.extend([1.0] * len(columns))
            for name, value in task.features.items():
                if isinstance(value, str):
                    indices.append(index(name + "=" + value))
                    data.append(1.0)
                    continue
                entry = stats.get(name)
                if entry is None:
                    continue
                value = _as_float(value)
                if not math.isfinite(value):
                    continue  # not a number (or not finite): contributes nothing
                squashed = math.log1p(value) if value >= 0 else -math.log1p(-value)
                z = min(CLIP_SIGMAS, max(-CLIP_SIGMAS,
                                         (squashed - entry[1]) / math.sqrt(entry[2] + 1e-9)))
                indices.extend(self._numeric_pair(task.kind, name))
                data += [z, z]
            indptr.append(len(indices))
        matrix = sp.csr_matrix((np.asarray(data, dtype=np.float64),
                                np.asarray(indices, dtype=np.int64),
                                np.asarray(indptr, dtype=np.int64)),
                               shape=(len(tasks), self.n_buckets))
        matrix.sum_duplicates()  # colliding entries of one row add up
        return matrix

    @staticmethod
    def _scaled(values: list, entry: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """(standardised squashed values, which values count): numbers only, finite
        (None, a missing value, counts as not a number)."""
        try:
            array = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):  # something that is not a number among them
            array = np.array([_as_float(v) for v in values], dtype=np.float64)
        else:
            if array.ndim != 1:
                array = np.full(len(values), math.nan)
        keep = np.isfinite(array)
        squashed = np.sign(array) * np.log1p(np.abs(np.where(keep, array, 0.0)))
        z = np.clip((squashed - entry[1]) / math.sqrt(entry[2] + 1e-9), -CLIP_SIGMAS, CLIP_SIGMAS)
        return z, keep

    def _numeric_pair(self, kind: str, name: str) -> tuple[int, int]:
        """The columns of a numeric feature: ``name`` and ``kind|name``."""
        pair = self._numeric_cache.get((kind, name))
        if pair is None:
            pair = self._numeric_cache[(kind, name)] = (
                self._index("num:" + name), self._index("num:" + kind + "|" + name))
        return pair

    def _numeric_columns(self, name: str, kinds: list[str]) -> np.ndarray:
        """The column of ``kind|name`` for each of ``kinds``."""
        return np.array([self._numeric_pair(kind, name)[1] for kind in kinds],
                        dtype=np.int64)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, numpy arrays) for a checkpoint."""
        names = sorted(self.numeric_stats_)
        values = np.array([self.numeric_stats_[n] for n in names], dtype=np.float64).reshape(
            len(names), 3)
        return ({"n_buckets": self.n_buckets, "scale_alpha": self.scale_alpha,
                 "numeric_columns": names}, {"numeric_stats": values})

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> FeatureEncoder:
        encoder = cls(n_buckets=int(meta["n_buckets"]), scale_alpha=float(meta["scale_alpha"]))
        values = arrays["numeric_stats"]
        encoder.numeric_stats_ = {name: [float(v) for v in values[i]]
                                  for i, name in enumerate(meta["numeric_columns"])}
        return encoder
