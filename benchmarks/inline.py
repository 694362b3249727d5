"""Hybrid execution benchmark (issue 5): the ml policy with and without the inline path,
in one run on one embedded Ray (8 slots).

- ``tiny``: 3,000 tasks of 0.5-3 ms (uniform) arriving within 0.5 s. Target: throughput
  (ok tasks / makespan) with the hybrid path >= 2x that of ``--no-inline``.
- ``mixed``: examples/mixed-600.csv. Target: mean JCT with the hybrid path no worse
  (within 5%) than without.

    .venv/bin/python benchmarks/inline.py [--tiny 3000] [--repeats 1]

Writes benchmarks/results/<date>/inline/{report.md,summary.csv}.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.actors.runtime import ensure_ray  # noqa: E402
from ray_sched.replay import replay  # noqa: E402

SLOTS = 8
TINY_SPEEDUP_MIN = 2.0
MIXED_SLOWDOWN_MAX = 1.05


def tiny_trace(n: int, *, window_s: float = 0.5, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "task_id": [f"tiny-{i:05d}" for i in range(n)],
        "arrival_s": np.sort(rng.uniform(0.0, window_s, n)),
        "runtime_s": rng.uniform(0.0005, 0.003, n),
        "kind": "tiny", "tenant": "acme"})


def run(trace, label: str, inline: bool, out: Path) -> dict:
    result = replay(trace, policy="ml", slots=SLOTS, inline=inline, show_progress=False,
                    out=out / label / ("inline" if inline else "no-inline"),
                    model_options={"fresh": True, "model_dir": None})
    summary = result.summary
    return {"trace": label, "inline": inline, "n_ok": summary["n_ok"],
            "n_tasks": summary["n_tasks"], "makespan_s": summary["makespan_s"],
            "throughput_tps": summary["throughput_tps"], "jct_mean_s": summary["jct_mean_s"],
            "jct_p99_s": summary["jct_p99_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=3000, help="tasks in the tiny trace")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / "inline")
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(SLOTS)
    rows = []
    for _ in range(args.repeats):
        for inline in (False, True):  # alternate, so drift of the machine hits both
            rows.append(run(tiny_trace(args.tiny), "tiny", inline, out))
        for inline in (False, True):
            rows.append(run(REPO / "examples" / "mixed-600.csv", "mixed", inline, out))
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "summary.csv", index=False)
    means = frame.groupby(["trace", "inline"]).mean(numeric_only=True)
    speedup = (means.loc[("tiny", True), "throughput_tps"]
               / means.loc[("tiny", False), "throughput_tps"])
    mixed = means.loc[("mixed", True), "jct_mean_s"] / means.loc[("mixed", False), "jct_mean_s"]
    lines = [f"# Hybrid execution, {datetime.date.today().isoformat()}", "",
             f"ml policy, {SLOTS} slots, fresh model, {args.repeats} repeat(s); "
             f"`.venv/bin/python benchmarks/inline.py --tiny {args.tiny}`.", "",
             "| trace | path | ok | makespan (s) | throughput (tasks/s) | JCT mean (s) "
             "| JCT p99 (s) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['trace']} | {'hybrid' if row['inline'] else '--no-inline'} | "
                     f"{row['n_ok']}/{row['n_tasks']} | {row['makespan_s']:.3f} | "
                     f"{row['throughput_tps']:.0f} | {row['jct_mean_s']:.4f} | "
                     f"{row['jct_p99_s']:.4f} |")
    lines += ["", f"- tiny: hybrid throughput {speedup:.2f}x that of --no-inline (target >= "
                  f"{TINY_SPEEDUP_MIN:g}x): {'met' if speedup >= TINY_SPEEDUP_MIN else 'NOT met'}",
              f"- mixed: hybrid mean JCT {mixed:.3f}x that of --no-inline (target <= "
              f"{MIXED_SLOWDOWN_MAX:g}x): {'met' if mixed <= MIXED_SLOWDOWN_MAX else 'NOT met'}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
