"""Learner benchmark: the ml policy against ray-default, dask, fifo and the clairvoyant
oracle, side by side in one run (8 slots, load 0.85), on the synthetic scenarios and a
window of the NASA iPSC log; plus prediction quality against a hindsight model and the
cost of one predict call on 1,000 tasks inside the Learner actor.

    .venv/bin/python benchmarks/learner.py [--n 1000] [--scenarios mixed,bursty,drift,tree,nasa]

Writes benchmarks/results/<date>/learner/{report.md,summary.csv,<scenario>/<policy>/...}.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.metrics import markdown_table  # noqa: E402
from ray_sched.replay import compare  # noqa: E402
from ray_sched.trace import read_trace, write_trace  # noqa: E402
from ray_sched.workloads.synthetic import generate  # noqa: E402

POLICIES = "ray-default,dask,fifo,oracle,ml"
SLOTS, LOAD, SEED = 8, 0.85, 11
NASA_TRACE = REPO / "examples" / "nasa-500.csv"
#: Targets of the learner issue, printed as met / not met.
ML_VS_BASELINES_MAX, ML_VS_ORACLE_SYNTH_MAX, ML_VS_ORACLE_REAL_MAX = 0.90, 1.15, 1.30
ONLINE_VS_HINDSIGHT_MAX = 1.3


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def hindsight_mae_second_half(frame: pd.DataFrame) -> float:
    """|log error| over the second half (by arrival) of 5-fold out-of-fold predictions of a
    gradient-boosting model fitted on the whole trace: the reference for the online model."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import cross_val_predict

    drop = [c for c in ("task_id", "arrival_s", "runtime_s", "parent_id", "deadline_s")
            if c in frame.columns]
    features = frame.drop(columns=drop).copy()
    for column in features.columns:
        if features[column].dtype == object or str(features[column].dtype) in ("string", "str"):
            features[column] = features[column].astype("category")
        elif str(features[column].dtype) == "Int64":
            features[column] = features[column].astype(float)
    target = np.log(frame["runtime_s"].to_numpy())
    model = HistGradientBoostingRegressor(categorical_features="from_dtype", max_iter=200,
                                          random_state=0)
    predicted = cross_val_predict(model, features, target, cv=5)
    order = np.argsort(frame["arrival_s"].to_numpy(), kind="stable")
    half = order[len(order) // 2:]
    return float(np.mean(np.abs(predicted[half] - target[half])))


def predict_cost_ms(trace: Path) -> float:
    from ray_sched.actors.learner_actor import LearnerActor
    from ray_sched.trace import frame_to_tasks

    tasks = frame_to_tasks(read_trace(trace))
    actor = LearnerActor.remote(model_dir=None, load=None)
    import ray
    ray.get(actor.observe.remote(tasks, [t.runtime_s for t in tasks]))
    batch = (tasks * (1000 // len(tasks) + 1))[:1000]
    cost = ray.get(actor.time_predict.remote(batch, 50))
    ray.kill(actor)
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="tasks per synthetic scenario")
    parser.add_argument("--scenarios", default="mixed,bursty,drift,tree,nasa")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    today = datetime.date.today().isoformat()
    out = Path(args.out or REPO / "benchmarks" / "results" / today / "learner")
    out.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    rows, sections, checks = [], [], []
    started = time.time()
    for scenario in args.scenarios.split(","):
        if scenario == "nasa":
            trace = NASA_TRACE
        else:
            trace = out / "traces" / f"{scenario}-{args.n}.csv"
            write_trace(generate(scenario, n=args.n, slots=SLOTS, load=LOAD, seed=SEED), trace)
        results = compare(trace, policies, slots=SLOTS, out=out / scenario, show_progress=False,
                          model_options={"fresh": True, "model_dir": str(out / "models")})
        summaries = {r.summary["policy"]: r.summary for r in results}
        for summary in summaries.values():
            rows.append({"scenario": scenario, **summary})
        hindsight = hindsight_mae_second_half(read_trace(trace))
        sections += [f"### {scenario} (`{trace.name}`)", "", markdown_table(
            list(summaries.values())), ""]
        ml = summaries.get("ml")
        if ml:
            real = scenario == "nasa"
            oracle_max = ML_VS_ORACLE_REAL_MAX if real else ML_VS_ORACLE_SYNTH_MAX
            parts = []
            for name, limit in (("ray-default", ML_VS_BASELINES_MAX), ("dask",
                                ML_VS_BASELINES_MAX), ("oracle", oracle_max)):
                if name in summaries:
                    ratio = ml["jct_mean_s"] / summaries[name]["jct_mean_s"]
                    parts.append(f"ml/{name} mean JCT {ratio:.2f}x "
                                 f"({met(ratio <= limit)}, <= {limit})")
            if "ray-default" in summaries:
                base = summaries["ray-default"]
                p99 = ml["jct_p99_s"] / base["jct_p99_s"]
                parts.append(f"p99 {p99:.2f}x ray-default ({met(p99 <= 1.2)}, <= 1.2)")
                if ml["deadline_miss_rate"] is not None:
                    ok = ml["deadline_miss_rate"] <= base["deadline_miss_rate"]
                    parts.append(f"deadline misses {ml['deadline_miss_rate']:.3f} vs "
                                 f"{base['deadline_miss_rate']:.3f} ({met(ok)})")
            jain = ml["jain_fairness_tenants"]
            parts.append(f"Jain {jain:.3f}" + ("" if real else f" ({met(jain >= 0.9)}, >= 0.9)"))
            online = ml.get("prediction_mae_log_second_half")
            if online is not None:
                ratio = online / hindsight
                parts.append(f"log-MAE 2nd half online {online:.3f} vs hindsight {hindsight:.3f} "
                             f"= {ratio:.2f}x ({met(ratio <= ONLINE_VS_HINDSIGHT_MAX)}"
                             f", <= {ONLINE_VS_HINDSIGHT_MAX}); p90 coverage "
                             f"{ml.get('prediction_p90_coverage_second_half'):.2f}")
            checks.append(f"- **{scenario}**: " + "; ".join(parts))
            sections += [checks[-1], ""]
    cost = predict_cost_ms(REPO / "examples" / "mixed-1500.csv")
    checks.append(f"- one predict call on 1,000 tasks inside the Learner actor: {cost:.2f} ms "
                  f"({met(cost <= 5)}, <= 5 ms)")
    import ray
    ray.shutdown()
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    report = [f"# Learner benchmark, {today}", "",
              f"{SLOTS} slots, load {LOAD}, synthetic traces of {args.n} tasks (seed {SEED}), "
              f"NASA window `{NASA_TRACE.name}`; policies {', '.join(policies)} one after "
              f"another in one process, ml with a fresh learner per scenario; "
              f"{time.time() - started:.0f} s in all.", "",
              "## Targets", "", *checks, "", "## Tables", "", *sections]
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(checks))
    print(f"written: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
