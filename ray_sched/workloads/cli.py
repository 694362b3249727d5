"""The ``convert`` and ``gen`` subcommands, added to the main CLI by :func:`register`.

    ray-sched convert swf LOG --out TRACE [--start-job N] [--max-jobs N]
                              [--slots N --load RHO] [--time-scale X] [--max-cpu N]
    ray-sched convert wfinstances FILE --out TRACE [--max-tasks N] [--slots N --load RHO]
                              [--repeat K] [--tenant NAME] [--max-cpu N] [--time-scale X]
    ray-sched gen --scenario {mixed,bursty,drift,tree} --n N --slots S --load RHO
                  --seed K --out TRACE

Each command prints a one-paragraph report to stdout and writes the trace with
:func:`ray_sched.trace.write_trace` (format by suffix). Errors are raised as
:mod:`ray_sched.errors` types; the main CLI maps them to exit codes. Without the
main CLI, ``python -m ray_sched.workloads.cli ...`` runs the same commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ray_sched.errors import RaySchedError, exit_code_for
from ray_sched.trace import write_trace
from ray_sched.workloads.swf import convert_swf
from ray_sched.workloads.synthetic import SCENARIOS, generate
from ray_sched.workloads.wfinstances import convert_wfinstances
from ray_sched.workloads.window import describe_frame


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` (with ``swf`` and ``wfinstances``) and ``gen`` to a subparsers object.

    Each leaf parser sets ``func``: a callable taking the parsed namespace and
    returning an exit code.

    Example:
        >>> parser = argparse.ArgumentParser(prog="ray-sched")
        >>> register(parser.add_subparsers(dest="command", required=True))
        >>> args = parser.parse_args(["gen", "--scenario", "mixed", "--n", "10", "--slots",
        ...                           "2", "--load", "0.5", "--seed", "0", "--out", "t.csv"])
        >>> args.func  # doctest: +ELLIPSIS
        <function run_gen at ...>
    """
    convert = subparsers.add_parser(
        "convert", help="convert a real workload log into a task trace",
        description="Convert a real workload log into a task trace (TRACE_FORMAT.md).")
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")

    swf = sources.add_parser(
        "swf", help="Parallel Workloads Archive log (.swf or .swf.gz)",
        description="Convert a Standard Workload Format log. Jobs with run <= 0 are dropped "
                    "and counted.")
    swf.add_argument("log", metavar="LOG", help="the .swf or .swf.gz file")
    _add_out(swf)
    swf.add_argument("--start-job", type=int, default=0, metavar="N",
                     help="first job of the window, as an index among usable jobs (default 0)")
    swf.add_argument("--max-jobs", type=int, default=None, metavar="N",
                     help="at most N jobs from --start-job (default: all)")
    _add_scaling(swf)
    swf.set_defaults(func=run_convert_swf)

    wf = sources.add_parser(
        "wfinstances", help="WfCommons WfInstances workflow (WfFormat 1.5 .json)",
        description="Convert a WfInstances workflow execution, keeping its whole DAG in "
                    "parent_id. --load needs --repeat K >= 2, since one workflow arrives "
                    "whole at 0 s.")
    wf.add_argument("file", metavar="FILE", help="the .json or .json.gz file")
    _add_out(wf)
    wf.add_argument("--max-tasks", type=int, default=None, metavar="N",
                    help="keep the first N tasks in topological order (default: all)")
    wf.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="K copies of the workflow, ids suffixed '#k', spaced to reach "
                         "--load (default 1)")
    wf.add_argument("--tenant", default=None, metavar="NAME",
                    help="tenant of every task (default: the workflow's name)")
    _add_scaling(wf)
    wf.set_defaults(func=run_convert_wfinstances)

    gen = subparsers.add_parser(
        "gen", help="generate a synthetic trace",
        description="Generate a synthetic telemetry/batch trace at a given offered load.")
    gen.add_argument("--scenario", required=True, choices=SCENARIOS)
    gen.add_argument("--n", type=int, required=True, metavar="N", help="number of tasks")
    gen.add_argument("--slots", type=int, required=True, metavar="S",
                     help="slot count the offered load refers to")
    gen.add_argument("--load", type=float, required=True, metavar="RHO",
                     help="offered load: sum(runtime*cpu) / (slots * arrival span)")
    gen.add_argument("--seed", type=int, required=True, metavar="K")
    _add_out(gen)
    gen.set_defaults(func=run_gen)


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="TRACE",
                        help="output trace: .csv, .csv.gz, .parquet or .jsonl")


def _add_scaling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slots", type=int, default=None, metavar="N",
                        help="slot count for --load, the default --max-cpu and the report")
    parser.add_argument("--load", type=float, default=None, metavar="RHO",
                        help="target offered load on --slots; stretches arrivals only")
    parser.add_argument("--max-cpu", type=float, default=None, metavar="N",
                        help="cap on a task's cpu (default: --slots)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="multiply arrival, runtime and deadline by X after --load "
                             "(e.g. 0.001 turns days into minutes)")


def run_convert_swf(args: argparse.Namespace) -> int:
    """``convert swf``: convert, write, print the report; returns 0."""
    frame, report = convert_swf(args.log, start_job=args.start_job, max_jobs=args.max_jobs,
                                slots=args.slots, load=args.load, max_cpu=args.max_cpu,
                                time_scale=args.time_scale)
    path = write_trace(frame, args.out)
    print(f"{report.summary()} Wrote {path}.")
    return 0


def run_convert_wfinstances(args: argparse.Namespace) -> int:
    """``convert wfinstances``: convert, write, print the report; returns 0."""
    frame, report = convert_wfinstances(args.file, max_tasks=args.max_tasks, slots=args.slots,
                                        load=args.load, tenant=args.tenant, repeat=args.repeat,
                                        max_cpu=args.max_cpu, time_scale=args.time_scale)
    path = write_trace(frame, args.out)
    print(f"{report.summary()} Wrote {path}.")
    return 0


def run_gen(args: argparse.Namespace) -> int:
    """``gen``: generate, write, print the report; returns 0."""
    frame = generate(args.scenario, n=args.n, slots=args.slots, load=args.load, seed=args.seed)
    path = write_trace(frame, args.out)
    kinds = ", ".join(f"{k} {v}" for k, v in frame["kind"].value_counts().items())
    print(f"Generated scenario {args.scenario!r} (seed {args.seed}): {kinds}; "
          f"{frame['tenant'].nunique()} tenants. {describe_frame(frame, args.slots)} "
          f"Wrote {path}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m ray_sched.workloads.cli``) for these commands."""
    parser = argparse.ArgumentParser(prog="python -m ray_sched.workloads.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RaySchedError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code_for(error)


if __name__ == "__main__":
    raise SystemExit(main())
