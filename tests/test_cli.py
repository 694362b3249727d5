"""The ray-sched command as a user runs it: exit codes, messages and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ray_sched.cli import main
from ray_sched.metrics import read_results
from tests.conftest import REPO, small_trace


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-m", "ray_sched.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.unit
def test_a_missing_trace_exits_3_naming_the_file(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.csv"), "--policy", "fifo", "--slots", "2",
                 "--out", str(tmp_path / "out")]) == 3
    assert "nope.csv: no such file" in capsys.readouterr().err


@pytest.mark.unit
def test_a_bad_trace_exits_3_naming_row_and_column(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"task_id": ["a", "b"], "arrival_s": [0, 1], "runtime_s": [1, -2]}).to_csv(
        path, index=False)
    assert main(["replay", str(path), "--policy", "fifo", "--slots", "2",
                 "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "row 2" in err and "runtime_s" in err and not (tmp_path / "out").exists()


@pytest.mark.unit
def test_an_unknown_policy_exits_2_listing_the_choices(tmp_path, capsys):
    path = tmp_path / "t.csv"
    small_trace(10).to_csv(path, index=False)
    assert main(["replay", str(path), "--policy", "magic", "--slots", "2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'magic'" in err and "fifo" in err


@pytest.mark.unit
@pytest.mark.parametrize("flag, value", [("--slots", "0"), ("--time-scale", "-1"),
                                         ("--slots", "many")])
def test_bad_flags_are_refused_by_argparse(tmp_path, flag, value):
    args = ["replay", "t.csv", "--policy", "fifo", "--slots", "2", "--out", str(tmp_path),
            "--time-scale", "1"]
    args[args.index(flag) + 1] = value
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


@pytest.mark.unit
def test_compare_refuses_an_unknown_policy_before_running_anything(tmp_path, capsys):
    path = tmp_path / "t.csv"
    small_trace(10).to_csv(path, index=False)
    assert main(["compare", str(path), "--policies", "fifo,nope", "--slots", "2",
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_an_unknown_work_kind_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", "t.csv", "--policy", "fifo", "--slots", "2", "--out", str(tmp_path),
              "--work", "gpu"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_replay_command_writes_the_contract_files_and_exits_0(tmp_path):
    trace = tmp_path / "trace.parquet"
    small_trace(60).to_parquet(trace)
    out = tmp_path / "out"
    done = run_cli("replay", str(trace), "--policy", "edf", "--slots", "4", "--out", str(out),
                   "--csv", "--time-scale", "0.5", "--work", "cpu")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.splitlines()[0])
    assert line["n_ok"] == line["n_tasks"] == 60
    results, summary = read_results(out)
    assert len(results) == 60 and summary["policy"] == "edf"
    assert summary["actors_cpu_s_per_1k"] > 0 and summary["driver_cpu_s_per_1k"] > 0
    assert summary["control_cpu_s_per_1k"] == pytest.approx(
        summary["actors_cpu_s_per_1k"] + summary["driver_cpu_s_per_1k"])
    assert (out / "tasks.csv").exists()
    assert "replay edf: 60/60 done" in done.stderr  # plain progress lines off a terminal


@pytest.mark.ray
@pytest.mark.slow
def test_compare_command_prints_a_table_with_the_ratio_to_ray_default(tmp_path):
    trace = tmp_path / "trace.csv"
    small_trace(40, tree_share=0).to_csv(trace, index=False)
    done = run_cli("compare", str(trace), "--policies", "ray-default,fifo", "--slots", "4",
                   "--out", str(tmp_path / "cmp"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "jct_mean_vs_ray-default" in done.stdout and "fifo" in done.stdout
    assert Path(tmp_path / "cmp" / "comparison.md").exists()
    assert len(pd.read_csv(tmp_path / "cmp" / "summary.csv")) == 2


@pytest.mark.unit
def test_simulate_command_writes_the_same_files_as_replay(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    small_trace(100).to_csv(trace, index=False)
    out = tmp_path / "sim"
    assert main(["simulate", str(trace), "--policy", "ml", "--slots", "4", "--nodes", "2",
                 "--out", str(out)]) == 0
    results, summary = read_results(out)
    assert len(results) == 100 and summary["engine"] == "simulator"
    assert results["node"].nunique() == 2
    assert json.loads(capsys.readouterr().out.splitlines()[0])["n_ok"] == 100


@pytest.mark.unit
def test_simulate_refuses_a_baseline(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    small_trace(10).to_csv(trace, index=False)
    assert main(["simulate", str(trace), "--policy", "dask", "--slots", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot be simulated" in capsys.readouterr().err


@pytest.mark.unit
def test_model_show_prints_what_a_checkpoint_holds(tmp_path, capsys):
    import numpy as np

    from ray_sched.learner import Learner
    from ray_sched.trace import frame_to_tasks

    tasks = frame_to_tasks(small_trace(50))
    learner = Learner()
    learner.observe(tasks, np.array([t.runtime_s for t in tasks]))
    learner.save(tmp_path / "models")
    assert main(["model", "show", str(tmp_path / "models")]) == 0
    shown = capsys.readouterr().out
    assert "tasks observed: 50" in shown and "traces:" in shown and "payload_bytes" in shown


@pytest.mark.unit
def test_model_show_on_an_empty_directory_exits_3(tmp_path, capsys):
    assert main(["model", "show", str(tmp_path)]) == 3
    assert "no learner checkpoint" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("command", [["replay", "--policy", "ml"], ["compare"]])
def test_a_malformed_alerts_file_exits_2_with_its_line_before_anything_runs(tmp_path, capsys,
                                                                            command):
    trace, rules = tmp_path / "t.csv", tmp_path / "rules.toml"
    small_trace(10).to_csv(trace, index=False)
    rules.write_text('[[rule]]\nname = "slow"\nmetric = "jct_p99"\nabove = 2\n')
    assert main([command[0], str(trace), *command[1:], "--slots", "2", "--out",
                 str(tmp_path / "out"), "--alerts", str(rules)]) == 2
    err = capsys.readouterr().err
    assert f"{rules}, line 3: rule 'slow': metric 'jct_p99' is not one of" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_story_of_an_unknown_task_exits_2_suggesting_near_ids(tmp_path, capsys):
    from ray_sched.metrics import summarize, write_results
    from tests.test_metrics import make_results, task

    results = make_results([
        task("job-001", arrival_s=0.0, start_s=0.1, finish_s=1.0, measured_runtime_s=0.9),
        task("job-002", arrival_s=0.5, status="failed", error="boom")])
    write_results(tmp_path, results, summarize(results, policy="learned", slots=2))
    assert main(["story", str(tmp_path), "job-01"]) == 2
    assert "no task 'job-01' among its 2 tasks; did you mean 'job-001'" in capsys.readouterr().err
    assert main(["story", str(tmp_path), "job-002"]) == 0
    out = capsys.readouterr().out
    assert "outcome: failed" in out and "error: boom" in out and "no decision log" in out
