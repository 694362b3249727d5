"""Replay a task trace through a scheduler and write results per TRACE_FORMAT.md.

The replay is a thin client: for our policies it submits each task to a
:class:`ray_sched.Scheduler` at its arrival time (the same path as the Python
API); for the baselines it submits to Ray directly or to Dask, with the same
arrival clock and the same synthetic work.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ray_sched import metrics
from ray_sched.control.chaos import parse_chaos
from ray_sched.engines import Engine, SchedulerEngine
from ray_sched.errors import ConfigError
from ray_sched.monitor import DECISIONS_FILE, TIMESERIES_FILE
from ray_sched.monitor.cpu import ControlPlaneCpu
from ray_sched.monitor.energy import EnergyModel
from ray_sched.policies import BASELINES, resolve_policy
from ray_sched.progress import Progress
from ray_sched.sim.engine import ARRIVAL_BATCH_WINDOW_S
from ray_sched.task import Completion, Task
from ray_sched.trace import frame_to_tasks, read_trace, validate_frame
from ray_sched.work import WORK_KINDS

log = logging.getLogger(__name__)

#: The arrival loop never waits longer than this between checks (progress, completions).
MAX_WAIT_S = 0.05


@dataclass
class ReplayResult:
    """What a replay produced: the per-task frame and the summary (both per the contract)."""

    results: pd.DataFrame
    summary: dict
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.summary["n_failed"] == 0 and self.summary["n_ok"] == self.summary["n_tasks"]


def load_tasks(trace, time_scale: float = 1.0, work: str = "sleep"
               ) -> tuple[pd.DataFrame, list[Task]]:
    """A trace path or frame -> (validated frame, Tasks scaled by ``time_scale`` that run
    ``work`` as their synthetic work)."""
    frame = read_trace(trace) if isinstance(trace, (str, Path)) else validate_frame(trace)
    tasks = frame_to_tasks(frame, time_scale=time_scale)
    for task in tasks:
        task.work = work
    return frame, tasks


def check_work(work: str) -> None:
    """Raises ConfigError for a ``--work`` that is not one of :data:`WORK_KINDS`."""
    if work not in WORK_KINDS:
        raise ConfigError(f"--work must be one of {', '.join(WORK_KINDS)}, got {work!r}")


def make_engine(policy: str, slots: int, *, address: str | None = None,
                local_schedulers: int | None = None, regions: list[str] | None = None,
                seed: int | None = 0, model_options: dict | None = None,
                monitor_options: dict | None = None, work: str = "sleep") -> Engine:
    """The engine for a policy name: ours (a Scheduler), ``ray-default`` or ``dask``.
    ``monitor_options`` (ours only): ``monitor``, ``alerts``, ``monitor_dir``,
    ``otlp_endpoint``, ``inline`` of :class:`ray_sched.Scheduler`. ``work``: the tasks'
    synthetic work (Dask runs ``cpu`` work in worker processes, as its users would)."""
    if policy == "dask":
        from ray_sched.baselines.dask_engine import DaskEngine
        return DaskEngine(slots, processes=work == "cpu")
    from ray_sched.actors.runtime import ensure_ray
    if policy == "ray-default":
        from ray_sched.baselines.ray_default import RayDefaultEngine
        ensure_ray(slots, address)
        return RayDefaultEngine(slots)
    resolve_policy(policy)  # a clear error before Ray starts
    ensure_ray(slots, address)
    from ray_sched.scheduler import Scheduler
    return SchedulerEngine(Scheduler(policy, slots, address=address,
                                     local_schedulers=local_schedulers, regions=regions,
                                     seed=seed, **(model_options or {}),
                                     **(monitor_options or {})))


def drive(engine: Engine, tasks: list[Task], *, progress: Progress | None = None,
          chaos: list | None = None) -> tuple[float, dict[str, Completion]]:
    """Submit every task at ``t0 + arrival_s`` and collect every completion.

    Returns:
        (t0, completions by task id); t0 is the wall-clock start of the replay.
    """
    order = sorted(tasks, key=lambda t: (t.arrival_s, t.task_id))
    n = len(order)
    completions: dict[str, Completion] = {}
    jct_sum = 0.0
    next_index = 0
    t0 = time.time()
    started = getattr(engine, "started", None)
    if started is not None:
        started(t0)
    faults = list(chaos or [])
    while len(completions) < n:
        now = time.time() - t0
        while faults and faults[0].at_s <= now:
            fault = faults.pop(0)
            engine.inject_fault(fault.action, fault.index)
        due = []
        while next_index < n and order[next_index].arrival_s <= now + ARRIVAL_BATCH_WINDOW_S:
            task = order[next_index]
            task.submitted_at = time.time()
            due.append(task)
            next_index += 1
        if due:
            engine.submit(due)
        next_arrival = order[next_index].arrival_s if next_index < n else math.inf
        if faults:
            next_arrival = min(next_arrival, faults[0].at_s)
        wait = max(0.0, min(MAX_WAIT_S, next_arrival - (time.time() - t0)))
        for completion in engine.poll(wait):
            if completion.task_id in completions:
                continue  # recorded once per task id
            completions[completion.task_id] = completion
            if completion.status == "ok" and completion.finish_wall is not None:
                jct_sum += completion.finish_wall - (completion.submitted_wall or t0)
        if progress is not None:
            done = len(completions)
            running = engine.running() if progress.tty else None
            progress.update(done, next_index - done, running, jct_sum / done if done else None)
    if progress is not None:
        progress.update(len(completions), 0, 0, jct_sum / n if n else None, force=True)
        progress.close()
    return t0, completions


def results_frame(tasks: list[Task], completions: dict[str, Completion], t0: float,
                  policy: str) -> pd.DataFrame:
    """One row per task of the trace (contract columns, then extras), times relative to t0."""
    def rel(wall):
        return np.nan if wall is None else wall - t0

    rows = []
    for task in tasks:
        c = completions[task.task_id]
        arrival = rel(task.submitted_at or c.submitted_wall)
        start, finish = rel(c.start_wall), rel(c.finish_wall)
        rows.append({
            "task_id": task.task_id, "policy": policy, "worker": c.worker, "node": c.node,
            "arrival_s": arrival, "start_s": start, "finish_s": finish,
            "predicted_runtime_s": _or_nan(c.predicted_runtime_s),
            "measured_runtime_s": finish - start if c.status == "ok" else np.nan,
            "attempts": c.attempts, "status": c.status, "error": c.error or "",
            "runtime_s": task.runtime_s, "kind": task.kind, "tenant": task.tenant,
            "region": task.region, "priority": task.priority, "cpu": task.cpu,
            "deadline_s": np.nan if task.deadline_s is None else task.deadline_s,
            "received_s": rel(c.received_wall),
            "placed_s": rel(c.placed_wall),
            "queued_s": rel(c.queued_wall),
            "launched_s": rel(c.launched_wall),
            "trace_arrival_s": task.arrival_s,
            "predicted_p90_s": _or_nan(c.predicted_p90_s),
        })
    frame = pd.DataFrame(rows)
    finish_of = dict(zip(frame["task_id"], frame["finish_s"]))
    frame["ready_s"] = [max([arrival, *(finish_of.get(p, np.nan) for p in task.parents)])
                        for task, arrival in zip(tasks, frame["arrival_s"])]
    frame["deadline_met"] = metrics.deadline_met(frame["arrival_s"], frame["finish_s"],
                                                 frame["deadline_s"],
                                                 ok=frame["status"] == "ok")
    return frame


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def prediction_quality(frame: pd.DataFrame) -> dict:
    """MAE of log runtime and p90 coverage over all, and over the second half by arrival."""
    ok = frame[(frame["status"] == "ok") & frame["predicted_runtime_s"].notna()]
    if ok.empty:
        return {}
    ok = ok.sort_values("trace_arrival_s")
    log_error = np.abs(np.log(ok["predicted_runtime_s"].clip(lower=1e-6))
                       - np.log(ok["measured_runtime_s"].clip(lower=1e-6)))
    covered = ok["measured_runtime_s"] <= ok["predicted_p90_s"]
    half = len(ok) // 2
    return {"prediction_mae_log": float(log_error.mean()),
            "prediction_mae_log_second_half": float(log_error.iloc[half:].mean()),
            "prediction_p90_coverage": float(covered.mean()),
            "prediction_p90_coverage_second_half": float(covered.iloc[half:].mean())}


def summarize(frame: pd.DataFrame, policy: str, slots: int, extras: dict) -> dict:
    summary = metrics.summarize(frame, policy=policy, slots=slots)
    summary["energy_j_per_task"] = EnergyModel().estimate(frame)["energy_j_per_task"]
    lag_ms = (frame["arrival_s"] - frame["trace_arrival_s"]).to_numpy() * 1000.0
    summary["arrival_lag_ms_p50"] = float(np.median(lag_ms))
    summary["arrival_lag_ms_max"] = float(np.max(lag_ms))
    summary.update(prediction_quality(frame))
    summary.update(extras)
    return summary


def replay(trace, *, policy: str, slots: int, out: str | Path | None = None,
           address: str | None = None, time_scale: float = 1.0, seed: int | None = 0,
           local_schedulers: int | None = None, csv: bool = False,
           show_progress: bool = True, engine: Engine | None = None,
           model_options: dict | None = None, alerts=None, otlp_endpoint: str | None = None,
           monitor: bool = True, chaos: str | list[str] | None = None,
           inline: bool = True, controls=None, work: str = "sleep") -> ReplayResult:
    """Replay a trace under one policy and (optionally) write ``out/tasks.parquet`` and
    ``out/summary.json``.

    Args:
        trace: a trace file path or a frame (see TRACE_FORMAT.md).
        policy: a policy name, ``ORDERING+PLACEMENT``, ``ray-default`` or ``dask``.
        slots: total concurrent task slots.
        out: output directory (nothing written when None).
        address: an existing Ray cluster; without it Ray is embedded (started if needed).
        time_scale: multiplies arrivals, runtimes and deadlines.
        local_schedulers: how many local schedulers (default: one per node); regions of
            the trace are assigned to them in turn.
        engine: an engine already set up; it is not closed here.
        model_options: for policies that predict: ``model_dir``, ``model``, ``fresh``,
            ``checkpoint_every`` (see :class:`ray_sched.Scheduler`).
        alerts: alert rules (a TOML path or AlertRule list); fired ones go to the console
            and ``out/alerts.jsonl``. Our policies only.
        otlp_endpoint: where the scheduler's own metrics and alert log records go (OTLP/HTTP).
        monitor: run the monitor (our policies); it writes ``out/timeseries.parquet``, and
            the decision log goes to ``out/decisions.parquet`` for ``ray-sched story``.
        chaos: faults to inject, e.g. ``"kill-local@5s"`` (see
            :mod:`ray_sched.control.chaos`); our policies only.
        inline: the hybrid path (tiny tasks on the local scheduler's threads); False is
            ``--no-inline``.
        controls: the adaptive controllers (work stealing, forecast, adaptive
            concurrency): a :class:`ray_sched.control.Controls` or a dict of its fields.
        work: the synthetic work each task runs, in every engine alike: ``sleep``
            (``runtime_s`` of wall time) or ``cpu`` (``runtime_s`` of CPU time).

    Raises:
        TraceError: a bad trace. ConfigError: a bad policy, slot count, time scale or work.
    """
    if not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"--slots must be an integer >= 1, got {slots!r}")
    if not (isinstance(time_scale, (int, float)) and time_scale > 0):
        raise ConfigError(f"--time-scale must be > 0, got {time_scale!r}")
    check_work(work)
    if policy not in BASELINES:
        resolve_policy(policy)
    frame, tasks = load_tasks(trace, time_scale, work)
    regions = sorted({t.region for t in tasks if t.region is not None}) or None
    faults = parse_chaos(chaos)
    if policy in BASELINES and (alerts or otlp_endpoint or faults):
        raise ConfigError(f"--alerts, --otlp-endpoint and --chaos act on ray_sched's own "
                          f"scheduler; {policy!r} is a baseline without one")
    own_engine = engine is None
    if own_engine:
        engine = make_engine(policy, slots, address=address, local_schedulers=local_schedulers,
                             regions=regions if local_schedulers else None, seed=seed,
                             model_options=model_options, work=work,
                             monitor_options={"monitor": monitor, "alerts": alerts,
                                              "monitor_dir": out,
                                              "otlp_endpoint": otlp_endpoint,
                                              "inline": inline, "controls": controls})
    progress = Progress(f"replay {policy}", len(tasks), enabled=show_progress)
    watched: dict = {}
    try:
        for fault in faults:
            engine.check_fault(fault.action, fault.index)
        scheduler = getattr(engine, "scheduler", None)
        meter = ControlPlaneCpu(getattr(scheduler, "control_cpu_s", None))
        cpu_before = meter.read()
        t0, completions = drive(engine, tasks, progress=progress, chaos=faults)
        cpu = ControlPlaneCpu.summary(cpu_before, meter.read(), len(tasks))
        output = getattr(engine, "monitor_output", None)
        if output is not None:
            try:
                watched = output()
            except Exception as error:  # noqa: BLE001 - the results matter more
                log.warning("the monitor's time series and decision log are lost: %s", error)
        control = _control_totals(engine)
    finally:
        if own_engine:
            engine.close()
    results = results_frame(tasks, completions, t0, policy)
    extras = {"time_scale": time_scale, "seed": seed, "work": work,
              "trace": _trace_name(trace)}
    learner_info = getattr(getattr(engine, "scheduler", None), "learner_info", None)
    if learner_info:
        extras["learner_loaded_from"] = learner_info.get("loaded_from")
        extras["learner_checkpoint"] = learner_info.get("last_checkpoint")
        extras["learner_fallback_batches"] = learner_info.get("fallback_batches")
        extras["learner_drift_events"] = learner_info.get("stats", {}).get("drift_events")
    extras.update(control)
    extras.update(cpu)
    if faults:
        extras["chaos_events"] = [str(fault) for fault in faults]
    if "totals" in watched:
        extras["alerts_fired"] = len(watched["totals"]["alerts"])
        extras["lost_events"] = len(watched["totals"]["lost"])
    result = _finish(results, policy, slots, extras, out, csv)
    if result.out_dir is not None:
        write_monitor_files(result.out_dir, watched)
    return result


def _control_totals(engine) -> dict:
    """What the adaptive controllers did, for ``summary.json`` (empty for engines without
    them): tasks run inline and remote and the mean launch cost learnt; tasks stolen; the
    forecast's one-step arrival-rate error beside the naive forecast's; slot changes."""
    scheduler = getattr(engine, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "control_stats"):
        return {}
    try:
        by_local = scheduler.inline_stats().values()
        control = scheduler.control_stats()
    except Exception as error:  # noqa: BLE001 - the results matter more
        log.warning("adaptive-control stats unavailable: %s", error)
        return {}
    costs = [one["launch_cost_s"] for one in by_local if one["launches_measured"]]
    totals = {"inline_tasks": sum(one["inline"] for one in by_local),
              "remote_tasks": sum(one["remote"] for one in by_local),
              "launch_cost_s": sum(costs) / len(costs) if costs else None,
              "launch_batches": sum(one.get("batches", 0) for one in by_local),
              "batched_tasks": sum(one.get("batched_tasks", 0) for one in by_local),
              "tasks_stolen": control["tasks_stolen"]}
    forecast = control["forecast"]
    if forecast is not None:
        error = forecast["error"]["total"]
        totals.update(forecast_rate_mae=error["rate_mae"],
                      forecast_naive_rate_mae=error["naive_rate_mae"],
                      burst_warnings=sum(w["burst"] for w in forecast["burst_warnings"]))
    adaptive = [one for one in control["concurrency"].values() if one is not None]
    if adaptive:
        totals["slot_changes"] = sum(one["n_grow"] + one["n_shrink"] + one["n_pre_scale"]
                                     for one in adaptive)
        totals["slot_rollbacks"] = sum(one["n_rolled_back"] for one in adaptive)
    return totals


def write_monitor_files(out_dir: Path, watched: dict) -> None:
    """``timeseries.parquet`` and ``decisions.parquet`` (what the monitor and the decision
    log hold) beside the results; each atomically."""
    for name, key in ((TIMESERIES_FILE, "timeseries"), (DECISIONS_FILE, "decisions")):
        frame = watched.get(key)
        if frame is not None:
            partial = out_dir / f".{name}.partial"
            frame.to_parquet(partial, index=False)
            partial.replace(out_dir / name)


def _trace_name(trace) -> str:
    return str(trace) if isinstance(trace, (str, Path)) else "<frame>"


def _finish(results: pd.DataFrame, policy: str, slots: int, extras: dict,
            out: str | Path | None, csv: bool) -> ReplayResult:
    """Summarise the per-task results and write both files when ``out`` is given."""
    summary = summarize(results, policy, slots, extras)
    out_dir = None
    if out is not None:
        out_dir = Path(out)
        metrics.write_results(out_dir, results, summary, csv=csv)
    return ReplayResult(results, summary, out_dir)


def compare(trace, policies: list[str], *, slots: int, out: str | Path,
            address: str | None = None, time_scale: float = 1.0, seed: int | None = 0,
            local_schedulers: int | None = None, csv: bool = False,
            show_progress: bool = True, model_options: dict | None = None,
            alerts=None, otlp_endpoint: str | None = None,
            inline: bool = True, controls=None, work: str = "sleep") -> list[ReplayResult]:
    """Replay one trace under several policies, one after another on the same Ray, into
    ``out/<policy>/``; writes ``out/comparison.md`` and ``out/summary.csv``. ``alerts``
    and ``otlp_endpoint`` (see :func:`replay`) apply to our policies, not the baselines.

    Raises:
        ConfigError: an empty or unknown policy list (checked before anything runs).
    """
    if not policies:
        raise ConfigError("no policy to compare")
    check_work(work)
    for policy in policies:
        if policy not in BASELINES:
            resolve_policy(policy)
    out = Path(out)
    results = []
    for policy in policies:
        results.append(replay(trace, policy=policy, slots=slots, out=out / policy,
                              address=address, time_scale=time_scale, seed=seed,
                              local_schedulers=local_schedulers, csv=csv,
                              show_progress=show_progress, model_options=model_options,
                              alerts=None if policy in BASELINES else alerts,
                              otlp_endpoint=None if policy in BASELINES else otlp_endpoint,
                              inline=inline, controls=controls, work=work))
    summaries = [r.summary for r in results]
    (out / "comparison.md").write_text(metrics.markdown_table(summaries) + "\n")
    pd.DataFrame(summaries).to_csv(out / "summary.csv", index=False)
    return results


def simulate_trace(trace, *, policy: str, slots: int, out: str | Path | None = None,
                   nodes: int = 1, time_scale: float = 1.0, seed: int | None = 0,
                   local_schedulers: int | None = None, csv: bool = False,
                   launch_overhead_s: float | None = None, network_delay_s: float = 0.0,
                   node_loss: list[tuple[float, int]] | None = None) -> ReplayResult:
    """Like :func:`replay`, on the simulator's virtual clock instead of Ray (same files).
    ``launch_overhead_s``, ``network_delay_s`` and ``node_loss`` are those of
    :func:`ray_sched.sim.engine.simulate`.

    Raises:
        ConfigError: a baseline policy (``ray-default`` and ``dask`` exist only for real).
    """
    from ray_sched.sim.engine import DEFAULT_LAUNCH_OVERHEAD_S, simulate

    if policy in BASELINES:
        raise ConfigError(f"{policy!r} cannot be simulated: it measures another scheduler; "
                          f"use `ray-sched replay --policy {policy}`")
    if not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"--slots must be an integer >= 1, got {slots!r}")
    resolve_policy(policy)
    _frame, tasks = load_tasks(trace, time_scale)
    regions = sorted({t.region for t in tasks if t.region is not None}) or None
    stats: dict = {}
    completions, learner = simulate(
        tasks, policy=policy, slots=slots, nodes=nodes, local_schedulers=local_schedulers,
        regions=regions if local_schedulers else None, seed=seed,
        launch_overhead_s=DEFAULT_LAUNCH_OVERHEAD_S if launch_overhead_s is None
        else launch_overhead_s, network_delay_s=network_delay_s, node_loss=node_loss,
        stats=stats)
    results = results_frame(tasks, completions, 0.0, policy)
    extras = {"time_scale": time_scale, "seed": seed, "engine": "simulator", "nodes": nodes,
              "trace": _trace_name(trace), "sim_events": stats["events"],
              "lost_runs": stats["lost_runs"]}
    if learner is not None:
        extras["learner_drift_events"] = learner.stats()["drift_events"]
    return _finish(results, policy, slots, extras, out, csv)
