"""Span-tree assembly: link each span of a batch to its parent and derive per-span and
per-trace tree facts (depth, self time, subtree sizes and errors, the critical path).

Recursive processing without recursion: every tree walk is a whole-batch numpy pass.

* Pointer doubling (``jump = jump[jump]``) finds each span's depth, its subtree size, whether
  its subtree holds an error, and whether its ancestor chain loops, in O(log depth) passes.
  After pass k, ``jump[i]`` is the 2**k-th ancestor of span i and ``below[i]`` counts the
  spans less than 2**k levels under i; a span u whose ``jump[u]`` is v holds the next 2**k
  levels under v.
* The critical path is a chain of "busiest child" links; doubling along those links tells
  which spans hang from their trace's chosen root.

Spans of many traces arrive mixed in one batch, in any order (children before parents).
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from ray_sched.errors import ConfigError
from ray_sched.otlp.schema import ASSEMBLY_FIELDS, STATUS_ERROR, Columns, empty_columns

#: Traces deeper than this are flagged (``trace_depth_exceeded``): real call trees are a few
#: dozen levels deep, so a thousand means broken instrumentation or a parent loop upstream.
DEFAULT_MAX_DEPTH = 1000

#: Input columns assembly reads.
INPUT_FIELDS = ("trace_id", "span_id", "parent_span_id", "start_ns", "end_ns", "duration_ns",
                "status_code", "service", "name")

#: Columns of :func:`traces`, one row per trace.
TRACE_FIELDS = ("trace_id", "spans", "depth", "duration_ns", "error", "depth_exceeded",
                "has_cycle", "orphans", "critical_path_ns", "critical_path_spans",
                "root_service", "root_name", "start_ns")

_NO_PARENT = -1


def assemble(columns: Columns, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Columns:
    """Link the spans of a batch into trees and add the ASSEMBLY_FIELDS columns.

    Semantics, per span:

    * parent: the span of the same ``trace_id`` whose ``span_id`` is this span's
      ``parent_span_id`` (``""`` means none). Where a (trace_id, span_id) pair repeats, the
      first occurrence in the batch is the one children link to.
    * ``orphan``: names a parent that is not in the batch; it is then a root of its subtree.
    * ``in_cycle``: its ancestor chain never reaches a root (it is part of a loop such as
      A->B->A or a span that is its own parent, or hangs below one). Such a span gets
      ``depth`` -1 and is detached from every other computation: no parent, no children,
      ``subtree_spans`` 1, ``self_ns`` its duration, never on the critical path.
    * ``depth``: 0 for a root or orphan, its parent's depth + 1 otherwise.
    * ``self_ns``: ``duration_ns`` minus the sum of its direct children's ``duration_ns``,
      clipped at 0 (nanoseconds).
    * ``subtree_spans``: spans in its subtree, itself included.
    * ``subtree_error``: its ``status_code`` is STATUS_ERROR, or a descendant's is.
    * ``on_critical_path``: on the path that starts at the trace's root with the latest
      ``end_ns`` (roots and orphans compete) and repeatedly descends to the child with the
      latest ``end_ns`` (ties: the later ``start_ns``, then the first in batch order).

    Per trace (repeated on each of its spans):

    * ``trace_spans``; ``trace_depth`` (its deepest ``depth``; -1 when every span is in a
      cycle); ``trace_duration_ns`` (last ``end_ns`` minus first ``start_ns``);
      ``trace_error`` (any span has an error); ``trace_orphans`` (count);
      ``trace_has_cycle`` (any span ``in_cycle``).
    * ``trace_depth_exceeded``: ``trace_depth > max_depth``. Only a flag: all spans are still
      assembled and returned.
    * ``critical_path_ns``: summed ``self_ns`` along the critical path;
      ``critical_path_spans``: its length (0 and 0 when every span is in a cycle).
    * ``root_service``/``root_name``: of the trace's root; among several roots or orphans
      the earliest-starting (ties: first in batch order); with no root at all (every span in
      a cycle) the earliest-starting span.

    Args:
        columns: SPAN_FIELDS columns (at least ``trace_id``, ``span_id``,
            ``parent_span_id``, ``start_ns``, ``end_ns``, ``duration_ns``, ``status_code``,
            ``service``, ``name``), each an array of shape (n_spans,).
        max_depth: traces deeper than this are flagged; an integer >= 1.

    Returns:
        a new dict: every input column (the same arrays, neither copied nor modified), then
        every ASSEMBLY_FIELDS column as an array of shape (n_spans,).

    Raises:
        ConfigError: ``max_depth`` is not an integer >= 1.
        KeyError: a required input column is missing.

    Example:
        >>> out = assemble(batch)  # doctest: +SKIP
        >>> out["depth"][out["on_critical_path"]]  # doctest: +SKIP
    """
    _check_max_depth(max_depth)
    missing = [name for name in INPUT_FIELDS if name not in columns]
    if missing:
        raise KeyError(f"span columns missing for assembly: {missing}")
    n_spans = len(columns["trace_id"])
    if n_spans == 0:
        return {**columns, **empty_columns(ASSEMBLY_FIELDS)}

    trace_of, first_span_of_trace = _trace_codes(columns["trace_id"])
    parent_span_ids = np.asarray(columns["parent_span_id"])
    named_parent = parent_span_ids != ""
    parent = _parent_positions(trace_of, columns["span_id"], parent_span_ids)
    parent[~named_parent] = _NO_PARENT  # even if some span's id is ""
    n_traces = len(first_span_of_trace)
    start = np.asarray(columns["start_ns"], dtype=np.int64)
    end = np.asarray(columns["end_ns"], dtype=np.int64)
    duration = np.asarray(columns["duration_ns"], dtype=np.int64)
    is_error = np.asarray(columns["status_code"]) == STATUS_ERROR
    orphan = named_parent & (parent == _NO_PARENT)

    depth, subtree_spans, subtree_error, in_cycle = _climb(parent, is_error)
    parent = np.where(in_cycle, _NO_PARENT, parent)
    linked = parent != _NO_PARENT

    children_ns = np.zeros(n_spans, dtype=np.int64)
    np.add.at(children_ns, parent[linked], duration[linked])
    self_ns = np.maximum(duration - children_ns, 0)

    on_path = _critical_path(parent, trace_of, n_traces, start, end, in_cycle)
    path_ns = np.zeros(n_traces, dtype=np.int64)
    np.add.at(path_ns, trace_of[on_path], self_ns[on_path])

    trace_depth = np.full(n_traces, -1, dtype=np.int64)
    np.maximum.at(trace_depth, trace_of, depth)
    trace_start = start[first_span_of_trace]
    np.minimum.at(trace_start, trace_of, start)
    trace_end = end[first_span_of_trace]
    np.maximum.at(trace_end, trace_of, end)
    root = _root_spans(trace_of, depth == 0, start)

    def per_trace(values: np.ndarray, dtype: type) -> np.ndarray:
        return values.astype(dtype, copy=False)[trace_of]

    def count_per_trace(flags: np.ndarray) -> np.ndarray:
        return np.bincount(trace_of, weights=flags, minlength=n_traces)

    assembled = {
        "depth": depth.astype(np.int32),
        "self_ns": self_ns,
        "subtree_spans": subtree_spans.astype(np.int32),
        "subtree_error": subtree_error,
        "on_critical_path": on_path,
        "orphan": orphan,
        "in_cycle": in_cycle,
        "trace_spans": per_trace(np.bincount(trace_of, minlength=n_traces), np.int32),
        "trace_depth": per_trace(trace_depth, np.int32),
        "trace_duration_ns": per_trace(trace_end - trace_start, np.int64),
        "trace_error": per_trace(count_per_trace(is_error) > 0, np.bool_),
        "trace_depth_exceeded": per_trace(trace_depth > max_depth, np.bool_),
        "trace_has_cycle": per_trace(count_per_trace(in_cycle) > 0, np.bool_),
        "trace_orphans": per_trace(count_per_trace(orphan), np.int32),
        "critical_path_ns": per_trace(path_ns, np.int64),
        "critical_path_spans": per_trace(count_per_trace(on_path), np.int32),
        "root_service": np.asarray(columns["service"], dtype=object)[root][trace_of],
        "root_name": np.asarray(columns["name"], dtype=object)[root][trace_of],
    }
    return {**columns, **assembled}


def traces(assembled: Columns, also: tuple[str, ...] = ()) -> Columns:
    """One row per trace of an assembled batch, in order of first appearance.

    Args:
        assembled: the output of :func:`assemble` (or a row subset of it).
        also: other per-trace columns of ``assembled`` to carry over (the value of each
            trace's first span), e.g. the sampling decision.

    Returns:
        TRACE_FIELDS columns, each of shape (n_traces,): ``trace_id``; ``spans``, ``depth``,
        ``duration_ns``, ``error``, ``depth_exceeded``, ``has_cycle``, ``orphans``,
        ``critical_path_ns``, ``critical_path_spans``, ``root_service``, ``root_name`` (the
        ``trace_*``/per-trace columns of its spans); ``start_ns``, its earliest span start.

    Example:
        >>> summary = traces(assemble(batch))  # doctest: +SKIP
        >>> summary["trace_id"][summary["error"]]  # doctest: +SKIP
    """
    trace_of, first = _trace_codes(assembled["trace_id"])
    start = np.asarray(assembled["start_ns"], dtype=np.int64)
    trace_start = start[first]
    np.minimum.at(trace_start, trace_of, start)
    renamed = {"spans": "trace_spans", "depth": "trace_depth",
               "duration_ns": "trace_duration_ns", "error": "trace_error",
               "depth_exceeded": "trace_depth_exceeded", "has_cycle": "trace_has_cycle",
               "orphans": "trace_orphans", "critical_path_ns": "critical_path_ns",
               "critical_path_spans": "critical_path_spans", "root_service": "root_service",
               "root_name": "root_name"}
    summary = {"trace_id": np.asarray(assembled["trace_id"], dtype=object)[first]}
    summary.update({field: np.asarray(assembled[column])[first]
                    for field, column in renamed.items()})
    summary["start_ns"] = trace_start
    summary.update({name: np.asarray(assembled[name])[first] for name in also})
    return summary


def _check_max_depth(max_depth: object) -> None:
    if (isinstance(max_depth, bool) or not isinstance(max_depth, numbers.Integral)
            or max_depth < 1):
        raise ConfigError(f"max_depth must be an integer >= 1, got {max_depth!r}")


def _trace_codes(trace_ids) -> tuple[np.ndarray, np.ndarray]:
    """Code of each span's trace (0.. in order of first appearance), and each trace's
    first span position."""
    trace_of, uniques = pd.factorize(np.asarray(trace_ids, dtype=object), use_na_sentinel=False)
    trace_of = trace_of.astype(np.intp, copy=False)
    first = np.full(len(uniques), len(trace_of), dtype=np.intp)
    np.minimum.at(first, trace_of, np.arange(len(trace_of)))
    return trace_of, first


def _parent_positions(trace_of: np.ndarray, span_ids, parent_span_ids) -> np.ndarray:
    """Batch position of each span's parent, or _NO_PARENT (no parent id, or not in batch):
    the first span of the same trace whose id is the parent id."""
    n_spans = len(trace_of)
    ids, uniques = pd.factorize(np.concatenate((np.asarray(span_ids, dtype=object),
                                                np.asarray(parent_span_ids, dtype=object))),
                                use_na_sentinel=False)
    width = max(len(uniques), 1)
    own = trace_of.astype(np.int64) * width + ids[:n_spans]
    wanted = trace_of.astype(np.int64) * width + ids[n_spans:]
    keys, first = np.unique(own, return_index=True)   # the first occurrence of each key
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, first[at], _NO_PARENT).astype(np.intp)


def _climb(parent: np.ndarray, is_error: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pointer doubling up the parent links.

    Returns:
        depth, subtree span count, subtree error flag and in-cycle flag of each span, arrays
        of shape (n_spans,). Spans in a cycle get depth -1, a count of 1 and their own error.
    """
    n_spans = len(parent)
    beyond_root = n_spans  # a sentinel slot every root points to, and that points to itself
    jump = np.empty(n_spans + 1, dtype=np.intp)
    jump[:n_spans] = np.where(parent == _NO_PARENT, beyond_root, parent)
    jump[beyond_root] = beyond_root
    hops = np.zeros(n_spans + 1, dtype=np.int64)
    hops[:n_spans] = parent != _NO_PARENT
    below = np.ones(n_spans + 1)  # float: bincount weights; exact below 2**53 spans
    below[beyond_root] = 0
    error_below = np.zeros(n_spans + 1, dtype=bool)
    error_below[:n_spans] = is_error
    # 2**rounds hops exceed any root-reaching chain of n_spans spans; what still points at a
    # span after that loops forever.
    for _ in range(n_spans.bit_length() + 1):
        if jump[:n_spans].min() == beyond_root:
            break
        below = below + np.bincount(jump, weights=below, minlength=n_spans + 1)
        error_below[jump[error_below]] = True
        hops = hops + hops[jump]
        jump = jump[jump]
    in_cycle = jump[:n_spans] != beyond_root
    depth = np.where(in_cycle, -1, hops[:n_spans])
    subtree_spans = np.where(in_cycle, 1, below[:n_spans]).astype(np.int64)
    subtree_error = np.where(in_cycle, is_error, error_below[:n_spans])
    return depth, subtree_spans, subtree_error, in_cycle


def _critical_path(parent: np.ndarray, trace_of: np.ndarray, n_traces: int,
                   start: np.ndarray, end: np.ndarray, in_cycle: np.ndarray) -> np.ndarray:
    """Whether each span is on its trace's critical path, an array of shape (n_spans,).

    Each span competes with its siblings, each root with the other roots of its trace (under
    a virtual node ``n_spans + trace``); the latest end wins, then the later start, then
    batch order. A span is on the path when the chain of winners above it reaches a virtual
    node.
    """
    n_spans = len(parent)
    group = np.where(parent == _NO_PARENT, n_spans + trace_of, parent)
    competing = np.flatnonzero(~in_cycle)
    # lexsort is stable: equal keys keep batch order.
    ranked = competing[np.lexsort((-start[competing], -end[competing], group[competing]))]
    ranked_group = group[ranked]
    leads = np.ones(len(ranked), dtype=bool)
    leads[1:] = ranked_group[1:] != ranked_group[:-1]
    winner = np.full(n_spans + n_traces, _NO_PARENT, dtype=np.intp)
    winner[ranked_group[leads]] = ranked[leads]

    up = np.arange(n_spans + n_traces)
    wins = winner[group] == up[:n_spans]
    up[:n_spans][wins] = group[wins]
    # Links only go up an acyclic forest, so doubling settles within log2(depth) + 1 passes.
    for _ in range((n_spans + n_traces).bit_length() + 1):
        further = up[up]
        if np.array_equal(further, up):
            break
        up = further
    return up[:n_spans] >= n_spans


def _root_spans(trace_of: np.ndarray, is_root: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Position of each trace's root span: its earliest-starting root (or orphan), else its
    earliest-starting span; ties go to batch order. Shape (n_traces,)."""
    ranked = np.lexsort((start, ~is_root, trace_of))
    ranked_trace = trace_of[ranked]
    leads = np.ones(len(ranked), dtype=bool)
    leads[1:] = ranked_trace[1:] != ranked_trace[:-1]
    return ranked[leads]
