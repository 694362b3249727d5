"""The benchmark suite (``ray-sched bench``) and sensitivity sweeps (``ray-sched tune
sensitivity``).

**Suite.** A grid of scenarios x loads x policies. Each (scenario, load) *cell* is one
trace replayed under every policy by :func:`ray_sched.replay.compare`: one after another,
in this process, on the same embedded Ray, so the ratios of a cell are measured in the
same run. Scenarios: the synthetic ``mixed``, ``bursty``, ``drift`` and ``tree``
(:func:`ray_sched.workloads.synthetic.generate`), a window of the NASA iPSC/860 log
(``nasa``) and copies of a WfInstances workflow (``wfinstances``); see
:func:`build_trace`. A cell's trace is the scenario's trace at that load: the same tasks,
arrivals stretched to the load. One time scale per scenario (the same at every load)
shrinks arrivals and runtimes so that the arrival span at the suite's lowest load is
``Suite.target_span_s``. Writes ``OUT/summary.csv`` (one row per scenario x load x
policy), ``OUT/report.md``, ``OUT/report-<scenario>.html`` (plots of every policy at the
highest load) and, per cell, ``OUT/<scenario>/load-<L>/<policy>/`` (the
replay's files) and the trace under ``OUT/traces/``.

**Sensitivity.** :func:`sensitivity` runs one trace on the simulator once per value of
one parameter and reports each metric's change relative to the first value.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ray_sched.errors import ConfigError
from ray_sched.metrics import SUMMARY_FIELDS
from ray_sched.task import PARENT_SEPARATOR
from ray_sched.trace import validate_frame, write_trace
from ray_sched.work import busy_neighbours
from ray_sched.workloads import synthetic
from ray_sched.workloads.window import (
    UNIT_COPY_GAP_S,
    contract_order,
    repeat_frame,
    rescale_to_load,
    work_slot_s,
)

REPO = Path(__file__).resolve().parents[1]
#: Third-party traces (``shared/data/traces``, next to this repository).
SHARED_TRACES = REPO.parent / "shared" / "data" / "traces"
#: The NASA iPSC/860 log and the window of it the suite uses (as ``examples/nasa-500.csv``).
NASA_LOG = SHARED_TRACES / "pwa" / "NASA-iPSC-1993-3.1-cln.swf.gz"
NASA_START_JOB = 5000
#: Used instead of the log when ``shared/`` is absent (the same window, 500 jobs).
NASA_EXAMPLE = REPO / "examples" / "nasa-500.csv"
#: The workflow of the ``wfinstances`` scenario: 8 programs, a pipeline 5 deep within 50 tasks.
WORKFLOW = SHARED_TRACES / "wfinstances" / "epigenomics-chameleon-hep-6seq-100k-001.json"
#: The ``wfinstances`` trace is this many copies of one workflow, one tenant per copy.
WORKFLOW_COPIES = 3

SCENARIOS = (*synthetic.SCENARIOS, "nasa", "wfinstances")
POLICIES = ("ray-default", "dask", "fifo", "round-robin", "least-loaded", "power-of-two",
            "ml", "oracle")
LOADS = (0.5, 0.7, 0.85, 0.95)
#: The reference of every ratio in the report.
BASELINE = "ray-default"
#: A replay of one of our schedulers whose mean arrival-to-placement time exceeds this (ms)
#: is marked disturbed: its actors were short of CPU (2.0-7.5 ms on the quiet machine,
#: benchmarks/README.md, foundation), so its JCTs say more about the machine than the policy.
DISTURBED_OVERHEAD_MS = 20.0
#: Columns of summary.csv besides the contract's summary fields.
ID_COLUMNS = ("suite", "scenario", "load")
EXTRA_COLUMNS = ("time_scale", "slots", "seed", "cell_wall_s")


@dataclass(frozen=True)
class Suite:
    """One benchmark grid.

    Attributes:
        name: ``quick`` or ``standard``.
        scenarios, policies, loads: the grid.
        n_tasks: tasks per trace.
        target_span_s: arrival span, seconds of replay, at the lowest load after time
            scaling; it sets each scenario's time scale, hence how long a replay lasts.
        slots: slots of every replay (and the slot count the loads refer to).
        seed: of the synthetic traces and of randomised policies.
        work: the tasks' synthetic work, ``sleep`` or ``cpu`` (``ray_sched.work``).
        busy: CPU-bound neighbour processes running beside every replay (contention).
    """

    name: str
    scenarios: tuple[str, ...] = SCENARIOS
    policies: tuple[str, ...] = POLICIES
    loads: tuple[float, ...] = LOADS
    n_tasks: int = 150
    target_span_s: float = 1.5
    slots: int = 8
    seed: int = 11
    work: str = "sleep"
    busy: int = 0

    @property
    def n_replays(self) -> int:
        return len(self.scenarios) * len(self.loads) * len(self.policies)


#: ``quick`` keeps every scenario and policy but two loads: starting one of our schedulers
#: (its actors) costs 4-5 s on the 2-core machine whatever the trace, about 32 s per cell,
#: so all four loads would take about 15 minutes. 150 tasks, spans of 1.5 s at load 0.5.
SUITES = {
    "quick": Suite("quick", loads=(0.5, 0.85), n_tasks=150, target_span_s=1.5),
    "standard": Suite("standard", n_tasks=1000, target_span_s=20.0),
}


def get_suite(name: str) -> Suite:
    """The suite of that name.

    Raises:
        ConfigError: an unknown name; the message lists the suites.
    """
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[name]


def customize(suite: Suite, *, scenarios: Sequence[str] | None = None,
              policies: Sequence[str] | None = None, loads: Sequence[float] | None = None,
              n_tasks: int | None = None, target_span_s: float | None = None,
              slots: int | None = None, work: str | None = None,
              busy: int | None = None) -> Suite:
    """A copy of ``suite`` with some dimensions replaced (None keeps the suite's), checked.

    Raises:
        ConfigError: an unknown scenario or policy, a load outside (0, 1.5], an empty
            list, a non-positive size, an unknown work or a negative busy count.
    """
    from ray_sched.policies import BASELINES, resolve_policy
    from ray_sched.replay import check_work

    scenarios = tuple(suite.scenarios if scenarios is None else scenarios)
    policies = tuple(suite.policies if policies is None else policies)
    loads = tuple(suite.loads if loads is None else loads)
    for label, values in (("scenarios", scenarios), ("policies", policies), ("loads", loads)):
        if not values:
            raise ConfigError(f"--{label}: empty list")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    for policy in policies:
        if policy not in BASELINES:
            resolve_policy(policy)
    for load in loads:
        if not (isinstance(load, (int, float)) and 0 < load <= 1.5):
            raise ConfigError(f"--loads: each load must be in (0, 1.5], got {load!r}")
    n_tasks = suite.n_tasks if n_tasks is None else n_tasks
    slots = suite.slots if slots is None else slots
    target_span_s = suite.target_span_s if target_span_s is None else target_span_s
    for label, value in (("n_tasks", n_tasks), ("slots", slots)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ConfigError(f"{label} must be an integer >= 2, got {value!r}")
    if not target_span_s > 0:
        raise ConfigError(f"target_span_s must be > 0, got {target_span_s!r}")
    work = suite.work if work is None else work
    check_work(work)
    busy = suite.busy if busy is None else busy
    if not isinstance(busy, int) or isinstance(busy, bool) or busy < 0:
        raise ConfigError(f"--busy must be an integer >= 0, got {busy!r}")
    return Suite(suite.name, scenarios, policies, tuple(sorted(set(loads))), n_tasks,
                 target_span_s, slots, suite.seed, work, busy)


# ---------------------------------------------------------------------------------- traces


def build_trace(scenario: str, *, n: int, slots: int, load: float, seed: int) -> pd.DataFrame:
    """The trace of a scenario at an offered load (native time: not yet time-scaled).

    - synthetic scenarios: :func:`ray_sched.workloads.synthetic.generate`.
    - ``nasa``: usable jobs ``NASA_START_JOB ..`` of the NASA iPSC/860 log
      (:func:`ray_sched.workloads.swf.convert_swf`, cpu capped at ``slots``); without
      ``shared/``, the first ``n`` of ``examples/nasa-500.csv`` (the same window).
    - ``wfinstances``: :data:`WORKFLOW_COPIES` copies of the first ``n / copies`` tasks of
      :data:`WORKFLOW` in depth-first topological order (so the subset keeps whole
      pipelines, 5 deep, rather than the first level of every one), copy ``k`` of tenant
      ``<workflow>#k``, the copies spread evenly to reach the load.

    Raises:
        ConfigError: an unknown scenario, a bad parameter, or a missing input file.
    """
    if scenario in synthetic.SCENARIOS:
        return synthetic.generate(scenario, n=n, slots=slots, load=load, seed=seed)
    if scenario == "nasa":
        return _nasa_trace(n, slots, load)
    if scenario == "wfinstances":
        return _workflow_trace(n, slots, load)
    raise ConfigError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")


def _nasa_trace(n: int, slots: int, load: float) -> pd.DataFrame:
    if NASA_LOG.is_file():
        from ray_sched.workloads.swf import convert_swf

        frame, _ = convert_swf(NASA_LOG, start_job=NASA_START_JOB, max_jobs=n, slots=slots,
                               load=load, max_cpu=slots)
        return frame
    from ray_sched.trace import read_trace

    example = read_trace(NASA_EXAMPLE)
    if n > len(example):
        raise ConfigError(f"scenario nasa: {NASA_LOG} is missing and {NASA_EXAMPLE} has only "
                          f"{len(example)} jobs (asked for {n})")
    frame = example.head(n).copy()
    frame["cpu"] = frame["cpu"].clip(upper=slots)
    frame, _ = rescale_to_load(frame, slots, load)
    return validate_frame(frame, source=str(NASA_EXAMPLE))


def _workflow_trace(n: int, slots: int, load: float) -> pd.DataFrame:
    from ray_sched.workloads.wfinstances import convert_wfinstances

    if not WORKFLOW.is_file():
        raise ConfigError(f"scenario wfinstances needs {WORKFLOW} (shared/ next to the "
                          f"repository); leave the scenario out otherwise")
    per_copy = n // WORKFLOW_COPIES
    if per_copy < 2:
        raise ConfigError(f"scenario wfinstances needs n >= {2 * WORKFLOW_COPIES}, got {n}")
    whole, _ = convert_wfinstances(WORKFLOW)
    base = whole.iloc[_depth_first_prefix(whole, per_copy)].reset_index(drop=True)
    frame = repeat_frame(base, WORKFLOW_COPIES, UNIT_COPY_GAP_S)
    frame["tenant"] = frame["tenant"].astype(str) + "#" + frame["copy"].astype(str)
    frame, _ = rescale_to_load(frame, slots, load)
    return validate_frame(contract_order(frame), source=str(WORKFLOW))


def _depth_first_prefix(frame: pd.DataFrame, count: int) -> list[int]:
    """Rows of the first ``count`` tasks of a depth-first topological order (Kahn's algorithm
    with a stack), in file order: a set closed under parents that goes deep first."""
    position = {task_id: i for i, task_id in enumerate(frame["task_id"])}
    children: list[list[int]] = [[] for _ in position]
    waiting = np.zeros(len(position), dtype=np.int64)
    for child, parents in enumerate(frame["parent_id"]):
        if isinstance(parents, str) and parents:
            for parent in parents.split(PARENT_SEPARATOR):
                children[position[parent]].append(child)
                waiting[child] += 1
    stack = [int(i) for i in np.flatnonzero(waiting == 0)][::-1]
    chosen: list[int] = []
    while stack and len(chosen) < count:
        row = stack.pop()
        chosen.append(row)
        for child in reversed(children[row]):
            waiting[child] -= 1
            if waiting[child] == 0:
                stack.append(child)
    return sorted(chosen)


def time_scale_for(frame: pd.DataFrame, *, slots: int, lowest_load: float,
                   target_span_s: float) -> float:
    """The time scale that makes the arrival span at ``lowest_load`` ``target_span_s``.

    The span at load L is ``work / (slots * L)`` and the work is the same at every load,
    so one factor serves all loads of a scenario.
    """
    return target_span_s * slots * lowest_load / work_slot_s(frame)


# ----------------------------------------------------------------------------------- suite


def default_out(suite: str, root: str | Path | None = None) -> Path:
    """``<root>/benchmarks/results/<today>/bench-<suite>``; ``root`` defaults to this
    repository when the package runs from its source tree, else the current directory."""
    if root is None:
        root = REPO if (REPO / "benchmarks").is_dir() else Path.cwd()
    today = datetime.date.today().isoformat()
    return Path(root) / "benchmarks" / "results" / today / f"bench-{suite}"


def parse_names(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; None stays None (the suite's own list)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_loads(text: str | None) -> list[float] | None:
    """``"0.5,0.85"`` -> ``[0.5, 0.85]``; None stays None.

    Raises:
        ConfigError: a value that is not a number (quoted).
    """
    loads = []
    for part in parse_names(text) or []:
        try:
            loads.append(float(part))
        except ValueError:
            raise ConfigError(f"--loads: {part!r} is not a number") from None
    return None if text is None else loads


def _writable_dir(out: Path) -> Path:
    """Create ``out`` and prove it writable before anything runs.

    Raises:
        ConfigError: ``out`` is a file, or it cannot be created or written.
    """
    probe = out / ".write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot write there ({error.strerror or error})"
                          ) from error
    return out


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_suite(suite: Suite | str, out: str | Path | None = None, *,
              progress: Callable[[str], None] = _progress,
              model_options: dict | None = None) -> pd.DataFrame:
    """Replay the suite's grid and write ``summary.csv`` and ``report.md`` into ``out``.

    Args:
        suite: a :class:`Suite` or the name of one of :data:`SUITES`.
        out: the output folder (default :func:`default_out`).
        progress: called with one line per cell (default: to stderr).
        model_options: learner options of the ``ml`` policy (default: a fresh model per
            cell, no checkpoints).

    Returns:
        The summary frame: one row per scenario x load x policy, columns
        :data:`ID_COLUMNS`, the contract's summary fields, then :data:`EXTRA_COLUMNS`.

    Raises:
        ConfigError: an unknown suite, or an output folder that cannot be written (both
            before anything runs).
    """
    from ray_sched.replay import compare

    if isinstance(suite, str):
        suite = get_suite(suite)
    out = _writable_dir(Path(out) if out is not None else default_out(suite.name))
    model_options = model_options or {"fresh": True, "model_dir": None}
    started = time.perf_counter()
    run_date = datetime.date.today().isoformat()
    load_average = [_load_average()]
    rows: list[dict] = []
    cells = [(s, load) for s in suite.scenarios for load in suite.loads]
    progress(f"suite {suite.name}: {len(suite.scenarios)} scenarios x {len(suite.loads)} "
             f"loads x {len(suite.policies)} policies = {suite.n_replays} replays of "
             f"{suite.n_tasks} tasks on {suite.slots} slots; results in {out}")
    time_scales: dict[str, float] = {}
    import ray
    started_ray = not ray.is_initialized()  # a Ray the caller started is the caller's to stop
    try:
        for index, (scenario, load) in enumerate(cells, start=1):
            trace = build_trace(scenario, n=suite.n_tasks, slots=suite.slots, load=load,
                                seed=suite.seed)
            if scenario not in time_scales:
                time_scales[scenario] = time_scale_for(
                    trace, slots=suite.slots, lowest_load=min(suite.loads),
                    target_span_s=suite.target_span_s)
            scale = time_scales[scenario]
            trace_path = write_trace(trace, out / "traces" / f"{scenario}-load{load:g}.csv")
            cell_started = time.perf_counter()
            with busy_neighbours(suite.busy):
                results = compare(trace_path, list(suite.policies), slots=suite.slots,
                                  out=out / scenario / f"load-{load:g}", time_scale=scale,
                                  seed=suite.seed, show_progress=False,
                                  model_options=model_options, work=suite.work)
            cell_wall_s = time.perf_counter() - cell_started
            for result in results:
                summary = result.summary
                rows.append({"suite": suite.name, "scenario": scenario, "load": load,
                             **{f: summary.get(f) for f in SUMMARY_FIELDS},
                             "time_scale": scale, "slots": suite.slots, "seed": suite.seed,
                             "cell_wall_s": cell_wall_s})
            _summary_frame(rows).to_csv(out / "summary.csv", index=False)  # partial results
            jcts = ", ".join(f"{r.summary['policy']} {_number(r.summary['jct_mean_s'])}"
                             for r in results)
            failed = sum(r.summary["n_failed"] for r in results)
            progress(f"cell {index}/{len(cells)} {scenario} load {load:g}: "
                     f"{cell_wall_s:.0f} s (total {time.perf_counter() - started:.0f} s); "
                     f"mean JCT s: {jcts}" + (f"; {failed} task(s) failed" if failed else ""))
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    wall_s = time.perf_counter() - started
    load_average.append(_load_average())
    frame = _summary_frame(rows)
    frame.to_csv(out / "summary.csv", index=False)
    (out / "report.md").write_text(
        render_report(frame, suite, wall_s, time_scales, load_average, run_date) + "\n")
    pages = write_html_reports(out, suite)
    progress(f"done in {wall_s:.0f} s: {out / 'summary.csv'}, {out / 'report.md'}, "
             + ", ".join(str(p) for p in pages))
    return frame


def write_html_reports(out: Path, suite: Suite) -> list[Path]:
    """``report-<scenario>.html`` per scenario: every policy at the suite's highest load
    (where policies differ most), with the plots of :func:`ray_sched.monitor.report`."""
    from ray_sched.monitor.report import build_report

    load = max(suite.loads)
    pages = []
    for scenario in suite.scenarios:
        cell = out / scenario / f"load-{load:g}"
        if cell.is_dir():
            pages.append(build_report(
                [cell], out / f"report-{scenario}.html",
                title=f"Benchmark {suite.name}: {scenario} at load {load:g}"))
    return pages


def _load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS does not say): other
    processes' CPU use is the main source of noise in replays this short."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _summary_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *SUMMARY_FIELDS, *EXTRA_COLUMNS])


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ratio(value, reference) -> str:
    if value is None or reference is None or pd.isna(value) or pd.isna(reference) \
            or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def estimate_wall_s(frame: pd.DataFrame, wall_s: float, measured: Suite,
                   target: Suite) -> float:
    """Seconds ``target`` would take, from a run of ``measured`` that took ``wall_s``: that
    run's fixed cost per replay (wall time less makespans: starting schedulers and actors)
    and its makespan per second of arrival span."""
    if frame.empty:
        return math.nan
    makespan = frame["makespan_s"].astype(float)
    fixed_s = max(wall_s - float(makespan.sum()), 0.0) / len(frame)
    spans = measured.target_span_s * min(measured.loads) / frame["load"].astype(float)
    stretch = float((makespan / spans).median())
    span_s = sum(target.target_span_s * min(target.loads) / load for load in target.loads)
    return (target.n_replays * fixed_s
            + len(target.scenarios) * len(target.policies) * span_s * stretch)


def render_report(frame: pd.DataFrame, suite: Suite, wall_s: float,
                  time_scales: dict[str, float],
                  load_average: Sequence[float | None] = (), date: str | None = None) -> str:
    """``report.md``: the run's facts, the headline ratios, then one table per scenario.

    ``load_average``: the machine's 1-minute load average at the start and the end;
    ``date``: the day the run started (default today)."""
    today = date or datetime.date.today().isoformat()
    failed = frame[frame["n_failed"].fillna(0) > 0]
    lines = [
        f"# Benchmark suite `{suite.name}`, {today}", "",
        f"Measured wall time: **{wall_s:.0f} s** ({wall_s / 60:.1f} min) for "
        f"{len(frame)} replays ({len(suite.scenarios)} scenarios x {len(suite.loads)} loads x "
        f"{len(suite.policies)} policies), {suite.n_tasks} tasks per trace, {suite.slots} "
        f"slots, seed {suite.seed}, work `{suite.work}`, {suite.busy} busy neighbour "
        f"process(es). Each (scenario, load) is one trace replayed under every "
        f"policy one after another in one process on the same embedded Ray; `ml` starts "
        f"from an empty model in every cell. Time scale per scenario (arrival span "
        f"{suite.target_span_s:g} s at load {min(suite.loads):g}): "
        + ", ".join(f"{s} {v:.3g}" for s, v in time_scales.items()) + ".", "",
    ]
    if load_average and None not in load_average:
        lines += ["Load average (1 min) at the start and the end: "
                  + " and ".join(f"{v:.2f}" for v in load_average)
                  + f" (this machine's other processes compete with the replays; a replay "
                    f"lasts about {suite.target_span_s:g} s, so a stall of a few hundred ms "
                    f"moves its mean JCT a lot).", ""]
    if suite.name == "quick" and len(frame):
        estimate = estimate_wall_s(frame, wall_s, suite, SUITES["standard"])
        lines += [f"The `standard` suite ({SUITES['standard'].n_replays} replays of "
                  f"{SUITES['standard'].n_tasks} tasks, all four loads) would take about "
                  f"{estimate / 60:.0f} min by this run's per-replay cost.", ""]
    if len(failed):
        lines += ["Replays with failed tasks: " + ", ".join(
            f"{r.scenario} load {r.load:g} {r.policy} ({r.n_failed})"
            for r in failed.itertuples()) + ".", ""]
    ours = frame[frame["sched_overhead_ms_mean"].notna()]
    if len(ours):
        disturbed = int((ours["sched_overhead_ms_mean"] > DISTURBED_OVERHEAD_MS).sum())
        lines += [f"Disturbed replays (marked `*`): {disturbed} of the {len(ours)} replays of "
                  f"our schedulers took more than {DISTURBED_OVERHEAD_MS:g} ms on average from "
                  f"arrival to placement (median here "
                  f"{ours['sched_overhead_ms_mean'].median():.1f} ms; 2.0-7.5 ms on the quiet "
                  f"machine): their actors were short of CPU. ray-default and dask have no "
                  f"such measure.", ""]
    lines += _headline(frame)
    lines += ["Cells: mean JCT in seconds (its ratio to ray-default's), p99 JCT (s), "
              "deadline miss rate (`-`: the trace has no deadlines) and Jain's index over "
              "tenants' mean slowdown.", ""]
    for scenario in suite.scenarios:
        part = frame[frame["scenario"] == scenario]
        if part.empty:
            continue
        lines += [f"## {scenario}", "", _scenario_table(part, suite.loads), ""]
    return "\n".join(lines).rstrip()


def _headline(frame: pd.DataFrame) -> list[str]:
    """ml's mean JCT over ray-default's, dask's and the oracle's, per scenario and load."""
    if "ml" not in set(frame["policy"]):
        return []
    references = [p for p in (BASELINE, "dask", "oracle") if p in set(frame["policy"])]
    loads = sorted(frame["load"].unique())
    header = ["scenario"] + [f"ml / {p} @ {load:g}" for load in loads for p in references]
    rows = []
    for scenario, part in frame.groupby("scenario", sort=False):
        jct = {(r.policy, r.load): r.jct_mean_s for r in part.itertuples()}
        mark = {r.load: _disturbed_mark(r.sched_overhead_ms_mean)
                for r in part.itertuples() if r.policy == "ml"}
        rows.append([scenario] + [_ratio(jct.get(("ml", load)), jct.get((p, load)))
                                  + mark.get(load, "") for load in loads for p in references])
    return ["## Headline: ml's mean JCT over the others'", "", _markdown(header, rows), ""]


def _disturbed_mark(overhead_ms) -> str:
    return " *" if pd.notna(overhead_ms) and overhead_ms > DISTURBED_OVERHEAD_MS else ""


def _scenario_table(part: pd.DataFrame, loads: Sequence[float]) -> str:
    header = ["policy"]
    for load in loads:
        header += [f"{load:g}: JCT mean (vs {BASELINE})", f"{load:g}: p99",
                   f"{load:g}: miss", f"{load:g}: Jain"]
    rows = []
    for policy in dict.fromkeys(part["policy"]):
        row = [policy]
        for load in loads:
            cell = part[(part["policy"] == policy) & (part["load"] == load)]
            base = part[(part["policy"] == BASELINE) & (part["load"] == load)]
            if cell.empty:
                row += ["-"] * 4
                continue
            r = cell.iloc[0]
            reference = base.iloc[0]["jct_mean_s"] if len(base) else None
            row += [f"{_number(r['jct_mean_s'])} ({_ratio(r['jct_mean_s'], reference)})"
                    + _disturbed_mark(r["sched_overhead_ms_mean"]),
                    _number(r["jct_p99_s"]), _number(_or_none(r["deadline_miss_rate"])),
                    _number(_or_none(r["jain_fairness_tenants"]))]
        rows.append(row)
    return _markdown(header, rows)


def _or_none(value):
    return None if value is None or pd.isna(value) else float(value)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    rule = "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule,
                      *("| " + " | ".join(row) + " |" for row in rows)])


# ----------------------------------------------------------------------------- sensitivity

#: Metrics of a sensitivity table (summary fields).
SENSITIVITY_METRICS = ("jct_mean_s", "jct_p50_s", "jct_p99_s", "slowdown_mean",
                       "deadline_miss_rate", "jain_fairness_tenants", "utilization",
                       "makespan_s")
#: Parameters swept by something other than the learned ordering's weights.
SIMULATION_PARAMS = {
    "launch_overhead_s": "per-task launch overhead of the simulator, seconds (>= 0)",
    "load": "offered load; the trace is regenerated at each value (> 0)",
    "slots": "slots of the simulation, the trace fixed (generated for --slots; integer >= 1)",
}


def ordering_weight_params() -> dict[str, str]:
    """The learned ordering's keyword parameters by the name of their module constant
    (``PRIORITY_WEIGHT`` -> ``priority_weight``)."""
    from ray_sched.policies.learned import LearnedOrdering

    parameters = inspect.signature(LearnedOrdering.__init__).parameters
    return {name.upper(): name for name, p in parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def sensitivity_params() -> list[str]:
    """Every name ``--param`` accepts."""
    return [*SIMULATION_PARAMS, *ordering_weight_params()]


def _canonical_param(name: str) -> str:
    for known in sensitivity_params():
        if name.lower() == known.lower():
            return known
    raise ConfigError(f"unknown parameter {name!r}; --param accepts "
                      f"{', '.join(sensitivity_params())}")


def parse_values(param: str, text: str | Sequence) -> list[float | int]:
    """``"a,b,c"`` (or a sequence) as numbers for ``param``: integers for ``slots``.

    Raises:
        ConfigError: an empty list, or a value that is not a number in the parameter's
            range (the message quotes it).
    """
    items = [v.strip() for v in text.split(",")] if isinstance(text, str) else list(text)
    items = [v for v in items if v != ""]
    if not items:
        raise ConfigError(f"--values: no value to sweep {param} over")
    values: list[float | int] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"--values: {item!r} is not a number ({param})") from None
        if not math.isfinite(value):
            raise ConfigError(f"--values: {item!r} is not a finite number ({param})")
        if param == "slots":
            if value != int(value) or value < 1:
                raise ConfigError(f"--values: slots must be integers >= 1, got {item!r}")
            value = int(value)
        elif param == "load" and not value > 0:
            raise ConfigError(f"--values: load must be > 0, got {item!r}")
        elif value < 0:
            raise ConfigError(f"--values: {param} must be >= 0, got {item!r}")
        values.append(value)
    return values


@contextlib.contextmanager
def learned_ordering_weights(**weights: float) -> Iterator[None]:
    """Run the learned ordering with other weights (keyword names of
    :class:`ray_sched.policies.learned.LearnedOrdering`) inside the ``with`` block.

    ``LearnedOrdering`` takes the module constants (``PRIORITY_WEIGHT``, ...) as keyword
    defaults, bound when the class is defined, so assigning the constants would change
    nothing. Instead the ordering registry's ``ml`` entry (where the simulator, and every
    ``ml`` policy made in this process, finds the class) is replaced by a subclass with
    these defaults, and restored on exit, even after an error. Actors in other processes
    (a Ray replay) do not see it: it is for the simulator.

    Raises:
        ConfigError: a name the ordering does not take.
    """
    from ray_sched.policies import ORDERINGS
    from ray_sched.policies.learned import LearnedOrdering

    accepted = set(ordering_weight_params().values())
    unknown = sorted(set(weights) - accepted)
    if unknown:
        raise ConfigError(f"unknown ordering weight(s) {unknown}; accepted: {sorted(accepted)}")
    name = LearnedOrdering.name
    original = ORDERINGS[name]

    class SweptOrdering(original):
        def __init__(self, **kwargs):
            super().__init__(**{**weights, **kwargs})

    ORDERINGS[name] = SweptOrdering
    try:
        yield
    finally:
        ORDERINGS[name] = original


def sensitivity(param: str, values: Sequence[float] | str, *, scenario: str = "mixed",
                policy: str = "ml", n: int = 2000, slots: int = 64, nodes: int = 4,
                load: float = 0.85, seed: int = 1,
                out: str | Path | None = None) -> pd.DataFrame:
    """Simulate one trace once per value of ``param``; each metric against the first value's.

    Args:
        param: one of :func:`sensitivity_params` (case-insensitive).
        values: the values, in order (the first is the reference), or ``"a,b,c"``.
        scenario: one of :data:`SCENARIOS`; the trace is :func:`build_trace` of
            ``n`` tasks at ``load`` on ``slots`` with ``seed`` (regenerated per value when
            sweeping ``load``).
        policy, nodes: of every simulation (``ray_sched.replay.simulate_trace``).
        out: when given, ``out/sensitivity.csv`` and ``out/sensitivity.md`` are written.

    Returns:
        One row per value: ``param``, ``value``, each of :data:`SENSITIVITY_METRICS`, and
        ``<metric>_change`` = (metric - first value's) / first value's (NaN when either
        is missing or the first is 0).

    Raises:
        ConfigError: an unknown parameter (the message lists them), a bad value, a weight
            of an ordering the policy does not use, an unwritable ``out``.
    """
    from ray_sched.policies import BASELINES, resolve_policy
    from ray_sched.replay import simulate_trace

    param = _canonical_param(param)
    values = parse_values(param, values)
    if policy in BASELINES:
        raise ConfigError(f"{policy!r} cannot be simulated: it measures another scheduler")
    weights = ordering_weight_params()
    if param in weights and resolve_policy(policy).ordering != "ml":
        raise ConfigError(f"{param} is a weight of the learned ordering; --policy {policy} "
                          f"does not use it (try --policy ml)")
    out_dir = _writable_dir(Path(out)) if out is not None else None
    fixed = None if param == "load" else build_trace(scenario, n=n, slots=slots, load=load,
                                                     seed=seed)
    rows = []
    for value in values:
        trace = fixed if fixed is not None else build_trace(scenario, n=n, slots=slots,
                                                            load=value, seed=seed)
        options = {"policy": policy, "slots": slots, "nodes": nodes, "seed": seed}
        if param == "launch_overhead_s":
            options["launch_overhead_s"] = value
        elif param == "slots":
            options["slots"] = value
        context = (learned_ordering_weights(**{weights[param]: value}) if param in weights
                   else contextlib.nullcontext())
        with context:
            summary = simulate_trace(trace, **options).summary
        rows.append({"param": param, "value": value,
                     **{m: _or_none(summary.get(m)) for m in SENSITIVITY_METRICS}})
    table = pd.DataFrame(rows)
    for metric in SENSITIVITY_METRICS:
        first = table[metric].iloc[0]
        table[f"{metric}_change"] = (table[metric] - first) / first \
            if first is not None and pd.notna(first) and first != 0 else np.nan
    if out_dir is not None:
        table.to_csv(out_dir / "sensitivity.csv", index=False)
        described = (f"{param} swept on `{scenario}` ({n} tasks, load {load:g}, seed {seed}), "
                     f"policy {policy}, {slots} slots over {nodes} nodes, simulator.")
        (out_dir / "sensitivity.md").write_text(
            f"# Sensitivity to {param}\n\n{described}\n\n{sensitivity_table(table)}\n")
    return table


def sensitivity_table(table: pd.DataFrame) -> str:
    """The sweep as markdown: per metric its value and its change from the first row's."""
    param = table["param"].iloc[0] if len(table) else "value"
    header = [param, *SENSITIVITY_METRICS]
    rows = []
    for _, row in table.iterrows():
        cells = [f"{row['value']:g}"]
        for metric in SENSITIVITY_METRICS:
            change = row[f"{metric}_change"]
            shown = "" if pd.isna(change) else f" ({change:+.1%})"
            cells.append(_number(_or_none(row[metric])) + shown)
        rows.append(cells)
    return _markdown(header, rows)
