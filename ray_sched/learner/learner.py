"""The Learner: runtime and priority models behind one batched predict/observe interface,
with safe checkpoints (numpy arrays without pickle + JSON metadata with a schema version).
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_sched.errors import ConfigError, RaySchedError
from ray_sched.learner.models import (
    DEFAULT_RUNTIME_S,
    MIN_RUNTIME_S,
    PRIOR_ALPHA,
    KeyedAverage,
    OnlineRegressor,
    PriorityModel,
    RefitWindow,
    RuntimeModel,
)
from ray_sched.params import check_range
from ray_sched.task import Task

#: Version of the checkpoint layout; a checkpoint with another one is refused.
CHECKPOINT_SCHEMA_VERSION = 1
CHECKPOINT_PREFIX = "learner-"
#: Completions between two checkpoints of the Learner actor.
DEFAULT_CHECKPOINT_EVERY = 500
#: Checkpoints kept in a directory; older ones are removed after each save.
CHECKPOINTS_KEPT = 5


#: Completions are learnt in mini-batches of at least this many tasks ...
MIN_OBSERVE_BATCH = 16
#: ... or once the oldest waiting one is this old (seconds): one partial_fit costs ~1-3 ms
#: whatever its size, which at hundreds of small completion batches a second (an OTLP
#: receiver, a 1,000-node simulation) took a third of a core; 0.1 s of delay costs the
#: predictions nothing measurable.
MAX_OBSERVE_DELAY_S = 0.1
#: Until the learner has seen this many tasks it learns every completion batch at once:
#: early predictions steer the first bursts most (bursty: 1.26x the oracle batched from the
#: start, against 1.21x learning at once).
OBSERVE_AT_ONCE_UNTIL = 256


class CheckpointError(RaySchedError, ValueError):
    """A checkpoint that is missing, damaged, or of an unknown schema version."""

    exit_code = 3


@dataclass
class Predictions:
    """Per task, arrays of shape (n_tasks,): runtime p50/p90/mean (seconds) and priority."""

    p50_s: np.ndarray
    p90_s: np.ndarray
    mean_s: np.ndarray
    priority: np.ndarray

    def apply(self, tasks: list[Task]) -> None:
        """Write the predictions onto the tasks (``predicted_*`` and ``effective_priority``)."""
        for task, p50, p90, mean, priority in zip(tasks, self.p50_s.tolist(),
                                                  self.p90_s.tolist(), self.mean_s.tolist(),
                                                  self.priority.tolist()):
            task.predicted_runtime_s, task.predicted_p90_s, task.predicted_mean_s = p50, p90, mean
            task.effective_priority = priority


class FallbackPredictor:
    """The heuristic the schedulers use while the Learner is unreachable: a moving average
    of log runtime per kind (Dask's rule), p90 = e x p50, declared priorities as they are."""

    #: log(p90 / p50) assumed by the fallback.
    SPREAD = 1.0

    def __init__(self) -> None:
        self.average = KeyedAverage(PRIOR_ALPHA)

    def predict(self, tasks: list[Task]) -> Predictions:
        log_p50, _ = self.average.lookup([t.kind for t in tasks], math.log(DEFAULT_RUNTIME_S))
        p50 = np.exp(log_p50)
        return Predictions(p50, p50 * math.exp(self.SPREAD), p50 * math.exp(self.SPREAD / 2),
                           np.array([t.priority for t in tasks], dtype=np.float64))

    def observe(self, tasks: list[Task], measured_runtime_s) -> None:
        measured = np.maximum(np.asarray(measured_runtime_s, dtype=np.float64), MIN_RUNTIME_S)
        self.average.update([t.kind for t in tasks], np.log(measured))


class Learner:
    """Predicts each task's runtime (p50, p90, mean) and priority; learns from completions.

    Example:
        >>> learner = Learner()
        >>> predictions = learner.predict([Task("a", kind="logs")])   # the cold-start prior
        >>> learner.observe([Task("a", kind="logs")], np.array([0.2]))
    """

    def __init__(self, *, runtime: RuntimeModel | None = None):
        self.runtime = runtime or RuntimeModel()
        self.priority = PriorityModel(self.runtime.encoder_)
        self.n_observed_ = 0
        self._abs_errors: list[float] = []
        self._covered: list[bool] = []

    def predict(self, tasks: list[Task]) -> Predictions:
        if not tasks:
            empty = np.zeros(0)
            return Predictions(empty, empty, empty, empty)
        runtime = self.runtime.predict(tasks)
        return Predictions(runtime.p50_s, runtime.p90_s, runtime.mean_s,
                           self.priority.predict(tasks))

    def snapshot(self) -> Learner:
        """A copy that predicts exactly as this learner does now, without what only
        learning needs (the refit window of recent tasks): what the schedulers predict with
        locally while learning stays here. It shares nothing with this learner, so it
        never changes when this one learns."""
        with self.predict_only():
            return pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @contextlib.contextmanager
    def predict_only(self) -> Iterator[Learner]:
        """Within the block this learner holds only what predicting needs (its refit window
        set aside), so that serialising it (``ray.put``) ships a snapshot without a copy
        first. It must not learn within the block."""
        window = self.runtime.refit_
        self.runtime.refit_ = RefitWindow(window=window.window, ridge=window.ridge,
                                          steps=window.steps)
        try:
            yield self
        finally:
            self.runtime.refit_ = window

    def observe(self, tasks: list[Task], measured_runtime_s) -> None:
        """Learn from completed tasks and their *measured* runtimes (seconds)."""
        if not tasks:
            return
        measured = np.asarray(measured_runtime_s, dtype=np.float64)
        if measured.shape != (len(tasks),):
            raise ConfigError(f"measured_runtime_s must have shape ({len(tasks)},), "
                              f"got {measured.shape}")
        keep = np.isfinite(measured) & (measured > 0)
        if not keep.all():
            tasks = [t for t, k in zip(tasks, keep) if k]
            measured = measured[keep]
        # p90 coverage from the residuals: measured <= exp(mu + q90) iff residual <= q90,
        # with q90 as it stood before these tasks were learned (no second prediction pass).
        q90 = self.runtime.spread(tasks)[:, 1]
        residuals = self.runtime.observe(tasks, measured)
        self.priority.observe(tasks)
        self._abs_errors.extend(np.abs(residuals).tolist())
        self._covered.extend((residuals <= q90).tolist())
        del self._abs_errors[:-1000], self._covered[:-1000]
        self.n_observed_ += len(tasks)

    def stats(self) -> dict:
        """Tasks seen, recent log-runtime MAE and p90 coverage, drift events, kinds known."""
        recent = self._abs_errors
        return {
            "n_observed": self.n_observed_,
            "recent_mae_log": float(np.mean(recent)) if recent else None,
            "recent_p90_coverage": float(np.mean(self._covered)) if self._covered else None,
            "drift_events": list(self.runtime.drift_events_),
            "kinds": sorted(self.runtime.prior_.values_),
            "numeric_features": sorted(self.runtime.encoder_.numeric_stats_),
            "error_fast_log": self.runtime.error_fast_,
            "error_slow_log": self.runtime.error_slow_,
            "recent_runs": self.runtime.recent_.stats(),
        }

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``learner-<n_observed>-<time>.npz`` and ``.json`` into ``directory``.

        Returns:
            the path of the ``.json`` metadata file (the checkpoint's name).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        runtime_meta, runtime_arrays = self.runtime.get_state()
        priority_meta, priority_arrays = self.priority.regression_.get_state()
        arrays = {f"runtime.{k}": v for k, v in runtime_arrays.items()}
        arrays.update({f"priority.{k}": v for k, v in priority_arrays.items()})
        # Named by creation time first, so that names sort oldest to newest.
        stem = f"{CHECKPOINT_PREFIX}{time.time_ns():020d}-n{self.n_observed_:09d}"
        meta = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "kind": "ray_sched.learner",
                "created_unix_s": time.time(), "n_observed": self.n_observed_,
                "arrays": f"{stem}.npz", "runtime": runtime_meta, "priority": priority_meta,
                "stats": self.stats()}
        array_path = directory / f"{stem}.npz"
        meta_path = directory / f"{stem}.json"
        partial = directory / f".{stem}.partial.npz"
        np.savez(partial, **arrays)
        partial.replace(array_path)
        meta_path.write_text(json.dumps(meta, indent=1, default=_json_default))
        for old in sorted(directory.glob(f"{CHECKPOINT_PREFIX}*.json"))[:-CHECKPOINTS_KEPT]:
            old.with_suffix(".npz").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        return meta_path

    @classmethod
    def load(cls, path: str | Path) -> Learner:
        """Load a checkpoint: a ``.json`` file, or a directory (its latest checkpoint).

        Raises:
            CheckpointError: nothing there, damaged files, or another schema version.
        """
        meta_path = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
        if meta_path is None or not meta_path.is_file():
            raise CheckpointError(f"{path}: no learner checkpoint there")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_path}: not a readable checkpoint ({error})") from error
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        if version != CHECKPOINT_SCHEMA_VERSION:
            raise CheckpointError(f"{meta_path}: checkpoint schema_version {version!r} is not "
                                  f"supported (this ray_sched reads version "
                                  f"{CHECKPOINT_SCHEMA_VERSION})")
        try:
            array_path = meta_path.parent / meta["arrays"]
            with np.load(array_path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            runtime = RuntimeModel.from_state(meta["runtime"], _section(arrays, "runtime"))
            learner = cls(runtime=runtime)
            learner.priority.regression_ = OnlineRegressor.from_state(
                meta["priority"], _section(arrays, "priority"),
                learning_rate=runtime.learning_rate)
            learner.n_observed_ = int(meta["n_observed"])
        except (OSError, ValueError, KeyError, TypeError, EOFError,
                zipfile.BadZipFile) as error:
            raise CheckpointError(f"{meta_path}: damaged checkpoint "
                                  f"({type(error).__name__}: {error})") from error
        return learner


def _section(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest ``learner-*.json`` in a directory (the last one written), or None."""
    candidates = sorted(Path(directory).glob(f"{CHECKPOINT_PREFIX}*.json"))
    return candidates[-1] if candidates else None


def describe_checkpoint(path: str | Path) -> str:
    """A human summary of a checkpoint (for ``ray-sched model show``)."""
    learner = Learner.load(path)
    meta_path = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
    stats = learner.stats()
    runtime = learner.runtime
    lines = [f"checkpoint: {meta_path}",
             f"schema version: {CHECKPOINT_SCHEMA_VERSION}",
             f"tasks observed: {learner.n_observed_}",
             f"runtime model: per-kind prior + SGD (huber) on {runtime.n_buckets} hashed "
             f"features; regression trained on {runtime.regression_.n_seen_} tasks",
             f"drift events (at task): {stats['drift_events'] or 'none'}",
             f"error (|log residual|): fast {stats['error_fast_log']:.3f}, "
             f"slow {stats['error_slow_log']:.3f}",
             "kinds (tasks seen, prior median runtime):"]
    for kind in stats["kinds"]:
        count, mean_log = runtime.prior_.values_[kind]
        lines.append(f"  {kind}: {int(count)}, {math.exp(mean_log):.4f} s")
    lines.append("numeric features: " + (", ".join(stats["numeric_features"]) or "none"))
    lines.append("recent runs (keys remembered, weight toward them, tasks it was learnt on):")
    for level, entry in stats["recent_runs"].items():
        lines.append(f"  same {level}: {entry['keys']}, {entry['weight']:.2f}, {entry['tasks']}")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ObservationBuffer:
    """Holds completions for a :class:`Learner` until a mini-batch is due (MIN_OBSERVE_BATCH
    tasks, or the oldest MAX_OBSERVE_DELAY_S old on ``clock``; at once while the learner
    has seen fewer than OBSERVE_AT_ONCE_UNTIL tasks). The Learner actor and the
    simulator learn through it, so that both fit the same batches.

    Args:
        learner: the learner to feed.
        clock: returns the current time in seconds (wall or virtual).
    """

    def __init__(self, learner: Learner, clock):
        self.learner = learner
        self.clock = clock
        self._tasks: list[Task] = []
        self._runtimes: list[float] = []
        self._since = 0.0

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, tasks: list[Task], measured_runtime_s) -> int:
        """Buffer completions; learns them when due. Returns how many were learnt now."""
        if not self._tasks:
            self._since = self.clock()
        self._tasks.extend(tasks)
        self._runtimes.extend(np.asarray(measured_runtime_s, dtype=np.float64).tolist())
        if (len(self._tasks) >= MIN_OBSERVE_BATCH
                or self.learner.n_observed_ < OBSERVE_AT_ONCE_UNTIL):
            return self.flush()
        return self.flush_if_stale()

    def flush_if_stale(self) -> int:
        """Learn what waits if the oldest has waited MAX_OBSERVE_DELAY_S (before a predict)."""
        if self._tasks and self.clock() - self._since >= MAX_OBSERVE_DELAY_S:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Learn everything waiting now; returns how many tasks."""
        tasks, runtimes = self._tasks, self._runtimes
        if not tasks:
            return 0
        self._tasks, self._runtimes = [], []
        self.learner.observe(tasks, np.asarray(runtimes, dtype=np.float64))
        return len(tasks)


class SnapshotSchedule:
    """When the learner publishes a new snapshot of itself to the schedulers.

    Young models change most and steer the first bursts, so a snapshot follows every
    ``min_tasks`` new observations at first; later only once the model has seen
    ``growth`` more tasks than at the last snapshot (publishing, shipping and loading a
    snapshot cost a few milliseconds each, so their number grows with the log of the
    tasks seen), or when ``max_age_s`` has passed with anything new (drift is followed
    within that time). Never twice within ``min_gap_s``, except for a novelty: the first
    observations of a kind the last snapshot had not seen (it predicts that kind from the
    prior until then, and kinds are few).

    Args:
        min_tasks: new observations that always make a snapshot due (>= 1).
        growth: share of the tasks seen that makes one due (> 0).
        max_age_s: seconds after which any new observation makes one due (> 0).
        min_gap_s: seconds between two snapshots at least (>= 0).
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(self, *, min_tasks: int = 16, growth: float = 0.25, max_age_s: float = 5.0,
                 min_gap_s: float = 0.2, clock=time.monotonic):
        try:
            self.min_tasks = int(check_range("min_tasks", min_tasks, 1))
            self.growth = check_range("growth", growth, 0, low_open=True)
            self.max_age_s = check_range("max_age_s", max_age_s, 0, low_open=True)
            self.min_gap_s = check_range("min_gap_s", min_gap_s, 0)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        self.clock = clock
        self.published_at_ = -math.inf
        self.published_n_ = 0
        self.version_ = 0

    def due(self, n_observed: int, *, novel: bool = False) -> bool:
        """Whether a learner that has seen ``n_observed`` tasks should publish now;
        ``novel``: it has seen something the last snapshot had not (a new kind)."""
        new = n_observed - self.published_n_
        if new <= 0:
            return False
        if novel:
            return True
        age = self.clock() - self.published_at_
        if age < self.min_gap_s:
            return False
        return (new >= max(self.min_tasks, self.growth * self.published_n_)
                or age >= self.max_age_s)

    def published(self, n_observed: int) -> int:
        """Record a snapshot of a learner that had seen ``n_observed`` tasks; returns its
        version (1, 2, ...)."""
        self.published_at_ = self.clock()
        self.published_n_ = n_observed
        self.version_ += 1
        return self.version_
