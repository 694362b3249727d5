"""The monitor's logic (issue 6): alert rules from TOML, windowed metrics on a fake clock,
rising-edge firing, bounded memory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ray_sched.errors import AlertRulesError
from ray_sched.monitor.alerts import AlertRule, load_rules, parse_rules
from ray_sched.monitor.core import SERIES_COLUMNS, MonitorCore, Series
from ray_sched.monitor.energy import EnergyModel

pytestmark = pytest.mark.unit

GOOD_RULES = """\
# a comment
[[rule]]
name = "eu misses"
metric = "deadline_miss_rate"
above = 0.2
window_s = 5
region = "eu"

[[rule]]
name = "fast enough"
metric = "throughput_tps"
"""


def rule(metric, threshold, *, op="above", window_s=10.0, region=None, min_tasks=5):
    return AlertRule(f"r-{metric}", metric, op, threshold, window_s, region, min_tasks)


def record(finish, jct=1.0, *, ok=True, missed=math.nan, region="", error=math.nan):
    return finish, jct, ok, missed, region, "tenant-a", "kind-a", error


def local(name, queued, *, region="", running=0, busy=0.0, slots=4.0):
    return {"name": name, "region": region, "queued": queued, "running": running,
            "busy_cpu": busy, "slots": slots, "backlog_predicted_s": 0.5 * queued,
            "backlog_actual_s": 0.4 * queued}


# -- rules files ---------------------------------------------------------------------------
def test_a_valid_rules_file_gives_its_rules():
    rules = parse_rules(GOOD_RULES.replace('metric = "throughput_tps"',
                                           'metric = "jct_p99_s"\nbelow = 3'))
    assert [(r.name, r.metric, r.op, r.threshold, r.window_s, r.region) for r in rules] == [
        ("eu misses", "deadline_miss_rate", "above", 0.2, 5.0, "eu"),
        ("fast enough", "jct_p99_s", "below", 3.0, 10.0, None)]


@pytest.mark.parametrize("text, line, words", [
    ("[[rule]\nname = 'a'", 1, "not valid TOML"),
    (GOOD_RULES, 11, "metric 'throughput_tps' is not one of"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\n", 1, "exactly one threshold"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 1\nbelow = 2\n", 5, "both given"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 'x'\n", 4, "above must be a number"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 1\nwindow_s = 0\n", 5, "window_s must be"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 1\nmin_tasks = 0\n", 5, "min_tasks"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 1\ntreshold = 2\n", 5, "unknown key"),
    ("[[rule]]\nmetric = 'lost'\nabove = 1\n", 1, "needs a name"),
    ("[[rule]]\nname = 'a'\nmetric = 'lost'\nabove = 1\n\n[[rule]]\nname = 'a'\n"
     "metric = 'lost'\nabove = 2\n", 7, "duplicate rule name 'a'"),
    ("threshold = 3\n", 1, "unknown top-level key"),
])
def test_a_malformed_rules_file_is_refused_with_its_line_and_reason(text, line, words):
    with pytest.raises(AlertRulesError) as caught:
        parse_rules(text, path="rules.toml")
    assert caught.value.line == line
    assert words in str(caught.value) and str(caught.value).startswith(f"rules.toml, line {line}")


def test_a_missing_rules_file_is_named(tmp_path):
    with pytest.raises(AlertRulesError, match="missing.toml: cannot read"):
        load_rules(tmp_path / "missing.toml")


# -- windowed metrics ------------------------------------------------------------------------
def test_jct_p99_needs_min_tasks_and_sees_only_its_window():
    core = MonitorCore()
    core.record([record(100.0 + i * 0.1, jct=1.0) for i in range(4)])
    p99 = rule("jct_p99_s", 2.0, window_s=5.0)
    assert core.window_value(p99, 101.0) is None          # 4 tasks < min_tasks
    core.record([record(101.0, jct=9.0)])
    assert core.window_value(p99, 101.0) == pytest.approx(np.percentile([1] * 4 + [9], 99))
    assert core.window_value(p99, 120.0) is None          # all outside the window


def test_deadline_miss_rate_counts_only_tasks_with_deadlines_in_the_region():
    core = MonitorCore()
    core.record([record(10.0, missed=1.0, region="eu")] * 3
                + [record(10.0, missed=0.0, region="eu")] * 3
                + [record(10.0, region="eu")] * 10            # no deadline
                + [record(10.0, missed=1.0, region="us")] * 6)
    assert core.window_value(rule("deadline_miss_rate", 0.1, region="eu"), 11.0) == 0.5
    assert core.window_value(rule("deadline_miss_rate", 0.1), 11.0) == pytest.approx(9 / 12)


def test_failure_rate_and_prediction_error():
    core = MonitorCore()
    core.record([record(5.0, ok=False)] * 2 + [record(5.0, error=0.5)] * 8)
    assert core.window_value(rule("failure_rate", 0.1), 6.0) == pytest.approx(0.2)
    assert core.window_value(rule("prediction_error_log", 0.1), 6.0) == pytest.approx(0.5)


def test_prediction_error_jump_compares_the_window_with_the_windows_before():
    core = MonitorCore([rule("prediction_error_jump", 2.0, window_s=10.0)])
    core.record([record(float(t), error=0.2) for t in range(0, 40)])
    core.record([record(float(t), error=1.0) for t in range(41, 50)])
    assert core.window_value(core.alerts.rules[0], 50.0) == pytest.approx(1.0 / 0.2)


def test_queue_length_growth_and_utilization_from_samples():
    core = MonitorCore()
    for second in range(6):
        core.sample(100.0 + second, [local("a", 3 * second, region="eu", busy=2.0),
                                     local("b", 1, region="us", busy=4.0)])
    assert core.window_value(rule("queue_length", 0, region="eu"), 105.0) == 15
    assert core.window_value(rule("queue_growth_tps", 0, region="eu", window_s=5.5),
                             105.0) == pytest.approx(3.0)
    assert core.window_value(rule("queue_growth_tps", 0, region="us", window_s=5.5),
                             105.0) == pytest.approx(0.0, abs=1e-9)
    assert core.window_value(rule("utilization", 0), 105.0) == pytest.approx(0.75)
    assert core.window_value(rule("utilization", 0, region="us"), 105.0) == pytest.approx(1.0)


def test_lost_counts_losses_within_the_window():
    core = MonitorCore()
    assert core.window_value(rule("lost", 0), 10.0) == 0.0
    core.lost(10.0, "local_scheduler", "local-1")
    assert core.window_value(rule("lost", 0), 15.0) == 1.0
    assert core.window_value(rule("lost", 0, window_s=3.0), 15.0) == 0.0


# -- firing ----------------------------------------------------------------------------------
def test_an_alert_fires_once_on_the_rising_edge_and_rearms_when_clear():
    fired = []
    core = MonitorCore([rule("queue_length", 5)], on_alert=fired.append, epoch=100.0)
    for second, queued in enumerate([0, 8, 9, 12, 2, 7]):
        core.sample(100.0 + second, [local("a", queued)])
    assert [a.time_s for a in fired] == [1.0, 5.0]
    assert fired[0].value == 8 and fired[0].threshold == 5 and fired[0].scope == "cluster"
    assert "queue_length 8 > 5" in fired[0].message
    assert core.totals()["firing"] == ["r-queue_length"]


def test_a_below_rule_fires_when_the_value_drops():
    core = MonitorCore([rule("utilization", 0.5, op="below", window_s=1.0)])
    assert core.sample(1.0, [local("a", 0, busy=4.0)]) == []
    assert len(core.sample(2.0, [local("a", 0, busy=1.0)])) == 1


def test_a_rule_with_too_little_data_stays_silent():
    core = MonitorCore([rule("jct_p99_s", 0.0)])
    core.record([record(1.0, jct=100.0)])
    assert core.sample(1.5, [local("a", 0)]) == []


# -- bounded memory ----------------------------------------------------------------------------
def test_a_series_stays_bounded_keeps_recent_points_and_the_completed_sum():
    series = Series("cluster", "", max_points=100)
    for second in range(10_000):
        series.append(float(second), (1.0, 0, 0, 1, 0, 0, 0, 1.0, 0, 0, 0))
    assert len(series.rows) <= 100
    assert series.times[-1] == 9999.0 and series.times[-2] == 9998.0
    assert sum(row[7] for row in series.rows) == pytest.approx(10_000)
    assert series.times == sorted(series.times)


def test_old_completion_records_are_dropped():
    core = MonitorCore([rule("jct_p99_s", 1.0, window_s=2.0)])
    for second in range(1000):
        core.record([record(float(second))])
    assert sum(len(b.finish) for b in core._batches) <= 2 * 10 * 6 + 1


def test_timeseries_has_every_scope_with_times_from_the_epoch():
    core = MonitorCore(epoch=50.0)
    core.record([record(50.5)] * 4)
    core.sample(51.0, [local("a", 2, region="eu", busy=2.0), local("b", 0, busy=4.0)])
    core.sample(52.0, [local("a", 0, region="eu"), local("b", 0)])
    frame = core.timeseries()
    assert sorted(frame["scope"].unique()) == ["a", "b", "cluster"]
    cluster = frame[frame["scope"] == "cluster"]
    assert cluster["t_s"].tolist() == [1.0, 2.0]
    assert cluster["completed"].tolist() == [4, 0]
    assert cluster["utilization"].iloc[0] == pytest.approx(0.75)
    assert frame.loc[frame["scope"] == "a", "region"].tolist() == ["eu", "eu"]
    assert cluster["backlog_predicted_s"].tolist() == [1.0, 0.0]
    assert cluster["backlog_actual_s"].tolist() == pytest.approx([0.8, 0.0])
    assert list(frame.columns) == list(SERIES_COLUMNS)


# -- energy ----------------------------------------------------------------------------------
def test_energy_is_busy_core_seconds_times_busy_watts_plus_idle_nodes():
    import pandas as pd
    results = pd.DataFrame({"status": ["ok", "ok", "failed"], "arrival_s": [0.0, 1.0, 2.0],
                            "finish_s": [2.0, 10.0, np.nan], "measured_runtime_s": [2.0, 4.0,
                                                                                   np.nan],
                            "cpu": [1.0, 2.0, 1.0], "node": ["n1", "n2", ""]})
    energy = EnergyModel(busy_core_w=3.0, idle_node_w=10.0).estimate(results)
    assert energy["busy_core_s"] == 10.0 and energy["nodes"] == 2 and energy["makespan_s"] == 10
    assert energy["energy_j"] == pytest.approx(10 * 3.0 + 2 * 10 * 10.0)
    assert energy["energy_j_per_task"] == pytest.approx(230 / 2)


def test_energy_model_refuses_negative_watts():
    from ray_sched.errors import ConfigError
    with pytest.raises(ConfigError, match="busy_core_w must be a finite number >= 0"):
        EnergyModel(busy_core_w=-1)


def test_an_endpoint_given_with_a_signal_path_serves_every_signal():
    from ray_sched.monitor.telemetry import metrics_url, otlp_url
    assert otlp_url("http://h:4318/v1/metrics", "/v1/logs") == "http://h:4318/v1/logs"
    assert otlp_url("http://h:4318/", "/v1/logs") == "http://h:4318/v1/logs"
    assert metrics_url("http://h:4318/v1/metrics") == "http://h:4318/v1/metrics"
