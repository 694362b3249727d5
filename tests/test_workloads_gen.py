"""Specification of the synthetic generator, the ``convert``/``gen`` CLI and the examples."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_sched.errors import ConfigError, ConvertError
from ray_sched.trace import depths, read_trace, split_parents, validate_frame
from ray_sched.workloads import SCENARIOS, generate, offered_load
from ray_sched.workloads.cli import register

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
SLOTS, LOAD = 8, 0.85


@pytest.fixture(scope="module")
def traces() -> dict[str, pd.DataFrame]:
    return {s: generate(s, n=1_500, slots=SLOTS, load=LOAD, seed=7) for s in SCENARIOS}


def _median_ratio_by_kind(frame: pd.DataFrame) -> pd.Series:
    """Second-half over first-half median runtime, per kind."""
    second = np.arange(len(frame)) >= len(frame) // 2
    by_half = frame.groupby([second, "kind"])["runtime_s"].median().unstack(0)
    return by_half[True] / by_half[False]


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_is_a_valid_trace_of_n_tasks(traces, scenario):
    frame = traces[scenario]
    assert len(validate_frame(frame)) == 1_500
    assert frame["arrival_s"].is_monotonic_increasing and frame["arrival_s"].iloc[0] == 0
    assert {"payload_bytes", "n_items", "n_spans", "codec"} <= set(frame.columns)
    assert set(frame["cpu"]) <= {1.0, 2.0}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_gives_the_same_trace(scenario):
    one = generate(scenario, n=200, slots=SLOTS, load=LOAD, seed=3)
    two = generate(scenario, n=200, slots=SLOTS, load=LOAD, seed=3)
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_different_seeds_give_different_traces(scenario):
    one = generate(scenario, n=200, slots=SLOTS, load=LOAD, seed=3)
    two = generate(scenario, n=200, slots=SLOTS, load=LOAD, seed=4)
    assert not np.array_equal(one["runtime_s"], two["runtime_s"])
    assert not np.array_equal(one["arrival_s"], two["arrival_s"])


def test_scenarios_with_one_seed_share_their_tasks_and_differ_only_in_their_change(traces):
    mixed, bursty, drift = traces["mixed"], traces["bursty"], traces["drift"]
    for column in ("tenant", "kind", "priority", "payload_bytes", "codec"):
        assert mixed[column].tolist() == bursty[column].tolist() == drift[column].tolist()
    np.testing.assert_array_equal(mixed["runtime_s"], bursty["runtime_s"])
    np.testing.assert_array_equal(mixed["runtime_s"][:750], drift["runtime_s"][:750])
    assert not np.array_equal(mixed["arrival_s"], bursty["arrival_s"])


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("load", [0.5, 0.85, 1.2])
def test_offered_load_is_the_asked_load(scenario, load):
    frame = generate(scenario, n=400, slots=4, load=load, seed=11)
    assert offered_load(frame, 4) == pytest.approx(load, rel=0.10)


def test_mean_runtime_suits_a_one_to_two_minute_replay(traces):
    mean = traces["mixed"]["runtime_s"].mean()
    assert 0.05 <= mean <= 0.3
    span = traces["mixed"]["arrival_s"].max()     # 1,500 tasks, 8 slots, load 0.85
    assert 30 <= span <= 150


def test_runtimes_have_a_heavy_tail(traces):
    runtime = traces["mixed"]["runtime_s"]
    assert runtime.quantile(0.99) / runtime.median() > 10


def test_runtimes_depend_on_kind_and_payload(traces):
    frame = traces["mixed"]
    medians = frame.groupby("kind")["runtime_s"].median()
    assert medians.max() / medians.min() > 5
    logs = frame[frame["kind"] == "logs"]
    correlation = np.corrcoef(np.log(logs["payload_bytes"]), np.log(logs["runtime_s"]))[0, 1]
    assert correlation > 0.5


def test_tenants_and_kinds_have_skewed_shares(traces):
    frame = traces["mixed"]
    tenants = frame["tenant"].value_counts(normalize=True)
    assert 4 <= len(tenants) <= 6
    assert tenants.iloc[0] > 2 * tenants.iloc[-1]
    assert frame["kind"].nunique() >= 4


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deadlines_are_one_constant_per_kind_and_only_for_some_kinds(traces, scenario):
    frame = traces[scenario]
    per_kind = frame.groupby("kind")["deadline_s"].nunique(dropna=False)
    assert (per_kind == 1).all()
    with_deadline = frame.groupby("kind")["deadline_s"].first().notna()
    assert 0 < with_deadline.sum() < len(with_deadline)


def test_priorities_are_mostly_zero_with_some_declared(traces):
    priority = traces["mixed"]["priority"]
    assert priority.between(0, 9).all()
    assert (priority == 0).mean() > 0.4
    assert priority.nunique() >= 3


def test_only_mixed_has_two_or_three_regions(traces):
    assert 2 <= traces["mixed"]["region"].nunique() <= 3
    assert all("region" not in traces[s].columns for s in SCENARIOS if s != "mixed")


def test_drift_changes_per_kind_runtimes_between_halves(traces):
    drift = _median_ratio_by_kind(traces["drift"])
    steady = _median_ratio_by_kind(traces["mixed"])
    assert ((drift > 1.5) | (drift < 1 / 1.5)).sum() >= 3
    assert steady.between(0.6, 1 / 0.6).all()


def test_bursty_arrivals_are_overdispersed_compared_with_poisson(traces):
    def dispersion(frame: pd.DataFrame) -> float:
        counts, _ = np.histogram(frame["arrival_s"], bins=60)
        return counts.var() / counts.mean()

    assert dispersion(traces["bursty"]) > 3 * dispersion(traces["mixed"])


def test_tree_has_roots_children_and_dag_joins(traces):
    frame = traces["tree"]
    parents = frame["parent_id"].map(split_parents)
    n_parents = parents.map(len)
    assert (n_parents == 0).sum() > 20                   # many roots
    assert (n_parents >= 1).mean() > 0.5                 # most tasks are children
    assert (n_parents == 2).sum() > 10                   # DAG joins "a;b"
    assert 1 <= depths(frame).max() <= 3
    arrival = dict(zip(frame["task_id"], frame["arrival_s"]))
    assert all(arrival[p] == arrival[c] for c, ps in zip(frame["task_id"], parents) for p in ps)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("n", [2, 20])
def test_tiny_traces_still_spread_their_arrivals(scenario, n):
    frame = generate(scenario, n=n, slots=2, load=0.5, seed=0)
    assert len(frame) == n
    assert offered_load(frame, 2) == pytest.approx(0.5, rel=0.10)


@pytest.mark.parametrize("bad", [{"scenario": "storm"}, {"n": 1}, {"slots": 0},
                                 {"load": 0.0}, {"seed": 1.5}])
def test_bad_generator_parameters_are_config_errors(bad):
    arguments = {"scenario": "mixed", "n": 10, "slots": 2, "load": 0.5, "seed": 0} | bad
    scenario = arguments.pop("scenario")
    with pytest.raises(ConfigError, match="got"):
        generate(scenario, **arguments)


# ----------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ray-sched")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_gen_writes_the_trace_and_prints_a_report(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    args = _parse(["gen", "--scenario", "tree", "--n", "50", "--slots", "4", "--load", "0.7",
                   "--seed", "2", "--out", str(out)])
    assert args.func(args) == 0
    frame = read_trace(out)
    pd.testing.assert_frame_equal(frame, generate("tree", n=50, slots=4, load=0.7, seed=2),
                                  check_dtype=False)
    printed = capsys.readouterr().out
    assert "50 rows" in printed and "offered load 0.700 on 4 slots" in printed


def test_cli_convert_swf_passes_window_and_scaling_flags(tmp_path, capsys):
    log = tmp_path / "log.swf"
    log.write_text("".join(f"{j} {j * 10} -1 {5 + j} 16 -1 -1 -1 -1 -1 1 {j % 3} 1 {j} -1 -1 "
                           f"-1 -1\n" for j in range(1, 21)))
    out = tmp_path / "log.csv"
    args = _parse(["convert", "swf", str(log), "--out", str(out), "--start-job", "2",
                   "--max-jobs", "10", "--slots", "4", "--load", "0.9", "--max-cpu", "2",
                   "--time-scale", "0.5"])
    assert args.func(args) == 0
    frame = read_trace(out)
    assert list(frame["task_id"]) == [str(j) for j in range(3, 13)]
    assert frame["cpu"].max() == 2
    assert offered_load(frame, 4) == pytest.approx(0.9, rel=0.01)
    assert "Time scale 0.5" in capsys.readouterr().out


def test_cli_convert_wfinstances_repeats_to_reach_the_load(tmp_path, capsys):
    source = TRACES / "wfinstances" / "seismology-chameleon-500p-001.json"
    if not source.is_file():
        pytest.skip(f"real trace {source} is absent")
    out = tmp_path / "wf.jsonl"
    args = _parse(["convert", "wfinstances", str(source), "--out", str(out), "--max-tasks",
                   "40", "--repeat", "3", "--slots", "4", "--load", "0.6"])
    assert args.func(args) == 0
    frame = read_trace(out)
    assert len(frame) == 120
    assert offered_load(frame, 4) == pytest.approx(0.6, rel=0.01)
    assert "3 copies" in capsys.readouterr().out


def test_cli_raises_domain_errors_for_the_main_cli_to_map(tmp_path):
    args = _parse(["convert", "swf", str(tmp_path / "absent.swf"), "--out",
                   str(tmp_path / "x.csv")])
    with pytest.raises(ConvertError, match="no such file"):
        args.func(args)


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("name, scenario, n, load", [
    ("mixed-300.csv", "mixed", 300, LOAD), ("mixed-600.csv", "mixed", 600, 0.9),
    ("mixed-1500.csv", "mixed", 1_500, LOAD),
    ("bursty-300.csv", "bursty", 300, LOAD), ("drift-300.csv", "drift", 300, LOAD),
    ("tree-300.csv", "tree", 300, LOAD)])
def test_examples_are_what_the_readme_commands_generate(name, scenario, n, load):
    path = REPO / "examples" / name
    if not path.is_file():
        pytest.skip(f"{path} not generated yet")
    expected = generate(scenario, n=n, slots=SLOTS, load=load, seed=1)
    pd.testing.assert_frame_equal(read_trace(path), expected, check_dtype=False)
    assert path.stat().st_size < 200_000
