"""Workload forecasting (issue 5): damped Holt forecasts of the arrival rate and the work
per (kind, region), per region and in total, updated once per window with a fake clock;
empty windows close as zeros in closed form; one-step error is scored beside the naive
forecast, also on real arrival processes (Azure LLM inference, NASA iPSC/860)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_sched.control.forecast import (
    OTHER,
    ZERO_RUN_SCORED,
    HoltSeries,
    WorkloadForecaster,
)
from ray_sched.trace import read_trace, validate_frame

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "data" / "traces"
AZURE = TRACES / "azure-llm"
NASA = TRACES / "pwa" / "NASA-iPSC-1993-3.1-cln.swf.gz"
#: The real-trace bar from the issue: forecasting must not be worse than 1.2x naive.
NAIVE_FACTOR = 1.2


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _feed_windows(forecaster: WorkloadForecaster, per_window: list[dict], *,
                  start_s: float = 0.0, window_s: float = 1.0) -> None:
    """Window i receives ``per_window[i]``: {(kind, region): (count, work_s of each)}, as
    one batch at its middle; the window is closed at its end."""
    forecaster.advance(start_s)
    for index, arrivals in enumerate(per_window):
        kinds, regions, work = [], [], []
        for (kind, region), (count, work_s) in arrivals.items():
            kinds += [kind] * count
            regions += [region] * count
            work += [work_s] * count
        forecaster.observe(kinds, regions, work, now=start_s + (index + 0.5) * window_s)
    forecaster.advance(start_s + len(per_window) * window_s)


def _replay(forecaster: WorkloadForecaster, arrival_s, kinds, regions, work_s, *,
            batch_s: float) -> None:
    """Arrivals in batches of ``batch_s`` seconds, each delivered at its last arrival, as
    the global scheduler receives them; then the last window is closed."""
    order = np.argsort(arrival_s, kind="stable")
    arrival_s, work_s = np.asarray(arrival_s, dtype=float)[order], np.asarray(work_s)[order]
    kinds = np.asarray(kinds, dtype=object)[order]
    regions = np.asarray(regions, dtype=object)[order]
    batch = np.floor(arrival_s / batch_s).astype(np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(batch)) + 1, len(batch)]
    forecaster.advance(float(arrival_s[0]))
    for start, end in zip(bounds[:-1], bounds[1:]):
        forecaster.observe(list(kinds[start:end]), list(regions[start:end]),
                           work_s[start:end], now=float(arrival_s[end - 1]))
    forecaster.advance(float(arrival_s[-1]) + forecaster.window_s)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real trace {path} is absent (shared/data/traces not checked out)")
    return path


# -- HoltSeries ------------------------------------------------------------------------

@pytest.mark.unit
def test_a_holt_series_forecasts_a_constant_as_that_constant():
    series = HoltSeries()
    for _ in range(5):
        series.update(10.0)
    assert series.n == 5 and series.level == pytest.approx(10.0)
    assert series.trend == pytest.approx(0.0)
    assert series.forecast(1) == pytest.approx(10.0)
    assert series.forecast(7) == pytest.approx(10.0)


@pytest.mark.unit
def test_a_holt_series_extrapolates_a_ramp_with_a_damped_trend():
    series = HoltSeries()
    for value in range(0, 100, 2):
        series.update(float(value))
    assert series.trend > 1.0                                 # it learnt the slope
    assert series.forecast(1) > series.level
    assert series.forecast(3) > series.forecast(1)
    # Damped: the trend adds at most phi / (1 - phi) windows of growth, however far ahead.
    assert series.forecast(1000) < series.level + 4 * series.trend + 1e-9


@pytest.mark.unit
def test_a_run_of_zeros_in_closed_form_matches_window_by_window_updates():
    stepped, jumped = HoltSeries(), HoltSeries()
    for value in (3.0, 8.0, 20.0, 35.0):
        stepped.update(value)
        jumped.update(value)
    for _ in range(37):
        stepped.update(0.0)
    jumped.update_zeros(37)
    assert jumped.n == stepped.n == 41
    assert jumped.level == pytest.approx(stepped.level, rel=1e-9, abs=1e-12)
    assert jumped.trend == pytest.approx(stepped.trend, rel=1e-9, abs=1e-12)


@pytest.mark.unit
def test_a_holt_series_forecast_is_never_negative_after_a_fall():
    series = HoltSeries()
    for value in (100.0, 100.0, 60.0, 20.0, 0.0):
        series.update(value)
    damped = sum(series.phi ** i for i in range(1, 6))
    assert series.level + damped * series.trend < 0          # the raw extrapolation dips
    assert series.forecast(1) > 0
    assert all(series.forecast(h) == 0.0 for h in range(5, 30))


@pytest.mark.unit
def test_a_holt_series_without_data_refuses_to_forecast():
    with pytest.raises(ValueError, match="no window"):
        HoltSeries().forecast(1)


# -- WorkloadForecaster: forecasts -----------------------------------------------------

@pytest.mark.unit
def test_a_constant_rate_is_forecast_within_a_few_percent():
    rng = np.random.default_rng(1)
    forecaster = WorkloadForecaster(clock=FakeClock())
    windows = [{("etl", "eu"): (int(count), 0.5)} for count in rng.poisson(200, 30)]
    _feed_windows(forecaster, windows)
    forecast = forecaster.forecast(1, by="region", now=30.0)["eu"]
    assert forecast["rate_tps"] == pytest.approx(200, rel=0.05)
    assert forecast["work_s_per_s"] == pytest.approx(100, rel=0.05)


@pytest.mark.unit
def test_forecasts_are_per_second_whatever_the_window_length():
    forecaster = WorkloadForecaster(window_s=0.25, clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (5, 0.1)}] * 8, window_s=0.25)
    forecast = forecaster.forecast(1, by="total", now=2.0)[""]
    assert forecast["rate_tps"] == pytest.approx(20.0)       # 5 per 0.25 s
    assert forecast["work_s_per_s"] == pytest.approx(2.0)     # 0.5 slot-s per 0.25 s


@pytest.mark.unit
def test_a_linear_ramp_is_followed_above_the_last_level_and_beats_naive():
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (10 + 4 * i, 0.1)} for i in range(40)])
    last = 10 + 4 * 39
    one, three = (forecaster.forecast(h, by="total", now=40.0)[""]["rate_tps"]
                  for h in (1, 3))
    assert one > last and three > one
    error = forecaster.error()["total"]
    assert error["rate_mae"] < error["naive_rate_mae"]


@pytest.mark.unit
def test_a_ramp_without_trend_does_not_beat_naive():
    """The counterpart of the test above: what makes Holt beat naive is the trend."""
    forecaster = WorkloadForecaster(beta=0.0, clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (10 + 4 * i, 0.1)} for i in range(40)])
    error = forecaster.error()["total"]
    assert error["rate_mae"] > error["naive_rate_mae"]


@pytest.mark.unit
def test_empty_windows_close_as_zeros_and_a_stopped_stream_decays_to_zero():
    clock = FakeClock()
    forecaster = WorkloadForecaster(clock=clock)
    _feed_windows(forecaster, [{("etl", "eu"): (50, 1.0)}] * 20)
    assert forecaster.windows_closed_ == 20
    clock.now = 30.0
    assert forecaster.advance() == 10                         # ten empty windows at once
    forecast = forecaster.forecast(1, by="region")["eu"]
    assert 0 <= forecast["rate_tps"] < 0.01 * 50
    assert 0 <= forecast["work_s_per_s"] < 0.01 * 50
    assert forecaster.advance() == 0                          # nothing more has ended
    assert forecaster.error()["total"]["n_windows"] == 29     # the first window is unscored


@pytest.mark.unit
def test_the_forecast_is_never_negative_after_a_collapse():
    forecaster = WorkloadForecaster(clock=FakeClock())
    counts = (100, 100, 100, 60, 20, 1, 0, 0, 0)
    _feed_windows(forecaster, [{("etl", "eu"): (count, 1.0)} for count in counts])
    for horizon in (1, 2, 5, 50):
        for by in ("region", "key", "total"):
            for values in forecaster.forecast(horizon, by=by, now=9.0).values():
                assert values["rate_tps"] >= 0 and values["work_s_per_s"] >= 0
    # The error is scored against the forecast as given (clamped), not the raw dip.
    series, raw_dipped, errors = HoltSeries(), False, []
    for count in counts:
        if series.n:
            raw_dipped |= series.level + series.phi * series.trend < 0
            errors.append(abs(series.forecast(1) - count))
        series.update(count)
    assert raw_dipped
    assert forecaster.error()["total"]["rate_mae"] == pytest.approx(np.mean(errors))


@pytest.mark.unit
def test_regions_and_keys_are_forecast_separately():
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (30, 0.2), ("logs", "us"): (4, 1.0),
                                ("etl", "us"): (1, 2.0), ("etl", None): (2, 0.5)}] * 15)
    by_region = forecaster.forecast(1, by="region", now=15.0)
    assert set(by_region) == {"eu", "us", ""}                 # None is the region ""
    assert by_region["eu"]["rate_tps"] == pytest.approx(30)
    assert by_region["eu"]["work_s_per_s"] == pytest.approx(6)
    assert by_region["us"]["rate_tps"] == pytest.approx(5)
    assert by_region["us"]["work_s_per_s"] == pytest.approx(6)
    by_key = forecaster.forecast(1, by="key", now=15.0)
    assert set(by_key) == {("etl", "eu"), ("logs", "us"), ("etl", "us"), ("etl", "")}
    assert by_key[("etl", "us")]["rate_tps"] == pytest.approx(1)
    total = forecaster.forecast(1, by="total", now=15.0)
    assert total == {"": {"rate_tps": pytest.approx(37), "work_s_per_s": pytest.approx(13)}}


@pytest.mark.unit
def test_forecasts_come_from_closed_windows_only():
    clock = FakeClock()
    forecaster = WorkloadForecaster(clock=clock)
    forecaster.observe(["etl"] * 10, ["eu"] * 10, [1.0] * 10)  # opens window 0 at t=0
    assert forecaster.forecast(1, by="total")[""]["rate_tps"] == 0.0
    assert forecaster.stats()["open_window_arrivals"] == 10
    clock.now = 1.0
    assert forecaster.forecast(1, by="total")[""]["rate_tps"] == pytest.approx(10)


@pytest.mark.unit
def test_a_clock_that_steps_back_closes_nothing():
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (3, 1.0)}] * 5)
    assert forecaster.advance(2.0) == 0
    forecaster.observe(["etl"], ["eu"], [1.0], now=2.0)       # counted in the open window
    assert forecaster.windows_closed_ == 5 and forecaster.n_arrivals_ == 16


@pytest.mark.unit
def test_observe_leaves_its_inputs_alone_and_accepts_numpy_work():
    forecaster = WorkloadForecaster(clock=FakeClock())
    kinds, regions, work = ["a", "b"], ["eu", None], np.array([1.0, 2.0])
    forecaster.observe(kinds, regions, work, now=0.0)
    forecaster.observe((), (), np.array([]), now=0.5)         # an empty batch is fine
    assert kinds == ["a", "b"] and regions == ["eu", None]
    assert work.tolist() == [1.0, 2.0]


# -- burst_ahead -----------------------------------------------------------------------

def _first_warning(forecaster: WorkloadForecaster, work_per_window: list[float],
                   capacity_slots: float) -> int | None:
    """Index of the last closed window when burst_ahead first said True (asked at the
    start of each window), or None."""
    forecaster.advance(0.0)
    for index, work in enumerate(work_per_window):
        forecaster.observe(["etl"] * 4, ["eu"] * 4, [work / 4] * 4, now=index + 0.5)
        if forecaster.burst_ahead("eu", capacity_slots, now=index + 1.0):
            return index
    return None


@pytest.mark.unit
def test_burst_ahead_warns_before_a_ramp_crosses_capacity():
    work = [4.0] * 10 + [4.0 + i for i in range(1, 40)]      # +1 busy slot per window
    capacity = 20.5
    crossing = next(i for i, w in enumerate(work) if w > capacity)
    warned = _first_warning(WorkloadForecaster(clock=FakeClock()), work, capacity)
    assert warned is not None and warned < crossing           # every closed window fitted
    assert max(work[:warned + 1]) <= capacity
    # Without the trend the same ramp is seen only once it has crossed.
    late = _first_warning(WorkloadForecaster(beta=0.0, clock=FakeClock()), work, capacity)
    assert late is not None and late >= crossing


@pytest.mark.unit
def test_burst_ahead_stays_false_on_a_flat_low_load_and_logs_changes():
    rng = np.random.default_rng(3)
    forecaster = WorkloadForecaster(clock=FakeClock())
    forecaster.advance(0.0)
    answers = []
    for index, count in enumerate(rng.poisson(20, 60)):       # ~4 busy slots
        forecaster.observe(["etl"] * int(count), ["eu"] * int(count), [0.2] * int(count),
                           now=index + 0.5)
        answers.append(forecaster.burst_ahead("eu", 8.0, now=index + 1.0))
    assert not any(answers)
    assert forecaster.burst_ahead("nowhere", 0.5) is False     # an unseen region is idle
    assert [(w["region"], w["burst"]) for w in forecaster.history()] == [
        ("eu", False), ("nowhere", False)]
    assert forecaster.burst_ahead("eu", 2.0) is True            # the same load on 2 slots
    assert forecaster.history()[-1]["burst"] is True
    assert forecaster.history()[-1]["work_s_per_s"] > 2.0


# -- error -----------------------------------------------------------------------------

@pytest.mark.unit
def test_error_is_zero_on_a_constant_series():
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (12, 0.5)}] * 20)
    for error in (forecaster.error()["total"], forecaster.error()["regions"]["eu"]):
        assert error["n_windows"] == 19
        assert error["rate_mae"] == pytest.approx(0, abs=1e-9)
        assert error["work_mae"] == pytest.approx(0, abs=1e-9)
        assert error["rate_mape"] == pytest.approx(0, abs=1e-9)
        assert error["naive_rate_mae"] == pytest.approx(0, abs=1e-9)


@pytest.mark.unit
def test_error_beats_naive_on_a_noisy_stationary_series():
    rng = np.random.default_rng(5)
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (int(c), 0.5)} for c in rng.poisson(20, 300)])
    error = forecaster.error()["total"]
    assert error["n_windows"] == 299
    # Over 200 seeds the ratio is 0.82-0.92: smoothing averages out what naive repeats.
    assert error["rate_mae"] < 0.95 * error["naive_rate_mae"]
    assert error["work_mae"] < 0.95 * error["naive_work_mae"]
    assert 0.1 < error["rate_mape"] < 0.5                      # Poisson(20): sd/mean = 0.22


@pytest.mark.unit
def test_rate_mape_averages_only_windows_with_arrivals():
    forecaster = WorkloadForecaster(clock=FakeClock())
    _feed_windows(forecaster, [{("etl", "eu"): (c, 1.0)} for c in (10, 10, 20)] + [{}])
    error = forecaster.error()["total"]
    assert error["n_windows"] == 3
    assert error["rate_mape"] == pytest.approx((0 + 0.5) / 2)  # forecast 10, got 10 then 20


@pytest.mark.unit
def test_error_before_two_windows_is_empty():
    forecaster = WorkloadForecaster(clock=FakeClock())
    assert forecaster.error() == {"total": {
        "n_windows": 0, "rate_mae": None, "rate_mape": None, "work_mae": None,
        "naive_rate_mae": None, "naive_work_mae": None}, "regions": {}}


# -- bounds and speed ------------------------------------------------------------------

@pytest.mark.unit
def test_keys_beyond_max_keys_fold_into_other_per_region():
    forecaster = WorkloadForecaster(max_keys=3, clock=FakeClock())
    kinds = ["a", "b", "c", "d", "e", "a"]
    _feed_windows(forecaster, [{(kind, "eu"): (2, 1.0) for kind in kinds}
                               | {("z", "us"): (1, 1.0)}] * 5)
    by_key = forecaster.forecast(1, by="key", now=5.0)
    assert set(by_key) == {("a", "eu"), ("b", "eu"), ("c", "eu"), (OTHER, "eu"),
                           (OTHER, "us")}
    assert by_key[(OTHER, "eu")]["rate_tps"] == pytest.approx(4)   # d and e
    assert by_key[(OTHER, "us")]["rate_tps"] == pytest.approx(1)
    assert forecaster.forecast(1, by="region", now=5.0)["eu"]["rate_tps"] == pytest.approx(10)
    stats = forecaster.stats()
    assert stats["keys"] == 5 and stats["folded_arrivals"] == 5 * 5


@pytest.mark.unit
def test_regions_beyond_max_regions_fold_into_other():
    forecaster = WorkloadForecaster(max_regions=2, clock=FakeClock())
    _feed_windows(forecaster, [{("etl", r): (1, 1.0) for r in ("eu", "us", "ap", "sa")}] * 4)
    by_region = forecaster.forecast(1, by="region", now=4.0)
    assert set(by_region) == {"eu", "us", OTHER}
    assert by_region[OTHER]["rate_tps"] == pytest.approx(2)


@pytest.mark.unit
def test_a_long_gap_closes_in_time_independent_of_its_length():
    forecaster = WorkloadForecaster(clock=FakeClock())
    reference = HoltSeries()
    per_window = [{(f"k{i}", f"r{i % 7}"): (1 + (i + w) % 5, 0.1) for i in range(200)}
                  for w in range(10)]
    _feed_windows(forecaster, per_window)
    for window in per_window:
        reference.update(float(sum(count for count, _ in window.values())))
    started = time.perf_counter()
    assert forecaster.advance(10.0 + 1_000_000) == 1_000_000
    assert time.perf_counter() - started < 0.5     # window by window: minutes
    assert forecaster.windows_closed_ == 1_000_010
    reference.update_zeros(1_000_000)
    # The total's state matches the scalar closed form, and it has decayed to nothing.
    assert forecaster.forecast(1, by="total", now=1_000_010.0)[""]["rate_tps"] == pytest.approx(
        reference.forecast(1), abs=1e-12)
    assert forecaster.error()["total"]["n_windows"] == 9 + 1_000_000


@pytest.mark.unit
def test_a_gap_is_scored_window_by_window_like_explicit_empty_windows():
    gap = ZERO_RUN_SCORED + 50
    windows = [{("etl", "eu"): (c, 0.5)} for c in (5, 9, 14, 20, 26)]
    jumped = WorkloadForecaster(clock=FakeClock())
    _feed_windows(jumped, windows)
    jumped.advance(5.0 + gap)
    stepped = WorkloadForecaster(clock=FakeClock())
    _feed_windows(stepped, windows + [{}] * gap)
    for key in ("n_windows", "rate_mae", "work_mae", "naive_rate_mae", "rate_mape"):
        assert jumped.error()["total"][key] == pytest.approx(stepped.error()["total"][key],
                                                             rel=1e-9)


# -- parameters ------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("kwargs, name", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"alpha": float("nan")}, "alpha"),
    ({"beta": -0.1}, "beta"), ({"phi": 0.0}, "phi"), ({"phi": 1.01}, "phi"),
    ({"window_s": 0.0}, "window_s"), ({"window_s": -1.0}, "window_s"),
    ({"max_keys": 0}, "max_keys"), ({"max_regions": 1.5}, "max_regions"),
])
def test_bad_parameters_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WorkloadForecaster(**kwargs)


@pytest.mark.unit
def test_holt_series_checks_its_parameters_in_the_same_place():
    with pytest.raises(ValueError, match="alpha"):
        HoltSeries(alpha=0.0)
    with pytest.raises(ValueError, match="horizon"):
        HoltSeries().forecast(0)
    with pytest.raises(ValueError, match="value"):
        HoltSeries().update(float("inf"))


@pytest.mark.unit
def test_bad_batches_raise_naming_the_argument():
    forecaster = WorkloadForecaster(clock=FakeClock())
    with pytest.raises(ValueError, match="kinds, regions and work_s"):
        forecaster.observe(["a", "b"], ["eu"], [1.0, 1.0])
    with pytest.raises(ValueError, match="work_s"):
        forecaster.observe(["a", "b"], ["eu", "eu"], [1.0, -0.5])
    with pytest.raises(ValueError, match="work_s"):
        forecaster.observe(["a"], ["eu"], [float("nan")])
    with pytest.raises(ValueError, match="now"):
        forecaster.observe(["a"], ["eu"], [1.0], now=float("inf"))
    assert forecaster.n_arrivals_ == 0                          # nothing half-counted


@pytest.mark.unit
def test_bad_forecast_arguments_raise_naming_the_argument():
    forecaster = WorkloadForecaster(clock=FakeClock())
    with pytest.raises(ValueError, match="horizon_windows"):
        forecaster.forecast(0)
    with pytest.raises(ValueError, match="by"):
        forecaster.forecast(1, by="tenant")
    with pytest.raises(ValueError, match="capacity_slots"):
        forecaster.burst_ahead("eu", 0.0)


@pytest.mark.unit
def test_stats_report_counts_forecasts_and_error_without_closing_windows():
    clock = FakeClock()
    forecaster = WorkloadForecaster(clock=clock)
    _feed_windows(forecaster, [{("etl", "eu"): (3, 1.0), ("logs", "us"): (1, 2.0)}] * 4)
    clock.now = 100.0
    stats = forecaster.stats()
    assert stats["windows_closed"] == 4                       # stats read, never advance
    assert stats["keys"] == 2 and stats["regions"] == 2 and stats["arrivals"] == 16
    assert stats["forecast"]["eu"]["rate_tps"] == pytest.approx(3)
    assert stats["error"]["total"]["n_windows"] == 3


# -- real arrival processes ------------------------------------------------------------

def _assert_not_worse_than_naive(forecaster: WorkloadForecaster, min_windows: int) -> dict:
    error = forecaster.error()["total"]
    assert error["n_windows"] >= min_windows
    assert error["rate_mae"] <= NAIVE_FACTOR * error["naive_rate_mae"], error
    return error


@pytest.mark.unit
def test_real_nasa_example_rate_forecast_is_not_worse_than_naive():
    """examples/nasa-500.csv: 500 NASA iPSC/860 jobs (1993), arrivals rescaled to 60 s."""
    frame = read_trace(REPO / "examples" / "nasa-500.csv")
    forecaster = WorkloadForecaster(clock=FakeClock())
    _replay(forecaster, frame["arrival_s"], frame["kind"], [None] * len(frame),
            frame["runtime_s"] * frame["cpu"], batch_s=0.1)
    _assert_not_worse_than_naive(forecaster, min_windows=50)


@pytest.mark.unit
def test_real_nasa_log_rate_forecast_is_not_worse_than_naive():
    """The NASA iPSC/860 log (PWA), 6,000 jobs over about a month, in 10-minute windows."""
    from ray_sched.workloads import convert_swf
    frame, _ = convert_swf(_require(NASA), max_jobs=6000)
    forecaster = WorkloadForecaster(window_s=600.0, clock=FakeClock())
    _replay(forecaster, frame["arrival_s"], frame["kind"], [None] * len(frame),
            frame["runtime_s"] * frame["cpu"], batch_s=60.0)
    _assert_not_worse_than_naive(forecaster, min_windows=3000)


@pytest.mark.unit
def test_real_azure_llm_arrivals_rate_forecast_is_not_worse_than_naive():
    """Azure LLM inference requests (code and conversation services, one hour, CC-BY-4.0):
    a real, bursty arrival process at the forecaster's own time scale (1-s windows)."""
    parts = []
    for kind in ("code", "conv"):
        raw = pd.read_csv(_require(AZURE / f"AzureLLMInferenceTrace_{kind}.csv"))
        parts.append(pd.DataFrame({
            "stamp": pd.to_datetime(raw["TIMESTAMP"]), "kind": kind,
            # No service time is recorded; a token-linear model stands in for the prediction.
            "runtime_s": 0.05 + 1e-5 * raw["ContextTokens"] + 0.02 * raw["GeneratedTokens"]}))
    requests = pd.concat(parts, ignore_index=True)
    requests["arrival_s"] = (requests["stamp"] - requests["stamp"].min()).dt.total_seconds()
    requests["task_id"] = [f"r{i}" for i in range(len(requests))]
    frame = validate_frame(requests.drop(columns="stamp"), source="azure-llm")
    forecaster = WorkloadForecaster(clock=FakeClock())
    _replay(forecaster, frame["arrival_s"], frame["kind"], [None] * len(frame),
            frame["runtime_s"], batch_s=0.1)
    error = _assert_not_worse_than_naive(forecaster, min_windows=3000)
    assert error["work_mae"] <= NAIVE_FACTOR * error["naive_work_mae"], error
    assert set(forecaster.forecast(1, by="key", now=4000.0)) == {("code", ""), ("conv", "")}
