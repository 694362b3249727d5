"""Online models: runtime (with its spread) and priority, learned from completed tasks.

Vocabulary (after river): ``observe(tasks, ...)`` learns from a batch, ``predict(tasks)``
predicts a batch. Learned state ends in ``_``. Every model saves to numpy arrays plus
JSON metadata (never a pickle) and loads back to identical predictions.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import SGDRegressor

from ray_sched.learner.features import DEFAULT_BUCKETS, FeatureEncoder
from ray_sched.params import check_range
from ray_sched.task import MAX_PRIORITY, Task

#: Dask's guess for a task prefix it has never seen; ours too, until a kind is observed.
DEFAULT_RUNTIME_S = 0.5
#: Runtimes are learned in log space; anything shorter is timer noise.
MIN_RUNTIME_S = 1e-4
#: Weight of a new observation in the per-kind moving average of log runtime (the prior).
PRIOR_ALPHA = 0.05
#: Evidence (tasks of a kind) at which the regression's weight is halfway from
#: UNSEEN_KIND_WEIGHT to 1.
BLEND_TASKS = 20
#: Weight of the regression for a kind never seen (its tenant and features still inform).
UNSEEN_KIND_WEIGHT = 1.0
#: SGD step size: stable for ~10 standardised inputs (needs eta < 2 / |x|^2 ~ 0.2).
LEARNING_RATE = 0.02
#: Huber threshold in log space: residuals beyond e^1 = 2.7x count linearly, so heavy-tail
#: outliers do not drag the fit.
HUBER_EPSILON = 1.0
#: Residuals kept per kind for the online quantiles (and globally, 4x as many).
RESIDUAL_WINDOW = 256
#: Quantile spread assumed before any residual is seen (log space): p90 = 2.7x p50.
DEFAULT_P90_SPREAD = 1.0
#: Drift: the fast error average jumping this far above the slow one ...
DRIFT_RATIO = 1.4
#: ... with these weights of a new absolute residual ...
ERROR_ALPHA_FAST, ERROR_ALPHA_SLOW = 0.1, 0.01
#: ... boosts adaptation (prior weight x PRIOR_BOOST, step x RATE_BOOST) for DRIFT_BOOST_TASKS.
PRIOR_BOOST, RATE_BOOST, DRIFT_BOOST_TASKS = 4.0, 3.0, 150
#: No drift is declared before this many observations (the slow average must settle).
DRIFT_MIN_TASKS = 100
#: For drift tracking, an absolute residual counts at most this many times the long-run
#: error: one outlier (a 30x slow task) must not look like a shift of the whole workload.
DRIFT_ERROR_CLIP = 3.0
#: The fast average must stay above DRIFT_RATIO x the slow one for this many tasks in a row.
DRIFT_PERSISTENCE = 8


class NotFittedError(ValueError, AttributeError):
    """A model used before it has seen any data."""


def _sgd(eta0: float, loss: str) -> SGDRegressor:
    # shuffle=False: the same batches give the same model (and a restored checkpoint keeps
    # learning in step with the original); batches arrive in completion order anyway.
    return SGDRegressor(loss=loss, epsilon=HUBER_EPSILON, penalty="l2", alpha=1e-6,
                        learning_rate="constant", eta0=eta0, fit_intercept=True,
                        shuffle=False)


class OnlineRegressor:
    """A linear model trained by ``partial_fit`` on mini-batches (scikit-learn SGD).

    Args:
        learning_rate: the constant SGD step size.
        loss: ``"huber"`` (robust to heavy tails; for log runtimes) or ``"squared_error"``.

    Learned state: ``coef_`` (n_buckets,), ``intercept_``, ``n_seen_``.
    """

    def __init__(self, *, learning_rate: float = LEARNING_RATE, loss: str = "huber"):
        if loss not in ("huber", "squared_error"):
            raise ValueError(f"loss must be 'huber' or 'squared_error', got {loss!r}")
        self.learning_rate = learning_rate
        self.loss = loss
        self.n_seen_ = 0
        self._sgd: SGDRegressor | None = None

    @property
    def fitted(self) -> bool:
        return self._sgd is not None

    def observe(self, matrix, targets: np.ndarray, *, learning_rate: float | None = None) -> None:
        if self._sgd is None:
            self._sgd = _sgd(self.learning_rate, self.loss)
        self._sgd.eta0 = learning_rate or self.learning_rate
        self._sgd.partial_fit(matrix, targets)
        self.n_seen_ += len(targets)

    def predict(self, matrix) -> np.ndarray:
        if self._sgd is None:
            raise NotFittedError("this OnlineRegressor has not observed any task yet")
        return matrix @ self._sgd.coef_ + self._sgd.intercept_[0]

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._sgd is None:
            return {"fitted": False, "n_seen": 0, "loss": self.loss}, {}
        return ({"fitted": True, "n_seen": self.n_seen_, "t": float(self._sgd.t_),
                 "loss": self.loss},
                {"coef": self._sgd.coef_.copy(), "intercept": self._sgd.intercept_.copy()})

    @classmethod
    def from_state(cls, meta: dict, arrays: dict, *, learning_rate: float) -> OnlineRegressor:
        model = cls(learning_rate=learning_rate, loss=meta.get("loss", "huber"))
        if meta.get("fitted"):
            sgd = _sgd(learning_rate, model.loss)
            sgd.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
            sgd.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
            sgd.t_ = float(meta["t"])
            sgd.n_features_in_ = sgd.coef_.shape[0]
            model._sgd = sgd
            model.n_seen_ = int(meta["n_seen"])
        return model


class KeyedAverage:
    """A moving average of a value per key (``kind``), plus one over all keys."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.values_: dict[str, list[float]] = {}   # key -> [count, mean]
        self.overall_: list[float] = [0.0, 0.0]

    def update(self, keys: list[str], values: np.ndarray, alpha: float | None = None) -> None:
        alpha = alpha or self.alpha
        for key, value in zip(keys, values.tolist()):
            for entry in (self.values_.setdefault(key, [0.0, 0.0]), self.overall_):
                entry[0] += 1
                rate = max(alpha, 1.0 / entry[0])
                entry[1] += rate * (value - entry[1])

    def lookup(self, keys: list[str], default: float) -> tuple[np.ndarray, np.ndarray]:
        """(means, counts); unseen keys get the overall mean (or ``default``) and count 0."""
        fallback = self.overall_[1] if self.overall_[0] else default
        means = np.empty(len(keys))
        counts = np.empty(len(keys))
        for i, key in enumerate(keys):
            entry = self.values_.get(key)
            means[i], counts[i] = (entry[1], entry[0]) if entry else (fallback, 0.0)
        return means, counts


class ResidualQuantiles:
    """Recent residuals (log measured - log predicted) per kind and overall; their quantiles."""

    def __init__(self, window: int = RESIDUAL_WINDOW):
        self.window = window
        self.per_key_: dict[str, deque] = {}
        self.overall_: deque = deque(maxlen=4 * window)
        self._cache: dict[str | None, tuple[float, float, float]] = {}

    def add(self, keys: list[str], residuals: np.ndarray) -> None:
        for key, value in zip(keys, residuals.tolist()):
            self.per_key_.setdefault(key, deque(maxlen=self.window)).append(value)
            self.overall_.append(value)
        self._cache.clear()

    def forget(self, keep: int) -> None:
        """Keep only the newest ``keep`` residuals of each window (after a drift)."""
        for key, values in self.per_key_.items():
            self.per_key_[key] = deque(list(values)[-keep:], maxlen=self.window)
        self.overall_ = deque(list(self.overall_)[-keep * 4:], maxlen=4 * self.window)
        self._cache.clear()

    def _stats(self, key: str | None) -> tuple[float, float, float]:
        """(q50, q90, log mean of exp(residual)) for a key, from the overall window when the
        key has fewer than 20 residuals."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        values = self.per_key_.get(key) if key is not None else None
        if values is None or len(values) < 20:
            values = self.overall_ if key is not None else self.overall_
        if len(values) < 20:
            result = (0.0, DEFAULT_P90_SPREAD, DEFAULT_P90_SPREAD ** 2 / 2.6)
        else:
            array = np.fromiter(values, dtype=np.float64)
            q50, q90 = np.quantile(array, [0.5, 0.9])
            result = (float(q50), float(q90), float(np.log(np.mean(np.exp(array)))))
        self._cache[key] = result
        return result

    def lookup(self, keys: list[str]) -> np.ndarray:
        """Array of shape (n, 3): q50, q90 and log-mean correction per key."""
        return np.array([self._stats(k) for k in keys]).reshape(len(keys), 3)


@dataclass
class RuntimePrediction:
    """Predicted runtimes, arrays of shape (n_tasks,), seconds (``log_mu`` in log seconds)."""

    log_mu: np.ndarray
    p50_s: np.ndarray
    p90_s: np.ndarray
    mean_s: np.ndarray


class RuntimeModel:
    """Online runtime prediction with a per-kind cold-start prior and residual quantiles.

    Prediction in log space: ``mu = prior[kind] + w * regression(x)``, with the per-kind
    moving average of log runtime as the prior (the way Dask keeps one per key prefix)
    and ``w = n_kind / (n_kind + blend_tasks)``; the regression learns what the features
    add *within* a kind. ``p50 = exp(mu + q50)`` and ``p90 = exp(mu + q90)`` from online
    quantiles of recent residuals. Drift (a jump of the recent error over the long-run
    error) boosts the prior's and the regression's step sizes for a while and forgets
    old residuals.

    Args:
        n_buckets: width of the hashed feature space.
        learning_rate: SGD step size.
        prior_alpha: weight of a new observation in the per-kind prior.
        blend_tasks: evidence at which prior and regression weigh the same.
        default_runtime_s: prediction for a kind (and a world) never seen.
    """

    def __init__(self, *, n_buckets: int = DEFAULT_BUCKETS, learning_rate: float = LEARNING_RATE,
                 prior_alpha: float = PRIOR_ALPHA, blend_tasks: float = BLEND_TASKS,
                 default_runtime_s: float = DEFAULT_RUNTIME_S):
        check_range("n_buckets", n_buckets, 16)
        check_range("learning_rate", learning_rate, 0.0, 1.0, low_open=True)
        check_range("prior_alpha", prior_alpha, 0.0, 1.0, low_open=True)
        check_range("blend_tasks", blend_tasks, 0.0)
        check_range("default_runtime_s", default_runtime_s, 0.0, low_open=True)
        self.n_buckets = n_buckets
        self.learning_rate = learning_rate
        self.prior_alpha = prior_alpha
        self.blend_tasks = blend_tasks
        self.default_runtime_s = default_runtime_s
        self.encoder_ = FeatureEncoder(n_buckets=n_buckets)
        self.prior_ = KeyedAverage(prior_alpha)
        self.regression_ = OnlineRegressor(learning_rate=learning_rate)
        self.residuals_ = ResidualQuantiles()
        self.n_seen_ = 0
        self.error_fast_ = 0.0
        self.error_slow_ = 0.0
        self.boost_until_ = 0
        self.high_streak_ = 0
        self.drift_events_: list[int] = []

    def _log_mu(self, tasks: list[Task], matrix=None) -> np.ndarray:
        kinds = [t.kind for t in tasks]
        prior, counts = self.prior_.lookup(kinds, math.log(self.default_runtime_s))
        if not self.regression_.fitted:
            return prior
        if matrix is None:
            matrix = self.encoder_.transform(tasks)
        # Unseen kinds (count 0) still get the regression: their tenant and features speak.
        weight = (counts + self.blend_tasks * UNSEEN_KIND_WEIGHT) / (counts + self.blend_tasks)
        return prior + weight * self.regression_.predict(matrix)

    def predict(self, tasks: list[Task]) -> RuntimePrediction:
        """Predict runtimes for a batch (works before any observation: the default prior)."""
        log_mu = self._log_mu(tasks)
        spread = self.residuals_.lookup([t.kind for t in tasks])
        return RuntimePrediction(log_mu=log_mu, p50_s=np.exp(log_mu + spread[:, 0]),
                                 p90_s=np.exp(log_mu + spread[:, 1]),
                                 mean_s=np.exp(log_mu + spread[:, 2]))

    def observe(self, tasks: list[Task], measured_runtime_s: np.ndarray) -> np.ndarray:
        """Learn from completed tasks; returns the prequential residuals (log measured minus
        log predicted *before* learning from them), shape (n_tasks,)."""
        if not tasks:
            return np.zeros(0)
        y = np.log(np.maximum(np.asarray(measured_runtime_s, dtype=np.float64), MIN_RUNTIME_S))
        kinds = [t.kind for t in tasks]
        residuals = y - self._log_mu(tasks)
        self._track_error(residuals)
        boosted = self.n_seen_ < self.boost_until_
        self.residuals_.add(kinds, residuals)
        prior, _ = self.prior_.lookup(kinds, math.log(self.default_runtime_s))
        self.encoder_.update(tasks)
        matrix = self.encoder_.transform(tasks)
        self.regression_.observe(matrix, y - prior, learning_rate=self.learning_rate * (
            RATE_BOOST if boosted else 1.0))
        self.prior_.update(kinds, y, alpha=self.prior_alpha * (PRIOR_BOOST if boosted else 1.0))
        self.n_seen_ += len(tasks)
        return residuals

    def _track_error(self, residuals: np.ndarray) -> None:
        """Fast and slow averages of the (clipped) absolute error; a drift is the fast one
        staying DRIFT_RATIO above the slow one for DRIFT_PERSISTENCE tasks in a row."""
        seen = self.n_seen_
        for error in np.abs(residuals).tolist():
            if self.error_slow_ == 0.0:
                self.error_fast_ = self.error_slow_ = error
            error = min(error, DRIFT_ERROR_CLIP * self.error_slow_)
            self.error_fast_ += ERROR_ALPHA_FAST * (error - self.error_fast_)
            self.error_slow_ += ERROR_ALPHA_SLOW * (error - self.error_slow_)
            seen += 1
            high = self.error_fast_ > DRIFT_RATIO * self.error_slow_
            self.high_streak_ = self.high_streak_ + 1 if high else 0
            if (seen >= DRIFT_MIN_TASKS and seen >= self.boost_until_
                    and self.high_streak_ >= DRIFT_PERSISTENCE):
                self.drift_events_.append(seen)
                self.boost_until_ = seen + DRIFT_BOOST_TASKS
                self.high_streak_ = 0
                self.residuals_.forget(keep=32)

    # -- persistence -----------------------------------------------------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        encoder_meta, encoder_arrays = self.encoder_.get_state()
        regression_meta, regression_arrays = self.regression_.get_state()
        kinds = sorted(self.prior_.values_)
        residual_keys = sorted(self.residuals_.per_key_)
        meta = {
            "params": {"n_buckets": self.n_buckets, "learning_rate": self.learning_rate,
                       "prior_alpha": self.prior_alpha, "blend_tasks": self.blend_tasks,
                       "default_runtime_s": self.default_runtime_s},
            "encoder": encoder_meta, "regression": regression_meta, "prior_kinds": kinds,
            "prior_overall": self.prior_.overall_, "residual_keys": residual_keys,
            "residual_lengths": [len(self.residuals_.per_key_[k]) for k in residual_keys],
            "n_seen": self.n_seen_, "error_fast": self.error_fast_,
            "error_slow": self.error_slow_, "boost_until": self.boost_until_,
            "high_streak": self.high_streak_,
            "drift_events": self.drift_events_,
        }
        arrays = {f"encoder.{k}": v for k, v in encoder_arrays.items()}
        arrays.update({f"regression.{k}": v for k, v in regression_arrays.items()})
        arrays["prior"] = np.array([self.prior_.values_[k] for k in kinds],
                                   dtype=np.float64).reshape(len(kinds), 2)
        arrays["residuals"] = np.array(
            [v for k in residual_keys for v in self.residuals_.per_key_[k]], dtype=np.float64)
        arrays["residuals_overall"] = np.array(list(self.residuals_.overall_), dtype=np.float64)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> RuntimeModel:
        model = cls(**meta["params"])
        model.encoder_ = FeatureEncoder.from_state(
            meta["encoder"], {k.split(".", 1)[1]: v for k, v in arrays.items()
                              if k.startswith("encoder.")})
        model.regression_ = OnlineRegressor.from_state(
            meta["regression"], {k.split(".", 1)[1]: v for k, v in arrays.items()
                                 if k.startswith("regression.")},
            learning_rate=model.learning_rate)
        model.prior_.values_ = {k: [float(c), float(m)]
                                for k, (c, m) in zip(meta["prior_kinds"], arrays["prior"])}
        model.prior_.overall_ = [float(v) for v in meta["prior_overall"]]
        offset = 0
        for key, length in zip(meta["residual_keys"], meta["residual_lengths"]):
            values = arrays["residuals"][offset: offset + length].tolist()
            model.residuals_.per_key_[key] = deque(values, maxlen=model.residuals_.window)
            offset += length
        model.residuals_.overall_.extend(arrays["residuals_overall"].tolist())
        model.n_seen_ = int(meta["n_seen"])
        model.error_fast_, model.error_slow_ = float(meta["error_fast"]), float(meta["error_slow"])
        model.boost_until_ = int(meta["boost_until"])
        model.high_streak_ = int(meta.get("high_streak", 0))
        model.drift_events_ = list(meta["drift_events"])
        return model


class PriorityModel:
    """Predicts a priority for tasks that declare none, from tasks with similar features
    that did (an online regression on the same hashed features, rounded to 0..9)."""

    def __init__(self, encoder: FeatureEncoder, *, learning_rate: float = LEARNING_RATE):
        self.encoder = encoder
        # Squared loss: priorities are bounded 0..9, and Huber's threshold (meant for log
        # seconds) would clip every step to one priority level.
        self.regression_ = OnlineRegressor(learning_rate=learning_rate, loss="squared_error")

    def observe(self, tasks: list[Task]) -> None:
        declared = [t for t in tasks if t.priority_declared]
        if declared:
            self.regression_.observe(self.encoder.transform(declared),
                                     np.array([t.priority for t in declared], dtype=np.float64))

    def predict(self, tasks: list[Task]) -> np.ndarray:
        """Declared priorities as they are; the others predicted (0 before any data)."""
        result = np.array([t.priority for t in tasks], dtype=np.float64)
        undeclared = [i for i, t in enumerate(tasks) if not t.priority_declared]
        if undeclared and self.regression_.fitted:
            guess = self.regression_.predict(self.encoder.transform([tasks[i] for i in undeclared]))
            result[undeclared] = np.clip(np.round(guess), 0, MAX_PRIORITY)
        return result
