"""Foundation benchmark: the cost of the two-level path, measured against plain Ray and Dask
in the same run on the same trace.

    .venv/bin/python benchmarks/foundation.py [--trace examples/mixed-1500.csv] [--slots 8]

Reports, per policy, the contract summary plus the replay's clock accuracy (recorded
arrival minus trace arrival) and writes ``benchmarks/results/<date>/foundation/``
(per-policy results, summary.csv, comparison.md, report.md).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.metrics import comparison_table, markdown_table  # noqa: E402
from ray_sched.replay import compare  # noqa: E402

#: Targets of the foundation issue, checked and printed (not asserted: this is a benchmark).
FIFO_VS_RAY_MAX = 1.10
ARRIVAL_LAG_P50_MAX_MS = 20.0
ARRIVAL_LAG_MAX_MS = 250.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default=str(REPO / "examples" / "mixed-1500.csv"))
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--policies", default="ray-default,fifo,dask")
    parser.add_argument("--out", default=None)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    today = datetime.date.today().isoformat()
    out = Path(args.out or REPO / "benchmarks" / "results" / today / "foundation")
    policies = [p for p in args.policies.split(",") if p]
    results = compare(args.trace, policies, slots=args.slots, out=out,
                      time_scale=args.time_scale, show_progress=False)
    import ray
    ray.shutdown()
    summaries = {r.summary["policy"]: r.summary for r in results}
    lines = [f"# Foundation benchmark, {today}", "",
             f"Trace `{Path(args.trace).name}`, {args.slots} slots, time scale "
             f"{args.time_scale}, policies run one after another in one process.", "",
             markdown_table(list(summaries.values())), "",
             "| policy | arrival lag p50 (ms) | arrival lag max (ms) | sched overhead mean (ms) "
             "| sched overhead p99 (ms) |", "|---|---|---|---|---|"]
    for name, s in summaries.items():
        overhead = s.get("sched_overhead_ms_mean")
        p99 = s.get("sched_overhead_ms_p99")
        lines.append(f"| {name} | {s['arrival_lag_ms_p50']:.2f} | {s['arrival_lag_ms_max']:.1f} "
                     f"| {'-' if overhead is None else f'{overhead:.2f}'} "
                     f"| {'-' if p99 is None else f'{p99:.2f}'} |")
    checks = []
    if "fifo" in summaries and "ray-default" in summaries:
        ratio = summaries["fifo"]["jct_mean_s"] / summaries["ray-default"]["jct_mean_s"]
        verdict = "met" if ratio <= FIFO_VS_RAY_MAX else "NOT met"
        checks.append(f"fifo mean JCT / ray-default mean JCT = {ratio:.3f} "
                      f"(target <= {FIFO_VS_RAY_MAX}): {verdict}")
    worst_p50 = max(s["arrival_lag_ms_p50"] for s in summaries.values())
    worst_max = max(s["arrival_lag_ms_max"] for s in summaries.values())
    checks.append(f"arrival lag: worst median {worst_p50:.2f} ms (target < "
                  f"{ARRIVAL_LAG_P50_MAX_MS}), worst max {worst_max:.1f} ms (target < "
                  f"{ARRIVAL_LAG_MAX_MS})")
    lines += ["", *[f"- {c}" for c in checks], ""]
    (out / "report.md").write_text("\n".join(lines))
    print(comparison_table(list(summaries.values())))
    print("\n".join(f"- {c}" for c in checks))
    print(f"written: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
