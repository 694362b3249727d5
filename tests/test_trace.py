"""Specification of ray_sched.trace: reading, validating and writing task traces.

Every contract violation is a TraceError naming the file (``source``), the 1-based
data row (``row``, the header not counted) and the column (``column``), in its
attributes and in its message.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_sched.errors import TraceError
from ray_sched.task import RESERVED_COLUMNS
from ray_sched.trace import (
    depths,
    feature_columns,
    frame_to_tasks,
    read_trace,
    split_parents,
    topological_order,
    validate_frame,
    write_trace,
)

pytestmark = pytest.mark.unit

FORMATS = (".csv", ".csv.gz", ".parquet", ".jsonl")
CHAIN_DEPTH = 100_000


def trace(**columns) -> pd.DataFrame:
    """Three valid root tasks a, b, c; keyword arguments replace or add columns."""
    base = {"task_id": ["a", "b", "c"], "arrival_s": [0.0, 1.0, 2.0],
            "runtime_s": [1.0, 2.0, 3.0]}
    return pd.DataFrame({**base, **columns})


def error_reading(tmp_path: Path, frame: pd.DataFrame) -> tuple[TraceError, Path]:
    """Write ``frame`` as CSV without validating it, read it back, return the error."""
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    return caught.value, path


def assert_located(error: TraceError, path: Path, row: int | None, column: str) -> None:
    assert error.source == str(path)
    assert error.row == row
    assert error.column == column
    message = str(error)
    assert str(path) in message
    assert f"column '{column}'" in message
    if row is not None:
        assert f"row {row}" in message


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("column", ["task_id", "arrival_s", "runtime_s"])
def test_a_missing_required_column_is_named(tmp_path, column):
    error, path = error_reading(tmp_path, trace().drop(columns=[column]))
    assert_located(error, path, None, column)
    assert "missing required column" in str(error)


def test_a_duplicate_task_id_names_both_rows(tmp_path):
    error, path = error_reading(tmp_path, trace(task_id=["a", "b", "a"]))
    assert_located(error, path, 3, "task_id")
    assert "duplicate task_id 'a'" in str(error)
    assert "row 1" in str(error)


@pytest.mark.parametrize("runtime", [0.0, -1.5])
def test_a_runtime_that_is_not_positive_is_refused(tmp_path, runtime):
    error, path = error_reading(tmp_path, trace(runtime_s=[1.0, runtime, 1.0]))
    assert_located(error, path, 2, "runtime_s")
    assert "runtime_s must be > 0" in str(error)


def test_a_negative_arrival_is_refused(tmp_path):
    error, path = error_reading(tmp_path, trace(arrival_s=[0.0, 1.0, -0.5]))
    assert_located(error, path, 3, "arrival_s")
    assert "arrival_s must be >= 0" in str(error)


def test_a_zero_arrival_is_accepted():
    assert validate_frame(trace(arrival_s=[0.0, 0.0, 0.0]))["arrival_s"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("column", ["arrival_s", "runtime_s", "priority", "deadline_s", "cpu"])
def test_a_non_numeric_value_is_refused_quoting_it(tmp_path, column):
    values = {"arrival_s": 1.0, "runtime_s": 1.0, "priority": 1, "deadline_s": 1.0, "cpu": 1.0}
    frame = trace(**{column: [values[column], "soon", values[column]]})
    error, path = error_reading(tmp_path, frame)
    assert_located(error, path, 2, column)
    assert "not a number" in str(error) and "'soon'" in str(error)


@pytest.mark.parametrize("column", ["arrival_s", "runtime_s"])
def test_an_empty_required_number_is_refused(tmp_path, column):
    error, path = error_reading(tmp_path, trace(**{column: [1.0, 1.0, None]}))
    assert_located(error, path, 3, column)
    assert "empty value" in str(error)


def test_an_empty_task_id_is_refused(tmp_path):
    error, path = error_reading(tmp_path, trace(task_id=["a", "", "c"]))
    assert_located(error, path, 2, "task_id")
    assert "empty task_id" in str(error)


def test_a_blank_task_id_in_a_frame_is_refused():
    with pytest.raises(TraceError) as caught:
        validate_frame(trace(task_id=["a", "b", "  "]))
    assert (caught.value.source, caught.value.row, caught.value.column) == ("<frame>", 3, "task_id")


def test_an_infinite_runtime_is_refused(tmp_path):
    error, path = error_reading(tmp_path, trace(runtime_s=[1.0, np.inf, 1.0]))
    assert_located(error, path, 2, "runtime_s")
    assert "finite" in str(error)


@pytest.mark.parametrize("priority", [10, -1, 1.5])
def test_a_priority_outside_0_to_9_or_not_integral_is_refused(tmp_path, priority):
    error, path = error_reading(tmp_path, trace(priority=[0, priority, 9]))
    assert_located(error, path, 2, "priority")
    assert "priority must be an integer 0..9" in str(error)


def test_priorities_0_to_9_are_accepted_and_a_missing_one_is_undeclared():
    frame = validate_frame(trace(priority=[0.0, 9.0, None]))
    assert frame["priority"].tolist()[:2] == [0, 9] and pd.isna(frame["priority"].iloc[2])
    tasks = frame_to_tasks(frame)
    assert [t.priority for t in tasks] == [0, 9, 0]
    assert [t.priority_declared for t in tasks] == [True, True, False]


@pytest.mark.parametrize("column", ["deadline_s", "cpu"])
@pytest.mark.parametrize("value", [0.0, -2.0])
def test_a_deadline_or_cpu_that_is_not_positive_is_refused(tmp_path, column, value):
    error, path = error_reading(tmp_path, trace(**{column: [1.0, 1.0, value]}))
    assert_located(error, path, 3, column)
    assert f"{column} must be > 0" in str(error)


@pytest.mark.parametrize("column", ["deadline_s", "cpu"])
def test_an_empty_deadline_or_cpu_is_accepted(column):
    frame = validate_frame(trace(**{column: [None, 2.0, None]}))
    assert frame[column].isna().tolist() == [True, False, True]


def test_a_parent_naming_no_task_is_refused(tmp_path):
    error, path = error_reading(tmp_path, trace(parent_id=[None, "a;ghost", None]))
    assert_located(error, path, 2, "parent_id")
    assert "'ghost' names no task" in str(error)


def test_a_task_naming_itself_as_parent_is_refused(tmp_path):
    error, path = error_reading(tmp_path, trace(parent_id=[None, None, "c"]))
    assert_located(error, path, 3, "parent_id")
    assert "names itself" in str(error)


def test_a_two_task_cycle_is_refused_naming_both(tmp_path):
    error, path = error_reading(tmp_path, trace(parent_id=[None, "c", "b"]))
    assert_located(error, path, 2, "parent_id")
    assert "cycle" in str(error) and "'b'" in str(error) and "'c'" in str(error)


def test_a_longer_cycle_is_reported_at_its_first_row_not_at_a_task_downstream_of_it(tmp_path):
    # x (row 1) merely depends on the cycle a -> c -> b -> a (rows 2..4).
    frame = pd.DataFrame({"task_id": ["x", "a", "b", "c"], "arrival_s": 0.0, "runtime_s": 1.0,
                          "parent_id": ["c", "c", "a", "b"]})
    error, path = error_reading(tmp_path, frame)
    assert_located(error, path, 2, "parent_id")
    assert "['a', 'b', 'c']" in str(error)
    assert "'x'" not in str(error)


def test_a_diamond_is_not_a_cycle():
    frame = pd.DataFrame({"task_id": ["a", "b", "c", "d"], "arrival_s": 0.0, "runtime_s": 1.0,
                          "parent_id": [None, "a", "a", "b;c"]})
    assert validate_frame(frame)["parent_id"].tolist()[1:] == ["a", "a", "b;c"]


def test_errors_in_an_in_memory_frame_name_the_given_source():
    with pytest.raises(TraceError) as caught:
        validate_frame(trace(runtime_s=[1.0, 1.0, 0.0]), source="mine")
    assert caught.value.source == "mine" and str(caught.value).startswith("mine, row 3")


def test_the_first_bad_row_is_reported_with_a_count_of_the_others():
    with pytest.raises(TraceError) as caught:
        validate_frame(trace(runtime_s=[1.0, -1.0, -2.0]))
    assert caught.value.row == 2
    assert "1 more row(s)" in str(caught.value)


def test_an_empty_trace_is_refused():
    with pytest.raises(TraceError, match="no tasks"):
        validate_frame(trace().iloc[:0])


def test_something_other_than_a_frame_is_refused():
    with pytest.raises(TraceError, match="expected a pandas DataFrame"):
        validate_frame([{"task_id": "a"}])  # type: ignore[arg-type]


def test_validation_does_not_modify_its_input():
    frame = pd.DataFrame({"task_id": [1, 2, 3], "arrival_s": [0, 1, 2], "runtime_s": [1, 1, 1],
                          "priority": [None, 3.0, None], "kind": [None, "logs", None],
                          "parent_id": [None, 1.0, 1.0]}, index=[10, 20, 30])
    before = frame.copy(deep=True)
    validate_frame(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_validation_normalises_ids_to_strings_and_fills_kind_and_tenant():
    frame = validate_frame(pd.DataFrame({
        "task_id": [1, 2], "arrival_s": [0, 1], "runtime_s": [1, 2], "parent_id": [None, 1.0],
        "kind": [None, "logs"], "tenant": ["acme", None]}))
    assert frame["task_id"].tolist() == ["1", "2"]
    assert frame["parent_id"].tolist()[1] == "1"
    assert frame["kind"].tolist() == ["default", "logs"]
    assert frame["tenant"].tolist() == ["acme", "default"]
    assert frame["arrival_s"].dtype == float and frame["runtime_s"].dtype == float


# ----------------------------------------------------------------------------- reading


def test_an_unknown_suffix_is_refused_naming_the_accepted_ones(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("task_id,arrival_s,runtime_s\na,0,1\n")
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert caught.value.source == str(path)
    assert "unknown trace suffix" in str(caught.value) and ".jsonl" in str(caught.value)


def test_a_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert caught.value.source == str(path) and "no such file" in str(caught.value)


def test_an_unreadable_file_is_refused_naming_its_format(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert caught.value.source == str(path) and "cannot be read as .parquet" in str(caught.value)


def test_the_suffix_is_matched_without_regard_to_case(tmp_path):
    path = tmp_path / "TRACE.CSV"
    trace().to_csv(path, index=False)
    assert read_trace(path)["task_id"].tolist() == ["a", "b", "c"]


@pytest.fixture
def rich_trace() -> pd.DataFrame:
    """Every optional column, a ``;`` DAG join, ids that look like integers, features."""
    return pd.DataFrame({
        "task_id": ["007", "1", "2", "3"],
        "arrival_s": [0.0, 0.5, 1.0, 1.5],
        "runtime_s": [1.0, 2.0, 0.25, 4.0],
        "kind": ["logs", "etl", "logs", "traces"],
        "tenant": ["acme", "globex", "acme", "acme"],
        "region": ["eu", "us", "eu", "us"],
        "priority": [0, 9, 5, 0],
        "deadline_s": [10.0, np.nan, 3.0, np.nan],
        "parent_id": [None, "007", "007", "1;2"],
        "cpu": [1.0, 2.0, 1.0, 0.5],
        "payload_bytes": [100.0, 2_000.0, np.nan, 5.0],
        "codec": ["gzip", None, "zstd", "gzip"],
    })


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_written_trace_reads_back_equal(tmp_path, rich_trace, suffix):
    path = write_trace(rich_trace, tmp_path / f"trace{suffix}")
    assert path.name == f"trace{suffix}"
    back = read_trace(path)
    expected = validate_frame(rich_trace)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["task_id"].tolist() == ["007", "1", "2", "3"]
    assert back["parent_id"].tolist()[1:] == ["007", "007", "1;2"]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_integer_ids_written_by_pandas_read_back_as_equal_strings(tmp_path, suffix):
    frame = pd.DataFrame({"task_id": [1, 2, 3], "arrival_s": [0, 1, 2],
                          "runtime_s": [1.0, 1.0, 1.0], "parent_id": [None, 1, 1]})
    path = tmp_path / f"ints{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    back = read_trace(path)
    assert back["task_id"].tolist() == ["1", "2", "3"]
    assert back["parent_id"].tolist()[1:] == ["1", "1"]


def test_csv_ids_keep_their_leading_zeros(tmp_path):
    path = tmp_path / "zeros.csv"
    path.write_text("task_id,arrival_s,runtime_s,parent_id\n007,0,1,\n010,1,1,007\n")
    back = read_trace(path)
    assert back["task_id"].tolist() == ["007", "010"]
    assert back["parent_id"].tolist()[1] == "007"


def test_write_refuses_an_invalid_frame_naming_the_target(tmp_path):
    path = tmp_path / "out.csv"
    with pytest.raises(TraceError) as caught:
        write_trace(trace(runtime_s=[1.0, 0.0, 1.0]), path)
    assert caught.value.source == str(path) and caught.value.row == 2
    assert not path.exists()


def test_write_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(TraceError, match="unknown trace suffix"):
        write_trace(trace(), tmp_path / "out.xlsx")


def test_write_creates_missing_directories(tmp_path):
    path = write_trace(trace(), tmp_path / "deep" / "er" / "t.parquet")
    assert path.is_file()


# ----------------------------------------------------------------------------- parents and depth


@pytest.mark.parametrize("value, parents", [
    ("a", ("a",)), ("a;b", ("a", "b")), (" a ; b ", ("a", "b")), ("a;;b;", ("a", "b")),
    ("", ()), (None, ()), (np.nan, ()),
])
def test_split_parents_splits_on_semicolons_and_drops_blanks(value, parents):
    assert split_parents(value) == parents


def test_topological_order_puts_every_parent_before_its_children():
    parents_of = [(3,), (), (0, 1), ()]
    order = topological_order(parents_of)
    assert sorted(order) == [0, 1, 2, 3]
    position = {row: i for i, row in enumerate(order)}
    assert all(position[p] < position[c] for c, ps in enumerate(parents_of) for p in ps)


def test_topological_order_leaves_out_rows_on_or_below_a_cycle():
    assert sorted(topological_order([(), (2,), (1,), (2,)])) == [0]


def test_depths_of_a_diamond_count_the_longest_parent_chain():
    frame = validate_frame(pd.DataFrame({
        "task_id": ["d", "a", "b", "c", "e"], "arrival_s": 0.0, "runtime_s": 1.0,
        "parent_id": ["b;c", None, "a", "b", None]}))
    assert depths(frame).tolist() == [3, 0, 1, 2, 0]


def test_depths_without_a_parent_column_are_all_zero():
    assert depths(validate_frame(trace())).tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def deep_chain() -> pd.DataFrame:
    """Task i's parent is task i-1, CHAIN_DEPTH tasks deep."""
    ids = [f"t{i}" for i in range(CHAIN_DEPTH)]
    return pd.DataFrame({"task_id": ids, "arrival_s": 0.0, "runtime_s": 1.0,
                         "parent_id": [None] + ids[:-1]})


def test_a_chain_100000_deep_validates_quickly(deep_chain):
    started = time.perf_counter()
    assert len(validate_frame(deep_chain)) == CHAIN_DEPTH
    assert time.perf_counter() - started < 10.0


def test_depth_of_the_last_task_of_a_100000_chain_is_99999(deep_chain):
    frame = validate_frame(deep_chain)
    started = time.perf_counter()
    result = depths(frame)
    assert time.perf_counter() - started < 10.0
    assert result[-1] == CHAIN_DEPTH - 1 and result[0] == 0


def test_a_cycle_closing_a_100000_chain_is_found_without_recursion(deep_chain):
    frame = deep_chain.copy()
    frame.loc[0, "parent_id"] = frame["task_id"].iloc[-1]
    with pytest.raises(TraceError, match="cycle") as caught:
        validate_frame(frame)
    assert caught.value.row == 1 and caught.value.column == "parent_id"


# ----------------------------------------------------------------------------- tasks


def test_feature_columns_are_every_column_not_reserved(rich_trace):
    assert feature_columns(rich_trace) == ["payload_bytes", "codec"]
    assert not set(feature_columns(rich_trace)) & set(RESERVED_COLUMNS)


def test_frame_to_tasks_carries_every_contract_column(rich_trace):
    tasks = frame_to_tasks(validate_frame(rich_trace))
    last = tasks[3]
    assert (last.task_id, last.arrival_s, last.runtime_s) == ("3", 1.5, 4.0)
    assert (last.kind, last.tenant, last.region, last.priority) == ("traces", "acme", "us", 0)
    assert last.parents == ("1", "2")
    assert last.cpu == 0.5 and last.deadline_s is None
    assert tasks[1].priority == 9 and tasks[2].deadline_s == 3.0


def test_time_scale_scales_arrival_runtime_and_deadline_but_not_cpu(rich_trace):
    task = frame_to_tasks(validate_frame(rich_trace), time_scale=0.5)[2]
    assert (task.arrival_s, task.runtime_s, task.deadline_s) == (0.5, 0.125, 1.5)
    assert task.cpu == 1.0


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_a_time_scale_that_is_not_positive_is_refused(scale):
    with pytest.raises(TraceError, match="time_scale must be > 0"):
        frame_to_tasks(validate_frame(trace()), time_scale=scale)


def test_numeric_and_string_features_are_kept_and_missing_ones_dropped(rich_trace):
    tasks = frame_to_tasks(validate_frame(rich_trace))
    assert tasks[0].features == {"payload_bytes": 100.0, "codec": "gzip"}
    assert tasks[1].features == {"payload_bytes": 2_000.0}
    assert tasks[2].features == {"codec": "zstd"}


def test_runtime_is_never_a_feature(rich_trace):
    for task in frame_to_tasks(validate_frame(rich_trace)):
        assert "runtime_s" not in task.features
        assert not set(task.features) & set(RESERVED_COLUMNS)


def test_a_trace_of_only_required_columns_gets_task_defaults():
    task = frame_to_tasks(validate_frame(trace()))[0]
    assert (task.kind, task.tenant, task.region, task.priority) == ("default", "default", None, 0)
    assert (task.deadline_s, task.parents, task.cpu, task.features) == (None, (), 1.0, {})


def test_an_empty_deadline_or_cpu_gets_the_task_default():
    task = frame_to_tasks(validate_frame(trace(deadline_s=[None, 1.0, 1.0],
                                               cpu=[None, 2.0, 2.0])))[0]
    assert task.deadline_s is None and task.cpu == 1.0


# Regression guard (bug found in review, fixed):
#   a missing region among named ones came back as NaN (pandas), crashing replay's region sort.
def test_a_missing_region_among_named_ones_becomes_none():
    tasks = frame_to_tasks(validate_frame(trace(region=["eu", None, "us"])))
    assert [task.region for task in tasks] == ["eu", None, "us"]
