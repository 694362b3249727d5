"""The benchmark suite (``ray-sched bench``) and sensitivity sweeps (``ray-sched tune
sensitivity``), issue 7 items 4 and 5."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_sched import bench
from ray_sched.cli import build_parser, main
from ray_sched.errors import ConfigError
from ray_sched.metrics import SUMMARY_FIELDS
from ray_sched.task import PARENT_SEPARATOR
from ray_sched.workloads.window import arrival_span_s

# ------------------------------------------------------------------------------ CLI input


@pytest.mark.unit
def test_parser_knows_bench_and_tune_sensitivity():
    parser = build_parser()
    args = parser.parse_args(["bench", "--suite", "standard", "--out", "x"])
    assert (args.suite, args.out, args.func.__name__) == ("standard", "x", "cmd_bench")
    args = parser.parse_args(["tune", "sensitivity", "--param", "slots", "--values", "8,16"])
    assert (args.n, args.slots, args.nodes, args.load, args.scenario, args.policy) == (
        2000, 64, 4, 0.85, "mixed", "ml")
    assert args.func.__name__ == "cmd_tune_sensitivity"


@pytest.mark.unit
@pytest.mark.parametrize("argv, named", [
    (["bench", "--suite", "huge"], "'huge'"),
    (["bench", "--scenarios", "mixed,volcano"], "volcano"),
    (["bench", "--loads", "0.5,lots"], "'lots'"),
    (["bench", "--policies", "fifo,telepathy"], "telepathy"),
])
def test_bench_refuses_bad_input_with_exit_2_naming_it(argv, named, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.unit
def test_bench_refuses_an_unwritable_out_with_exit_2(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["bench", "--suite", "quick", "--out", str(blocker / "out")]) == 2
    assert f"--out {blocker / 'out'}: cannot write there" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("argv, named", [
    (["--param", "GRAVITY", "--values", "1,2"], "'GRAVITY'"),
    (["--param", "slots", "--values", "8,many"], "'many'"),
    (["--param", "load", "--values", "0.5,0"], "'0'"),
    (["--param", "PRIORITY_WEIGHT", "--values", "0,1", "--policy", "fifo"], "fifo"),
])
def test_sensitivity_refuses_bad_input_with_exit_2_naming_it(argv, named, capsys, tmp_path):
    assert main(["tune", "sensitivity", *argv, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.unit
def test_an_unknown_param_error_names_the_accepted_ones():
    with pytest.raises(ConfigError) as caught:
        bench.sensitivity("gravity", [1.0, 2.0], n=50)
    for name in ("launch_overhead_s", "load", "slots", "PRIORITY_WEIGHT", "DEADLINE_WEIGHT",
                 "AGE_WEIGHT", "FAIRNESS_WEIGHT"):
        assert name in str(caught.value)


# ------------------------------------------------------------------------------ sensitivity


@pytest.mark.unit
def test_a_sweep_has_one_row_per_value_and_no_change_on_the_first(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["tune", "sensitivity", "--param", "PRIORITY_WEIGHT", "--values", "0.1,0,2",
                 "--n", "200", "--slots", "8", "--nodes", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "sensitivity.csv")
    assert table["value"].tolist() == [0.1, 0.0, 2.0]
    assert (table["param"] == "PRIORITY_WEIGHT").all()
    changes = table[[f"{m}_change" for m in bench.SENSITIVITY_METRICS]]
    first = changes.iloc[0]
    assert first["jct_mean_s_change"] == 0.0
    assert (first.dropna() == 0.0).all()
    # The weight reaches the simulation: the highest one changes the outcome.
    assert changes.iloc[2].abs().max() > 0
    assert "| PRIORITY_WEIGHT |" in printed and (out / "sensitivity.md").is_file()


@pytest.mark.unit
def test_a_load_sweep_regenerates_the_trace_and_a_slots_sweep_keeps_it():
    loads = bench.sensitivity("load", [0.5, 0.9], policy="fifo", n=200, slots=8, nodes=2)
    assert loads["utilization"].iloc[1] > loads["utilization"].iloc[0]
    slots = bench.sensitivity("slots", [8, 16], policy="fifo", n=200, slots=8, nodes=2)
    assert slots["jct_mean_s_change"].iloc[1] < 0  # more slots, same work: shorter JCT


@pytest.mark.unit
def test_ordering_weights_apply_inside_the_block_and_are_restored_after():
    from ray_sched.policies import ORDERINGS
    from ray_sched.policies.learned import PRIORITY_WEIGHT, LearnedOrdering

    with pytest.raises(RuntimeError):
        with bench.learned_ordering_weights(priority_weight=3.0, age_weight=0.0):
            ordering = ORDERINGS["ml"]()
            assert (ordering.priority_weight, ordering.age_weight) == (3.0, 0.0)
            raise RuntimeError("restored even after an error")
    assert ORDERINGS["ml"] is LearnedOrdering
    assert ORDERINGS["ml"]().priority_weight == PRIORITY_WEIGHT


# ------------------------------------------------------------------------------ traces


@pytest.mark.unit
@pytest.mark.parametrize("load", [0.5, 0.85])
def test_one_time_scale_per_scenario_gives_the_target_span_at_the_lowest_load(load):
    trace = bench.build_trace("mixed", n=120, slots=8, load=load, seed=3)
    scale = bench.time_scale_for(trace, slots=8, lowest_load=0.5, target_span_s=1.5)
    assert arrival_span_s(trace) * scale == pytest.approx(1.5 * 0.5 / load, rel=1e-3)


@pytest.mark.unit
@pytest.mark.skipif(not bench.WORKFLOW.is_file(), reason="needs shared/data/traces")
def test_the_workflow_scenario_keeps_whole_pipelines_of_each_copy():
    trace = bench.build_trace("wfinstances", n=90, slots=8, load=0.7, seed=0)
    assert len(trace) == 90 and trace["tenant"].nunique() == bench.WORKFLOW_COPIES
    ids = set(trace["task_id"])
    depth: dict[str, int] = {}
    for task_id, parents in zip(trace["task_id"], trace["parent_id"]):
        links = parents.split(PARENT_SEPARATOR) if isinstance(parents, str) and parents else []
        assert set(links) <= ids  # closed under parents
        depth[task_id] = 1 + max((depth[p] for p in links), default=-1)
    assert max(depth.values()) >= 3
    assert trace["arrival_s"].nunique() == bench.WORKFLOW_COPIES  # each copy arrives whole


# ------------------------------------------------------------------------------ end to end


@pytest.mark.ray
@pytest.mark.slow
def test_a_tiny_suite_writes_one_summary_row_per_cell_and_policy(ray_local, tmp_path):
    suite = bench.customize(bench.get_suite("quick"), scenarios=["mixed", "tree"],
                            policies=["ray-default", "fifo"], loads=[0.85], n_tasks=40,
                            target_span_s=1.0, slots=8)
    lines: list[str] = []
    frame = bench.run_suite(suite, tmp_path / "bench", progress=lines.append)
    summary = pd.read_csv(tmp_path / "bench" / "summary.csv")
    assert list(summary.columns[:3]) == ["suite", "scenario", "load"]
    assert set(SUMMARY_FIELDS) <= set(summary.columns)
    assert list(zip(summary["scenario"], summary["policy"])) == [
        ("mixed", "ray-default"), ("mixed", "fifo"), ("tree", "ray-default"), ("tree", "fifo")]
    assert (summary["load"] == 0.85).all() and (summary["suite"] == "quick").all()
    assert (summary["n_ok"] == 40).all() and len(frame) == 4
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "Measured wall time" in report and "## mixed" in report and "## tree" in report
    for scenario in ("mixed", "tree"):
        page = (tmp_path / "bench" / f"report-{scenario}.html").read_text()
        assert f"{scenario} at load" in page and "data:image/png;base64," in page
    assert len([line for line in lines if line.startswith("cell ")]) == 2
    assert ray_local.is_initialized()  # the caller's Ray is left running


@pytest.mark.unit
def test_the_report_marks_replays_whose_scheduler_was_short_of_cpu():
    rows = [{"suite": "quick", "scenario": "mixed", "load": 0.85, "policy": policy,
             "n_tasks": 10, "n_ok": 10, "n_failed": 0, "jct_mean_s": jct, "jct_p99_s": 1.0,
             "deadline_miss_rate": None, "jain_fairness_tenants": 0.9, "makespan_s": 2.0,
             "sched_overhead_ms_mean": overhead}
            for policy, jct, overhead in (("ray-default", 0.4, None), ("fifo", 0.2, 3.0),
                                          ("ml", 0.8, bench.DISTURBED_OVERHEAD_MS + 1))]
    suite = bench.customize(bench.get_suite("quick"), scenarios=["mixed"],
                            policies=["ray-default", "fifo", "ml"], loads=[0.85])
    report = bench.render_report(pd.DataFrame(rows), suite, 12.0, {"mixed": 0.2})
    assert "| fifo | 0.200 (0.50x) | 1.000 | - | 0.900 |" in report
    assert "| ml | 0.800 (2.00x) * |" in report
    assert "1 of the 2 replays of our schedulers" in report
