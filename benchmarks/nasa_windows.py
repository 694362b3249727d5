"""The ml policy on many windows of the NASA iPSC/860 log, in the simulator, and how good
runtime predictions must be to come near the clairvoyant oracle there.

Six windows of 500 jobs (8 slots, load 0.85, arrivals over 60 s, cpu capped at 8, as
examples/nasa-500.csv is made). Per window, in the simulator (same policies and learner
as on Ray, virtual time):

- ``fifo``, ``oracle`` (shortest true runtime first) and ``ml`` (the learner, from an
  empty model), plus ml with the learner's recent runs off (``--no-recent`` ablation);
- the ml ordering fed *true runtimes times log-normal noise* whose mean |log error| is
  0.3, 0.5, 0.7 and 1.0 ("noisy oracle"): the mean JCT the ordering reaches with
  predictions of that quality, against what the learner's own error gives;
- the ml ordering fed, for each task, the *true mean runtime of its signature over the
  whole window* (``hindsight-signature``: every job with the same application, user,
  width and features gets the same prediction, known before any of them ran). No
  predictor that sees only a task's features and the history can tell two runs of the
  same signature apart, so this is about the best such a predictor could do: what is
  left between it and the oracle is the runtime spread *within* a signature.

    .venv/bin/python benchmarks/nasa_windows.py [--starts 1000,3000,5000,8000,11000,14000]

Writes benchmarks/results/<date>/nasa_windows/{report.md,summary.csv}.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.learner import Learner, RuntimeModel  # noqa: E402
from ray_sched.learner.learner import Predictions  # noqa: E402
from ray_sched.learner.models import _signature  # noqa: E402
from ray_sched.replay import prediction_quality, results_frame  # noqa: E402
from ray_sched.sim.engine import simulate  # noqa: E402
from ray_sched.trace import frame_to_tasks  # noqa: E402
from ray_sched.workloads.swf import convert_swf  # noqa: E402

LOG = REPO.parent / "shared" / "data" / "traces" / "pwa" / "NASA-iPSC-1993-3.1-cln.swf.gz"
SLOTS, LOAD, JOBS, SPAN_S = 8, 0.85, 500, 60.0
STARTS = (1000, 3000, 5000, 8000, 11000, 14000)
#: Mean |log error| of the noisy-oracle predictions (log-normal noise: sigma = MAE / 0.798).
NOISE_MAES = (0.3, 0.5, 0.7, 1.0)
#: E|Z| of a standard normal.
MEAN_ABS_NORMAL = math.sqrt(2 / math.pi)


class NoisyOracle(Learner):
    """Predicts each task's true runtime times exp(noise), the same noise for a task every
    time it is asked (so refreshes do not average it away); learns nothing."""

    def __init__(self, mae_log: float):
        super().__init__()
        self.sigma = mae_log / MEAN_ABS_NORMAL

    def predict(self, tasks):
        noise = np.array([np.random.default_rng(zlib.crc32(t.task_id.encode())).standard_normal()
                          for t in tasks])
        runtime = np.array([t.runtime_s for t in tasks]) * np.exp(self.sigma * noise)
        return Predictions(runtime, runtime, runtime,
                           np.array([t.priority for t in tasks], dtype=np.float64))

    def observe(self, tasks, measured_runtime_s):
        pass


class HindsightSignature(NoisyOracle):
    """Predicts, for every task, the mean true runtime of all the window's tasks with its
    signature (the learner's "same task again": kind, tenant, region, cpu, features); the
    arithmetic mean, which orders better than the median or the geometric mean here."""

    def __init__(self, tasks):
        super().__init__(0.0)
        totals: dict[tuple, list[float]] = {}
        for task in tasks:
            entry = totals.setdefault(_signature(task), [0.0, 0])
            entry[0] += task.runtime_s
            entry[1] += 1
        self.mean_s = {key: total / count for key, (total, count) in totals.items()}

    def predict(self, tasks):
        runtime = np.array([self.mean_s[_signature(t)] for t in tasks])
        return Predictions(runtime, runtime, runtime,
                           np.array([t.priority for t in tasks], dtype=np.float64))


def window(start: int) -> pd.DataFrame:
    """Jobs start..start+500 of the log, arrivals stretched to load 0.85 on 8 slots and
    then scaled to span 60 s (runtimes with them)."""
    frame, _ = convert_swf(LOG, start_job=start, max_jobs=JOBS, slots=SLOTS, load=LOAD,
                           max_cpu=SLOTS)
    frame, _ = convert_swf(LOG, start_job=start, max_jobs=JOBS, slots=SLOTS, load=LOAD,
                           max_cpu=SLOTS, time_scale=SPAN_S / float(frame["arrival_s"].max()))
    return frame


def run(job: tuple[int, str, float | None]) -> dict:
    """One simulation: (window start, variant, noise MAE or None) -> its summary row."""
    logging.disable(logging.WARNING)
    start, variant, noise = job
    tasks = frame_to_tasks(window(start))
    policy = "ml" if variant.startswith(("ml", "noisy", "hindsight")) else variant
    learner = None
    if variant == "hindsight-signature":
        learner = HindsightSignature(tasks)
    elif variant == "ml-no-recent":
        learner = Learner(runtime=RuntimeModel(recent_runs=False))
    elif variant.startswith("noisy"):
        learner = NoisyOracle(noise)
    completions, _ = simulate(tasks, policy=policy, slots=SLOTS, seed=0, learner=learner)
    frame = results_frame(tasks, completions, 0.0, policy)
    jct = (frame["finish_s"] - frame["arrival_s"]).to_numpy()
    return {"window": start, "variant": variant, "jct_mean_s": float(jct.mean()),
            "jct_p99_s": float(np.percentile(jct, 99)),
            "mae_log": prediction_quality(frame).get("prediction_mae_log_second_half")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", default=",".join(map(str, STARTS)),
                        help="first job of each window, among the log's usable jobs")
    parser.add_argument("--out", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not LOG.is_file():
        parser.error(f"the NASA log is not at {LOG}")
    starts = [int(s) for s in args.starts.split(",") if s.strip()]
    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / "nasa_windows")
    out.mkdir(parents=True, exist_ok=True)
    variants = [("fifo", None), ("oracle", None), ("ml", None), ("ml-no-recent", None)]
    variants += [(f"noisy-{mae}", mae) for mae in NOISE_MAES]
    variants += [("hindsight-signature", None)]
    jobs = [(start, name, noise) for start in starts for name, noise in variants]
    started = time.time()
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        rows = list(pool.map(run, jobs))
    table = pd.DataFrame(rows)
    oracle = table[table.variant == "oracle"].set_index("window")["jct_mean_s"]
    table["vs_oracle"] = table["jct_mean_s"] / table["window"].map(oracle)
    table.to_csv(out / "summary.csv", index=False)
    wide = table.pivot(index="window", columns="variant", values="vs_oracle")
    order = [name for name, _ in variants]
    wide = wide[order]
    wide.loc["mean"] = wide.mean()
    mae = table[table.variant == "ml"].set_index("window")["mae_log"]
    lines = [f"# ml on {len(starts)} windows of the NASA iPSC log (simulated), "
             f"{datetime.date.today().isoformat()}", "",
             f"{JOBS} jobs a window, {SLOTS} slots, load {LOAD}, arrivals over {SPAN_S:.0f} s; "
             f"{time.time() - started:.0f} s in all.", "",
             "Mean JCT / the oracle's (shortest true runtime first); `noisy-X`: the ml "
             "ordering fed true runtimes times log-normal noise of mean |log error| X; "
             "`hindsight-signature`: the ml ordering fed each task's signature's true mean "
             "runtime over the window (the most a predictor of features and history could "
             "know).", "",
             "| window | " + " | ".join(order) + " | ml log-MAE (2nd half) |",
             "|---" * (len(order) + 2) + "|"]
    for index, row in wide.iterrows():
        error = mae.get(index) if index != "mean" else mae.mean()
        lines.append(f"| {index} | " + " | ".join(f"{v:.2f}x" for v in row) +
                     f" | {error:.2f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
