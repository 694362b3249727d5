"""Specification of ray_sched.otlp.spantree: span-tree assembly without recursion.

Spans are written as ``(trace_id, span_id, parent_span_id, start_ns, end_ns[, status])``;
their service is ``"svc-<span_id>"`` and their name ``"op-<span_id>"``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.errors import ConfigError
from ray_sched.otlp.schema import (
    ASSEMBLY_FIELDS,
    SPAN_FIELDS,
    STATUS_ERROR,
    STATUS_OK,
    Columns,
    numpy_dtype,
)
from ray_sched.otlp.spantree import DEFAULT_MAX_DEPTH, TRACE_FIELDS, assemble, traces

pytestmark = pytest.mark.unit

CHAIN_DEPTH = 100_000


def batch(*spans: tuple) -> Columns:
    """SPAN_FIELDS columns of the given spans, in the given batch order."""
    rows = [span if len(span) == 6 else (*span, STATUS_OK) for span in spans]
    trace_id, span_id, parent, start, end, status = (list(c) for c in zip(*rows)) if rows \
        else ([], [], [], [], [], [])
    start_ns = np.array(start, dtype=np.int64)
    end_ns = np.array(end, dtype=np.int64)
    n = len(rows)
    text = np.array([""] * n, dtype=object)
    return {
        "trace_id": np.array(trace_id, dtype=object),
        "span_id": np.array(span_id, dtype=object),
        "parent_span_id": np.array(parent, dtype=object),
        "name": np.array([f"op-{s}" for s in span_id], dtype=object),
        "kind": np.zeros(n, dtype=np.int8),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "duration_ns": end_ns - start_ns,
        "status_code": np.array(status, dtype=np.int8),
        "status_message": text,
        "service": np.array([f"svc-{s}" for s in span_id], dtype=object),
        "scope": text,
        "attributes": np.array(["{}"] * n, dtype=object),
        "resource_attributes": np.array(["{}"] * n, dtype=object),
        "events": np.zeros(n, dtype=np.int32),
        "links": np.zeros(n, dtype=np.int32),
    }


def by_span(out: Columns, column: str) -> dict:
    """``{span_id: value}`` of one column (span ids unique in the batch)."""
    return dict(zip(out["span_id"].tolist(), out[column].tolist()))


#: a [0,100] -> b [10,90] -> c [20,60], d [65,80]; a -> e [5,15].
THREE_LEVELS = (
    ("t1", "a", "", 0, 100),
    ("t1", "b", "a", 10, 90),
    ("t1", "c", "b", 20, 60),
    ("t1", "d", "b", 65, 80),
    ("t1", "e", "a", 5, 15),
)


def test_three_level_tree_gets_exact_depth_self_time_subtree_and_critical_path():
    out = assemble(batch(*THREE_LEVELS))
    assert by_span(out, "depth") == {"a": 0, "b": 1, "c": 2, "d": 2, "e": 1}
    assert by_span(out, "self_ns") == {"a": 10, "b": 25, "c": 40, "d": 15, "e": 10}
    assert by_span(out, "subtree_spans") == {"a": 5, "b": 3, "c": 1, "d": 1, "e": 1}
    assert by_span(out, "on_critical_path") == {"a": True, "b": True, "c": False,
                                                "d": True, "e": False}
    assert set(out["critical_path_ns"]) == {10 + 25 + 15}
    assert set(out["critical_path_spans"]) == {3}
    assert set(out["trace_depth"]) == {2}
    assert set(out["trace_spans"]) == {5}
    assert set(out["trace_duration_ns"]) == {100}
    assert set(out["root_service"]) == {"svc-a"}
    assert set(out["root_name"]) == {"op-a"}


def test_children_before_parents_give_the_same_assembly():
    forward = assemble(batch(*THREE_LEVELS))
    backward = assemble(batch(*reversed(THREE_LEVELS)))
    for field in ASSEMBLY_FIELDS.names:
        assert by_span(backward, field) == by_span(forward, field), field


def test_interleaved_traces_link_only_within_their_own_trace():
    # Both traces reuse the span ids "r" and "k": links must not cross traces.
    out = assemble(batch(
        ("t2", "k", "r", 3, 4),
        ("t1", "r", "", 0, 50),
        ("t2", "r", "", 1, 9),
        ("t1", "k", "r", 10, 20),
        ("t1", "m", "k", 11, 12),
    ))
    assert out["depth"].tolist() == [1, 0, 0, 1, 2]
    assert out["subtree_spans"].tolist() == [1, 3, 2, 2, 1]
    assert out["trace_spans"].tolist() == [2, 3, 2, 3, 3]
    assert out["trace_duration_ns"].tolist() == [8, 50, 8, 50, 50]
    assert not out["orphan"].any()


def test_orphan_is_flagged_and_treated_as_root_of_its_subtree():
    out = assemble(batch(
        ("t1", "a", "", 0, 100),
        ("t1", "x", "gone", 10, 30),
        ("t1", "y", "x", 12, 20),
    ))
    assert by_span(out, "orphan") == {"a": False, "x": True, "y": False}
    assert by_span(out, "depth") == {"a": 0, "x": 0, "y": 1}
    assert by_span(out, "subtree_spans") == {"a": 1, "x": 2, "y": 1}
    assert set(out["trace_orphans"]) == {1}


def test_two_span_cycle_is_flagged_without_hanging_and_spares_other_spans():
    out = assemble(batch(
        ("t1", "a", "b", 0, 10),
        ("t1", "b", "a", 1, 9),
        ("t1", "below", "a", 2, 3),   # hangs under the loop: never reaches a root either
        ("t1", "root", "", 0, 50),
        ("t1", "leaf", "root", 5, 6),
        ("t2", "other", "", 0, 7),
    ))
    assert by_span(out, "in_cycle") == {"a": True, "b": True, "below": True, "root": False,
                                        "leaf": False, "other": False}
    assert by_span(out, "depth") == {"a": -1, "b": -1, "below": -1, "root": 0, "leaf": 1,
                                     "other": 0}
    # Detached: no children, so their subtree is themselves and self time their duration.
    assert by_span(out, "subtree_spans")["a"] == 1
    assert by_span(out, "self_ns")["a"] == 10
    assert by_span(out, "subtree_spans")["root"] == 2
    assert by_span(out, "trace_has_cycle") == {"a": True, "b": True, "below": True,
                                               "root": True, "leaf": True, "other": False}
    assert by_span(out, "critical_path_spans")["root"] == 2
    assert not out["in_cycle"][out["on_critical_path"]].any()


def test_self_parent_span_is_flagged_as_cycle():
    out = assemble(batch(
        ("t1", "me", "me", 0, 10),
        ("t1", "ok", "", 0, 5),
    ))
    assert by_span(out, "in_cycle") == {"me": True, "ok": False}
    assert by_span(out, "depth") == {"me": -1, "ok": 0}
    assert set(out["trace_has_cycle"]) == {True}


def test_trace_entirely_in_a_cycle_takes_its_earliest_span_as_root_and_has_no_critical_path():
    out = assemble(batch(
        ("t1", "a", "b", 5, 10),
        ("t1", "b", "a", 2, 9),
    ))
    assert set(out["root_service"]) == {"svc-b"}
    assert set(out["trace_depth"]) == {-1}
    assert set(out["critical_path_spans"]) == {0}
    assert set(out["critical_path_ns"]) == {0}


def test_error_in_leaf_propagates_to_its_ancestors_and_the_trace():
    out = assemble(batch(
        ("t1", "a", "", 0, 100),
        ("t1", "b", "a", 10, 90),
        ("t1", "c", "b", 20, 60, STATUS_ERROR),
        ("t1", "e", "a", 5, 15),
        ("t2", "z", "", 0, 1),
    ))
    assert by_span(out, "subtree_error") == {"a": True, "b": True, "c": True, "e": False,
                                             "z": False}
    assert by_span(out, "trace_error") == {"a": True, "b": True, "c": True, "e": True,
                                           "z": False}


def test_critical_path_ties_prefer_later_start_then_batch_order():
    out = assemble(batch(
        ("t1", "a", "", 0, 100),
        ("t1", "early", "a", 10, 90),
        ("t1", "late", "a", 20, 90),     # same end, later start: wins
        ("t1", "first", "late", 30, 80),
        ("t1", "second", "late", 30, 80),  # full tie: batch order wins
    ))
    assert out["span_id"][out["on_critical_path"]].tolist() == ["a", "late", "first"]


def test_several_roots_take_critical_path_from_latest_end_and_root_service_from_earliest():
    out = assemble(batch(
        ("t1", "early", "", 0, 10),
        ("t1", "orphan", "missing", 5, 40),
        ("t1", "kid", "orphan", 6, 20),
    ))
    assert out["span_id"][out["on_critical_path"]].tolist() == ["orphan", "kid"]
    assert set(out["critical_path_ns"]) == {(35 - 14) + 14}
    assert set(out["root_service"]) == {"svc-early"}


def test_repeated_span_id_links_children_to_its_first_occurrence():
    out = assemble(batch(
        ("t1", "kid", "dup", 1, 2),
        ("t1", "dup", "", 0, 10),
        ("t1", "dup", "", 0, 20),
    ))
    assert out["subtree_spans"].tolist() == [1, 2, 1]
    assert out["self_ns"].tolist() == [1, 9, 20]


def test_empty_parent_id_never_links_to_a_span_with_an_empty_id():
    out = assemble(batch(("t1", "", "", 0, 10), ("t1", "b", "", 0, 5)))
    assert out["depth"].tolist() == [0, 0]
    assert not out["in_cycle"].any()


def test_max_depth_exceeded_flags_only_that_trace_and_keeps_every_span():
    chain = [("deep", f"s{i}", f"s{i - 1}" if i else "", i, 100) for i in range(5)]
    out = assemble(batch(*chain, ("flat", "r", "", 0, 1)), max_depth=3)
    assert len(out["depth"]) == 6
    assert out["depth"].tolist() == [0, 1, 2, 3, 4, 0]
    assert out["trace_depth_exceeded"].tolist() == [True] * 5 + [False]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True, None])
def test_bad_max_depth_raises_config_error_quoting_the_value(bad):
    with pytest.raises(ConfigError, match="max_depth") as caught:
        assemble(batch(*THREE_LEVELS), max_depth=bad)
    assert repr(bad) in str(caught.value)


def test_hundred_thousand_deep_chain_assembles_without_recursion():
    ids = [f"{i:016x}" for i in range(CHAIN_DEPTH)]
    chain = [("t1", ids[i], ids[i - 1] if i else "", i, 2 * CHAIN_DEPTH)
             for i in range(CHAIN_DEPTH)]
    out = assemble(batch(*chain))
    assert out["depth"][-1] == CHAIN_DEPTH - 1
    assert out["subtree_spans"][0] == CHAIN_DEPTH
    assert out["critical_path_spans"][0] == CHAIN_DEPTH
    assert CHAIN_DEPTH - 1 > DEFAULT_MAX_DEPTH
    assert out["trace_depth_exceeded"].all()
    assert not out["in_cycle"].any()


def test_input_dict_and_arrays_are_left_unchanged_and_passed_through():
    columns = batch(*THREE_LEVELS, ("t1", "loop", "loop", 0, 1))
    keys = list(columns)
    before = {name: values.copy() for name, values in columns.items()}
    out = assemble(columns)
    assert list(columns) == keys
    for name, values in columns.items():
        assert np.array_equal(values, before[name]), name
        assert out[name] is values, name


def test_assembly_columns_have_the_schema_dtypes():
    out = assemble(batch(*THREE_LEVELS))
    assert list(out) == SPAN_FIELDS.names + ASSEMBLY_FIELDS.names
    for field in ASSEMBLY_FIELDS:
        assert out[field.name].dtype == numpy_dtype(field.type), field.name
        assert len(out[field.name]) == len(THREE_LEVELS), field.name


def test_empty_batch_returns_empty_columns_of_every_field():
    out = assemble(batch())
    assert list(out) == SPAN_FIELDS.names + ASSEMBLY_FIELDS.names
    for field in ASSEMBLY_FIELDS:
        assert out[field.name].shape == (0,), field.name
        assert out[field.name].dtype == numpy_dtype(field.type), field.name
    assert all(len(column) == 0 for column in traces(out).values())


def test_traces_gives_one_row_per_trace_in_first_appearance_order():
    out = assemble(batch(
        ("t2", "z", "", 7, 9, STATUS_ERROR),
        *THREE_LEVELS,
        ("t2", "y", "z", 8, 9),
    ))
    summary = traces(out)
    assert list(summary) == list(TRACE_FIELDS)
    assert summary["trace_id"].tolist() == ["t2", "t1"]
    assert summary["spans"].tolist() == [2, 5]
    assert summary["depth"].tolist() == [1, 2]
    assert summary["duration_ns"].tolist() == [2, 100]
    assert summary["error"].tolist() == [True, False]
    assert summary["critical_path_ns"].tolist() == [2, 50]
    assert summary["critical_path_spans"].tolist() == [2, 3]
    assert summary["root_service"].tolist() == ["svc-z", "svc-a"]
    assert summary["root_name"].tolist() == ["op-z", "op-a"]
    assert summary["start_ns"].tolist() == [7, 0]
    assert summary["orphans"].tolist() == [0, 0]
    assert not summary["has_cycle"].any() and not summary["depth_exceeded"].any()


# --- properties against naive iterative walks -------------------------------------------

@st.composite
def forests(draw) -> tuple[list[int], list[int], list[int]]:
    """Random forests: parent of span i is an earlier span or none; a child shares its
    parent's trace. Returns (parent, trace, batch order)."""
    n = draw(st.integers(1, 40))
    parent, trace = [], []
    for i in range(n):
        p = draw(st.integers(-1, i - 1))
        parent.append(p)
        trace.append(trace[p] if p >= 0 else draw(st.integers(0, 2)))
    order = draw(st.permutations(range(n)))
    return parent, trace, list(order)


def forest_batch(parent: list[int], trace: list[int], order: list[int],
                 ends: list[int] | None = None) -> Columns:
    ends = ends or [100] * len(parent)
    return batch(*(
        (f"t{trace[i]}", f"s{i}", f"s{parent[i]}" if parent[i] >= 0 else "", 0, ends[i])
        for i in order
    ))


def naive_depth(parent: list[int], span: int) -> int:
    depth = 0
    while parent[span] >= 0:
        span, depth = parent[span], depth + 1
    return depth


@settings(max_examples=200, deadline=None)
@given(forests())
def test_depth_and_subtree_spans_match_naive_walks_on_random_forests(forest):
    parent, trace, order = forest
    out = assemble(forest_batch(parent, trace, order))
    expected_spans = [1] * len(parent)
    for span in range(len(parent)):
        ancestor = parent[span]
        while ancestor >= 0:
            expected_spans[ancestor] += 1
            ancestor = parent[ancestor]
    assert out["depth"].tolist() == [naive_depth(parent, i) for i in order]
    assert out["subtree_spans"].tolist() == [expected_spans[i] for i in order]


@settings(max_examples=200, deadline=None)
@given(forests(), st.data())
def test_critical_path_matches_naive_descent_on_random_forests(forest, data):
    parent, trace, order = forest
    ends = data.draw(st.lists(st.integers(1, 5), min_size=len(parent), max_size=len(parent)))
    out = assemble(forest_batch(parent, trace, order, ends))
    position = {span: pos for pos, span in enumerate(order)}

    def best(candidates: list[int]) -> int:  # latest end, then batch order (starts all 0)
        return min(candidates, key=lambda s: (-ends[s], position[s]))

    expected = set()
    for t in set(trace):
        span = best([s for s in range(len(parent)) if parent[s] < 0 and trace[s] == t])
        while True:
            expected.add(span)
            children = [s for s in range(len(parent)) if parent[s] == span]
            if not children:
                break
            span = best(children)
    assert out["on_critical_path"].tolist() == [i in expected for i in order]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1, 11), min_size=1, max_size=12))
def test_in_cycle_matches_naive_walk_on_random_parent_pointers(pointers):
    parent = [p if p < len(pointers) else -1 for p in pointers]

    def reaches_root(span: int) -> bool:
        seen = set()
        while span >= 0 and span not in seen:
            seen.add(span)
            span = parent[span]
        return span < 0

    out = assemble(forest_batch(parent, [0] * len(parent), list(range(len(parent)))))
    in_cycle = [not reaches_root(i) for i in range(len(parent))]
    assert out["in_cycle"].tolist() == in_cycle
    assert out["depth"].tolist() == [-1 if c else naive_depth(parent, i)
                                     for i, c in enumerate(in_cycle)]
