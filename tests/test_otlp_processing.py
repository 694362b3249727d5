"""Tail sampling and running aggregates of decoded OTLP batches (columns built by hand)."""

from __future__ import annotations

import json
from collections import OrderedDict, deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_sched.errors import ConfigError
from ray_sched.otlp.processing import (
    DURATION_BOUNDS_MS,
    N_DURATION_BUCKETS,
    LogCounts,
    MetricSeries,
    SpanMetrics,
    TailSampler,
    log_counts_partial,
    metric_series_partial,
    span_metrics_partial,
)
from ray_sched.otlp.schema import (
    ASSEMBLY_FIELDS,
    LOG_FIELDS,
    METRIC_POINT_FIELDS,
    SAMPLING_FIELDS,
    SPAN_FIELDS,
    STATUS_ERROR,
    STATUS_OK,
    empty_columns,
)
from ray_sched.otlp.traceid import sampling_value_of

pytestmark = pytest.mark.unit

MS = 1_000_000


def filled(schema, n: int, **values) -> dict[str, np.ndarray]:
    """Columns of ``schema`` with n rows: "" / 0 / False, overridden by ``values``."""
    columns = {}
    for name, empty in empty_columns(schema).items():
        columns[name] = (np.full(n, "", dtype=object) if empty.dtype == object
                         else np.zeros(n, dtype=empty.dtype))
    for name, value in values.items():
        columns[name] = np.asarray(value, dtype=columns[name].dtype if name in columns
                                   else None)
    return columns


def trace_ids(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(16).hex() for _ in range(n)]


def traces(ids, *, duration_ns=10 * MS, error=False, root=("checkout", "GET /cart"),
           spans_per_trace: int = 1, shuffle_seed: int | None = None):
    """An assembled span batch: ``spans_per_trace`` spans per trace id, with per-trace values
    (scalars or one per trace) repeated on every span, as assembly writes them."""
    ids = np.asarray(ids, dtype=object)
    n_traces = len(ids)
    per_trace = {
        "trace_id": ids,
        "trace_duration_ns": np.broadcast_to(np.asarray(duration_ns, np.int64), n_traces),
        "trace_error": np.broadcast_to(np.asarray(error, bool), n_traces),
        "root_service": np.full(n_traces, root[0], dtype=object),
        "root_name": np.full(n_traces, root[1], dtype=object),
    }
    rows = np.repeat(np.arange(n_traces), spans_per_trace)
    if shuffle_seed is not None:
        rows = np.random.default_rng(shuffle_seed).permutation(rows)
    columns = filled(SPAN_FIELDS, len(rows))
    columns.update(filled(ASSEMBLY_FIELDS, len(rows)))
    columns.update({name: values[rows] for name, values in per_trace.items()})
    columns["span_id"] = np.array([f"{i:016x}" for i in range(len(rows))], dtype=object)
    return columns


def spans(service, name, kind, status, duration_ns):
    n = len(service)
    return filled(SPAN_FIELDS, n, service=service, name=name, kind=kind, status_code=status,
                  duration_ns=duration_ns)


def copy_of(columns):
    return {name: values.copy() for name, values in columns.items()}


def assert_same_columns(left, right):
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


# --- tail sampling -------------------------------------------------------------------------

def test_error_traces_are_always_kept():
    sampler = TailSampler(probability=0.0)
    out = sampler.decide(traces(trace_ids(50), error=True))
    assert out["sampled"].all()
    assert set(out["sample_reason"]) == {"error"}


def test_a_slow_trace_is_kept_once_its_operation_has_min_samples_history_and_not_before():
    sampler = TailSampler(probability=0.0, min_samples=20)
    sampler.decide(traces(trace_ids(19, seed=1), duration_ns=MS))
    assert sampler.threshold_ns("checkout", "GET /cart") is None
    early = sampler.decide(traces(trace_ids(1, seed=2), duration_ns=1000 * MS))
    assert early["sample_reason"].tolist() == ["dropped"]
    assert sampler.threshold_ns("checkout", "GET /cart") is not None
    later = sampler.decide(traces(trace_ids(1, seed=3), duration_ns=1000 * MS))
    assert later["sample_reason"].tolist() == ["slow"] and later["sampled"].all()


def test_the_slow_threshold_comes_from_past_batches_only():
    sampler = TailSampler(probability=0.0, min_samples=5)
    durations = np.r_[np.full(30, MS), 1000 * MS]
    out = sampler.decide(traces(trace_ids(31), duration_ns=durations))
    assert not out["sampled"].any()


def test_the_threshold_is_the_quantile_of_the_operations_past_durations():
    sampler = TailSampler(slow_quantile=0.9, min_samples=5)
    durations = np.random.default_rng(3).integers(MS, 100 * MS, 40)
    sampler.decide(traces(trace_ids(25, seed=4), duration_ns=durations[:25]))
    sampler.decide(traces(trace_ids(15, seed=5), duration_ns=durations[25:]))
    assert sampler.threshold_ns("checkout", "GET /cart") == pytest.approx(
        np.quantile(durations, 0.9))
    assert sampler.threshold_ns("checkout", "unknown") is None


def test_only_traces_above_the_threshold_are_slow():
    sampler = TailSampler(probability=0.0, slow_quantile=0.5, min_samples=3)
    sampler.decide(traces(trace_ids(3, seed=6), duration_ns=[10 * MS, 20 * MS, 30 * MS]))
    out = sampler.decide(traces(trace_ids(3, seed=7), duration_ns=[19 * MS, 20 * MS, 21 * MS]))
    assert out["sample_reason"].tolist() == ["dropped", "dropped", "slow"]


def test_the_probabilistic_share_is_close_to_probability():
    probability = 0.1
    out = TailSampler(probability=probability).decide(traces(trace_ids(20_000, seed=8)))
    share = out["sampled"].mean()
    sigma = np.sqrt(probability * (1 - probability) / 20_000)
    assert abs(share - probability) < 5 * sigma
    assert set(out["sample_reason"]) == {"probabilistic", "dropped"}


def test_probabilistic_decisions_are_deterministic_across_instances():
    ids = trace_ids(5_000, seed=9)
    first = TailSampler(probability=0.3).decide(traces(ids))
    second = TailSampler(probability=0.3).decide(traces(ids[::-1]))
    np.testing.assert_array_equal(first["sampled"], second["sampled"][::-1])
    expected = [sampling_value_of(tid) / 2 ** 56 < 0.3 for tid in ids]
    assert first["sampled"].tolist() == expected


def test_probability_zero_keeps_only_error_and_slow_traces():
    sampler = TailSampler(probability=0.0, min_samples=5)
    sampler.decide(traces(trace_ids(20, seed=10), duration_ns=MS))
    ids = trace_ids(300, seed=11)
    out = sampler.decide(traces(ids, duration_ns=np.where(np.arange(300) < 10, 500 * MS, MS),
                                error=np.arange(300) % 50 == 7))
    reasons = out["sample_reason"][out["sampled"]].tolist()
    assert sorted(reasons) == ["error"] * 6 + ["slow"] * 9   # trace 7 is slow and an error


def test_probability_one_keeps_every_trace():
    out = TailSampler(probability=1.0).decide(traces(trace_ids(2_000, seed=12)))
    assert out["sampled"].all()


def test_all_spans_of_a_trace_share_the_decision():
    ids = trace_ids(400, seed=13)
    out = TailSampler(probability=0.5).decide(
        traces(ids, spans_per_trace=7, shuffle_seed=1, error=np.arange(400) % 9 == 0))
    for tid in ids[:100]:
        rows = out["trace_id"] == tid
        assert len(set(out["sampled"][rows])) == 1
        assert len(set(out["sample_reason"][rows])) == 1
    assert 0 < out["sampled"].mean() < 1


def test_the_window_bounds_the_durations_held_per_operation():
    sampler = TailSampler(window=8, min_samples=1)
    for batch in range(12):
        sampler.decide(traces(trace_ids(5, seed=100 + batch), duration_ns=(batch + 1) * MS))
    assert sampler.stats()["durations_held"] == 8
    assert sampler.durations_.values.shape[1] == 8
    last_eight = [11 * MS] * 3 + [12 * MS] * 5
    assert sampler.threshold_ns("checkout", "GET /cart") == pytest.approx(
        np.quantile(last_eight, 0.95))


def test_a_batch_longer_than_the_window_keeps_its_last_durations():
    sampler = TailSampler(window=4, min_samples=1, slow_quantile=0.5)
    sampler.decide(traces(trace_ids(10, seed=14), duration_ns=np.arange(1, 11) * MS))
    assert sampler.threshold_ns("checkout", "GET /cart") == pytest.approx(8.5 * MS)


def test_operations_past_max_operations_are_evicted_least_recently_seen_first():
    sampler = TailSampler(max_operations=3, min_samples=1)
    for seed, name in enumerate(["a", "b", "c", "a", "d"]):
        sampler.decide(traces(trace_ids(2, seed=200 + seed), root=("svc", name)))
    assert sampler.stats()["operations_tracked"] == 3
    assert sampler.threshold_ns("svc", "b") is None
    assert all(sampler.threshold_ns("svc", name) is not None for name in "acd")


def test_a_batch_with_more_operations_than_max_operations_tracks_its_last_ones():
    sampler = TailSampler(max_operations=2, min_samples=1)
    ids = trace_ids(3, seed=17)
    batch = [traces([tid], root=("svc", name)) for tid, name in zip(ids, "xyz")]
    sampler.decide({name: np.concatenate([b[name] for b in batch]) for name in batch[0]})
    assert [sampler.threshold_ns("svc", name) is not None for name in "xyz"] == [
        False, True, True]


def test_operations_sharing_a_batch_keep_separate_windows():
    sampler = TailSampler(min_samples=1, window=3)
    names = ["a", "b"] * 5
    durations = np.arange(1, 11) * MS
    batch = [traces([tid], root=("svc", name), duration_ns=d)
             for tid, name, d in zip(trace_ids(10, seed=18), names, durations)]
    sampler.decide({name: np.concatenate([b[name] for b in batch]) for name in batch[0]})
    assert sampler.threshold_ns("svc", "a") == pytest.approx(np.quantile([5, 7, 9], 0.95) * MS)
    assert sampler.threshold_ns("svc", "b") == pytest.approx(np.quantile([6, 8, 10], 0.95) * MS)


def reference_reasons(batches, *, probability, slow_quantile, min_samples, window,
                      max_operations):
    """The sampler's rules, one trace at a time (trace: (id, operation, duration, error))."""
    history: OrderedDict[str, deque] = OrderedDict()
    decided = []
    for batch in batches:
        slow_above = {op: np.quantile(list(past), slow_quantile)
                      for op, past in history.items() if len(past) >= min_samples}
        for trace_id, op, duration, error in batch:
            if error:
                decided.append("error")
            elif op in slow_above and duration > slow_above[op]:
                decided.append("slow")
            elif sampling_value_of(trace_id) / 2 ** 56 < probability:
                decided.append("probabilistic")
            else:
                decided.append("dropped")
        for op in dict.fromkeys(op for _, op, _, _ in batch):  # seen in first-appearance order
            past = history.pop(op, deque(maxlen=window))
            past.extend(d for _, o, d, _ in batch if o == op)
            history[op] = past
        while len(history) > max_operations:
            history.popitem(last=False)
    return decided


trace_batches = st.lists(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 12),
                                            st.booleans(), st.integers(1, 3)),
                                  max_size=12), max_size=8)


@settings(max_examples=80, deadline=None)
@given(trace_batches, st.integers(0, 2 ** 32))
def test_the_sampler_matches_its_rules_applied_one_trace_at_a_time(batches, seed):
    params = {"probability": 0.5, "slow_quantile": 0.5, "min_samples": 2, "window": 5,
              "max_operations": 3}
    ids = iter(trace_ids(sum(map(len, batches)), seed=seed))
    batches = [[(next(ids), op, duration, error, n) for op, duration, error, n in batch]
               for batch in batches]
    sampler = TailSampler(**params)
    got, as_arrived = [], []
    for number, batch in enumerate(batches):
        parts = [traces([tid], root=("svc", op), duration_ns=duration, error=error,
                        spans_per_trace=n) for tid, op, duration, error, n in batch]
        columns = ({name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
                   if parts else traces([]))
        order = np.random.default_rng(number).permutation(len(columns["trace_id"]))
        out = sampler.decide({name: values[order] for name, values in columns.items()})
        reason_of = dict(zip(out["trace_id"], out["sample_reason"]))
        # Within a batch, traces (and so operations) count in order of first appearance.
        trace_of = {trace[0]: trace[:4] for trace in batch}
        as_arrived.append([trace_of[tid] for tid in dict.fromkeys(out["trace_id"])])
        got.extend(reason_of[tid] for tid, *_ in as_arrived[-1])
    assert got == reference_reasons(as_arrived, **params)


@pytest.mark.parametrize(("param", "value"), [
    ("probability", -0.1), ("probability", 1.5), ("probability", float("nan")),
    ("slow_quantile", 0.0), ("slow_quantile", 1.0), ("min_samples", 0), ("window", 2.5),
    ("max_operations", True)])
def test_bad_parameters_raise_config_error_naming_the_parameter_and_value(param, value):
    with pytest.raises(ConfigError, match=param) as caught:
        TailSampler(**{param: value})
    assert repr(value) in str(caught.value)


def test_decide_returns_a_new_dict_and_leaves_its_input_alone():
    batch = traces(trace_ids(30, seed=15), spans_per_trace=3)
    before = copy_of(batch)
    out = TailSampler().decide(batch)
    assert_same_columns(batch, before)
    assert set(out) == set(batch) | {field.name for field in SAMPLING_FIELDS}
    assert out["sampled"].dtype == bool and out["sample_reason"].dtype == object


def test_an_empty_batch_gets_empty_sampling_columns():
    out = TailSampler().decide(traces([]))
    assert len(out["sampled"]) == 0 and len(out["sample_reason"]) == 0


def test_stats_count_traces_per_reason():
    sampler = TailSampler(probability=0.0)
    sampler.decide(traces(trace_ids(10, seed=16), error=np.arange(10) < 4, spans_per_trace=3))
    assert sampler.stats() == {"traces_seen": 10, "traces_kept": 4,
                               "by_reason": {"error": 4, "slow": 0, "probabilistic": 0,
                                             "dropped": 6, "rate_limited": 0},
                               "operations_tracked": 1, "durations_held": 10}


# --- span metrics ----------------------------------------------------------------------------

def hand_built_spans():
    return spans(service=["api", "api", "api", "db", "api"],
                 name=["GET /", "GET /", "GET /", "SELECT", "GET /"],
                 kind=[2, 2, 3, 3, 2],
                 status=[STATUS_OK, STATUS_ERROR, STATUS_ERROR, 0, 0],
                 duration_ns=[3 * MS, 5 * MS, 7 * MS, 1 * MS, 60 * MS])


def by_group(columns, keys=("service", "operation", "span_kind")):
    """{key tuple: {column: value}} of one-row-per-group columns, order aside."""
    others = [name for name in columns if name not in keys]
    values = {name: np.asarray(columns[name]).tolist() for name in others}
    key_rows = zip(*(np.asarray(columns[key]).tolist() for key in keys))
    return {key: {name: values[name][i] for name in others} for i, key in enumerate(key_rows)}


def test_span_metrics_count_calls_errors_and_durations_exactly():
    groups = by_group(span_metrics_partial(hand_built_spans()))
    assert set(groups) == {("api", "GET /", 2), ("api", "GET /", 3), ("db", "SELECT", 3)}
    server = groups[("api", "GET /", 2)]
    assert (server["calls"], server["errors"]) == (3, 1)
    assert (server["duration_sum_ns"], server["duration_min_ns"], server["duration_max_ns"]) == (
        68 * MS, 3 * MS, 60 * MS)
    assert groups[("api", "GET /", 3)]["errors"] == 1
    assert groups[("db", "SELECT", 3)]["calls"] == 1


def test_a_duration_on_a_bucket_bound_lands_in_that_bounds_bucket():
    bound_ns = [b * MS for b in DURATION_BOUNDS_MS]
    durations = [0, bound_ns[0], bound_ns[0] + 1, bound_ns[5], bound_ns[-1], bound_ns[-1] + 1]
    n = len(durations)
    partial = span_metrics_partial(spans(["s"] * n, ["op"] * n, [1] * n, [0] * n, durations))
    expected = np.zeros(N_DURATION_BUCKETS, dtype=np.int64)
    np.add.at(expected, [0, 0, 1, 5, len(DURATION_BOUNDS_MS) - 1, len(DURATION_BOUNDS_MS)], 1)
    assert partial["buckets"].shape == (1, len(DURATION_BOUNDS_MS) + 1)
    np.testing.assert_array_equal(partial["buckets"][0], expected)


span_rows = st.lists(st.tuples(st.sampled_from(["api", "db", "web"]),
                               st.sampled_from(["GET /", "POST /x", "SELECT"]),
                               st.integers(0, 5), st.integers(0, 2),
                               st.integers(0, 20_000 * MS)), max_size=40)


def span_columns(rows):
    if not rows:
        return empty_columns(SPAN_FIELDS)
    service, name, kind, status, duration = zip(*rows)
    return spans(list(service), list(name), list(kind), list(status), list(duration))


@settings(max_examples=60, deadline=None)
@given(span_rows, span_rows)
def test_merging_two_span_partials_equals_the_partial_of_their_concatenation(first, second):
    merged = SpanMetrics()
    merged.merge(span_metrics_partial(span_columns(first)))
    merged.merge(span_metrics_partial(span_columns(second)))
    whole = span_metrics_partial(span_columns(first + second))
    assert by_group(merged.totals_) == by_group(whole)
    assert len(merged) == len(whole["service"])


def test_p50_and_p95_fall_in_the_right_buckets():
    durations = [3 * MS] * 60 + [300 * MS] * 40
    metrics = SpanMetrics()
    metrics.merge(span_metrics_partial(spans(["s"] * 100, ["op"] * 100, [2] * 100, [0] * 100,
                                             durations)))
    rows = metrics.rows(0, 10 * 10 ** 9)
    assert 2 < rows["duration_p50_ms"][0] <= 4
    assert 200 < rows["duration_p95_ms"][0] <= 400


def test_quantile_estimates_stay_within_the_observed_durations():
    metrics = SpanMetrics()
    metrics.merge(span_metrics_partial(spans(["s"] * 3, ["op"] * 3, [2] * 3, [0] * 3,
                                             [20_000 * MS, 21_000 * MS, 30_000 * MS])))
    rows = metrics.rows(0, 10 ** 9)
    assert 20_000 <= rows["duration_p50_ms"][0] <= rows["duration_p95_ms"][0] <= 30_000


def test_span_metric_rows_give_rates_over_the_window_and_json_buckets():
    metrics = SpanMetrics()
    metrics.merge(span_metrics_partial(hand_built_spans()))
    rows = metrics.rows(5 * 10 ** 9, 15 * 10 ** 9)
    groups = by_group(rows)
    server = groups[("api", "GET /", 2)]
    assert server["rate_per_s"] == pytest.approx(0.3)
    assert server["error_rate"] == pytest.approx(1 / 3)
    assert json.loads(server["bounds_ms"]) == list(DURATION_BOUNDS_MS)
    assert sum(json.loads(server["bucket_counts"])) == 3
    assert (server["window_start_ns"], server["window_end_ns"]) == (5 * 10 ** 9, 15 * 10 ** 9)
    assert "buckets" not in rows


def test_span_metric_rows_refuse_an_empty_window():
    with pytest.raises(ConfigError, match="window_end_ns"):
        SpanMetrics().rows(10, 10)


def test_reset_forgets_every_total():
    metrics = SpanMetrics()
    metrics.merge(span_metrics_partial(hand_built_spans()))
    assert len(metrics) == 3
    metrics.reset()
    assert len(metrics) == 0 and len(metrics.rows(0, 1)["service"]) == 0


@pytest.mark.parametrize(("partial", "schema"), [
    (span_metrics_partial, SPAN_FIELDS), (metric_series_partial, METRIC_POINT_FIELDS),
    (log_counts_partial, LOG_FIELDS)])
def test_an_empty_batch_gives_an_empty_partial_with_every_column(partial, schema):
    out = partial(empty_columns(schema))
    assert out and all(len(values) == 0 for values in out.values())


def test_empty_totals_export_every_column():
    rows = SpanMetrics().rows(0, 1)
    assert {"duration_p95_ms", "bucket_counts", "bounds_ms", "rate_per_s"} <= set(rows)
    assert set(MetricSeries().rows()) == set(metric_series_partial(
        empty_columns(METRIC_POINT_FIELDS)))


@pytest.mark.parametrize("batch", [
    lambda: (span_metrics_partial, hand_built_spans()),
    lambda: (metric_series_partial, points([0.0, 1.0], [5, 3])),
    lambda: (log_counts_partial, logs(["a", "b"], [9, 17]))])
def test_partials_leave_their_input_alone(batch):
    partial, columns = batch()
    before = copy_of(columns)
    partial(columns)
    assert_same_columns(columns, before)


def test_merge_leaves_the_partial_alone():
    partial = span_metrics_partial(hand_built_spans())
    before = copy_of(partial)
    metrics = SpanMetrics()
    metrics.merge(partial)
    metrics.merge(partial)          # the second merge adds into existing rows
    assert_same_columns(partial, before)
    assert metrics.rows(0, 1)["calls"].sum() == 2 * partial["calls"].sum()


# --- metric series ---------------------------------------------------------------------------

def points(values, times_ns, series="cpu{host=a}"):
    n = len(values)
    return filled(METRIC_POINT_FIELDS, n, service=["node"] * n, metric=["cpu"] * n,
                  type=["gauge"] * n, series=[series] * n, value=values, time_ns=times_ns)


def test_metric_series_last_value_is_the_latest_points():
    partial = metric_series_partial(points([1.0, 9.0, 4.0], [30, 50, 10]))
    assert partial["last_value"].tolist() == [9.0]
    assert (partial["first_time_ns"][0], partial["last_time_ns"][0]) == (10, 50)
    assert (partial["value_min"][0], partial["value_max"][0], partial["value_sum"][0],
            partial["points"][0]) == (1.0, 9.0, 14.0, 3)


def test_merging_an_older_metric_partial_keeps_the_latest_value():
    series = MetricSeries()
    series.merge(metric_series_partial(points([7.0], [100])))
    series.merge(metric_series_partial(points([2.0, 3.0], [20, 90])))
    rows = series.rows()
    assert rows["last_value"].tolist() == [7.0] and rows["points"].tolist() == [3]


point_rows = st.lists(st.tuples(st.sampled_from(["cpu{a}", "cpu{b}", "mem{}"]),
                                st.floats(-1e6, 1e6), st.integers(0, 5)), max_size=30)


def point_columns(rows):
    if not rows:
        return empty_columns(METRIC_POINT_FIELDS)
    series, value, time_ns = zip(*rows)
    n = len(rows)
    return filled(METRIC_POINT_FIELDS, n, service=["node"] * n,
                  metric=[s.split("{")[0] for s in series], type=["gauge"] * n,
                  series=list(series), value=list(value), time_ns=list(time_ns))


@settings(max_examples=60, deadline=None)
@given(point_rows, point_rows)
def test_merging_two_metric_partials_equals_the_partial_of_their_concatenation(first, second):
    merged = MetricSeries()
    merged.merge(metric_series_partial(point_columns(first)))
    merged.merge(metric_series_partial(point_columns(second)))
    keys = ("series", "metric", "service", "type")
    expected = by_group(metric_series_partial(point_columns(first + second)), keys)
    got = by_group(merged.rows(), keys)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key]["value_sum"] == pytest.approx(row["value_sum"])
        assert {**got[key], "value_sum": 0} == {**row, "value_sum": 0}


# --- log counts ------------------------------------------------------------------------------

def logs(services, severity_numbers):
    n = len(services)
    return filled(LOG_FIELDS, n, service=services, severity_number=severity_numbers)


def test_log_severity_numbers_map_to_the_opentelemetry_ranges():
    numbers = [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, -3]
    partial = log_counts_partial(logs(["s"] * len(numbers), numbers))
    counts = dict(zip(partial["severity"].tolist(), partial["records"].tolist()))
    assert counts == {"UNSPECIFIED": 3, "TRACE": 2, "DEBUG": 2, "INFO": 2, "WARN": 2,
                      "ERROR": 2, "FATAL": 2}


def test_log_counts_accumulate_per_service_and_severity():
    counts = LogCounts()
    counts.merge(log_counts_partial(logs(["a", "a", "b"], [9, 10, 17])))
    counts.merge(log_counts_partial(logs(["a", "b"], [11, 1])))
    got = by_group(counts.rows(), ("service", "severity"))
    assert got == {("a", "INFO"): {"records": 3}, ("b", "ERROR"): {"records": 1},
                   ("b", "TRACE"): {"records": 1}}
    assert len(counts) == 3
