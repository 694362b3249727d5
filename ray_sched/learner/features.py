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
_ONES = (1.0,) * 8
_INFINITIES = (math.inf, -math.inf)
#: Numbers as features: Python's and numpy's (bool counts as 0/1).
_NUMBERS = (int, float, np.number)


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

        Returns:
            CSR matrix of shape (len(tasks), n_buckets), float64.
        """
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        stats = self.numeric_stats_
        categorical = self._categorical_cache
        pairs = self._numeric_cache
        index = self._index
        log1p = math.log1p
        for task in tasks:
            kind = task.kind
            key = (kind, task.tenant, task.region)
            columns = categorical.get(key)
            if columns is None:
                columns = [index("kind=" + kind), index("tenant=" + task.tenant)]
                if task.region is not None:
                    columns.append(index("region=" + task.region))
                columns = categorical[key] = tuple(columns)
            indices.extend(columns)
            data.extend(_ONES[: len(columns)])
            for name, value in task.features.items():
                if isinstance(value, str):
                    indices.append(index(name + "=" + value))
                    data.append(1.0)
                    continue
                entry = stats.get(name)
                if entry is None or not isinstance(value, _NUMBERS):
                    continue  # never seen (no scale yet) or not a number: contributes nothing
                value = float(value)
                if value != value or value in _INFINITIES:
                    continue
                squashed = log1p(value) if value >= 0 else -log1p(-value)
                z = (squashed - entry[1]) / math.sqrt(entry[2] + 1e-9)
                z = CLIP_SIGMAS if z > CLIP_SIGMAS else (-CLIP_SIGMAS if z < -CLIP_SIGMAS else z)
                pair = pairs.get((kind, name))
                if pair is None:
                    pair = pairs[(kind, name)] = (index("num:" + name),
                                                  index("num:" + kind + "|" + name))
                indices.extend(pair)
                data.extend((z, z))
            indptr.append(len(indices))
        matrix = sp.csr_matrix((np.asarray(data, dtype=np.float64),
                                np.asarray(indices, dtype=np.int32),
                                np.asarray(indptr, dtype=np.int32)),
                               shape=(len(tasks), self.n_buckets))
        matrix.sum_duplicates()  # colliding entries of one row add up
        return matrix

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
