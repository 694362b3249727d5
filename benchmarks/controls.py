"""Adaptive controllers benchmark (issue 5): the ml policy with each controller switched
off in turn, and with adaptive concurrency switched on, on the bursty scenario, in one run
on one embedded Ray (8 slots over 4 local schedulers, so that stealing has somewhere to
go). ray-default runs beside them as the reference.

    .venv/bin/python benchmarks/controls.py [--tasks 1000] [--repeats 1] [--seed 0]

Writes benchmarks/results/<date>/controls/{report.md,summary.csv}.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.actors.runtime import ensure_ray  # noqa: E402
from ray_sched.replay import replay  # noqa: E402
from ray_sched.workloads.synthetic import generate  # noqa: E402

SLOTS = 8
LOCAL_SCHEDULERS = 4
LOAD = 0.85

#: (label, policy, controls): every controller as shipped, then one change at a time.
VARIANTS = [
    ("ml (default: inline, steal, forecast)", "ml", {}),
    ("ml --no-steal", "ml", {"steal": False}),
    ("ml --no-forecast", "ml", {"forecast": False}),
    ("ml --no-inline", "ml", {"inline": False}),
    ("ml --adaptive", "ml", {"adaptive": True}),
    ("ml, every controller off", "ml",
     {"inline": False, "steal": False, "forecast": False}),
    ("ray-default", "ray-default", None),
]

COLUMNS = ["n_ok", "n_tasks", "jct_mean_s", "jct_p99_s", "makespan_s", "deadline_miss_rate",
           "tasks_stolen", "inline_tasks", "forecast_rate_mae", "forecast_naive_rate_mae",
           "burst_warnings", "slot_changes", "slot_rollbacks"]


def run(trace: pd.DataFrame, label: str, policy: str, controls: dict | None,
        out: Path, repeat: int) -> dict:
    result = replay(trace, policy=policy, slots=SLOTS, local_schedulers=LOCAL_SCHEDULERS,
                    controls=controls, show_progress=False,
                    out=out / f"r{repeat}" / _slug(label),
                    model_options={"fresh": True, "model_dir": None})
    summary = result.summary
    return {"variant": label, "repeat": repeat,
            **{column: summary.get(column) for column in COLUMNS}}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the bursty trace")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / "controls")
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(SLOTS)
    rows = []
    for repeat in range(args.repeats):
        trace = generate("bursty", n=args.tasks, slots=SLOTS, load=LOAD,
                         seed=args.seed + repeat)
        for label, policy, controls in VARIANTS:
            rows.append(run(trace, label, policy, controls, out, repeat))
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "summary.csv", index=False)
    means = frame.groupby("variant", sort=False).mean(numeric_only=True)
    default = means.iloc[0]
    ray_default = means.loc["ray-default"]
    lines = [f"# Adaptive controllers on bursty, {datetime.date.today().isoformat()}", "",
             f"{args.tasks} tasks, load {LOAD}, {SLOTS} slots over {LOCAL_SCHEDULERS} local "
             f"schedulers, fresh model, {args.repeats} repeat(s), seed {args.seed}; "
             f"`.venv/bin/python benchmarks/controls.py --tasks {args.tasks} "
             f"--repeats {args.repeats} --seed {args.seed}`.", "",
             "| variant | JCT mean (s) | vs default | vs ray-default | JCT p99 (s) "
             "| makespan (s) | stolen | inline | forecast MAE (naive) (tasks/s) "
             "| slot changes (rolled back) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in means.iterrows():
        forecast = ("-" if pd.isna(row.get("forecast_rate_mae"))
                    else f"{row['forecast_rate_mae']:.2f} ({row['forecast_naive_rate_mae']:.2f})")
        slots = ("-" if pd.isna(row.get("slot_changes"))
                 else f"{row['slot_changes']:.0f} ({row['slot_rollbacks']:.0f})")
        jct = row["jct_mean_s"]
        lines.append(
            f"| {label} | {jct:.3f} | {jct / default['jct_mean_s']:.3f}x"
            f" | {jct / ray_default['jct_mean_s']:.3f}x | {row['jct_p99_s']:.3f} "
            f"| {row['makespan_s']:.2f} | {_count(row, 'tasks_stolen')} "
            f"| {_count(row, 'inline_tasks')} | {forecast} | {slots} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _count(row: pd.Series, column: str) -> str:
    value = row.get(column)
    return "-" if value is None or pd.isna(value) else f"{value:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
