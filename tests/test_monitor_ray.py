"""The Monitor on Ray (issue 6): alerts fire on a trace that overloads one region and stay
silent on a light one; the run's time series, decision log and story; alerts and the
scheduler's own metrics over OTLP; a lost local scheduler raises the `lost` alert."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import ray

from ray_sched import Scheduler
from ray_sched.monitor.alerts import parse_rules
from ray_sched.monitor.story import task_story
from ray_sched.replay import replay
from tests.conftest import RAY_SLOTS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RULES = """\
[[rule]]
name = "eu queue growing"
metric = "queue_growth_tps"
above = 2.0
window_s = 3
region = "eu"

[[rule]]
name = "eu slow"
metric = "jct_p99_s"
above = 1.5
window_s = 5
region = "eu"

[[rule]]
name = "us queue growing"
metric = "queue_growth_tps"
above = 2.0
window_s = 3
region = "us"
"""


def two_region_trace(eu_rate_tps: float, eu_runtime_s: float, *, seconds: float = 4.0,
                     seed: int = 5) -> pd.DataFrame:
    """'us' always light (10 tasks/s of 50 ms on 4 slots); 'eu' as asked."""
    rng = np.random.default_rng(seed)
    rows = []
    for region, rate, runtime in (("us", 10.0, 0.05), ("eu", eu_rate_tps, eu_runtime_s)):
        arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
        for index, arrival in enumerate(arrivals):
            rows.append({"task_id": f"{region}-{index:04d}", "arrival_s": float(arrival),
                         "runtime_s": runtime, "region": region, "kind": f"batch-{region}",
                         "tenant": "acme", "deadline_s": 1.0})
    return pd.DataFrame(rows).sort_values("arrival_s").reset_index(drop=True)


class Collector(http.server.ThreadingHTTPServer):
    """Records every OTLP/HTTP POST: (path, body)."""

    def __init__(self):
        self.posts: list[tuple[str, bytes]] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.posts.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory, collector):
    rules = parse_rules(RULES)
    out = tmp_path_factory.mktemp("monitor")
    overloaded = replay(two_region_trace(40.0, 0.25), policy="fifo", slots=RAY_SLOTS,
                        local_schedulers=2, out=out / "overloaded", show_progress=False,
                        alerts=rules, otlp_endpoint=collector.endpoint)
    light = replay(two_region_trace(10.0, 0.05), policy="fifo", slots=RAY_SLOTS,
                   local_schedulers=2, out=out / "light", show_progress=False, alerts=rules)
    return {"overloaded": overloaded, "light": light}


def alerts_of(result) -> list[dict]:
    text = (result.out_dir / "alerts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_alerts_fire_for_the_overloaded_region_only(runs):
    fired = {a["rule"] for a in alerts_of(runs["overloaded"])}
    assert {"eu queue growing", "eu slow"} <= fired
    assert "us queue growing" not in fired
    assert runs["overloaded"].summary["alerts_fired"] == len(alerts_of(runs["overloaded"]))
    for alert in alerts_of(runs["overloaded"]):
        assert alert["value"] > alert["threshold"] and alert["scope"] == "region:eu"


def test_alerts_stay_silent_on_a_light_trace(runs):
    assert alerts_of(runs["light"]) == []
    assert runs["light"].summary["alerts_fired"] == 0
    assert runs["light"].ok


def test_the_run_writes_its_time_series_per_scope(runs):
    result = runs["overloaded"]
    series = pd.read_parquet(result.out_dir / "timeseries.parquet")
    assert set(series["scope"]) == {"cluster", "local-0-eu", "local-1-us"}
    cluster = series[(series["scope"] == "cluster") & (series["t_s"] >= 0)]
    makespan = result.summary["makespan_s"]
    assert len(cluster) >= makespan * 0.7                 # about one sample a second
    assert cluster["completed"].sum() == pytest.approx(result.summary["n_tasks"], abs=0)
    assert cluster["utilization"].between(0, 1).all()
    assert cluster["queued"].max() > 5                   # the eu overload shows
    eu = series[series["region"] == "eu"]
    us = series[series["region"] == "us"]
    assert eu["queued"].max() > us["queued"].max()


def test_the_decision_log_tells_a_tasks_story(runs):
    result = runs["overloaded"]
    decisions = pd.read_parquet(result.out_dir / "decisions.parquet")
    assert set(decisions["task_id"]) == set(result.results["task_id"])
    lines = task_story(result.out_dir, "eu-0100")
    text = "\n".join(lines)
    for words in ("task eu-0100", "region eu", "arrived", "decision: placed -> local-",
                  "started on node", "finished", "outcome: ok after 1 attempt(s)"):
        assert words in text


def test_alerts_and_own_metrics_go_out_over_otlp(runs, collector):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )
    paths = {path for path, _ in collector.posts}
    assert "/v1/logs" in paths and "/v1/metrics" in paths
    rules = set()
    for path, body in collector.posts:
        if path == "/v1/logs":
            request = ExportLogsServiceRequest.FromString(body)
            for record in request.resource_logs[0].scope_logs[0].log_records:
                attributes = {kv.key: kv.value for kv in record.attributes}
                rules.add(attributes["alert.rule"].string_value)
                assert record.severity_text == "WARN"
    assert rules == {a["rule"] for a in alerts_of(runs["overloaded"])}


def test_a_lost_local_scheduler_raises_the_lost_alert(ray_local, tmp_path):
    rules = parse_rules('[[rule]]\nname = "lost"\nmetric = "lost"\nabove = 0\nwindow_s = 60\n')
    with Scheduler("fifo", RAY_SLOTS, local_schedulers=2, alerts=rules, monitor_dir=tmp_path,
                   model_dir=None) as scheduler:
        assert scheduler.submit(pow, 2, 5).result(timeout=60) == 32
        handles = ray.get(scheduler._global.local_handles.remote())
        ray.kill(handles[1], no_restart=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not scheduler.alerts():
            time.sleep(0.2)
        fired = scheduler.alerts()
    assert [a["rule"] for a in fired] == ["lost"]
    assert json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[0])["rule"] == "lost"
