"""The Learner actor: a thin Ray wrapper around :class:`ray_sched.learner.Learner` that
loads its latest checkpoint at start, writes one every ``checkpoint_every`` observations
and at shutdown, and publishes snapshots of itself (:class:`ModelUpdate`) that the
schedulers predict with locally: learning is central and batched, predicting costs no
round trip."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from ray_sched.control.priority import set_process_nice
from ray_sched.learner import Learner, Predictions, SnapshotSchedule, latest_checkpoint
from ray_sched.learner.learner import DEFAULT_CHECKPOINT_EVERY, ObservationBuffer
from ray_sched.monitor.cpu import process_cpu_s
from ray_sched.task import Task

log = logging.getLogger(__name__)


@dataclass
class ModelUpdate:
    """A published snapshot of the learner.

    Attributes:
        version: 1, 2, ... per learner actor incarnation (a restarted learner starts again:
            compare ``incarnation`` too).
        incarnation: this learner actor's id.
        n_observed: tasks the snapshot has learnt from.
        model: ObjectRef of the :class:`ray_sched.learner.Learner` snapshot (fetched once
            by each scheduler that uses it).
        recent_error: recent mean |log error| of the runtime model (None before any).
    """

    version: int
    incarnation: str
    n_observed: int
    model: ray.ObjectRef
    recent_error: float | None


@ray.remote(num_cpus=0, max_restarts=-1)
class LearnerActor:
    def __init__(self, model_dir: str | None = None, load: str | None = "latest",
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, control_nice: int = 0):
        self.priority = set_process_nice(control_nice)
        # scikit-learn (~1 s to import) now, while the scheduler waits for this actor to
        # be up, not at the first completion, while predictions would wait behind it.
        import sklearn.linear_model  # noqa: F401

        self.model_dir = Path(model_dir) if model_dir else None
        self.checkpoint_every = checkpoint_every
        self.loaded_from: str | None = None
        source = None
        if ray.get_runtime_context().was_current_actor_reconstructed:
            load = "latest"  # a restart resumes from the last checkpoint, even after --fresh
        if load == "latest" and self.model_dir is not None and self.model_dir.is_dir():
            source = latest_checkpoint(self.model_dir)
        elif load not in (None, "latest"):
            source = Path(load)
        self.learner = Learner.load(source) if source is not None else Learner()
        self.loaded_from = str(source) if source is not None else None
        self._since_checkpoint = 0
        self.last_checkpoint: str | None = None
        self._waiting = ObservationBuffer(self.learner, time.monotonic)
        self._schedule = SnapshotSchedule()
        self._incarnation = uuid.uuid4().hex
        # Kinds observed, and those the latest snapshot had observed: a new kind makes a
        # snapshot due at once (the schedulers predict it from the prior until then).
        self._kinds: set[str] = set()
        self._kinds_published: set[str] = set()

    def info(self) -> dict:
        self._learn_waiting()
        return {"loaded_from": self.loaded_from, "n_observed": self.learner.n_observed_,
                "last_checkpoint": self.last_checkpoint, "priority": self.priority}

    def predict(self, tasks: list[Task]) -> Predictions:
        self._learnt(self._waiting.flush_if_stale())
        return self.learner.predict(tasks)

    def observe(self, tasks: list[Task], measured_runtime_s: list[float]
                ) -> ModelUpdate | None:
        """Completions, learnt in mini-batches (:class:`ObservationBuffer`); returns a new
        snapshot when one is due (:class:`SnapshotSchedule`), else None."""
        self._kinds.update(task.kind for task in tasks)
        self._learnt(self._waiting.add(tasks, measured_runtime_s))
        novel = len(self._kinds) > len(self._kinds_published)
        if self._schedule.due(self.learner.n_observed_ + len(self._waiting), novel=novel):
            return self.snapshot()
        return None

    def snapshot(self) -> ModelUpdate:
        """Publish a snapshot of the model as it is now (what has been received is learnt
        first)."""
        self._learn_waiting()
        self._kinds_published = set(self._kinds)
        with self.learner.predict_only():
            model = ray.put(self.learner)
        version = self._schedule.published(self.learner.n_observed_)
        return ModelUpdate(version, self._incarnation, self.learner.n_observed_, model,
                           self.recent_error())

    def _learn_waiting(self) -> None:
        self._learnt(self._waiting.flush())

    def _learnt(self, count: int) -> None:
        self._since_checkpoint += count
        if (count and self.model_dir is not None
                and self._since_checkpoint >= self.checkpoint_every):
            self.checkpoint()

    def checkpoint(self) -> str | None:
        self._since_checkpoint += self._waiting.flush()  # into this checkpoint, not another
        if self.model_dir is None:
            return None
        self.last_checkpoint = str(self.learner.save(self.model_dir))
        self._since_checkpoint = 0
        return self.last_checkpoint

    def cpu_seconds(self) -> float:
        """This actor's process CPU seconds so far (the control plane's cost)."""
        return process_cpu_s()

    def recent_error(self) -> float | None:
        """Recent mean |log error| of the runtime model (the monitor's once-a-second read)."""
        errors = self.learner._abs_errors
        return float(np.mean(errors)) if errors else None

    def stats(self) -> dict:
        self._learn_waiting()
        return self.learner.stats()

    def time_predict(self, tasks: list[Task], repeats: int = 20) -> float:
        """Median milliseconds of one ``predict`` call on ``tasks``, inside this actor."""
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.learner.predict(tasks)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000.0)
