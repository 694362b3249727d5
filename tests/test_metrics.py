"""Specification of ray_sched.metrics: per-task results, the summary, and its tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_sched.errors import ConfigError, RaySchedError
from ray_sched.metrics import (
    EXTRA_COLUMNS,
    RESULT_COLUMNS,
    SCHEMA_METADATA_KEY,
    SCHEMA_VERSION,
    SUMMARY_FIELDS,
    comparison_table,
    deadline_met,
    markdown_table,
    read_results,
    summarize,
    validate_results,
    write_results,
)

NAN = np.nan
SLOTS = 2


def task(task_id: str, **fields) -> dict:
    """One result row: the task's id and whatever the test needs to say about it."""
    return {"task_id": task_id, **fields}


def make_results(rows: list[dict], policy: str = "learned") -> pd.DataFrame:
    """A results frame with contract defaults for whatever a row does not say."""
    base = {"policy": policy, "worker": "local-0", "node": "node-a", "start_s": NAN,
            "finish_s": NAN, "predicted_runtime_s": NAN, "measured_runtime_s": NAN,
            "deadline_met": pd.NA, "attempts": 1, "status": "ok", "error": ""}
    return pd.DataFrame([{**base, **row} for row in rows])


@pytest.fixture
def four_tasks() -> pd.DataFrame:
    """Three ok tasks over two tenants and one failed task, on 2 slots.

    task  tenant arrival start finish measured runtime pred  cpu deadline placed  status
    a     t1     0       0     2      2        2       1.5   1   3 (met)  0.01    ok
    b     t1     1       2     5      3        3       -     1   3 (miss) 1.02    ok
    c     t2     2       2     3      1        1       2.0   2   -        -       ok
    d     t2     3       3     4      1        1       1.0   1   10       -       failed x3
    """
    frame = make_results([
        task("a", tenant="t1", arrival_s=0.0, start_s=0.0, finish_s=2.0,
             measured_runtime_s=2.0, runtime_s=2.0, predicted_runtime_s=1.5, cpu=1.0,
             deadline_s=3.0, placed_s=0.01),
        task("b", tenant="t1", arrival_s=1.0, start_s=2.0, finish_s=5.0,
             measured_runtime_s=3.0, runtime_s=3.0, cpu=1.0, deadline_s=3.0, placed_s=1.02),
        task("c", tenant="t2", arrival_s=2.0, start_s=2.0, finish_s=3.0,
             measured_runtime_s=1.0, runtime_s=1.0, predicted_runtime_s=2.0, cpu=2.0),
        task("d", tenant="t2", arrival_s=3.0, start_s=3.0, finish_s=4.0,
             measured_runtime_s=1.0, runtime_s=1.0, predicted_runtime_s=1.0, cpu=1.0,
             deadline_s=10.0, status="failed", attempts=3, error="worker lost"),
    ])
    frame["deadline_met"] = deadline_met(frame["arrival_s"], frame["finish_s"],
                                         frame["deadline_s"], ok=frame["status"] == "ok")
    return frame


@pytest.fixture
def summary(four_tasks: pd.DataFrame) -> dict:
    return summarize(four_tasks, policy="learned", slots=SLOTS)


# ----------------------------------------------------------------------------- the summary


@pytest.mark.unit
def test_summary_has_every_contract_field_first_in_contract_order(summary):
    assert list(summary)[:len(SUMMARY_FIELDS)] == list(SUMMARY_FIELDS)
    assert summary["schema_version"] == SCHEMA_VERSION
    assert summary["slots"] == SLOTS


@pytest.mark.unit
def test_counts_split_ok_and_failed_tasks(summary):
    assert (summary["n_tasks"], summary["n_ok"], summary["n_failed"]) == (4, 3, 1)
    assert summary["n_retried"] == 1  # d ran 3 times


@pytest.mark.unit
def test_makespan_spans_first_arrival_to_last_finish_including_failed_tasks(summary):
    # max finish 5 (b) - min arrival 0 (a); d (failed) finished at 4, inside that.
    assert summary["makespan_s"] == pytest.approx(5.0)


@pytest.mark.unit
def test_jct_mean_and_max_over_ok_tasks_only(summary):
    # JCTs: a 2-0=2, b 5-1=4, c 3-2=1; d failed is left out.
    assert summary["jct_mean_s"] == pytest.approx(7 / 3)
    assert summary["jct_max_s"] == pytest.approx(4.0)


@pytest.mark.unit
def test_jct_percentiles_interpolate_linearly(summary):
    # Sorted [1, 2, 4]: p50 at index 1.0 -> 2; p95 at 1.9 -> 2 + 0.9*2 = 3.8; p99 at 1.98 -> 3.96.
    assert summary["jct_p50_s"] == pytest.approx(2.0)
    assert summary["jct_p95_s"] == pytest.approx(3.8)
    assert summary["jct_p99_s"] == pytest.approx(3.96)


@pytest.mark.unit
def test_slowdown_divides_jct_by_the_true_runtime(summary):
    # a 2/2 = 1, b 4/3, c 1/1 = 1 -> mean (10/3)/3 = 10/9.
    assert summary["slowdown_mean"] == pytest.approx(10 / 9)


@pytest.mark.unit
def test_slowdown_falls_back_to_measured_runtime_when_runtime_is_unknown():
    # An API task: no runtime_s. JCT 4 - 0 = 4, measured 2 -> slowdown 2.
    frame = make_results([task("api-1", arrival_s=0.0, start_s=2.0, finish_s=4.0,
                               measured_runtime_s=2.0, runtime_s=NAN)])
    assert summarize(frame, policy="learned", slots=1)["slowdown_mean"] == pytest.approx(2.0)


@pytest.mark.unit
def test_throughput_is_ok_tasks_per_second_of_makespan(summary):
    assert summary["throughput_tps"] == pytest.approx(3 / 5)


@pytest.mark.unit
def test_utilization_weights_busy_time_by_cpu_over_slot_seconds(summary):
    # Busy: a 2*1 + b 3*1 + c 1*2 = 7 slot-seconds (failed d left out); 2 slots * 5 s = 10.
    assert summary["utilization"] == pytest.approx(0.7)


@pytest.mark.unit
def test_jain_index_over_per_tenant_mean_slowdown(summary):
    # t1: mean(1, 4/3) = 7/6; t2: mean(1) = 1 (d failed).
    # (7/6 + 1)^2 / (2 * ((7/6)^2 + 1)) = (169/36) / (2 * 85/36) = 169/170.
    assert summary["jain_fairness_tenants"] == pytest.approx(169 / 170)
    assert summary["n_tenants"] == 2


@pytest.mark.unit
def test_jain_index_is_one_with_a_single_tenant():
    frame = make_results([
        task("a", arrival_s=0.0, start_s=0.0, finish_s=1.0, measured_runtime_s=1.0),
        task("b", arrival_s=0.0, start_s=1.0, finish_s=4.0, measured_runtime_s=1.0),
    ])
    assert summarize(frame, policy="learned", slots=1)["jain_fairness_tenants"] == 1.0


@pytest.mark.unit
def test_deadline_miss_rate_counts_failed_tasks_and_ignores_tasks_without_deadline(summary):
    # With a deadline: a (met), b (5 > 1+3, missed), d (failed: a miss); c has none.
    assert summary["deadline_tasks"] == 3
    assert summary["deadline_miss_rate"] == pytest.approx(2 / 3)


@pytest.mark.unit
def test_prediction_errors_cover_only_ok_tasks_with_a_prediction(summary):
    # a |1.5-2| = 0.5, c |2-1| = 1; b predicted nothing, d failed.
    assert summary["n_predicted"] == 2
    assert summary["prediction_mae_s"] == pytest.approx(0.75)
    # 0.5/2 = 0.25 and 1/1 = 1 -> 0.625
    assert summary["prediction_mape"] == pytest.approx(0.625)


@pytest.mark.unit
def test_sched_overhead_is_arrival_to_placement_in_ms_over_placed_tasks(summary):
    # a 10 ms, b 20 ms; c and d have no placed_s.
    assert summary["sched_overhead_ms_mean"] == pytest.approx(15.0)
    assert summary["sched_overhead_ms_p99"] == pytest.approx(19.9)


@pytest.mark.unit
def test_sched_overhead_of_a_task_held_for_its_parents_counts_from_when_it_was_ready():
    # a arrives at 0, its parent finishes at 4 (ready_s), it is placed at 4.005: 5 ms.
    # b has no parent: ready_s equals its arrival, placed 10 ms later.
    frame = make_results([
        task("a", arrival_s=0.0, ready_s=4.0, placed_s=4.005, start_s=4.01, finish_s=5.0,
             measured_runtime_s=0.99),
        task("b", arrival_s=1.0, ready_s=1.0, placed_s=1.01, start_s=1.02, finish_s=2.0,
             measured_runtime_s=0.98)])
    summary = summarize(frame, policy="learned", slots=1)
    assert summary["sched_overhead_ms_mean"] == pytest.approx(7.5)


@pytest.mark.unit
def test_optional_metrics_are_none_without_their_columns():
    # No runtime_s, tenant, cpu, deadline_s, placed_s, predictions: a baseline on API tasks.
    frame = make_results([task("a", arrival_s=0.0, start_s=0.0, finish_s=1.0,
                               measured_runtime_s=1.0)], policy="fifo")
    summary = summarize(frame, policy="fifo", slots=1)
    assert summary["deadline_miss_rate"] is None and summary["deadline_tasks"] == 0
    assert summary["prediction_mae_s"] is None and summary["prediction_mape"] is None
    assert summary["sched_overhead_ms_mean"] is None
    assert summary["utilization"] == pytest.approx(1.0)


@pytest.mark.unit
def test_every_rate_is_none_when_nothing_finished():
    frame = make_results([task("a", arrival_s=0.0, status="failed", error="boom")])
    summary = summarize(frame, policy="learned", slots=1)
    assert summary["makespan_s"] == 0.0
    for field in ("jct_mean_s", "jct_p50_s", "jct_p95_s", "jct_p99_s", "slowdown_mean",
                  "throughput_tps", "utilization", "jain_fairness_tenants", "jct_max_s"):
        assert summary[field] is None, field


@pytest.mark.unit
def test_mape_skips_tasks_measured_at_zero_seconds():
    frame = make_results([task("a", arrival_s=0.0, start_s=1.0, finish_s=1.0,
                               measured_runtime_s=0.0, predicted_runtime_s=0.5)])
    summary = summarize(frame, policy="learned", slots=1)
    assert summary["prediction_mae_s"] == pytest.approx(0.5)
    assert summary["prediction_mape"] is None


@pytest.mark.unit
def test_summarize_refuses_rows_of_another_policy(four_tasks):
    with pytest.raises(RaySchedError, match="'learned'.*'fifo'"):
        summarize(four_tasks, policy="fifo", slots=SLOTS)


@pytest.mark.unit
@pytest.mark.parametrize("slots", [0, -1, 2.5, None])
def test_summarize_refuses_slots_that_are_not_a_positive_integer(four_tasks, slots):
    with pytest.raises(ConfigError, match="slots"):
        summarize(four_tasks, policy="learned", slots=slots)


@pytest.mark.unit
def test_summarize_does_not_modify_its_input(four_tasks):
    before = four_tasks.copy()
    summarize(four_tasks, policy="learned", slots=SLOTS)
    pd.testing.assert_frame_equal(four_tasks, before)


# ---------------------------------------------------------------------------- deadline_met


@pytest.mark.unit
def test_deadline_is_met_when_finishing_by_arrival_plus_deadline():
    assert deadline_met(1.0, 3.0, 2.5) is True
    assert deadline_met(1.0, 3.5, 2.5) is True  # exactly on time counts as met
    assert deadline_met(1.0, 3.6, 2.5) is False


@pytest.mark.unit
def test_deadline_met_is_na_without_a_deadline():
    assert deadline_met(1.0, 3.0, None) is pd.NA
    assert deadline_met(1.0, 3.0, NAN) is pd.NA


@pytest.mark.unit
def test_a_failed_or_unfinished_task_never_meets_its_deadline():
    assert deadline_met(1.0, 2.0, 5.0, ok=False) is False
    assert deadline_met(1.0, None, 5.0) is False


@pytest.mark.unit
def test_deadline_met_on_series_returns_nullable_booleans_on_their_index():
    index = pd.Index([10, 11, 12])
    met = deadline_met(pd.Series([0.0, 0.0, 0.0], index=index),
                       pd.Series([1.0, 3.0, 1.0], index=index),
                       pd.Series([2.0, 2.0, NAN], index=index))
    assert met.dtype == "boolean"
    assert met.index.equals(index)
    assert met.tolist() == [True, False, pd.NA]


# ------------------------------------------------------------------------------ validation


@pytest.mark.unit
def test_validation_orders_contract_columns_then_extras_then_the_rest(four_tasks):
    four_tasks["my_feature"] = 1
    frame = validate_results(four_tasks.iloc[:, ::-1])
    assert list(frame.columns) == [*RESULT_COLUMNS, *EXTRA_COLUMNS, "my_feature"]


@pytest.mark.unit
def test_validation_fills_missing_extras_with_trace_defaults():
    frame = validate_results(make_results([task("a", arrival_s=0.0, start_s=0.0,
                                                finish_s=1.0, measured_runtime_s=1.0)]))
    row = frame.iloc[0]
    assert (row["tenant"], row["kind"], row["priority"], row["cpu"]) == ("default", "default",
                                                                          0, 1.0)
    assert np.isnan(row["runtime_s"]) and np.isnan(row["placed_s"])


@pytest.mark.unit
def test_validation_fills_empty_tenant_and_cpu_cells_with_trace_defaults():
    # Trace tasks and API tasks mixed: the API task has no tenant and no cpu.
    frame = make_results([
        task("trace-1", arrival_s=0.0, start_s=0.0, finish_s=1.0, measured_runtime_s=1.0,
             tenant="t1", cpu=2.0),
        task("api-1", arrival_s=0.0, start_s=0.0, finish_s=1.0, measured_runtime_s=1.0,
             tenant=None, cpu=NAN),
    ])
    frame["tenant"] = frame["tenant"].astype("category")
    normalised = validate_results(frame)
    assert normalised["tenant"].tolist() == ["t1", "default"]
    assert normalised["cpu"].tolist() == [2.0, 1.0]


@pytest.mark.unit
def test_missing_contract_column_is_named(four_tasks):
    with pytest.raises(RaySchedError, match="missing result column.*'finish_s'"):
        validate_results(four_tasks.drop(columns="finish_s"))


@pytest.mark.unit
def test_duplicate_task_id_is_refused_naming_the_id_and_rows(four_tasks):
    four_tasks.loc[3, "task_id"] = "b"
    with pytest.raises(RaySchedError, match=r"row 4.*duplicate task_id 'b' \(first seen at row 2"):
        validate_results(four_tasks)


@pytest.mark.unit
def test_status_other_than_ok_or_failed_is_refused(four_tasks):
    four_tasks.loc[2, "status"] = "done"
    with pytest.raises(RaySchedError, match="status must be one of.*'done' for task 'c'"):
        validate_results(four_tasks)


@pytest.mark.unit
def test_an_ok_task_without_a_finish_time_is_refused(four_tasks):
    four_tasks.loc[0, "finish_s"] = NAN
    with pytest.raises(RaySchedError, match="column 'finish_s'.*task 'a'"):
        validate_results(four_tasks)


# ---------------------------------------------------------------------------- write / read


@pytest.mark.unit
def test_round_trip_preserves_values_and_dtypes(tmp_path, four_tasks, summary):
    write_results(tmp_path, four_tasks, summary)
    results, read_summary = read_results(tmp_path)
    pd.testing.assert_frame_equal(results, validate_results(four_tasks))
    assert read_summary == summary
    assert list(read_summary) == list(summary)


@pytest.mark.unit
def test_written_columns_have_the_contract_dtypes(tmp_path, four_tasks, summary):
    write_results(tmp_path, four_tasks, summary)
    results, _ = read_results(tmp_path)
    for column in ("task_id", "policy", "worker", "node", "status", "error", "tenant"):
        assert results[column].dtype == "string", column
    for column in ("arrival_s", "start_s", "finish_s", "predicted_runtime_s",
                   "measured_runtime_s", "deadline_s", "placed_s", "runtime_s", "cpu"):
        assert results[column].dtype == np.float64, column
    assert results["deadline_met"].dtype == "boolean"
    assert results["attempts"].dtype == np.int64
    assert results["deadline_met"].tolist() == [True, False, pd.NA, False]


@pytest.mark.unit
def test_parquet_carries_the_schema_version(tmp_path, four_tasks, summary):
    paths = write_results(tmp_path, four_tasks, summary)
    metadata = pq.read_schema(paths["tasks.parquet"]).metadata
    assert metadata[SCHEMA_METADATA_KEY] == str(SCHEMA_VERSION).encode()


@pytest.mark.unit
def test_csv_is_written_only_when_asked(tmp_path, four_tasks, summary):
    without = write_results(tmp_path / "plain", four_tasks, summary)
    with_csv = write_results(tmp_path / "csv", four_tasks, summary, csv=True)
    assert "tasks.csv" not in without and not (tmp_path / "plain" / "tasks.csv").exists()
    frame = pd.read_csv(with_csv["tasks.csv"])
    assert list(frame.columns[:len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert frame["task_id"].tolist() == ["a", "b", "c", "d"]


@pytest.mark.unit
def test_summary_json_is_strict_json_with_null_for_missing_values(tmp_path, four_tasks,
                                                                   summary):
    summary = {**summary, "prediction_mape": float("nan"), "jct_p99_s": np.float64(3.96)}
    paths = write_results(tmp_path, four_tasks, summary)

    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(paths["summary.json"].read_text(), parse_constant=refuse)
    assert document["prediction_mape"] is None
    assert document["jct_p99_s"] == pytest.approx(3.96)


@pytest.mark.unit
def test_write_refuses_duplicate_task_ids_and_writes_nothing(tmp_path, four_tasks, summary):
    four_tasks.loc[1, "task_id"] = "a"
    with pytest.raises(RaySchedError, match="duplicate task_id 'a'"):
        write_results(tmp_path / "out", four_tasks, summary)
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_write_refuses_a_summary_without_contract_fields(tmp_path, four_tasks, summary):
    del summary["jct_p95_s"]
    with pytest.raises(RaySchedError, match="jct_p95_s"):
        write_results(tmp_path, four_tasks, summary)


@pytest.mark.unit
def test_write_refuses_a_summary_of_another_policy(tmp_path, four_tasks, summary):
    with pytest.raises(RaySchedError, match="'learned'.*'fifo'"):
        write_results(tmp_path, four_tasks, {**summary, "policy": "fifo"})


@pytest.mark.unit
def test_read_refuses_a_newer_parquet_schema_version(tmp_path, four_tasks, summary):
    paths = write_results(tmp_path, four_tasks, summary)
    table = pq.read_table(paths["tasks.parquet"])
    table = table.replace_schema_metadata({**table.schema.metadata, SCHEMA_METADATA_KEY: b"2"})
    pq.write_table(table, paths["tasks.parquet"])
    with pytest.raises(RaySchedError, match=r"tasks\.parquet.*schema_version 2.*reads "
                                            r"schema_version 1"):
        read_results(tmp_path)


@pytest.mark.unit
def test_read_refuses_a_summary_with_an_unknown_schema_version(tmp_path, four_tasks, summary):
    paths = write_results(tmp_path, four_tasks, summary)
    document = json.loads(paths["summary.json"].read_text())
    paths["summary.json"].write_text(json.dumps({**document, "schema_version": 99}))
    with pytest.raises(RaySchedError, match=r"summary\.json.*schema_version 99.*reads "
                                            r"schema_version 1"):
        read_results(tmp_path)


@pytest.mark.unit
def test_read_refuses_parquet_without_a_schema_version(tmp_path, four_tasks, summary):
    paths = write_results(tmp_path, four_tasks, summary)
    validate_results(four_tasks).to_parquet(paths["tasks.parquet"], index=False)
    with pytest.raises(RaySchedError, match=r"tasks\.parquet.*no schema_version"):
        read_results(tmp_path)


@pytest.mark.unit
def test_read_names_a_missing_file(tmp_path):
    with pytest.raises(RaySchedError, match=r"tasks\.parquet: no such file"):
        read_results(tmp_path)


# ---------------------------------------------------------------------------------- tables


def table_summary(policy: str, jct_mean_s: float | None, **extra) -> dict:
    summary = dict.fromkeys(SUMMARY_FIELDS)
    return {**summary, "policy": policy, "n_ok": 10, "n_tasks": 10, "jct_mean_s": jct_mean_s,
            **extra}


@pytest.mark.unit
def test_comparison_table_shows_jct_ratio_to_the_baseline():
    table = comparison_table([table_summary("ray-default", 2.0),
                              table_summary("learned", 1.66)])
    header, rule, baseline_row, learned_row = table.splitlines()
    assert header.split()[0] == "policy" and header.split()[-1] == "jct_mean_vs_ray-default"
    assert baseline_row.split()[-1] == "1.00x"
    assert learned_row.split()[-1] == "0.83x"
    assert set(rule.replace(" ", "")) == {"-"}


@pytest.mark.unit
def test_comparison_table_has_no_ratio_column_without_the_baseline():
    table = comparison_table([table_summary("fifo", 2.0), table_summary("learned", 1.0)])
    assert "jct_mean_vs" not in table
    assert "jct_mean_vs" not in comparison_table([table_summary("ray-default", 2.0)],
                                                 baseline=None)


@pytest.mark.unit
def test_table_shows_none_as_a_dash_and_ok_as_a_fraction():
    row = comparison_table([table_summary("learned", 1.5, n_ok=9)]).splitlines()[2].split()
    assert row[:3] == ["learned", "9/10", "1.500"]
    assert row[3:] == ["-"] * (len(row) - 3)


@pytest.mark.unit
def test_table_columns_line_up():
    lines = comparison_table([table_summary("ray-default", 2.0),
                              table_summary("a-much-longer-policy-name", 12345.678)]).splitlines()
    assert len({len(line) for line in lines}) == 1


@pytest.mark.unit
def test_markdown_table_has_the_same_cells_as_the_text_table():
    summaries = [table_summary("ray-default", 2.0), table_summary("learned", 1.66)]
    text_rows = [line.split() for line in comparison_table(summaries).splitlines()]
    markdown = markdown_table(summaries).splitlines()
    assert markdown[1].startswith("|:---|---:|")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown]
    assert cells[0] == text_rows[0] and cells[2:] == text_rows[2:]


@pytest.mark.unit
def test_table_refuses_an_unknown_field():
    with pytest.raises(ConfigError, match="jct_mean"):
        comparison_table([table_summary("learned", 1.0)], fields=("jct_mean",))
