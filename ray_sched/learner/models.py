"""Online models: runtime (with its spread) and priority, learned from completed tasks.

Vocabulary (after river): ``observe(tasks, ...)`` learns from a batch, ``predict(tasks)``
predicts a batch. Learned state ends in ``_``. Every model saves to numpy arrays plus
JSON metadata (never a pickle) and loads back to identical predictions.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ray_sched.learner.features import DEFAULT_BUCKETS, FeatureEncoder, _as_float
from ray_sched.params import check_range
from ray_sched.task import MAX_PRIORITY, Task

if TYPE_CHECKING:
    from sklearn.linear_model import SGDRegressor

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
#: Recent runs: the last this many log runtimes of "the same task again" (same kind, tenant,
#: region, cpu and feature values), and of the same kind and tenant, predict the next one
#: (Tsafrir et al., 2007: the mean of a user's last two jobs predicts HPC runtimes well; on
#: 6 windows of the NASA iPSC log, with every job learnt as soon as it could have
#: finished, it errs by 0.55-1.0 in log, against 0.52-1.15 for the base model).
RECENT_DEPTH = 2
#: Keys remembered per level, least recently seen forgotten first (bounds memory on
#: endless unique tasks, where the exact level never repeats anyway).
RECENT_KEYS_MAX = 10_000
#: Weight of a new task in the running moments that set how far each level of recent runs
#: moves the model's prediction (about the last 1/alpha tasks count).
RECENT_BLEND_ALPHA = 0.02
#: The moments start as this many pseudo-tasks saying "history adds nothing" (weight 0):
#: a level earns its weight, so that where tasks never repeat nothing changes.
RECENT_BLEND_PRIOR = 4.0
#: Residuals (log) are clipped at this in the blend moments: one 30x outlier must not
#: decide the weight.
RECENT_CLIP = 3.0
#: Refit: SGD with a constant step hovers around the least-squares answer, never on it
#: (0.39 log error on the synthetic scenarios, where the noise floor is about 0.27). So
#: every so often the regression is solved afresh, robustly (Huber loss, by reweighted
#: ridge solves), on the newest REFIT_WINDOW completed tasks; SGD goes on from there.
#: Simulated on 3 seeds each (8 slots, load 0.85): log error 0.39 -> 0.30 on mixed,
#: bursty and tree; ml / oracle mean JCT bursty 1.165x -> 1.066x, drift 1.066x -> 1.045x,
#: mixed 1.073x -> 1.057x, tree 1.013x -> 1.026x; 6 NASA windows 2.10x -> 1.97x.
REFIT_WINDOW = 2000
#: ... first once this many tasks are in the window, then every time the window has
#: taken REFIT_EVERY_SHARE of its length in new tasks (at least REFIT_EVERY_MIN): often
#: while little is known, about every 200 tasks once the window is full.
REFIT_MIN_TASKS = 30
REFIT_EVERY_MIN = 32
REFIT_EVERY_SHARE = 0.1
#: Ridge penalty of the refit (standardised inputs, log-runtime targets), toward the
#: current coefficients: a column seen on a handful of tasks does not take all their
#: error, and right after a drift (the window cut to a few tasks) the refit moves the
#: model only as far as those tasks show (toward zero instead, the drift scenario's
#: error rose on 2 seeds of 10).
REFIT_RIDGE = 1.0
#: Reweighting steps of the Huber fit (each a weighted ridge solve), started from the
#: current model's residuals.
REFIT_STEPS = 3
#: After a drift, only the newest this many tasks stay in the window: the rest describe
#: the workload before it.
REFIT_DRIFT_KEEP = 32
#: Up to this many active columns the refit's normal equations are solved dense; past it
#: by conjugate gradients from the current coefficients.
REFIT_DENSE_MAX = 1000


class NotFittedError(ValueError, AttributeError):
    """A model used before it has seen any data."""


def _sgd(eta0: float, loss: str) -> SGDRegressor:
    # Imported here: scikit-learn takes ~1 s of CPU to import, and only the process that
    # trains (the Learner actor) needs it; the global scheduler, local schedulers and the
    # driver import this module for predictions' types and the fallback.
    from sklearn.linear_model import SGDRegressor

    # shuffle=False: the same batches give the same model (and a restored checkpoint keeps
    # learning in step with the original); batches arrive in completion order anyway.
    return SGDRegressor(loss=loss, epsilon=HUBER_EPSILON, penalty="l2", alpha=1e-6,
                        learning_rate="constant", eta0=eta0, fit_intercept=True,
                        shuffle=False)


@dataclass
class _Linear:
    """The learned state of an SGD regressor without scikit-learn: what a pickled
    :class:`OnlineRegressor` carries, so that the processes that only predict with a
    snapshot (the schedulers) never import scikit-learn."""

    coef_: np.ndarray
    intercept_: np.ndarray
    t_: float


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
        elif isinstance(self._sgd, _Linear):
            self._sgd = self._thawed(self._sgd)
        self._sgd.eta0 = learning_rate or self.learning_rate
        self._sgd.partial_fit(matrix, targets)
        self.n_seen_ += len(targets)

    def predict(self, matrix) -> np.ndarray:
        if self._sgd is None:
            raise NotFittedError("this OnlineRegressor has not observed any task yet")
        return matrix @ self._sgd.coef_ + self._sgd.intercept_[0]

    def coefficients(self) -> tuple[np.ndarray, float]:
        """(coef, intercept): the current linear model."""
        if self._sgd is None:
            raise NotFittedError("this OnlineRegressor has not observed any task yet")
        return self._sgd.coef_, float(self._sgd.intercept_[0])

    def set_coefficients(self, coef: np.ndarray, intercept: float) -> None:
        """Replace the linear model (a refit); SGD goes on from it."""
        if self._sgd is None:
            raise NotFittedError("this OnlineRegressor has not observed any task yet")
        self._sgd.coef_ = np.asarray(coef, dtype=np.float64)
        self._sgd.intercept_ = np.array([float(intercept)])

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
            model._sgd = model._thawed(_Linear(
                np.asarray(arrays["coef"], dtype=np.float64),
                np.asarray(arrays["intercept"], dtype=np.float64), float(meta["t"])))
            model.n_seen_ = int(meta["n_seen"])
        return model

    def _thawed(self, linear: _Linear) -> SGDRegressor:
        """An SGD regressor that goes on learning from ``linear``."""
        sgd = _sgd(self.learning_rate, self.loss)
        sgd.coef_ = np.array(linear.coef_, dtype=np.float64)
        sgd.intercept_ = np.array(linear.intercept_, dtype=np.float64)
        sgd.t_ = float(linear.t_)
        sgd.n_features_in_ = sgd.coef_.shape[0]
        return sgd

    def __getstate__(self) -> dict:
        # Pickled (a snapshot shipped to the schedulers, a Ray argument) as arrays: the
        # receiver predicts without importing scikit-learn, and learns again (thawed) only
        # if it observes.
        state = self.__dict__.copy()
        sgd = state["_sgd"]
        if sgd is not None and not isinstance(sgd, _Linear):
            state["_sgd"] = _Linear(sgd.coef_, sgd.intercept_, float(sgd.t_))
        return state


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


def _signature(task: Task) -> tuple:
    """What makes two tasks "the same task again": kind, tenant, region, cpu and every
    feature value, whatever the order of the features."""
    features = task.features
    names = tuple(features)
    order = _FEATURE_ORDERS.get(names)
    if order is None:
        if len(_FEATURE_ORDERS) > 10_000:
            _FEATURE_ORDERS.clear()
        ordered = tuple(sorted(names))
        # itemgetter reads several values into a tuple in C; one value alone is not reordered.
        order = _FEATURE_ORDERS[names] = (
            ordered, None if len(ordered) < 2 or ordered == names else itemgetter(*ordered))
    ordered, reorder = order
    values = tuple(features.values()) if reorder is None else reorder(features)
    return (task.kind, task.tenant, task.region, task.cpu, ordered, values)


#: Feature names in a task's order -> (sorted names, how to read values in that order).
_FEATURE_ORDERS: dict[tuple, tuple] = {}


def _hashable_signature(key: tuple) -> tuple:
    """A signature whose unhashable feature values are replaced by their repr."""
    *head, values = key
    return (*head, tuple(v if _hashable(v) else repr(v) for v in values))


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _signature_to_json(key: tuple) -> list:
    kind, tenant, region, cpu, names, values = key
    return [kind, tenant, region, cpu, list(names), list(values)]


def _signature_from_json(item: list) -> tuple:
    kind, tenant, region, cpu, names, values = item
    return (kind, tenant, region, cpu, tuple(names), tuple(values))


class RecentRuns:
    """The last RECENT_DEPTH log runtimes per key at two levels: the exact task signature
    (kind, tenant, region, cpu and every feature value) and kind with tenant; and how far
    each level should move a base prediction, learnt online.

    For a task, the most specific level with a recorded run speaks. Its weight ``w`` is
    the least-squares slope of (log runtime - base) on (recent mean - base) over recent
    tasks where that level spoke: 1 when recent runs are the truth, 0 when they add
    nothing to the base model (unique tasks, or runtimes that depend on sizes the base
    model already reads), clipped to [0, 1].

    Learned state: ``runs_`` (level -> OrderedDict key -> list of log runtimes) and
    ``moments_`` (level -> [tasks, mean xy, mean xx], exponentially weighted once past
    1/alpha tasks).
    """

    LEVELS = ("task", "tenant-kind")

    def __init__(self, *, depth: int = RECENT_DEPTH, max_keys: int = RECENT_KEYS_MAX,
                 alpha: float = RECENT_BLEND_ALPHA):
        check_range("depth", depth, 1)
        check_range("max_keys", max_keys, 1)
        check_range("alpha", alpha, 0.0, 1.0, low_open=True)
        self.depth = depth
        self.max_keys = max_keys
        self.alpha = alpha
        self.runs_: dict[str, OrderedDict[tuple, list[float]]] = {
            level: OrderedDict() for level in self.LEVELS}
        self.moments_: dict[str, list[float]] = {
            level: [0.0, 0.0, 1.0] for level in self.LEVELS}
        # key -> (level index, mean of its runs), kept beside runs_ for lookups.
        self._summary: dict[str, dict[tuple, tuple[int, float]]] = {
            level: {} for level in self.LEVELS}

    def lookup(self, tasks: list[Task]) -> tuple[list, np.ndarray, np.ndarray]:
        """(keys: (task signature, (kind, tenant)) per task, recent mean log runtime,
        level index); level -1 (and mean nan) where neither level has a run."""
        task_runs, tenant_runs = self._summary["task"].get, self._summary["tenant-kind"].get
        keys: list[tuple[tuple, tuple]] = []
        found: list[tuple[int, float]] = []
        nothing = (-1, math.nan)
        for task in tasks:
            task_key, tenant_key = _signature(task), (task.kind, task.tenant)
            try:
                summary = task_runs(task_key)
            except TypeError:  # a feature value that cannot be hashed
                task_key = _hashable_signature(task_key)
                summary = task_runs(task_key)
            keys.append((task_key, tenant_key))
            found.append(summary or tenant_runs(tenant_key) or nothing)
        array = np.array(found, dtype=np.float64).reshape(len(found), 2)
        return keys, array[:, 1], array[:, 0].astype(np.int64)

    def weights(self) -> np.ndarray:
        """The blend weight of each level, shape (len(LEVELS),)."""
        return np.array([min(1.0, max(0.0, xy / xx)) if xx > 0 else 0.0
                         for _, xy, xx in (self.moments_[level] for level in self.LEVELS)])

    def stats(self) -> dict[str, dict]:
        """Per level: keys remembered, blend weight, tasks the weight was learnt on."""
        return {level: {"keys": len(self.runs_[level]), "weight": float(weight),
                        "tasks": int(self.moments_[level][0])}
                for level, weight in zip(self.LEVELS, self.weights())}

    def blend(self, base: np.ndarray, means: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """The base prediction moved toward the recent runs by each level's weight."""
        spoke = levels >= 0
        if not spoke.any():
            return base
        result = base.copy()
        weight = self.weights()[levels[spoke]]
        result[spoke] += weight * (means[spoke] - base[spoke])
        return result

    def learn(self, keys: list[tuple[tuple, tuple]], base: np.ndarray, means: np.ndarray,
              levels: np.ndarray, targets: np.ndarray, *, alpha: float | None = None) -> None:
        """Update the blend moments (with the lookups made before these runs were known),
        then record the runs."""
        alpha = alpha or self.alpha
        x = np.clip(means - base, -RECENT_CLIP, RECENT_CLIP)
        y = np.clip(targets - base, -RECENT_CLIP, RECENT_CLIP)
        for index, level in enumerate(self.LEVELS):
            rows = np.nonzero(levels == index)[0]
            moments = self.moments_[level]
            for xi, yi in zip(x[rows].tolist(), y[rows].tolist()):
                moments[0] += 1
                rate = max(alpha, 1.0 / (moments[0] + RECENT_BLEND_PRIOR))
                moments[1] += rate * (xi * yi - moments[1])
                moments[2] += rate * (xi * xi - moments[2])
        for column, level in enumerate(self.LEVELS):
            runs, summary = self.runs_[level], self._summary[level]
            for pair, value in zip(keys, targets.tolist()):
                key = pair[column]
                entry = runs.get(key)
                if entry is None:
                    entry = runs[key] = [value]
                    if len(runs) > self.max_keys:
                        forgotten, _ = runs.popitem(last=False)
                        del summary[forgotten]
                else:
                    runs.move_to_end(key)
                    entry.append(value)
                    del entry[:-self.depth]
                summary[key] = (column, sum(entry) / len(entry))

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        task_runs, tenant_runs = self.runs_["task"], self.runs_["tenant-kind"]
        meta = {"depth": self.depth, "max_keys": self.max_keys, "alpha": self.alpha,
                "moments": self.moments_,
                "task_keys": [_signature_to_json(key) for key in task_runs],
                "tenant_kind_keys": [list(key) for key in tenant_runs]}
        arrays = {}
        for level, runs in (("task", task_runs), ("tenant-kind", tenant_runs)):
            values = np.full((len(runs), self.depth), np.nan)
            for row, entry in enumerate(runs.values()):
                values[row, :len(entry)] = entry
            arrays[f"{level}.values"] = values
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> RecentRuns:
        recent = cls(depth=int(meta["depth"]), max_keys=int(meta["max_keys"]),
                     alpha=float(meta["alpha"]))
        recent.moments_ = {level: [float(v) for v in meta["moments"][level]]
                           for level in cls.LEVELS}
        for column, (level, keys) in enumerate((
                ("task", [_signature_from_json(k) for k in meta["task_keys"]]),
                ("tenant-kind", [tuple(k) for k in meta["tenant_kind_keys"]]))):
            runs, summary = recent.runs_[level], recent._summary[level]
            for key, row in zip(keys, arrays[f"{level}.values"]):
                entry = runs[key] = [float(v) for v in row if v == v]
                summary[key] = (column, sum(entry) / len(entry))
        return recent


class RefitWindow:
    """The newest completed tasks and their log runtimes, and the robust least-squares
    solve that refits the regression on them (see REFIT_WINDOW).

    Only what the feature encoder reads is kept of a task (kind, tenant, region, cpu,
    features), not its payload.

    Learned state: ``tasks_`` and ``targets_`` (deques of at most ``window``), ``since_``
    (tasks added since the last refit).
    """

    def __init__(self, *, window: int = REFIT_WINDOW, ridge: float = REFIT_RIDGE,
                 steps: int = REFIT_STEPS):
        check_range("window", window, REFIT_MIN_TASKS)
        check_range("ridge", ridge, 0.0, low_open=True)
        check_range("steps", steps, 1)
        self.window = int(window)
        self.ridge = float(ridge)
        self.steps = int(steps)
        self.tasks_: deque[Task] = deque(maxlen=self.window)
        self.targets_: deque[float] = deque(maxlen=self.window)
        self.since_ = 0

    def __len__(self) -> int:
        return len(self.tasks_)

    def add(self, tasks: list[Task], log_runtimes: np.ndarray) -> None:
        self.tasks_.extend(Task("", kind=t.kind, tenant=t.tenant, region=t.region, cpu=t.cpu,
                                features=t.features) for t in tasks)
        self.targets_.extend(log_runtimes.tolist())
        self.since_ += len(tasks)

    def due(self) -> bool:
        return (len(self.tasks_) >= REFIT_MIN_TASKS
                and self.since_ >= max(REFIT_EVERY_MIN, REFIT_EVERY_SHARE * len(self.tasks_)))

    def keep_newest(self, keep: int) -> None:
        """Forget all but the newest ``keep`` tasks (after a drift)."""
        for values in (self.tasks_, self.targets_):
            for _ in range(max(0, len(values) - keep)):
                values.popleft()
        self.since_ = min(self.since_, len(self.tasks_))

    def solve(self, matrix, targets: np.ndarray, coef: np.ndarray,
              intercept: float) -> tuple[np.ndarray, float]:
        """Huber regression of ``targets`` on ``matrix`` (sparse, tasks x columns) with a
        ridge penalty pulling the coefficients (not the intercept) toward ``coef``, by
        REFIT_STEPS reweighted solves over the columns the window uses; the weights start
        from the residuals of (``coef``, ``intercept``). Columns the window does not use
        keep their value. Returns the new (coef, intercept)."""
        self.since_ = 0
        matrix = sp.csr_matrix(matrix)
        active = np.unique(matrix.indices)
        design = sp.hstack([matrix[:, active], np.ones((matrix.shape[0], 1))], format="csr")
        start = beta = np.append(coef[active], intercept)
        penalty = np.full(len(beta), self.ridge)
        penalty[-1] = 1e-9
        for _ in range(self.steps):
            residual = np.abs(targets - design @ beta)
            weight = np.minimum(1.0, HUBER_EPSILON / np.maximum(residual, 1e-12))
            weighted = design.multiply(weight[:, None]).tocsr()
            gram = (design.T @ weighted).tocsr() + sp.diags(penalty)
            rhs = weighted.T @ targets + penalty * start
            if len(beta) <= REFIT_DENSE_MAX:
                beta = np.linalg.solve(gram.toarray(), rhs)
            else:  # scipy.sparse.linalg is imported only by the rare model this wide
                from scipy.sparse.linalg import cg
                beta, _ = cg(gram, rhs, x0=beta, M=sp.diags(1.0 / gram.diagonal()),
                             maxiter=200)
        coef = coef.copy()
        coef[active] = beta[:-1]
        return coef, float(beta[-1])

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"window": self.window, "ridge": self.ridge, "steps": self.steps,
                "since": self.since_,
                "tasks": [[t.kind, t.tenant, t.region, t.cpu,
                           {name: _json_value(value) for name, value in t.features.items()}]
                          for t in self.tasks_]}
        return meta, {"targets": np.array(self.targets_, dtype=np.float64)}

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> RefitWindow:
        refit = cls(window=int(meta["window"]), ridge=float(meta["ridge"]),
                    steps=int(meta["steps"]))
        refit.tasks_.extend(Task("", kind=kind, tenant=tenant, region=region, cpu=float(cpu),
                                 features=features)
                            for kind, tenant, region, cpu, features in meta["tasks"])
        refit.targets_.extend(arrays["targets"].tolist())
        refit.since_ = int(meta["since"])
        return refit


def _json_value(value):
    """A feature value as JSON holds it and the encoder reads it the same: text as text,
    numbers as floats (numpy's too), anything else as its float or, failing that, None
    (the encoder reads no number from it either)."""
    if isinstance(value, str) or value is None:
        return value
    number = _as_float(value)
    return number if math.isfinite(number) else None


#: What a prediction stood on, from most to least (RuntimeModel._log_mu): the spread of
#: its error differs by an order of magnitude between "ran before" and "never seen".
EVIDENCE = ("task", "tenant-kind", "kind", "new")
#: Residual windows of an evidence level are kept under these keys (apart from kinds').
EVIDENCE_KEY = "\x1fevidence="


class ResidualQuantiles:
    """Recent residuals (log measured - log predicted) per key (kind) and per group (the
    evidence level), and overall; their quantiles. A key's window speaks once it holds
    MIN_WINDOW residuals, else its group's, else the overall one."""

    MIN_WINDOW = 20

    def __init__(self, window: int = RESIDUAL_WINDOW):
        self.window = window
        self.per_key_: dict[str, deque] = {}
        self.overall_: deque = deque(maxlen=4 * window)
        # (key, group) -> (statistics, the window they were read from; None: overall)
        self._cache: dict[tuple, tuple[tuple[float, float, float], str | None]] = {}

    def add(self, pairs: list[tuple[str, str]], residuals: np.ndarray) -> None:
        """Residuals of tasks, each with its (key, group)."""
        windows = self.per_key_
        touched = {None}  # the overall window
        for (key, group), value in zip(pairs, residuals.tolist()):
            group = EVIDENCE_KEY + group
            windows.setdefault(key, deque(maxlen=self.window)).append(value)
            windows.setdefault(group, deque(maxlen=self.window)).append(value)
            touched.update((key, group))
            self.overall_.append(value)
        # Forget only the statistics read from a window that changed.
        self._cache = {pair: entry for pair, entry in self._cache.items()
                       if entry[1] not in touched}

    def forget(self, keep: int) -> None:
        """Keep only the newest ``keep`` residuals of each window (after a drift)."""
        for key, values in self.per_key_.items():
            self.per_key_[key] = deque(list(values)[-keep:], maxlen=self.window)
        self.overall_ = deque(list(self.overall_)[-keep * 4:], maxlen=4 * self.window)
        self._cache.clear()

    def _stats(self, key: str, group: str) -> tuple[float, float, float]:
        """(q50, q90, log mean of exp(residual)) for a key: from its own window, its
        group's, or the overall one, the first with MIN_WINDOW residuals."""
        cached = self._cache.get((key, group))
        if cached is not None:
            return cached[0]
        source = key
        values = self.per_key_.get(key)
        if values is None or len(values) < self.MIN_WINDOW:
            source = EVIDENCE_KEY + group
            values = self.per_key_.get(source)
        if values is None or len(values) < self.MIN_WINDOW:
            source, values = None, self.overall_
        if len(values) < self.MIN_WINDOW:
            result = (0.0, DEFAULT_P90_SPREAD, DEFAULT_P90_SPREAD ** 2 / 2.6)
        else:
            array = np.fromiter(values, dtype=np.float64)
            q50, q90 = np.quantile(array, [0.5, 0.9])
            result = (float(q50), float(q90), float(np.log(np.mean(np.exp(array)))))
        self._cache[(key, group)] = (result, source)
        return result

    def lookup(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Array of shape (n, 3): q50, q90 and log-mean correction per (key, group) pair,
        each distinct pair looked up once."""
        codes: dict[tuple, int] = {}
        rows = [codes.setdefault(pair, len(codes)) for pair in pairs]
        table = np.array([self._stats(key, group) for key, group in codes]).reshape(-1, 3)
        return table[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, 3))


def _evidence(kind_counts: np.ndarray, recent_levels: np.ndarray | None) -> np.ndarray:
    """Index into EVIDENCE per task: the recent-runs level that spoke, else whether the
    task's kind has been seen."""
    seen = np.where(kind_counts > 0, 2, 3)
    return seen if recent_levels is None else np.where(recent_levels >= 0, recent_levels, seen)


def _spread_pairs(tasks: list[Task], evidence: np.ndarray) -> list[tuple[str, str]]:
    """(residual window of the task's kind on its evidence, window of the evidence)."""
    names = _SPREAD_NAMES
    pairs = []
    for task, level in zip(tasks, evidence.tolist()):
        pair = names.get((task.kind, level))
        if pair is None:
            if len(names) > 100_000:
                names.clear()
            pair = names[(task.kind, level)] = (f"{task.kind}\x1f{EVIDENCE[level]}",
                                                EVIDENCE[level])
        pairs.append(pair)
    return pairs


_SPREAD_NAMES: dict[tuple[str, int], tuple[str, str]] = {}


@dataclass
class RuntimePrediction:
    """Predicted runtimes, arrays of shape (n_tasks,), seconds (``log_mu`` in log seconds)."""

    log_mu: np.ndarray
    p50_s: np.ndarray
    p90_s: np.ndarray
    mean_s: np.ndarray


class RuntimeModel:
    """Online runtime prediction with a per-kind cold-start prior and residual quantiles.

    Prediction in log space: ``base = prior[kind] + w * regression(x)``, with the per-kind
    moving average of log runtime as the prior (the way Dask keeps one per key prefix)
    and ``w = n_kind / (n_kind + blend_tasks)``; the regression learns what the features
    add *within* a kind. Then ``mu`` moves from ``base`` toward the task's recent runs
    (:class:`RecentRuns`: the same task, else the same tenant and kind) as far as that
    has paid lately. ``p50 = exp(mu + q50)`` and ``p90 = exp(mu + q90)`` from online
    quantiles of recent residuals. Drift (a jump of the recent error over the long-run
    error) boosts the prior's and the regression's step sizes for a while and forgets
    old residuals.

    Args:
        n_buckets: width of the hashed feature space.
        learning_rate: SGD step size.
        prior_alpha: weight of a new observation in the per-kind prior.
        blend_tasks: evidence at which prior and regression weigh the same.
        default_runtime_s: prediction for a kind (and a world) never seen.
        recent_runs: learn from recent runs of the same task (False: the base model only).
        refit: solve the regression afresh on the newest tasks every so often (see
            REFIT_WINDOW; False: SGD alone).
    """

    def __init__(self, *, n_buckets: int = DEFAULT_BUCKETS, learning_rate: float = LEARNING_RATE,
                 prior_alpha: float = PRIOR_ALPHA, blend_tasks: float = BLEND_TASKS,
                 default_runtime_s: float = DEFAULT_RUNTIME_S, recent_runs: bool = True,
                 refit: bool = True):
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
        self.recent_runs = bool(recent_runs)
        self.refit = bool(refit)
        self.encoder_ = FeatureEncoder(n_buckets=n_buckets)
        self.prior_ = KeyedAverage(prior_alpha)
        self.regression_ = OnlineRegressor(learning_rate=learning_rate)
        self.residuals_ = ResidualQuantiles()
        self.recent_ = RecentRuns()
        self.refit_ = RefitWindow()
        self.n_seen_ = 0
        self.error_fast_ = 0.0
        self.error_slow_ = 0.0
        self.boost_until_ = 0
        self.high_streak_ = 0
        self.drift_events_: list[int] = []

    def _base_log_mu(self, tasks: list[Task]) -> tuple[np.ndarray, np.ndarray]:
        """(base log runtime, tasks of the kind seen so far) per task."""
        kinds = [t.kind for t in tasks]
        prior, counts = self.prior_.lookup(kinds, math.log(self.default_runtime_s))
        if not self.regression_.fitted:
            return prior, counts
        matrix = self.encoder_.transform(tasks)
        # Unseen kinds (count 0) still get the regression: their tenant and features speak.
        weight = (counts + self.blend_tasks * UNSEEN_KIND_WEIGHT) / (counts + self.blend_tasks)
        return prior + weight * self.regression_.predict(matrix), counts

    def _log_mu(self, tasks: list[Task]) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """(mu, evidence per task (an index into EVIDENCE), what recent runs said: keys,
        base, means, levels; None when recent runs are off)."""
        base, counts = self._base_log_mu(tasks)
        if not self.recent_runs:
            return base, _evidence(counts, None), None
        keys, means, levels = self.recent_.lookup(tasks)
        return (self.recent_.blend(base, means, levels), _evidence(counts, levels),
                (keys, base, means, levels))

    def spread(self, tasks: list[Task], evidence: np.ndarray | None = None) -> np.ndarray:
        """(q50, q90, log-mean correction) of the log residual per task, shape (n, 3): from
        tasks of its kind predicted on the same evidence, else from all tasks predicted on
        that evidence, else from all."""
        if evidence is None:  # what the prediction stands on, without making it
            _, counts = self.prior_.lookup([t.kind for t in tasks], 0.0)
            evidence = _evidence(counts, self.recent_.lookup(tasks)[2]
                                 if self.recent_runs else None)
        return self.residuals_.lookup(_spread_pairs(tasks, evidence))

    def predict(self, tasks: list[Task]) -> RuntimePrediction:
        """Predict runtimes for a batch (works before any observation: the default prior)."""
        log_mu, evidence, _ = self._log_mu(tasks)
        spread = self.spread(tasks, evidence)
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
        log_mu, evidence, recent = self._log_mu(tasks)
        residuals = y - log_mu
        self._track_error(residuals)
        boosted = self.n_seen_ < self.boost_until_
        self.residuals_.add(_spread_pairs(tasks, evidence), residuals)
        if recent is not None:
            keys, base, means, levels = recent
            self.recent_.learn(keys, base, means, levels, y, alpha=self.recent_.alpha * (
                PRIOR_BOOST if boosted else 1.0))
        prior, _ = self.prior_.lookup(kinds, math.log(self.default_runtime_s))
        self.encoder_.update(tasks)
        matrix = self.encoder_.transform(tasks)
        self.regression_.observe(matrix, y - prior, learning_rate=self.learning_rate * (
            RATE_BOOST if boosted else 1.0))
        self.prior_.update(kinds, y, alpha=self.prior_alpha * (PRIOR_BOOST if boosted else 1.0))
        if self.refit:
            self.refit_.add(tasks, y)
            if self.refit_.due():
                self._refit()
        self.n_seen_ += len(tasks)
        return residuals

    def _refit(self) -> None:
        """Solve the regression afresh on the refit window, against today's priors and
        today's feature scaling."""
        window = list(self.refit_.tasks_)
        prior, _ = self.prior_.lookup([t.kind for t in window], math.log(self.default_runtime_s))
        targets = np.fromiter(self.refit_.targets_, dtype=np.float64, count=len(window))
        coef, intercept = self.regression_.coefficients()
        self.regression_.set_coefficients(*self.refit_.solve(
            self.encoder_.transform(window), targets - prior, coef, intercept))

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
                self.refit_.keep_newest(REFIT_DRIFT_KEEP)

    # -- persistence -----------------------------------------------------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        encoder_meta, encoder_arrays = self.encoder_.get_state()
        regression_meta, regression_arrays = self.regression_.get_state()
        kinds = sorted(self.prior_.values_)
        residual_keys = sorted(self.residuals_.per_key_)
        meta = {
            "params": {"n_buckets": self.n_buckets, "learning_rate": self.learning_rate,
                       "prior_alpha": self.prior_alpha, "blend_tasks": self.blend_tasks,
                       "default_runtime_s": self.default_runtime_s,
                       "recent_runs": self.recent_runs, "refit": self.refit},
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
        meta["recent"], recent_arrays = self.recent_.get_state()
        arrays.update({f"recent.{k}": v for k, v in recent_arrays.items()})
        meta["refit_window"], refit_arrays = self.refit_.get_state()
        arrays.update({f"refit.{k}": v for k, v in refit_arrays.items()})
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
        if "recent" in meta:  # checkpoints written before recent runs start without them
            model.recent_ = RecentRuns.from_state(
                meta["recent"], {k.split(".", 1)[1]: v for k, v in arrays.items()
                                 if k.startswith("recent.")})
        if "refit_window" in meta:  # so do those written before the refit, without one
            model.refit_ = RefitWindow.from_state(
                meta["refit_window"], {k.split(".", 1)[1]: v for k, v in arrays.items()
                                       if k.startswith("refit.")})
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
