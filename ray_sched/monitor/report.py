"""One self-contained HTML page that compares runs (``ray-sched report``).

Each run directory holds ``tasks.parquet`` and ``summary.json`` (TRACE_FORMAT.md sections
2 and 3), and optionally what the monitor wrote beside them:

- ``timeseries.parquet``: one row per sample per scope (``t_s``, ``scope``, ``queued``,
  ``busy_cpu``, ``slots``, ``utilization``, ``learner_mae_log``, ...); its
  ``scope == "cluster"`` rows are used. Every column is optional: what is missing is
  derived from ``tasks.parquet`` instead.
- ``alerts.jsonl``: one fired alert per line (``time_s``, ``rule``, ``metric``, ``value``,
  ``threshold``, ``op``, ``scope``, ``message``).

A directory of ``ray-sched compare`` output (one subdirectory per policy) stands for its
policies, in the order ``compare`` ran them.

The page embeds every plot as a ``data:`` PNG and carries its CSS inline: it opens from a
mail attachment or an air-gapped machine, and loads nothing from anywhere. Plots are drawn
on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot,
so that building a report changes no global matplotlib state (a notebook keeps its
backend).

Example:
    >>> build_report(["runs/demo"], "runs/demo/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, PercentFormatter

from ray_sched.errors import ConfigError, ResultsError
from ray_sched.metrics import TASKS_FILE, read_results
from ray_sched.monitor.energy import EnergyModel

TIMESERIES_FILE = "timeseries.parquet"
ALERTS_FILE = "alerts.jsonl"
#: Written by ``ray-sched compare`` beside its per-policy subdirectories, in run order.
COMPARE_INDEX_FILE = "summary.csv"
#: The monitor's whole-cluster rows of ``timeseries.parquet``.
CLUSTER_SCOPE = "cluster"
DEFAULT_TITLE = "ray_sched run comparison"

#: Samples of a queue or utilization curve derived from tasks: smooth at 900 px, and cheap.
GRID_POINTS = 400
#: A curve derived from tasks averages over this fraction of the run (1 / this): tasks of
#: a tenth of a second on 8 slots make instantaneous counts a comb.
SMOOTHING_WINDOWS = 80
#: Fewest tasks in the learner-error window: fewer make a curve of noise.
MIN_ERROR_WINDOW = 20
#: The window is n / this, so that a run shows about this many independent windows.
ERROR_WINDOWS_PER_RUN = 30
#: 9 x 4.2 inches at 100 dpi: 900 px wide, the width of the page's column.
FIGURE_WIDTH_IN = 9.0
FIGURE_HEIGHT_IN = 4.2
FIGURE_DPI = 100
#: Height of the predicted-vs-measured figure when one run predicts (its panel is square).
SINGLE_SCATTER_HEIGHT_IN = 5.4
#: Values spread wider than this (max / min) get a log axis: runtimes are heavy-tailed.
LOG_SPREAD = 20.0
#: Shortest time drawn on a log axis, so that a 0 s value stays on the plot.
MIN_LOG_TIME_S = 1e-4
#: Alerts listed per run; a flapping rule can fire thousands of times.
MAX_ALERT_ROWS_PER_RUN = 200
#: Drawn on the learner-error plot: an error of ln 2 means predictions off by a factor 2.
FACTOR_TWO_LOG_ERROR = math.log(2.0)
#: Minor ticks of a log axis (2, 5, 20, ...) are labelled when a decade is this wide:
#: narrower, their labels run into each other.
MIN_PX_PER_DECADE_WITH_MINOR_LABELS = 150
#: Above this many runs, run names on an x axis are slanted so that they do not overlap.
UPRIGHT_RUN_LABELS = 5

_MISSING = "-"


# ---------------------------------------------------------------------------------- loading


@dataclass
class RunData:
    """One run as the report sees it.

    Attributes:
        label: the run's name on the page: its policy, with the directory's name added
            when two runs share a policy.
        directory: the run's output folder.
        results: per-task frame, normalised by :func:`ray_sched.metrics.read_results`.
        summary: ``summary.json`` as read.
        timeseries: the monitor's ``scope == "cluster"`` rows sorted by ``t_s``, or None
            when the run has no (usable) ``timeseries.parquet``.
        alerts: the fired alerts of ``alerts.jsonl`` (dicts), in file order.
        unreadable_alert_lines: lines of ``alerts.jsonl`` that are not a JSON object
            (a monitor killed mid-write leaves a partial last line).
    """

    label: str
    directory: Path
    results: pd.DataFrame
    summary: dict[str, Any]
    timeseries: pd.DataFrame | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    unreadable_alert_lines: int = 0


class Series(NamedTuple):
    """A curve over time: ``times_s`` and ``values`` of shape (n,), where it came from
    (:data:`TIMESERIES_FILE` or :data:`~ray_sched.metrics.TASKS_FILE`), and the window
    each value averages over (0 for samples at an instant)."""

    times_s: np.ndarray
    values: np.ndarray
    source: str
    window_s: float = 0.0


def _compare_order(parent: Path, children: list[Path]) -> list[Path]:
    """Subdirectories in the order ``compare`` ran them (its summary.csv), then by name."""
    ranked: dict[str, int] = {}
    index = parent / COMPARE_INDEX_FILE
    if index.is_file():
        try:
            policies = pd.read_csv(index, usecols=["policy"])["policy"].astype(str).tolist()
        except (OSError, ValueError, pd.errors.ParserError):
            policies = []  # the order is a courtesy; a broken index must not stop a report
        for rank, name in enumerate(policies):
            ranked.setdefault(name, rank)
    return sorted(children, key=lambda c: (ranked.get(c.name, len(ranked)), c.name))


def expand_run_dirs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The run directories a report covers, each holding a ``tasks.parquet``.

    Args:
        run_dirs: run output folders, or ``compare`` output folders (a folder without
            ``tasks.parquet`` stands for its subfolders that have one).

    Returns:
        The run folders in the order given (a compare folder's in its run order), each
        once.

    Raises:
        ConfigError: no directory given.
        ResultsError: a directory that does not exist, or holds no results (the message
            names it).
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ConfigError("no run directories given: pass at least one output folder of "
                          "`ray-sched replay`, `simulate` or `compare`")
    expanded: list[Path] = []
    for given in run_dirs:
        path = Path(given)
        if not path.exists():
            raise ResultsError(str(path), "no such directory")
        if not path.is_dir():
            raise ResultsError(str(path), "not a directory; expected a run's output folder "
                                          f"holding {TASKS_FILE} and summary.json")
        if (path / TASKS_FILE).is_file():
            expanded.append(path)
            continue
        children = [c for c in path.iterdir() if c.is_dir() and (c / TASKS_FILE).is_file()]
        if not children:
            raise ResultsError(str(path), f"holds no results: no {TASKS_FILE} in it or in "
                                          f"any subdirectory (expected the output of "
                                          f"`ray-sched replay`, `simulate` or `compare`)")
        expanded.extend(_compare_order(path, children))
    unique: dict[Path, Path] = {}
    for path in expanded:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _read_timeseries(directory: Path) -> pd.DataFrame | None:
    path = directory / TIMESERIES_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ResultsError(str(path), f"cannot be read as parquet: {error}") from error
    if "t_s" not in frame.columns:
        return None  # samples without times cannot be drawn; derive from the tasks instead
    if "scope" in frame.columns:
        frame = frame[frame["scope"].astype(str) == CLUSTER_SCOPE]
    frame = frame.copy()
    for column in frame.columns:
        if column not in ("scope", "region"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[frame["t_s"].notna()].sort_values("t_s", kind="stable")
    return frame.reset_index(drop=True) if len(frame) else None


def _read_alerts(directory: Path) -> tuple[list[dict[str, Any]], int]:
    path = directory / ALERTS_FILE
    if not path.is_file():
        return [], 0
    alerts, unreadable = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            alert = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if isinstance(alert, dict):
            alerts.append(alert)
        else:
            unreadable += 1
    return alerts, unreadable


def load_run(directory: str | Path, *, label: str | None = None) -> RunData:
    """Read one run folder: its results, summary, and the monitor's files when present.

    Args:
        directory: a folder holding ``tasks.parquet`` and ``summary.json``.
        label: the run's name on the page; default its summary's policy.

    Raises:
        ResultsError: a missing or unreadable results file (named), or an unreadable
            ``timeseries.parquet``.
    """
    directory = Path(directory)
    results, summary = read_results(directory)
    alerts, unreadable = _read_alerts(directory)
    return RunData(label=label or _policy(results, summary, directory), directory=directory,
                   results=results, summary=summary, timeseries=_read_timeseries(directory),
                   alerts=alerts, unreadable_alert_lines=unreadable)


def _policy(results: pd.DataFrame, summary: dict[str, Any], directory: Path) -> str:
    if summary.get("policy"):
        return str(summary["policy"])
    named = results["policy"].dropna()
    return str(named.iloc[0]) if len(named) else directory.name


def _unique_labels(policies: list[str], directories: list[Path]) -> list[str]:
    """Policies as run names; the directory disambiguates runs of one policy."""
    counts = Counter(policies)
    labels = [p if counts[p] == 1 else f"{p} ({d.name})" for p, d in zip(policies, directories)]
    counts = Counter(labels)
    labels = [lab if counts[lab] == 1 else f"{p} ({d.parent.name}/{d.name})"
              for lab, p, d in zip(labels, policies, directories)]
    seen: Counter[str] = Counter()
    unique = []
    for lab in labels:  # the same folder name at the same depth twice: number them
        seen[lab] += 1
        unique.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return unique


def _load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    runs = [load_run(d) for d in expand_run_dirs(run_dirs)]
    labels = _unique_labels([r.label for r in runs], [r.directory for r in runs])
    for run, label in zip(runs, labels):
        run.label = label
    return runs


# ------------------------------------------------------------------ curves derived from tasks


def _column(frame: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), default)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


class _Edges(NamedTuple):
    """Sorted interval edges with running sums, to count or integrate in O(log n)."""

    times: np.ndarray
    weight: np.ndarray  # cumulative weight of the first i edges, shape (n + 1,)
    weighted_time: np.ndarray  # cumulative weight * time of the first i edges

    @classmethod
    def of(cls, times: np.ndarray, weight: np.ndarray) -> _Edges:
        order = np.argsort(times, kind="stable")
        ordered, weights = times[order], weight[order]
        return cls(ordered, np.concatenate([[0.0], np.cumsum(weights)]),
                   np.concatenate([[0.0], np.cumsum(weights * ordered)]))

    def up_to(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        passed = np.searchsorted(self.times, times_s, side="right")
        return self.weight[passed], self.weighted_time[passed]


def _active(begin: np.ndarray, end: np.ndarray, times_s: np.ndarray,
            weight: np.ndarray | None = None, window_s: float = 0.0) -> np.ndarray:
    """Total weight of the intervals [begin, end) (begin <= end) that hold each time; with
    ``window_s > 0``, its mean over [t - window_s / 2, t + window_s / 2] (clipped to the
    range of ``times_s``) instead."""
    if weight is None:
        weight = np.ones(len(begin))
    begins, ends = _Edges.of(begin, weight), _Edges.of(end, weight)
    if window_s <= 0:
        total = begins.up_to(times_s)[0] - ends.up_to(times_s)[0]
        return np.maximum(total, 0.0)  # cumsum rounding must not show -1e-16 tasks

    def integral(at: np.ndarray) -> np.ndarray:
        # Each interval begun by `at` has held for (at - begin), less (at - end) once ended.
        begun, begun_time = begins.up_to(at)
        ended, ended_time = ends.up_to(at)
        return at * (begun - ended) - (begun_time - ended_time)

    # Clipped to the times asked for: a window half before the run's start would halve
    # its first value.
    lower = np.maximum(times_s - window_s / 2, times_s.min())
    upper = np.minimum(times_s + window_s / 2, times_s.max())
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(width > 0, (integral(upper) - integral(lower)) / width,
                        begins.up_to(times_s)[0] - ends.up_to(times_s)[0])
    return np.maximum(mean, 0.0)


def queued_over_time(results: pd.DataFrame, times_s: np.ndarray, *,
                     window_s: float = 0.0) -> np.ndarray:
    """Tasks waiting for a slot at each time (or on average around it).

    A task waits over ``[max(arrival_s, ready_s), start_s)``: from its arrival, or from
    when its last parent finished when the results have ``ready_s``. A task that never
    started (failed before running) waits until its ``finish_s``; one with neither is
    left out.

    Args:
        results: per-task frame with ``arrival_s``, ``start_s``, ``finish_s`` and
            optionally ``ready_s`` (seconds since the run's start).
        times_s: array of shape (n,), the times to evaluate at.
        window_s: when > 0, the mean over the window of that width centred on each time
            (clipped to the range of ``times_s``): a smoother curve of the same area.

    Returns:
        Array of shape (n,): the number of tasks waiting at each time.

    Example:
        >>> frame = pd.DataFrame({"arrival_s": [0.0, 1.0], "start_s": [2.0, 1.0],
        ...                       "finish_s": [3.0, 4.0]})
        >>> queued_over_time(frame, np.array([0.0, 1.5, 2.0])).tolist()
        [1.0, 1.0, 0.0]
    """
    arrival = _column(results, "arrival_s")
    begin = np.fmax(arrival, _column(results, "ready_s"))
    end = _column(results, "start_s")
    end = np.where(np.isnan(end), _column(results, "finish_s"), end)
    known = ~np.isnan(begin) & ~np.isnan(end)
    begin, end = np.minimum(begin[known], end[known]), end[known]
    return _active(begin, end, np.asarray(times_s, dtype=float), window_s=window_s)


def busy_cpu_over_time(results: pd.DataFrame, times_s: np.ndarray, *,
                       window_s: float = 0.0) -> np.ndarray:
    """Slots in use at each time: tasks running over ``[start_s, finish_s)``, each
    weighted by its ``cpu`` (1 when absent or empty).

    Args:
        results: per-task frame with ``start_s``, ``finish_s`` and optionally ``cpu``.
        times_s: array of shape (n,), the times to evaluate at.
        window_s: when > 0, the mean over the window of that width centred on each time
            (clipped to the range of ``times_s``).

    Returns:
        Array of shape (n,): busy slots (cpu units) at each time.
    """
    start, finish = _column(results, "start_s"), _column(results, "finish_s")
    cpu = _column(results, "cpu", default=1.0)
    cpu = np.where(np.isnan(cpu), 1.0, cpu)
    ran = ~np.isnan(start) & ~np.isnan(finish)
    return _active(start[ran], np.maximum(start[ran], finish[ran]),
                   np.asarray(times_s, dtype=float), cpu[ran], window_s)


def _time_grid(results: pd.DataFrame) -> tuple[np.ndarray, float]:
    """:data:`GRID_POINTS` times over the run, and the averaging window for them."""
    times = np.concatenate([_column(results, c) for c in ("arrival_s", "start_s", "finish_s")])
    times = times[~np.isnan(times)]
    first, last = (float(times.min()), float(times.max())) if len(times) else (0.0, 1.0)
    last = max(last, first + 1e-9)
    return np.linspace(first, last, GRID_POINTS), (last - first) / SMOOTHING_WINDOWS


def _monitor_column(run: RunData, column: str) -> Series | None:
    frame = run.timeseries
    if frame is None or column not in frame.columns or not frame[column].notna().any():
        return None
    rows = frame[frame[column].notna()]
    return Series(rows["t_s"].to_numpy(dtype=float), rows[column].to_numpy(dtype=float),
                  TIMESERIES_FILE)


def queue_length_series(run: RunData) -> Series:
    """Queued tasks over time: the monitor's ``queued`` samples when it recorded them,
    else :func:`queued_over_time` on a grid of :data:`GRID_POINTS` times, each the mean
    over a window of 1 / :data:`SMOOTHING_WINDOWS` of the run centred on it."""
    sampled = _monitor_column(run, "queued")
    if sampled is not None:
        return sampled
    grid, window_s = _time_grid(run.results)
    return Series(grid, queued_over_time(run.results, grid, window_s=window_s), TASKS_FILE,
                  window_s)


def _slots(run: RunData) -> float | None:
    slots = run.summary.get("slots")
    if isinstance(slots, bool) or not isinstance(slots, (int, float)) or not slots > 0:
        return None
    return float(slots)


def utilization_series(run: RunData) -> Series | None:
    """Busy slots / slots over time (a fraction): the monitor's ``utilization`` (or
    ``busy_cpu / slots``) samples when recorded, else :func:`busy_cpu_over_time` over the
    summary's ``slots`` (averaged as in :func:`queue_length_series`). None when neither is
    known."""
    sampled = _monitor_column(run, "utilization")
    if sampled is not None:
        return sampled
    busy, slots = _monitor_column(run, "busy_cpu"), _monitor_column(run, "slots")
    if busy is not None and slots is not None and len(busy.values) == len(slots.values):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(slots.values > 0, busy.values / slots.values, np.nan)
        return Series(busy.times_s, ratio, TIMESERIES_FILE)
    total = _slots(run)
    if total is None:
        return None
    grid, window_s = _time_grid(run.results)
    return Series(grid, busy_cpu_over_time(run.results, grid, window_s=window_s) / total,
                  TASKS_FILE, window_s)


def learner_error_curve(results: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rolling mean of ``|ln predicted - ln measured|`` over ok tasks in finish order.

    The window is ``max(MIN_ERROR_WINDOW, n // ERROR_WINDOWS_PER_RUN)`` tasks; the first
    points average the tasks seen so far (a cold learner's first guesses show).

    Args:
        results: per-task frame with ``status``, ``finish_s``, ``predicted_runtime_s``
            and ``measured_runtime_s``.

    Returns:
        ``(finish_s, error)``, arrays of shape (n,) over the n ok tasks with a positive
        prediction and measurement; both empty when the run predicts nothing.
    """
    predicted = _column(results, "predicted_runtime_s")
    measured = _column(results, "measured_runtime_s")
    finish = _column(results, "finish_s")
    usable = ((results["status"] == "ok").to_numpy(dtype=bool, na_value=False)
              & (predicted > 0) & (measured > 0) & ~np.isnan(finish))
    order = np.argsort(finish[usable], kind="stable")
    error = np.abs(np.log(predicted[usable]) - np.log(measured[usable]))[order]
    window = max(MIN_ERROR_WINDOW, len(error) // ERROR_WINDOWS_PER_RUN)
    rolling = pd.Series(error).rolling(window, min_periods=1).mean().to_numpy(dtype=float)
    return finish[usable][order], rolling


# ------------------------------------------------------------------------- per-run numbers


def _ok(results: pd.DataFrame) -> np.ndarray:
    return (results["status"] == "ok").to_numpy(dtype=bool, na_value=False)


def _jct(results: pd.DataFrame) -> np.ndarray:
    ok = _ok(results)
    return (_column(results, "finish_s") - _column(results, "arrival_s"))[ok]


def _slowdowns(results: pd.DataFrame) -> pd.DataFrame:
    """Per ok task: tenant and JCT / runtime (true runtime, else measured), as summarize."""
    ok = _ok(results)
    runtime, measured = _column(results, "runtime_s"), _column(results, "measured_runtime_s")
    denominator = np.where(runtime > 0, runtime, measured)[ok]
    jct = _jct(results)
    known = denominator > 0
    tenants = results["tenant"].astype(str).to_numpy()[ok] if "tenant" in results.columns \
        else np.full(int(ok.sum()), "default")
    return pd.DataFrame({"tenant": tenants[known], "slowdown": jct[known] / denominator[known]})


def _deadlines(results: pd.DataFrame) -> tuple[int, int]:
    """(tasks with a deadline, misses), as :func:`ray_sched.metrics.summarize` counts them."""
    has = results["deadline_met"].notna().to_numpy()
    if "deadline_s" in results.columns:
        has = has | results["deadline_s"].notna().to_numpy()
    met = results["deadline_met"].to_numpy(dtype=bool, na_value=False) & _ok(results)
    return int(has.sum()), int((has & ~met).sum())


def _has_predictions(results: pd.DataFrame) -> bool:
    return bool(np.any(~np.isnan(_column(results, "predicted_runtime_s"))))


# ------------------------------------------------------------------------------ formatting


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.3f}"
    return f"{value:.2e}"


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cell(value: Any, kind: str = "number") -> str:
    """A table cell: the rounded value shown, the full value in its tooltip."""
    number = _finite(value)
    if number is None:
        return f'<td class="missing">{_MISSING}</td>'
    if kind == "int":
        text = f"{int(number):,}"
    elif kind == "percent":
        text = f"{number * 100:.1f}%"
    elif kind == "ratio":
        text = f"{number:.2f}x"
    else:
        text = _number(number)
    return f'<td title="{number!r}">{html.escape(text)}</td>'


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _list_names(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


# --------------------------------------------------------------------------------- figures


def _colors(n: int) -> list[Any]:
    """One colour per run, the same in every plot (tab10, tab20 past ten runs)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _figure(rows: int = 1, cols: int = 1, *,
            height_in: float = FIGURE_HEIGHT_IN) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(FIGURE_WIDTH_IN, height_in), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
        ax.set_axisbelow(True)
    return figure, axes


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _PlainLogFormatter(Formatter):
    """Log-axis tick labels as plain numbers (0.2, 5, 100, not 2 x 10^-1); minor ticks
    labelled at 2 and 5 only while each decade has room for them."""

    def __init__(self, *, minor: bool = False):
        self.minor = minor

    def __call__(self, value: float, position: Any = None) -> str:
        if value <= 0:
            return ""
        if not self.minor:
            return f"{value:g}"
        low, high = self.axis.get_view_interval()
        bbox = self.axis.axes.bbox
        length_px = bbox.width if self.axis is self.axis.axes.xaxis else bbox.height
        if low <= 0 or high <= low \
                or length_px / math.log10(high / low) < MIN_PX_PER_DECADE_WITH_MINOR_LABELS:
            return ""
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 5)) else ""


def _log_scale(ax: Any, which: str) -> None:
    """Put the ``"x"`` or ``"y"`` axis of ``ax`` on a log scale with plain labels."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(_PlainLogFormatter())
    axis.set_minor_formatter(_PlainLogFormatter(minor=True))


def _log_if_spread(ax: Any, values: Sequence[float]) -> bool:
    """A log y axis when the values span more than :data:`LOG_SPREAD`; True when set."""
    positive = np.asarray([v for v in values if v is not None and v > 0], dtype=float)
    spread = positive.max() / positive.min() if len(positive) else 1.0
    if spread > LOG_SPREAD:
        _log_scale(ax, "y")
        return True
    return False


def _legend(ax: Any, **options: Any) -> None:
    """The legend to the right of the axes, where it can hide no curve or bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              fontsize=9, **options)


def _run_ticks(ax: Any, labels: list[str]) -> None:
    slanted = len(labels) > UPRIGHT_RUN_LABELS or max(map(len, labels)) > 14
    ax.set_xticks(range(len(labels)), labels, rotation=20 if slanted else 0,
                  ha="right" if slanted else "center")


def _grouped_bars(ax: Any, groups: list[str], runs: list[RunData], colors: list[Any],
                  values: Callable[[RunData, str], float | None]) -> list[float]:
    """Bars of each run side by side within each group; returns the values drawn."""
    width = 0.8 / max(1, len(runs))
    drawn = []
    for index, (run, color) in enumerate(zip(runs, colors)):
        heights = [values(run, group) for group in groups]
        offsets = np.arange(len(groups)) + (index - (len(runs) - 1) / 2) * width
        ax.bar(offsets, [np.nan if h is None else h for h in heights], width, color=color,
               label=run.label)
        drawn.extend(h for h in heights if h is not None)
    ax.set_xticks(range(len(groups)), groups)
    return drawn


@dataclass
class _Plot:
    """One figure of the page: its heading, image (or a note when nothing can be drawn)
    and caption."""

    anchor: str
    heading: str
    caption: str
    png: str | None = None
    alt: str = ""
    note: str | None = None


def _plot_jct_cdf(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("jct-cdf", "Job completion time distribution",
                 "Each curve rises through the JCTs of one run's ok tasks: read a percentile "
                 "across (0.5 is the median) and compare runs down; further left is faster, "
                 "and the top right corner is the tail.")
    drawn = [(run, color, np.sort(np.maximum(_jct(run.results), MIN_LOG_TIME_S)))
             for run, color in zip(runs, colors)]
    drawn = [(run, color, jct) for run, color, jct in drawn if len(jct)]
    if not drawn:
        plot.note = "No run has an ok task: there is no JCT to plot."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]
    for run, color, jct in drawn:
        fraction = np.arange(1, len(jct) + 1) / len(jct)
        ax.step(np.concatenate([[jct[0]], jct]), np.concatenate([[0.0], fraction]),
                where="post", color=color, linewidth=1.6, label=f"{run.label} (n={len(jct)})")
    for level in (0.5, 0.95, 0.99):
        ax.axhline(level, color="grey", linewidth=0.7, linestyle=":")
    _log_scale(ax, "x")
    ax.set_ylim(0, 1.02)
    ax.set_title("JCT distribution per run (CDF)")
    ax.set_xlabel("job completion time, finish - arrival (s, log scale)")
    ax.set_ylabel("fraction of ok tasks with JCT <= x")
    _legend(ax)
    plot.png, plot.alt = _png(figure), "CDF of job completion time per run"
    return plot


_PERCENTILES = {"p50": ("jct_p50_s", 50), "p95": ("jct_p95_s", 95), "p99": ("jct_p99_s", 99)}


def _jct_percentile(run: RunData, name: str) -> float | None:
    key, q = _PERCENTILES[name]
    value = _finite(run.summary.get(key))
    if value is None:  # another tool's summary may lack it: the tasks still say
        jct = _jct(run.results)
        value = float(np.percentile(jct, q)) if len(jct) else None
    return value


def _plot_percentiles(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("jct-percentiles", "JCT percentiles",
                 "Bars compare the median (p50) and the tails (p95, p99) of job completion "
                 "time across runs; lower is better, and the p99 group shows who suffers "
                 "most.")
    if not any(_jct_percentile(run, "p50") is not None for run in runs):
        plot.note = "No run has an ok task: there are no JCT percentiles."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]
    drawn = _grouped_bars(ax, list(_PERCENTILES), runs, colors, _jct_percentile)
    logged = _log_if_spread(ax, drawn)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3g", fontsize=7, padding=1)
    ax.margins(y=0.12)
    ax.set_title("JCT percentiles per run")
    ax.set_xlabel("percentile of job completion time over ok tasks")
    ax.set_ylabel("JCT (s, log scale)" if logged else "JCT (s)")
    _legend(ax)
    plot.png, plot.alt = _png(figure), "p50, p95 and p99 JCT per run"
    return plot


def _plot_deadlines(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("deadlines", "Deadline misses",
                 "Each bar is the share of a run's tasks with a deadline that missed it "
                 "(a failed task counts as a miss), labelled misses / tasks with a deadline; "
                 "lower is better.")
    counts = [_deadlines(run.results) for run in runs]
    if not any(total for total, _ in counts):
        plot.note = "No task in any run has a deadline: no deadlines to miss."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]
    for index, (run, color, (total, misses)) in enumerate(zip(runs, colors, counts)):
        if total:
            bars = ax.bar(index, misses / total, 0.6, color=color, label=run.label)
            ax.bar_label(bars, [f"{misses}/{total}"], fontsize=8, padding=2)
        else:
            ax.text(index, 0.01, "no deadlines", ha="center", va="bottom", color="dimgrey",
                    fontsize=9)
    without = [run.label for run, (total, _) in zip(runs, counts) if not total]
    if without:
        plot.caption += f" No deadlines in {_list_names(without)}."
    _run_ticks(ax, [run.label for run in runs])
    ax.set_xlim(-0.6, len(runs) - 0.4)  # keep a place for runs drawn without a bar
    top = max(m / t for t, m in counts if t) * 1.2 + 0.05
    if top > 1.0:  # room for the labels over a 100% bar, without a 120% tick
        top = 1.1
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylim(0, top)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Deadline miss rate per run")
    ax.set_xlabel("run")
    ax.set_ylabel("tasks that missed their deadline (%)")
    _legend(ax)
    plot.png, plot.alt = _png(figure), "deadline miss rate per run"
    return plot


def _plot_tenants(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("tenants", "Slowdown per tenant",
                 "Bars show each tenant's mean slowdown (JCT over the task's runtime; 1 means "
                 "no waiting) under each run: a fair run keeps its bars level across "
                 "tenants.")
    per_run = {run.label: _slowdowns(run.results).groupby("tenant")["slowdown"].mean()
               for run in runs}
    tenants = sorted(set().union(*(s.index for s in per_run.values())))
    if not tenants:
        plot.note = "No run has an ok task with a known runtime: no slowdown to plot."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]

    def mean_slowdown(run: RunData, tenant: str) -> float | None:
        return _finite(per_run[run.label].get(tenant))

    drawn = _grouped_bars(ax, tenants, runs, colors, mean_slowdown)
    logged = _log_if_spread(ax, drawn)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="1 = no waiting")
    if len(tenants) > 8:
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title("Mean slowdown per tenant")
    ax.set_xlabel("tenant")
    ax.set_ylabel("mean slowdown, JCT / runtime (x" + (", log scale)" if logged else ")"))
    _legend(ax)
    plot.png, plot.alt = _png(figure), "mean slowdown per tenant and run"
    return plot


def _source_note(curves: dict[str, Series], what: str) -> str:
    """Which runs' curves the monitor sampled and which were derived from their tasks."""
    monitored = [label for label, c in curves.items() if c.source == TIMESERIES_FILE]
    derived = [label for label, c in curves.items() if c.source == TASKS_FILE]
    parts = []
    if monitored:
        parts.append(f"sampled by the monitor ({TIMESERIES_FILE}) for {_list_names(monitored)}")
    if derived:
        windows = sorted({f"{curves[label].window_s:.2g}" for label in derived}, key=float)
        shown = windows[0] if len(windows) == 1 else f"{windows[0]} to {windows[-1]}"
        parts.append(f"derived from {TASKS_FILE} for {_list_names(derived)}, each point the "
                     f"mean over the {shown} s around it (1/{SMOOTHING_WINDOWS} of the run)")
    return f" {what} " + "; ".join(parts) + "." if parts else ""


def _plot_over_time(runs: list[RunData], colors: list[Any], *, anchor: str, heading: str,
                    caption: str, series: Callable[[RunData], Series | None], title: str,
                    ylabel: str, what: str, percent: bool = False) -> _Plot:
    plot = _Plot(anchor, heading, caption)
    curves = {run.label: (series(run), color) for run, color in zip(runs, colors)}
    missing = [label for label, (curve, _) in curves.items() if curve is None]
    curves = {label: item for label, item in curves.items() if item[0] is not None}
    if missing:
        plot.caption += f" Not known for {_list_names(missing)} (no slots in its summary)."
    if not curves:
        plot.note = f"No run records {what}."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]
    for label, (curve, color) in curves.items():
        sampled = curve.source == TIMESERIES_FILE
        ax.plot(curve.times_s, curve.values, color=color, linewidth=1.3,
                label=f"{label} (monitor)" if sampled else label)
    plot.caption += _source_note({label: c for label, (c, _) in curves.items()},
                                 what.capitalize())
    ax.set_ylim(bottom=0)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title)
    ax.set_xlabel("time since the run's start (s)")
    ax.set_ylabel(ylabel)
    _legend(ax)
    plot.png, plot.alt = _png(figure), title
    return plot


def _plot_predictions(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("predictions", "Predicted vs measured runtime",
                 "Each point is one ok task, its measured runtime across and the runtime "
                 "predicted before placement up: points on the solid diagonal were predicted "
                 "exactly, and points outside the dotted lines were off by more than a "
                 "factor 2.")
    panels = []
    for run, color in zip(runs, colors):
        predicted = _column(run.results, "predicted_runtime_s")
        measured = _column(run.results, "measured_runtime_s")
        usable = _ok(run.results) & (predicted > 0) & (measured > 0)
        if usable.any():
            panels.append((run, color, measured[usable], predicted[usable]))
    without = [run.label for run in runs if not _has_predictions(run.results)]
    if without:
        plot.caption += f" No predictions in {_list_names(without)}."
    if not panels:
        plot.note = "No run in this report predicts runtimes."
        return plot
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    # Square panels: one alone gets more height, so that it is not a stamp in a wide frame.
    height_in = SINGLE_SCATTER_HEIGHT_IN if len(panels) == 1 else FIGURE_HEIGHT_IN * (
        1 if rows == 1 else 0.85) * rows
    figure, axes = _figure(rows, cols, height_in=height_in)
    values = np.concatenate([np.concatenate([m, p]) for _, _, m, p in panels])
    low, high = float(values.min()) / 1.5, float(values.max()) * 1.5
    diagonal = np.array([low, high])
    for ax, (run, color, measured, predicted) in zip(axes.flat, panels):
        ax.scatter(measured, predicted, s=9, alpha=0.45, color=color, edgecolors="none",
                   label=f"{run.label} (n={len(measured)})")
        ax.plot(diagonal, diagonal, color="black", linewidth=1.0, label="y = x (exact)")
        ax.plot(diagonal, diagonal * 2, color="black", linewidth=0.8, linestyle=":",
                label="x2 and /2")
        ax.plot(diagonal, diagonal / 2, color="black", linewidth=0.8, linestyle=":")
        _log_scale(ax, "x")
        _log_scale(ax, "y")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal", adjustable="box")
        if len(panels) > 1:
            ax.set_title(run.label)
        ax.set_xlabel("measured runtime (s, log)")
        ax.set_ylabel("predicted runtime (s, log)")
        ax.legend(loc="upper left", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    figure.suptitle("Predicted vs measured runtime" + (
        f": {panels[0][0].label}" if len(panels) == 1 else " per run"))
    plot.png, plot.alt = _png(figure), "predicted vs measured runtime scatter"
    return plot


def _plot_learner_error(runs: list[RunData], colors: list[Any]) -> _Plot:
    plot = _Plot("learner-error", "Learner error over time",
                 "Each solid line is the rolling mean of |ln predicted - ln measured| over a "
                 "run's ok tasks in the order they finished (0 is exact, the dotted line "
                 f"{FACTOR_TWO_LOG_ERROR:.2f} is a factor 2 off): a falling line is a learner "
                 "that learns.")
    figure, axes = _figure()
    ax = axes[0, 0]
    drawn, monitored = [], []
    for run, color in zip(runs, colors):
        finish, error = learner_error_curve(run.results)
        if len(error):
            window = max(MIN_ERROR_WINDOW, len(error) // ERROR_WINDOWS_PER_RUN)
            ax.plot(finish, error, color=color, linewidth=1.5,
                    label=f"{run.label} (tasks, window {window})")
            drawn.append(run.label)
        sampled = _monitor_column(run, "learner_mae_log")
        if sampled is not None:
            ax.plot(sampled.times_s, sampled.values, color=color, linewidth=1.2,
                    linestyle="--", label=f"{run.label} (monitor)")
            monitored.append(run.label)
    without = [run.label for run in runs if run.label not in drawn + monitored]
    if without:
        plot.caption += f" No predictions in {_list_names(without)}."
    if monitored:
        plot.caption += (" Dashed lines are the monitor's own learner_mae_log samples for "
                         f"{_list_names(monitored)}.")
    if not drawn and not monitored:
        plot.note = "No run in this report predicts runtimes."
        return plot
    ax.axhline(FACTOR_TWO_LOG_ERROR, color="grey", linewidth=0.9, linestyle=":",
               label="factor 2 off (ln 2)")
    ax.set_ylim(bottom=0)
    ax.set_title("Learner error over time")
    ax.set_xlabel("finish time since the run's start (s)")
    ax.set_ylabel("mean |ln predicted - ln measured| (ln units)")
    _legend(ax)
    plot.png, plot.alt = _png(figure), "learner error over time"
    return plot


def _plot_energy(runs: list[RunData], colors: list[Any],
                 estimates: list[dict[str, Any]], model: EnergyModel) -> _Plot:
    nodes = ", ".join(f"{run.label} {e['nodes']}" for run, e in zip(runs, estimates))
    plot = _Plot("energy", "Energy per task",
                 "Each bar is a run's estimated energy per ok task, busy energy (core-seconds "
                 f"x {model.busy_core_w:g} W per busy core above idle) plus idle energy (nodes "
                 f"x makespan x {model.idle_node_w:g} W per node); lower is better. "
                 f"Model: ray_sched.monitor.energy.EnergyModel(busy_core_w={model.busy_core_w:g}"
                 f", idle_node_w={model.idle_node_w:g}); nodes: {nodes}.")
    per_task = [_finite(e["energy_j_per_task"]) for e in estimates]
    if not any(v is not None for v in per_task):
        plot.note = "No run has an ok task: no energy per task."
        return plot
    figure, axes = _figure()
    ax = axes[0, 0]
    for index, (run, color, estimate) in enumerate(zip(runs, colors, estimates)):
        per = _finite(estimate["energy_j_per_task"])
        if per is None:
            continue
        n_ok = int(_ok(run.results).sum())  # per is not None: at least one
        busy, idle = estimate["energy_busy_j"] / n_ok, estimate["energy_idle_j"] / n_ok
        ax.bar(index, busy, 0.6, color=color, label=run.label)
        bars = ax.bar(index, idle, 0.6, bottom=busy, color=color, alpha=0.45, hatch="//",
                      edgecolor="white")
        ax.bar_label(bars, [f"{per:.3g} J"], fontsize=8, padding=2)
    _run_ticks(ax, [run.label for run in runs])
    ax.margins(y=0.12)
    ax.set_title("Estimated energy per ok task (solid: busy cores, hatched: idle nodes)")
    ax.set_xlabel("run")
    ax.set_ylabel("energy per ok task (J)")
    _legend(ax)
    plot.png, plot.alt = _png(figure), "energy per task per run"
    return plot


# ------------------------------------------------------------------------------ html parts


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #1d1d1f; background: #fff; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; margin: 0.6em 0 0.2em; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.5em; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2em; }
.meta { color: #555; margin: 0.2em 0; }
.runs { margin: 0.4em 0 0; padding-left: 1.2em; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: #f4f4f6; padding: 0 3px; border-radius: 3px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 4px 6px; }
th.run { white-space: nowrap; }
th { background: #f4f4f6; font-weight: 600; text-align: center; vertical-align: bottom; }
td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text, th.run { text-align: left; }
td.message { text-align: left; white-space: normal; }
td.missing { color: #999; text-align: center; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          border-radius: 2px; vertical-align: baseline; }
figure { margin: 0.6em 0 1.4em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
.note { color: #555; font-style: italic; }
"""


def _hex(color: Any) -> str:
    return matplotlib.colors.to_hex(color)


def _summary_table(runs: list[RunData], colors: list[Any],
                   estimates: list[dict[str, Any]]) -> str:
    first = runs[0]
    columns = [
        ("tasks", "n_tasks", "int"), ("ok", "n_ok", "int"), ("failed", "n_failed", "int"),
        ("JCT mean (s)", "jct_mean_s", "number"), ("JCT p50 (s)", "jct_p50_s", "number"),
        ("JCT p95 (s)", "jct_p95_s", "number"), ("JCT p99 (s)", "jct_p99_s", "number"),
        ("slowdown mean (x)", "slowdown_mean", "number"),
        ("deadline miss rate", "deadline_miss_rate", "percent"),
        ("throughput (tasks/s)", "throughput_tps", "number"),
        ("utilization", "utilization", "percent"),
        ("Jain fairness (tenants)", "jain_fairness_tenants", "number"),
        ("prediction MAE (s)", "prediction_mae_s", "number"),
    ]
    header = ["<th class=\"run\">run</th>"] + [f"<th>{_escape(h)}</th>" for h, _, _ in columns]
    header += ["<th>energy (J/task)</th>",
               f"<th>JCT mean vs {_escape(first.label)}</th>",
               f"<th>JCT p99 vs {_escape(first.label)}</th>"]
    rows = []
    for run, color, estimate in zip(runs, colors, estimates):
        cells = [f'<th class="run"><span class="swatch" style="background:{_hex(color)}">'
                 f"</span>{_escape(run.label)}</th>"]
        cells += [_cell(run.summary.get(key), kind) for _, key, kind in columns]
        cells.append(_cell(estimate["energy_j_per_task"]))
        for key in ("jct_mean_s", "jct_p99_s"):
            value, reference = _finite(run.summary.get(key)), _finite(first.summary.get(key))
            cells.append(_cell(value / reference if value is not None and reference else None,
                               "ratio"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table-wrap"><table id="summary-table">\n<thead><tr>' + "".join(header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>\n"
            '<p class="note">JCT = finish - arrival over ok tasks; slowdown = JCT / runtime; '
            "utilization = busy slot-seconds / (slots x makespan); Jain's index over "
            "per-tenant mean slowdown (1 = equal). Hover a number for its full precision; "
            f"{_MISSING} = not recorded.</p>")


def kind_breakdown(results: pd.DataFrame) -> pd.DataFrame:
    """Per kind over ok tasks: ``n_ok``, ``jct_mean_s``, ``jct_p95_s``, ``slowdown_mean``
    (JCT / runtime as in the summary; index: kind, "default" where the results carry none)."""
    ok = _ok(results)
    kinds = (results["kind"].fillna("default").astype(str).to_numpy()[ok]
             if "kind" in results.columns else np.full(int(ok.sum()), "default"))
    runtime, measured = _column(results, "runtime_s"), _column(results, "measured_runtime_s")
    denominator = np.where(runtime > 0, runtime, measured)[ok]
    jct = _jct(results)
    with np.errstate(divide="ignore", invalid="ignore"):
        slowdown = np.where(denominator > 0, jct / denominator, np.nan)
    grouped = pd.DataFrame({"kind": kinds, "jct": jct, "slowdown": slowdown}).groupby(
        "kind", sort=True)
    return pd.DataFrame({"n_ok": grouped["jct"].size(), "jct_mean_s": grouped["jct"].mean(),
                         "jct_p95_s": grouped["jct"].quantile(0.95),
                         "slowdown_mean": grouped["slowdown"].mean()})


def _kinds_table(runs: list[RunData]) -> str:
    tables = [kind_breakdown(run.results) for run in runs]
    kinds = sorted(set().union(*(t.index for t in tables)))
    header = ['<th class="run">kind</th>'] + [
        f"<th>{_escape(run.label)}<br>JCT mean / p95 (s), slowdown</th>" for run in runs]
    rows = []
    for kind in kinds:
        cells = [f'<th class="run">{_escape(kind)}</th>']
        for table in tables:
            if kind not in table.index:
                cells.append(f"<td>{_MISSING}</td>")
                continue
            row = table.loc[kind]
            slowdown = row.get("slowdown_mean", np.nan)
            cells.append(f"<td>{_number(row['jct_mean_s'])} / {_number(row['jct_p95_s'])}, "
                         f"{_number(slowdown) if np.isfinite(slowdown) else _MISSING}x "
                         f"(n={int(row['n_ok'])})</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<h3 id="kinds">Per kind</h3><div class="table-wrap"><table id="kind-table">\n'
            "<thead><tr>" + "".join(header) + "</tr></thead>\n<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table></div>\n")


def _alert_value(alert: dict[str, Any], key: str) -> str:
    value = alert.get(key)
    number = _finite(value) if not isinstance(value, str) else None
    if number is not None:
        return _number(number)
    return _MISSING if value is None or value == "" else str(value)


def _alerts_section(runs: list[RunData]) -> str:
    notes = [f"{run.unreadable_alert_lines} unreadable line(s) of "
             f"{_escape(run.directory / ALERTS_FILE)} were skipped."
             for run in runs if run.unreadable_alert_lines]
    with_alerts = [run for run in runs if run.alerts]
    if not with_alerts:
        text = "No alerts were recorded" + (
            "." if any((r.directory / ALERTS_FILE).is_file() for r in runs)
            else f" (no run has an {ALERTS_FILE}).")
        return f'<p class="note" id="no-alerts">{text}</p>' + "".join(
            f'<p class="note">{n}</p>' for n in notes)
    header = ("<tr><th class=\"run\">run</th><th>time (s)</th><th>rule</th><th>metric</th>"
              "<th>value</th><th>threshold</th><th>scope</th><th>message</th></tr>")
    rows = []
    for run in with_alerts:
        ordered = sorted(run.alerts, key=lambda a: _finite(a.get("time_s")) or 0.0)
        for alert in ordered[:MAX_ALERT_ROWS_PER_RUN]:
            op = alert.get("op")
            threshold = _alert_value(alert, "threshold")
            if op in ("above", "below") and threshold != _MISSING:
                threshold = f"{op} {threshold}"
            rows.append(
                f'<tr><td class="text">{_escape(run.label)}</td>'
                f"<td>{_escape(_alert_value(alert, 'time_s'))}</td>"
                f'<td class="text">{_escape(_alert_value(alert, "rule"))}</td>'
                f'<td class="text">{_escape(_alert_value(alert, "metric"))}</td>'
                f"<td>{_escape(_alert_value(alert, 'value'))}</td>"
                f"<td>{_escape(threshold)}</td>"
                f'<td class="text">{_escape(_alert_value(alert, "scope"))}</td>'
                f'<td class="message">{_escape(_alert_value(alert, "message"))}</td></tr>')
        if len(ordered) > MAX_ALERT_ROWS_PER_RUN:
            notes.append(f"{_escape(run.label)}: the first {MAX_ALERT_ROWS_PER_RUN} of "
                         f"{len(ordered)} alerts are listed.")
    counts = ", ".join(f"{_escape(run.label)} {len(run.alerts)}" for run in with_alerts)
    return (f'<p class="meta">Alerts fired, by run: {counts}.</p>'
            '<div class="table-wrap"><table id="alerts-table">\n<thead>' + header
            + "</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
            + "".join(f'<p class="note">{n}</p>' for n in notes))


def _header(title: str, runs: list[RunData], colors: list[Any], generated: str) -> str:
    traces = sorted({str(r.summary["trace"]) for r in runs if r.summary.get("trace")})
    items = []
    for run, color in zip(runs, colors):
        details = [f"{len(run.results):,} tasks"]
        if _slots(run) is not None:
            details.append(f"{_slots(run):g} slots")
        if run.summary.get("trace") and len(traces) > 1:
            details.append(f"trace <code>{_escape(run.summary['trace'])}</code>")
        items.append(f'<li><span class="swatch" style="background:{_hex(color)}"></span>'
                     f"<strong>{_escape(run.label)}</strong>: <code>{_escape(run.directory)}"
                     f"</code> ({', '.join(details)})</li>")
    trace_line = ""
    if traces:
        shown = ", ".join(f"<code>{_escape(t)}</code>" for t in traces)
        trace_line = f'<p class="meta">Trace{"s" if len(traces) > 1 else ""}: {shown}</p>'
    return (f"<header><h1>{_escape(title)}</h1>"
            f'<p class="meta">Generated {_escape(generated)} by ray_sched.monitor.report.</p>'
            f"{trace_line}<p class=\"meta\">Runs ({len(runs)}):</p>"
            f'<ul class="runs">{"".join(items)}</ul></header>')


def _figure_html(number: int, plot: _Plot) -> str:
    heading = f'<h2 id="{plot.anchor}">{number}. {_escape(plot.heading)}</h2>'
    if plot.png is None:
        return f'<section>{heading}<p class="note">{_escape(plot.note)}</p></section>'
    return (f"<section>{heading}<figure>"
            f'<img src="data:image/png;base64,{plot.png}" alt="{_escape(plot.alt)}" '
            f'width="{FIGURE_WIDTH_IN * FIGURE_DPI:.0f}">'
            f"<figcaption>{_escape(plot.caption)}</figcaption></figure></section>")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # a reader never sees half a page
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the report


def build_report(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
                 energy: EnergyModel | None = None) -> Path:
    """Write one self-contained HTML page comparing runs.

    The page holds a summary table and plots of the JCT distribution and percentiles,
    deadline misses, per-tenant slowdown, queue length and utilization over time,
    predicted vs measured runtime, the learner's error over time and energy per task,
    then the alerts the monitor fired. Images are embedded PNGs; the page references
    nothing outside itself.

    Args:
        run_dirs: run output folders (``tasks.parquet`` + ``summary.json``, optionally
            ``timeseries.parquet`` and ``alerts.jsonl``), or ``compare`` output folders
            standing for their per-policy subfolders. The first run is the baseline of
            the table's ratio columns.
        out: the HTML file to write (parent folders are created; written atomically).
        title: the page's title; default :data:`DEFAULT_TITLE`.
        energy: the power model of the energy column and plot; default ``EnergyModel()``.

    Returns:
        ``out`` as a Path.

    Raises:
        ConfigError: no run directory given.
        ResultsError: a directory that does not exist or holds no results, or a results
            file that cannot be read (the message names the directory or file).

    Example:
        >>> build_report(["runs/fifo", "runs/ml"], "report.html", title="fifo vs ml")
        ... # doctest: +SKIP
    """
    model = energy if energy is not None else EnergyModel()
    runs = _load_runs(run_dirs)
    colors = _colors(len(runs))
    estimates = [model.estimate(run.results) for run in runs]
    title = title or DEFAULT_TITLE
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    plots = [
        _plot_jct_cdf(runs, colors),
        _plot_percentiles(runs, colors),
        _plot_deadlines(runs, colors),
        _plot_tenants(runs, colors),
        _plot_over_time(
            runs, colors, anchor="queue", heading="Queue length over time",
            caption="Each line counts the tasks of one run that had arrived (and whose "
                    "parents had finished) but had not started yet: a line that keeps "
                    "climbing is a run falling behind its arrivals.",
            series=queue_length_series, title="Queued tasks over time",
            ylabel="tasks waiting for a slot", what="queue lengths"),
        _plot_over_time(
            runs, colors, anchor="utilization", heading="Utilization over time",
            caption="Each line is the share of a run's slots busy running tasks (weighted "
                    "by each task's cpu): dips while tasks are queued mean idle slots a "
                    "better placement could have used.",
            series=utilization_series, title="Busy slots / slots over time",
            ylabel="utilization (busy slots / slots, %)", what="utilization", percent=True),
        _plot_predictions(runs, colors),
        _plot_learner_error(runs, colors),
        _plot_energy(runs, colors, estimates, model),
    ]
    sections = [f'<section><h2 id="summary">1. Summary</h2>'
                f"{_summary_table(runs, colors, estimates)}{_kinds_table(runs)}</section>"]
    sections += [_figure_html(number, plot) for number, plot in enumerate(plots, start=2)]
    sections.append(f'<section><h2 id="alerts">{len(plots) + 2}. Alerts</h2>'
                    f"{_alerts_section(runs)}</section>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'  # or the browser asks for /favicon.ico
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{_header(title, runs, colors, generated)}\n" + "\n".join(sections)
            + "\n</main>\n</body>\n</html>\n")
    out = Path(out)
    _write_atomically(out, page)
    return out
