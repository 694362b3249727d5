"""Simulator benchmark: scale, speed against a bare event loop, and fidelity.

1. Scale: 1,000,000 tasks (the `mixed` scenario) on 1,000 nodes x 16 slots, policy ml
   (learner included): wall time and peak memory; events per second beside a bare
   heap-based event loop doing only the same pushes and pops (the ceiling for Python),
   measured in the same run.
2. Fidelity against an independent zero-overhead simulation of fifo (the c-server FIFO
   recurrence, a dozen lines here): mean JCT within 5%.
3. Fidelity against the Ray replay: fifo and ml on examples/mixed-1500.csv, 8 slots:
   simulated mean and p99 JCT within 10% of the replay's, measured in this run.

    .venv/bin/python benchmarks/simulator.py [--tasks 1000000] [--nodes 1000] [--skip-replay]

Writes benchmarks/results/<date>/simulator/{report.md,summary.json}.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.replay import replay, simulate_trace  # noqa: E402
from ray_sched.sim.engine import simulate  # noqa: E402
from ray_sched.trace import frame_to_tasks  # noqa: E402
from ray_sched.workloads.synthetic import generate  # noqa: E402

SLOTS_PER_NODE = 16
FIFO_TOLERANCE, REPLAY_TOLERANCE = 0.05, 0.10
REPLAY_TRACE = REPO / "examples" / "mixed-1500.csv"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def bare_event_loop(times: np.ndarray) -> float:
    """Seconds a heap loop takes to push every event time and pop them in order, with the
    simulator's tuple shape; nothing else (the ceiling)."""
    start = time.perf_counter()
    heap: list[tuple] = []
    push, pop = heapq.heappush, heapq.heappop
    for i, t in enumerate(times.tolist()):
        push(heap, (t, 1, i, "finish", None))
        if len(heap) > 1024:  # keep the heap about as deep as the simulator's
            pop(heap)
    while heap:
        pop(heap)
    return time.perf_counter() - start


def scale_run(n_tasks: int, nodes: int) -> dict:
    slots = nodes * SLOTS_PER_NODE
    start = time.perf_counter()
    frame = generate("mixed", n=n_tasks, slots=slots, load=0.85, seed=1)
    tasks = frame_to_tasks(frame)
    trace_s = time.perf_counter() - start
    stats: dict = {}
    start = time.perf_counter()
    completions, learner = simulate(tasks, policy="ml", slots=slots, nodes=nodes, stats=stats)
    sim_s = time.perf_counter() - start
    assert len(completions) == n_tasks and all(c.status == "ok" for c in completions.values())
    events = stats["events"]
    rng = np.random.default_rng(0)
    bare_s = bare_event_loop(rng.random(events) * 1e3)
    jct = np.array([c.finish_wall - t.arrival_s for t, c in
                    ((t, completions[t.task_id]) for t in tasks)])
    return {"tasks": n_tasks, "nodes": nodes, "slots": slots, "trace_s": trace_s,
            "simulate_s": sim_s, "events": events, "events_s": events / sim_s,
            "bare_events_s": events / bare_s, "ratio_to_bare": bare_s / sim_s,
            "peak_rss_gib": peak_rss_gib(), "jct_mean_s": float(jct.mean()),
            "learner_observed": learner.n_observed_}


def fifo_recurrence(arrival: np.ndarray, runtime: np.ndarray, slots: int) -> np.ndarray:
    """Independent reference: FIFO on ``slots`` identical servers, no overhead. Returns JCTs."""
    free = [0.0] * slots
    heapq.heapify(free)
    jct = np.empty(len(arrival))
    for i in np.argsort(arrival, kind="stable"):
        start = max(arrival[i], heapq.heappop(free))
        heapq.heappush(free, start + runtime[i])
        jct[i] = start + runtime[i] - arrival[i]
    return jct


def fifo_check(n_tasks: int = 20_000, slots: int = 64) -> dict:
    frame = generate("mixed", n=n_tasks, slots=slots, load=0.85, seed=2)
    frame = frame.drop(columns=[c for c in ("parent_id", "cpu") if c in frame.columns])
    tasks = frame_to_tasks(frame)
    completions, _ = simulate(tasks, policy="fifo", slots=slots, nodes=1, launch_overhead_s=0.0)
    ours = np.array([completions[t.task_id].finish_wall - t.arrival_s for t in tasks])
    reference = fifo_recurrence(frame["arrival_s"].to_numpy(), frame["runtime_s"].to_numpy(),
                                slots)
    ratio = ours.mean() / reference.mean()
    return {"tasks": n_tasks, "slots": slots, "ours_mean_s": float(ours.mean()),
            "reference_mean_s": float(reference.mean()), "ratio": float(ratio),
            "met": bool(abs(ratio - 1) <= FIFO_TOLERANCE)}


def replay_check(out: Path) -> list[dict]:
    rows = []
    for policy in ("fifo", "ml"):
        real = replay(REPLAY_TRACE, policy=policy, slots=8, out=out / "replay" / policy,
                      show_progress=False, model_options={"fresh": True, "model_dir": None})
        simulated = simulate_trace(REPLAY_TRACE, policy=policy, slots=8,
                                   out=out / "sim" / policy)
        row = {"policy": policy}
        for metric in ("jct_mean_s", "jct_p99_s"):
            row[f"replay_{metric}"] = real.summary[metric]
            row[f"sim_{metric}"] = simulated.summary[metric]
            row[f"{metric}_ratio"] = simulated.summary[metric] / real.summary[metric]
        row["met"] = all(abs(row[f"{m}_ratio"] - 1) <= REPLAY_TOLERANCE
                         for m in ("jct_mean_s", "jct_p99_s"))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-scale", action="store_true",
                        help="only the fidelity checks (keeps the last scale numbers)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / "simulator")
    out.mkdir(parents=True, exist_ok=True)

    print("fifo against the independent recurrence ...", flush=True)
    fifo = fifo_check()
    print(json.dumps(fifo), flush=True)
    replays = []
    if not args.skip_replay:
        print("fifo and ml: simulator against the Ray replay ...", flush=True)
        replays = replay_check(out)
        print(json.dumps(replays), flush=True)
    if args.skip_scale:
        scale = json.loads((out / "summary.json").read_text())["scale"]
    else:
        print(f"scale: {args.tasks:,} tasks on {args.nodes:,} nodes ...", flush=True)
        scale = scale_run(args.tasks, args.nodes)
        print(json.dumps(scale), flush=True)

    summary = {"scale": scale, "fifo_reference": fifo, "replay": replays}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Simulator benchmark ({datetime.date.today().isoformat()})", "",
             f"Command: `.venv/bin/python benchmarks/simulator.py --tasks {args.tasks} "
             f"--nodes {args.nodes}`", "",
             "| measure | value |", "|---|---|",
             f"| {scale['tasks']:,} tasks, {scale['nodes']:,} nodes x {SLOTS_PER_NODE} slots, ml "
             f"| **{scale['simulate_s']:.0f} s** simulated (+ {scale['trace_s']:.0f} s to "
             f"generate the trace); target < 300 s |",
             f"| peak memory (process) | {scale['peak_rss_gib']:.2f} GiB |",
             f"| events handled | {scale['events']:,} |",
             f"| simulator events/s | {scale['events_s']:,.0f} |",
             f"| bare heap loop events/s (same pushes and pops) | {scale['bare_events_s']:,.0f} |",
             f"| simulator / bare | {scale['ratio_to_bare']:.3f} |",
             f"| fifo vs independent zero-overhead recurrence, mean JCT ({fifo['tasks']:,} tasks, "
             f"{fifo['slots']} slots) | {fifo['ratio']:.4f} "
             f"({'met' if fifo['met'] else 'NOT met'}, tolerance 5%) |"]
    for row in replays:
        lines.append(f"| {row['policy']}: simulated / Ray replay, mean JCT; p99 "
                     f"(mixed-1500, 8 slots) | {row['jct_mean_s_ratio']:.3f}; "
                     f"{row['jct_p99_s_ratio']:.3f} ({'met' if row['met'] else 'NOT met'}, "
                     f"tolerance 10%) |")
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
