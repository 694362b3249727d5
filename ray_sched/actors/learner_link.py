"""The global scheduler's side of the learner: predictions from its latest snapshot, in
this process, and completions sent to it in batches.

Learning stays central and batched (one Learner actor); predicting is a local call on
the newest snapshot the learner handed back (a small, versioned copy of its model), so
no task waits for a round trip. The heuristic fallback predicts until a first snapshot
has arrived, and whenever the learner cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ray_sched.learner import FallbackPredictor
from ray_sched.task import Task

log = logging.getLogger(__name__)

#: How long the first snapshot of the learner may take at start (it loads a checkpoint).
SNAPSHOT_START_TIMEOUT_S = 60.0
#: Completions wait this long to be sent to the learner together: one call per batch costs
#: the same few hundred microseconds as one per task, and a snapshot that learnt them
#: comes back at most every couple of seconds anyway (SnapshotSchedule).
OBSERVE_EVERY_S = 0.25
#: Until the learner has been sent this many completions, each batch goes at once: early
#: predictions steer the first bursts most.
OBSERVE_AT_ONCE_UNTIL = 256
#: Completions the learner has and the snapshot in use has not seen (the last ones before
#: a lull, which no later completion will bring) are fetched in a snapshot this long after
#: they were sent.
CATCH_UP_AFTER_S = 5.0


class LearnerLink:
    """Predict with the learner's latest snapshot; feed it completions in batches.

    Args:
        learner: the Learner actor's handle.
        on_model: called with the ObjectRef of every newer snapshot taken (the local
            schedulers re-predict their queues with it); None: nobody else wants it.
        track: runs a coroutine in the background (the actor keeps a reference to it).
    """

    def __init__(self, learner, on_model: Callable | None, track: Callable):
        self.learner = learner
        self._on_model = on_model
        self._track = track
        self.fallback = FallbackPredictor()
        self.n_fallback_batches = 0
        self.model = None
        self.model_key: tuple[str, int] | None = None
        self.recent_error: float | None = None
        self._to_learn: tuple[list[Task], list[float]] = ([], [])
        self._learn_pending = False
        self._catch_up: asyncio.TimerHandle | None = None
        self.n_sent = 0
        self._model_covers = 0  # of the completions sent, how many the snapshot in use has

    def predict(self, tasks: list[Task]) -> None:
        """Predictions from the latest snapshot, applied to ``tasks``; the heuristic
        fallback only until a first snapshot has arrived."""
        if self.model is not None:
            predictions = self.model.predict(tasks)
        else:
            self.n_fallback_batches += 1
            if self.n_fallback_batches == 1 or self.n_fallback_batches % 100 == 0:
                log.warning("no snapshot of the learner yet; heuristic fallback in use")
            predictions = self.fallback.predict(tasks)
        predictions.apply(tasks)

    def version(self) -> dict | None:
        """The snapshot predictions are made with: its version and the completions it had
        learnt from (None before the first)."""
        if self.model is None:
            return None
        return {"version": self.model_key[1], "n_observed": self.model.n_observed_}

    async def first_snapshot(self) -> None:
        """Ask the learner for a snapshot now (at start, after a restart of the actor);
        the fallback predicts until one arrives."""
        await self._fetch_snapshot(0, "no snapshot of the learner (%s); heuristic fallback "
                                      "in use", logging.WARNING)

    async def _fetch_snapshot(self, covers: int, message: str, level: int) -> None:
        """Ask the learner for a snapshot of itself as it is now and take it; a learner
        that cannot answer (dead, restarting) is logged at ``level`` and left alone."""
        try:
            await self._take(await asyncio.wait_for(self.learner.snapshot.remote(),
                                                    SNAPSHOT_START_TIMEOUT_S), covers)
        except Exception as error:  # noqa: BLE001 - predictions go on with what there is
            log.log(level, message, error)

    async def _take(self, update, covers: int = 0) -> None:
        """A new snapshot of the learner: predict with it, and hand it on."""
        if update is None:
            return
        self.recent_error = update.recent_error
        key = (update.incarnation, update.version)
        if self.model_key is not None and key[0] == self.model_key[0] \
                and key[1] <= self.model_key[1]:
            return  # an older snapshot than the one in use, answered late
        self.model = await update.model
        self.model_key = key
        self._model_covers = max(self._model_covers, covers)
        if self._on_model is not None:
            self._on_model(update.model)

    def observe(self, tasks: list[Task], runtimes_s: list[float]) -> None:
        """Completed tasks (without payloads) and their measured runtimes, for the learner:
        sent together with others within :data:`OBSERVE_EVERY_S`."""
        learnt, measured = self._to_learn
        learnt.extend(tasks)
        measured.extend(runtimes_s)
        if learnt and not self._learn_pending:
            self._learn_pending = True
            delay = 0.0 if self.n_sent < OBSERVE_AT_ONCE_UNTIL else OBSERVE_EVERY_S
            asyncio.get_running_loop().call_later(delay, self._send)

    def _send(self) -> None:
        """One call with every completion gathered since the last; a snapshot that is due
        comes back as its answer."""
        self._learn_pending = False
        (tasks, measured), self._to_learn = self._to_learn, ([], [])
        if not tasks:
            return
        self.fallback.observe(tasks, measured)
        self.n_sent += len(tasks)
        self._track(self._await_update(self.learner.observe.remote(tasks, measured),
                                       self.n_sent))

    async def _await_update(self, answer, covers: int) -> None:
        try:
            await self._take(await answer, covers)
        except Exception as error:  # noqa: BLE001 - a dead or restarting learner: predictions go on
            log.debug("learner observe failed: %s", error)
        if self._catch_up is None:
            self._catch_up = asyncio.get_running_loop().call_later(
                CATCH_UP_AFTER_S, lambda: self._track(self._catch_up_model()))

    async def _catch_up_model(self) -> None:
        """A snapshot of the learner if the one in use lacks completions sent to it."""
        self._catch_up = None
        if self._model_covers < self.n_sent:
            await self._fetch_snapshot(self.n_sent, "learner snapshot failed: %s",
                                       logging.DEBUG)

    def close(self) -> None:
        """No more catching up (the scheduler shuts down)."""
        if self._catch_up is not None:
            self._catch_up.cancel()
