"""``ray-sched``: replay, compare, simulate, serve, gen and convert.

Errors of ray_sched are printed as one line on stderr and mapped to exit codes
in one place (:func:`ray_sched.errors.exit_code_for`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ray_sched import __version__
from ray_sched.errors import RaySchedError, exit_code_for

#: The demo's default: the policies shown side by side.
DEMO_POLICIES = ("ray-default", "dask", "fifo", "ml")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _add_work_option(parser: argparse.ArgumentParser) -> None:
    from ray_sched.work import WORK_KINDS

    parser.add_argument("--work", choices=WORK_KINDS, default="sleep",
                        help="synthetic work of each task, in every engine alike: sleep "
                             "(runtime_s of wall time, the default) or cpu (a busy loop for "
                             "runtime_s of CPU time; give as many slots as cores)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="trace file (.csv, .csv.gz, .parquet, .jsonl)")
    parser.add_argument("--slots", type=_positive_int, required=True,
                        help="total concurrent task slots across all local schedulers")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--address", default=None,
                        help="existing Ray cluster ('auto' or 'ray://…'); default: embedded Ray")
    parser.add_argument("--time-scale", type=_positive_float, default=1.0,
                        help="multiply arrivals, runtimes and deadlines by X (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of randomised policies")
    _add_work_option(parser)
    parser.add_argument("--local-schedulers", type=_positive_int, default=None,
                        help="split the slots over K local schedulers (by region when the "
                             "trace has regions); default: one per Ray node")
    parser.add_argument("--csv", action="store_true", help="also write tasks.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.add_argument("--no-inline", action="store_true",
                        help="launch every task as a Ray task (no hybrid path: by default a "
                             "task predicted shorter than a launch runs on its local "
                             "scheduler's threads)")
    parser.add_argument("--no-batch", action="store_true",
                        help="one Ray task per task (by default consecutive tiny tasks of a "
                             "queue share one launch and one slot, each still timed alone)")
    group = parser.add_argument_group("adaptive control (ray_sched's own policies)")
    group.add_argument("--no-steal", action="store_true",
                       help="no work stealing (by default an idle local scheduler takes "
                            "queued tasks from a backlogged one of its region)")
    group.add_argument("--no-forecast", action="store_true",
                       help="no workload forecast (by default arrivals are forecast per kind "
                            "and region, and a region about to be busy is steered away from)")
    group.add_argument("--adaptive", action="store_true",
                       help="adaptive concurrency: each local scheduler's slots move within "
                            "[0.5x, 2x] from its node's CPU and memory use")
    _add_model_options(parser)
    group = parser.add_argument_group("monitor (ray_sched's own policies)")
    group.add_argument("--alerts", default=None, metavar="RULES.toml",
                       help="alert rules; fired alerts go to the console and OUT/alerts.jsonl "
                            "(a malformed file is refused at start, with its line)")
    group.add_argument("--otlp-endpoint", default=None, metavar="URL",
                       help="send the scheduler's own metrics (OpenTelemetry SDK) and each "
                            "alert as a log record to this OTLP/HTTP endpoint, e.g. "
                            "http://127.0.0.1:4318 (ray-sched serve's own included)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learner (policies that predict, e.g. ml)")
    group.add_argument("--model-dir", default="models",
                       help="where checkpoints are written (default models/)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--model", default=None,
                        help="start from this checkpoint (file or directory); default: the "
                             "latest in --model-dir")
    source.add_argument("--fresh", action="store_true",
                        help="start the learner from nothing")


def _model_options(args: argparse.Namespace) -> dict:
    return {"model_dir": args.model_dir, "model": args.model, "fresh": args.fresh}


def _monitor_options(args: argparse.Namespace) -> dict:
    """--alerts (parsed now, so that a bad file stops the run before Ray starts) and
    --otlp-endpoint."""
    from ray_sched.monitor.alerts import load_rules

    options = {"alerts": load_rules(args.alerts) if args.alerts else None,
               "otlp_endpoint": args.otlp_endpoint}
    if getattr(args, "no_inline", False):
        options["inline"] = False
    if hasattr(args, "no_steal"):
        options["controls"] = {"steal": not args.no_steal, "forecast": not args.no_forecast,
                               "adaptive": args.adaptive,
                               "batch": not getattr(args, "no_batch", False)}
    return options


def build_parser() -> argparse.ArgumentParser:
    from ray_sched.policies import policy_names

    parser = argparse.ArgumentParser(
        prog="ray-sched", description="An ML-driven adaptive scheduler on Ray.")
    parser.add_argument("--version", action="version", version=f"ray-sched {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    replay = commands.add_parser(
        "replay", help="replay a task trace under one policy",
        description="Replay a trace (TRACE_FORMAT.md) and write OUT/tasks.parquet and "
                    "OUT/summary.json. Exit 0 when every task finished ok.")
    _add_run_options(replay)
    replay.add_argument("--policy", required=True,
                        help=f"one of {', '.join(policy_names())}, or ORDERING+PLACEMENT")
    replay.add_argument("--chaos", action="append", default=[], metavar="SPEC",
                        help="inject a fault: kill-local[:I]@SECONDS (a local scheduler, "
                             "replaced), kill-learner@SECONDS (restarts from its "
                             "checkpoint), kill-global@SECONDS (restarted, rebuilds its "
                             "ledger) or kill-node[:I]@SECONDS (a worker node of a "
                             "multi-node cluster; never the driver's); repeatable or "
                             "comma-separated")
    replay.set_defaults(func=cmd_replay)

    compare = commands.add_parser(
        "compare", help="replay one trace under several policies in one run and tabulate",
        description="Replays the trace once per policy (one Ray for all) into OUT/<policy>/ "
                    "and prints a comparison table (also OUT/comparison.md).")
    _add_run_options(compare)
    compare.add_argument("--policies", default=",".join(DEMO_POLICIES),
                         help=f"comma-separated policies (default {','.join(DEMO_POLICIES)})")
    compare.set_defaults(func=cmd_compare)

    simulate = commands.add_parser(
        "simulate", help="run a trace under one policy on the simulator (virtual time)",
        description="The same policies and learner on a virtual clock, N slots over K nodes; "
                    "writes the same OUT/tasks.parquet and OUT/summary.json as replay.")
    simulate.add_argument("trace")
    simulate.add_argument("--policy", required=True)
    simulate.add_argument("--slots", type=_positive_int, required=True)
    simulate.add_argument("--out", required=True)
    simulate.add_argument("--nodes", type=_positive_int, default=1)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--time-scale", type=_positive_float, default=1.0)
    simulate.add_argument("--local-schedulers", type=_positive_int, default=None)
    simulate.add_argument("--csv", action="store_true")
    simulate.add_argument("--launch-overhead-ms", type=float, default=None,
                          help="per-task launch overhead (default 7, measured on Ray here)")
    simulate.add_argument("--network-delay-ms", type=float, default=0.0,
                          help="global <-> local scheduler delay each way (default 0)")
    simulate.add_argument("--node-loss", action="append", default=[], metavar="TIME_S:NODE",
                          help="lose node NODE (0-based) at TIME_S; repeatable")
    simulate.set_defaults(func=cmd_simulate)

    serve = commands.add_parser(
        "serve", help="receive OTLP over HTTP and gRPC; whole-trace tail sampling to Parquet",
        description="An OTLP/HTTP (/v1/traces, /v1/metrics, /v1/logs; protobuf or JSON; gzip) "
                    "and OTLP/gRPC receiver. Requests are decoded in micro-batches by "
                    "processor actors, and every span goes to the processor that owns its "
                    "trace id, which holds the whole trace for --decision-wait-s, then "
                    "assembles its span tree, tail-samples it once and writes it: spans/, "
                    "traces/, metrics/, logs/ and per-window aggregates under --export-dir. "
                    "SIGTERM drains before exit.")
    serve.add_argument("--export-dir", required=True, help="where the Parquet tables go")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default loopback only)")
    serve.add_argument("--http-port", type=int, default=4318,
                       help="OTLP/HTTP port (default 4318; 0 picks a free one)")
    serve.add_argument("--grpc-port", type=int, default=4317,
                       help="OTLP/gRPC port (default 4317; 0 picks a free one)")
    serve.add_argument("--no-http", action="store_true", help="no OTLP/HTTP listener")
    serve.add_argument("--no-grpc", action="store_true", help="no OTLP/gRPC listener")
    serve.add_argument("--address", default=None,
                       help="existing Ray cluster ('auto'); default: embedded Ray")
    serve.add_argument("--processors", type=_positive_int, default=None,
                       help="trace processors (default: one per CPU of the cluster, spread "
                            "over its nodes)")
    serve.add_argument("--auth-token-env", default=None, metavar="VAR",
                       help="require 'Authorization: Bearer <token>', the token read from "
                            "this environment variable")
    serve.add_argument("--max-body-bytes", type=_positive_int, default=None,
                       help="largest request body after decompression (default 16 MiB)")
    serve.add_argument("--max-pending-requests", type=_positive_int, default=None,
                       help="received requests not yet held by a processor before 429 "
                            "(default 1024)")
    serve.add_argument("--memory-limit-mib", type=_positive_int, default=None,
                       help="503 with Retry-After while the receiver and its processors use "
                            "more memory than this (default: off; 90%% of the machine's "
                            "memory always applies)")
    serve.add_argument("--decision-wait-s", type=float, default=None,
                       help="how long a trace is held after its first span before it is "
                            "decided (default 2)")
    serve.add_argument("--max-traces", type=_positive_int, default=None,
                       help="traces held per processor; past it the oldest are decided "
                            "early (default 50000)")
    serve.add_argument("--sample-probability", type=float, default=None,
                       help="share of ordinary traces kept by tail sampling (default 0.1)")
    serve.add_argument("--rate-limit-per-s", type=float, default=None,
                       help="slow or probabilistic traces kept per second per root service "
                            "at most (errors are always kept; default: no limit)")
    serve.add_argument("--max-depth", type=_positive_int, default=None,
                       help="span-tree depth above which --on-max-depth applies (default "
                            "1000)")
    serve.add_argument("--on-max-depth", choices=("flag", "truncate", "drop"), default=None,
                       help="a trace deeper than --max-depth: flag it "
                            "(trace_depth_exceeded; default), truncate it (deeper spans are "
                            "not written) or drop it; all three are counted in /stats")
    serve.add_argument("--forward", default=None, metavar="URL",
                       help="also send the traces tail sampling kept to this OTLP/HTTP "
                            "traces URL (e.g. http://collector:4318/v1/traces)")
    serve.add_argument("--forward-token-env", default=None, metavar="VAR",
                       help="bearer token for --forward, read from this environment variable")
    serve.set_defaults(func=cmd_serve)

    model = commands.add_parser("model", help="inspect learner checkpoints")
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_commands.required = True
    show = model_commands.add_parser("show", help="print what a checkpoint holds")
    show.add_argument("path", help="a checkpoint .json file, or a directory (its latest)")
    show.set_defaults(func=cmd_model_show)

    bench = commands.add_parser(
        "bench", help="run the benchmark suite: scenarios x policies x loads",
        description="Replays every scenario at every load under every policy (one trace per "
                    "scenario and load, all its policies one after another on one embedded "
                    "Ray) and writes OUT/summary.csv and OUT/report.md. Progress on stderr.")
    bench.add_argument("--suite", default="quick",
                       help="quick (every scenario and policy, loads 0.5 and 0.85, 150 tasks: "
                            "about 10 min on 2 cores) or standard (all four loads, 1,000 "
                            "tasks: about 80 min); default quick")
    bench.add_argument("--out", default=None,
                       help="output folder (default benchmarks/results/<date>/bench-<suite>/)")
    bench.add_argument("--scenarios", default=None,
                       help="comma-separated scenarios instead of the suite's (mixed, bursty, "
                            "drift, tree, nasa, wfinstances)")
    bench.add_argument("--policies", default=None,
                       help="comma-separated policies instead of the suite's")
    bench.add_argument("--loads", default=None,
                       help="comma-separated offered loads instead of the suite's")
    _add_work_option(bench)
    bench.add_argument("--busy", type=int, default=0, metavar="N",
                       help="N CPU-bound neighbour processes beside every replay (a contended "
                            "node); default 0")
    bench.set_defaults(func=cmd_bench)

    tune = commands.add_parser("tune", help="tune policy and controller parameters")
    tune_commands = tune.add_subparsers(dest="tune_command", metavar="ACTION")
    tune_commands.required = True
    sensitivity = tune_commands.add_parser(
        "sensitivity", help="sweep one parameter on the simulator",
        description="Simulates one trace once per value of a parameter (same trace, same "
                    "seed; the trace is regenerated only when sweeping load) and reports "
                    "each metric's change relative to the first value: printed, and "
                    "written to OUT/sensitivity.csv and OUT/sensitivity.md.")
    sensitivity.add_argument("--param", required=True,
                             help="launch_overhead_s, load, slots, or a weight of the learned "
                                  "ordering: PRIORITY_WEIGHT, DEADLINE_WEIGHT, AGE_WEIGHT, "
                                  "FAIRNESS_WEIGHT, DEADLINE_MARGIN, WIDTH_WEIGHT")
    sensitivity.add_argument("--values", required=True,
                             help="comma-separated values; the first is the reference")
    sensitivity.add_argument("--scenario", default="mixed",
                             help="mixed, bursty, drift, tree, nasa or wfinstances "
                                  "(default mixed)")
    sensitivity.add_argument("--policy", default="ml", help="policy simulated (default ml)")
    sensitivity.add_argument("--n", type=_positive_int, default=2000,
                             help="tasks in the trace (default 2000)")
    sensitivity.add_argument("--slots", type=_positive_int, default=64, help="default 64")
    sensitivity.add_argument("--nodes", type=_positive_int, default=4, help="default 4")
    sensitivity.add_argument("--load", type=_positive_float, default=0.85,
                             help="offered load of the trace on --slots (default 0.85)")
    sensitivity.add_argument("--seed", type=int, default=1, help="default 1")
    sensitivity.add_argument("--out", default=None,
                             help="output folder (default runs/tune/sensitivity-<param>/)")
    sensitivity.set_defaults(func=cmd_tune_sensitivity)

    report = commands.add_parser(
        "report", help="compare runs in one self-contained HTML page with plots",
        description="Reads each DIR (a replay/simulate output, or a compare output holding "
                    "one folder per policy) and writes one HTML page, images embedded: JCT "
                    "CDFs, percentiles, deadline misses, per-tenant slowdown, queue length "
                    "and utilization over time, predicted vs actual runtime, learner error, "
                    "energy per task, alerts.")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--title", default=None)
    report.add_argument("--busy-core-watts", type=float, default=None,
                        help="energy model: watts per busy core above idle (default 2.76)")
    report.add_argument("--idle-node-watts", type=float, default=None,
                        help="energy model: watts per node for the whole run (default 11.84)")
    report.set_defaults(func=cmd_report)

    story = commands.add_parser(
        "story", help="print one task's story from a run's output",
        description="Arrival, predictions, every placement and move with its reason, "
                    "attempts and finish of TASK_ID, from DIR/tasks.parquet and "
                    "DIR/decisions.parquet.")
    story.add_argument("dir", metavar="DIR")
    story.add_argument("task_id", metavar="TASK_ID")
    story.set_defaults(func=cmd_story)

    try:
        from ray_sched.workloads.cli import register
    except ImportError:  # pragma: no cover - workloads are part of the package
        register = None
    if register is not None:
        register(commands)
    return parser


def _shutdown_ray() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()


def cmd_replay(args: argparse.Namespace) -> int:
    from ray_sched.replay import replay

    try:
        result = replay(args.trace, policy=args.policy, slots=args.slots, out=args.out,
                        address=args.address, time_scale=args.time_scale, seed=args.seed,
                        local_schedulers=args.local_schedulers, csv=args.csv,
                        show_progress=not args.no_progress,
                        model_options=_model_options(args), **_monitor_options(args),
                        chaos=args.chaos, work=args.work)
    finally:
        _shutdown_ray()
    return _report(result, args.out, "replay")


def _report(result, out: str, command: str) -> int:
    summary = result.summary
    print(json.dumps({k: summary[k] for k in ("policy", "n_tasks", "n_ok", "n_failed",
                                              "jct_mean_s", "jct_p99_s", "makespan_s",
                                              "sched_overhead_ms_mean")}))
    print(f"results: {Path(out) / 'tasks.parquet'}, {Path(out) / 'summary.json'}")
    if not result.ok:
        failed = result.results[result.results["status"] != "ok"]
        reason = ""
        if len(failed):
            first = failed.iloc[0]
            reason = f"; first: task {first['task_id']!r}: {first['error']}"
        print(f"ray-sched {command}: {summary['n_failed']} of {summary['n_tasks']} task(s) did not "
              f"finish ok{reason}", file=sys.stderr)
        return 4
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ray_sched.metrics import comparison_table
    from ray_sched.replay import compare

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        results = compare(args.trace, policies, slots=args.slots, out=args.out,
                          address=args.address, time_scale=args.time_scale, seed=args.seed,
                          local_schedulers=args.local_schedulers, csv=args.csv,
                          show_progress=not args.no_progress,
                          model_options=_model_options(args), **_monitor_options(args),
                          work=args.work)
    finally:
        _shutdown_ray()
    print(comparison_table([r.summary for r in results]))
    print(f"per-policy results under {args.out}/<policy>/; table in "
          f"{Path(args.out) / 'comparison.md'}")
    if not all(r.ok for r in results):
        print("ray-sched compare: some tasks did not finish ok (see the table)", file=sys.stderr)
        return 4
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ray_sched.errors import ConfigError
    from ray_sched.replay import simulate_trace

    losses = []
    for text in args.node_loss:
        try:
            when, node = text.split(":")
            losses.append((float(when), int(node)))
        except ValueError:
            raise ConfigError(f"--node-loss {text!r}: expected TIME_S:NODE, e.g. 5.0:1") from None
    overhead = None if args.launch_overhead_ms is None else args.launch_overhead_ms / 1000.0
    result = simulate_trace(args.trace, policy=args.policy, slots=args.slots, out=args.out,
                            nodes=args.nodes, time_scale=args.time_scale, seed=args.seed,
                            local_schedulers=args.local_schedulers, csv=args.csv,
                            launch_overhead_s=overhead,
                            network_delay_s=args.network_delay_ms / 1000.0, node_loss=losses)
    return _report(result, args.out, "simulate")


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ray_sched.errors import ConfigError
    from ray_sched.otlp.pipeline import PipelineConfig
    from ray_sched.otlp.receiver import serve

    def token_from(flag: str, variable: str | None) -> str | None:
        if not variable:
            return None
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"{flag} {variable}: that environment variable is empty or not set")
        return value

    token = token_from("--auth-token-env", args.auth_token_env)
    if args.no_http and args.no_grpc:
        raise ConfigError("--no-http and --no-grpc: nothing would listen")
    forward_token = token_from("--forward-token-env", args.forward_token_env)
    forward_headers = {"Authorization": f"Bearer {forward_token}"} if forward_token else None
    options = {name: getattr(args, name) for name in (
        "max_body_bytes", "max_pending_requests", "memory_limit_mib", "decision_wait_s",
        "max_traces", "sample_probability", "rate_limit_per_s", "max_depth", "on_max_depth")
        if getattr(args, name) is not None}
    config = PipelineConfig(export_dir=args.export_dir, processors=args.processors,
                            address=args.address, forward_endpoint=args.forward,
                            forward_headers=forward_headers, **options)
    from ray_sched.actors.runtime import ensure_ray

    ensure_ray(args.processors, args.address)  # in the main thread, where Ray sets handlers
    try:
        asyncio.run(serve(config, host=args.host,
                          http_port=None if args.no_http else args.http_port,
                          grpc_port=None if args.no_grpc else args.grpc_port,
                          auth_token=token))
    finally:
        _shutdown_ray()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ray_sched.monitor.energy import EnergyModel
    from ray_sched.monitor.report import build_report

    watts = {name: value for name, value in (("busy_core_w", args.busy_core_watts),
                                              ("idle_node_w", args.idle_node_watts))
             if value is not None}
    path = build_report(args.dirs, args.out, title=args.title, energy=EnergyModel(**watts))
    print(f"report: {path}")
    return 0


def cmd_story(args: argparse.Namespace) -> int:
    from ray_sched.monitor.story import task_story

    print("\n".join(task_story(args.dir, args.task_id)))
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from ray_sched.learner import describe_checkpoint

    print(describe_checkpoint(args.path))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ray_sched import bench

    suite = bench.customize(bench.get_suite(args.suite),
                            scenarios=bench.parse_names(args.scenarios),
                            policies=bench.parse_names(args.policies),
                            loads=bench.parse_loads(args.loads), work=args.work,
                            busy=args.busy)
    frame = bench.run_suite(suite, args.out)
    failed = int(frame["n_failed"].fillna(0).sum())
    if failed:
        print(f"ray-sched bench: {failed} task(s) did not finish ok (see report.md)",
              file=sys.stderr)
        return 4
    return 0


def cmd_tune_sensitivity(args: argparse.Namespace) -> int:
    from ray_sched import bench

    out = args.out or str(Path("runs") / "tune" / f"sensitivity-{args.param}")
    table = bench.sensitivity(args.param, args.values, scenario=args.scenario,
                              policy=args.policy, n=args.n, slots=args.slots, nodes=args.nodes,
                              load=args.load, seed=args.seed, out=out)
    print(bench.sensitivity_table(table))
    print(f"written: {Path(out) / 'sensitivity.csv'}, {Path(out) / 'sensitivity.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # dask.distributed logs every client and worker at INFO: it would bury the progress lines
    # of `compare` and `bench` (read when dask is first imported, so set before that).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        return int(args.func(args) or 0)
    except RaySchedError as error:
        print(f"ray-sched {args.command}: error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(f"ray-sched {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
