"""The Monitor actor: a thin Ray wrapper around :class:`MonitorCore`.

The global scheduler sends it, once a second, the completion records of that second and a
snapshot of every local scheduler (and the learner's recent error), plus every actor or
node it finds lost. It judges the alert rules and sends each fired alert to
``OUT/alerts.jsonl`` (appended as it fires), to the driver's console (through
:meth:`alerts_since`), and, when an OTLP endpoint is set, out as an OpenTelemetry log
record; it feeds the self-telemetry (:class:`ray_sched.monitor.telemetry.SelfTelemetry`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import ray

from ray_sched.control.priority import set_process_nice
from ray_sched.monitor import ALERTS_FILE
from ray_sched.monitor.alerts import Alert, AlertRule
from ray_sched.monitor.core import MonitorCore
from ray_sched.monitor.cpu import process_cpu_s

log = logging.getLogger(__name__)

#: Seconds an alert's OTLP log record may take to send before it is given up.
ALERT_SEND_TIMEOUT_S = 5.0


@ray.remote(num_cpus=0, max_restarts=-1)
class MonitorActor:
    """Args:
        rules: alert rules as dicts (:meth:`AlertRule.as_dict`).
        out_dir: where ``alerts.jsonl`` goes (None: no file).
        otlp_endpoint: an OTLP/HTTP base URL for alert log records and self-telemetry.
        epoch: wall time that ``time_s`` counts from (:meth:`set_epoch` changes it).
    """

    def __init__(self, rules: list[dict] | None = None, out_dir: str | None = None,
                 otlp_endpoint: str | None = None, epoch: float | None = None,
                 telemetry: bool = True, control_nice: int = 0):
        self.priority = set_process_nice(control_nice)
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not ray.get_runtime_context().was_current_actor_reconstructed:
                (self.out_dir / ALERTS_FILE).write_text("")  # this run's alerts only
        self.otlp_endpoint = otlp_endpoint
        self.core = MonitorCore([AlertRule(**r) for r in rules or []],
                                on_alert=self._on_alert,
                                epoch=time.time() if epoch is None else epoch)
        self.telemetry = None
        if telemetry:
            from ray_sched.monitor.telemetry import SelfTelemetry
            self.telemetry = SelfTelemetry(otlp_endpoint, ray_metrics=True)
        self._senders: list[threading.Thread] = []
        self._decisions_seen = 0

    def set_epoch(self, epoch: float) -> None:
        self.core.epoch = epoch

    def cpu_seconds(self) -> float:
        """This actor's process CPU seconds so far (the control plane's cost)."""
        return process_cpu_s()

    def ping(self) -> bool:
        return True

    def update(self, now: float, records: list[tuple], locals_: list[dict],
               learner_mae_log: float | None, decisions: int) -> None:
        """One second's worth: completion records, then the state sample (alerts judged)."""
        self.core.record(records)
        if self.telemetry is not None and records:
            jct = np.array([r[1] for r in records], dtype=float)
            ok = np.array([r[2] for r in records], dtype=bool)
            error = np.array([r[7] for r in records], dtype=float)
            self.telemetry.completions(jct[ok], ok=int(ok.sum()), failed=int((~ok).sum()),
                                       prediction_error_log=error[~np.isnan(error)])
        last = self.core.last_sample_wall
        self.core.sample(now, locals_, learner_mae_log=learner_mae_log)
        if self.telemetry is not None:
            interval = None if last is None else now - last
            cluster = self.core.series["cluster"]
            throughput = cluster.latest("throughput_tps")
            self.telemetry.sample(
                queue_lengths={s["name"]: int(s.get("queued", 0)) for s in locals_},
                busy_cpu={s["name"]: float(s.get("busy_cpu", 0.0)) for s in locals_},
                tasks_per_s=0.0 if throughput is None or np.isnan(throughput) else throughput,
                decisions_per_s=(decisions - self._decisions_seen) / interval
                if interval else 0.0,
                learner_mae_log=learner_mae_log)
        self._decisions_seen = decisions

    def lost(self, now: float, what: str, name: str, detail: str = "") -> None:
        self.core.lost(now, what, name, detail)

    def alerts_since(self, index: int) -> list[dict]:
        """Fired alerts from the ``index``-th on (the driver polls this to print them)."""
        return [a.as_dict() for a in self.core.alerts.fired[index:]]

    def totals(self) -> dict:
        return self.core.totals()

    def timeseries(self):
        """Every scope's time series (a pandas frame; ``t_s`` from the epoch)."""
        return self.core.timeseries()

    def close(self) -> dict:
        """Flush the self-telemetry and the alert senders; returns :meth:`totals`."""
        for sender in self._senders:
            sender.join(timeout=ALERT_SEND_TIMEOUT_S)
        if self.telemetry is not None:
            self.telemetry.shutdown()
        return self.core.totals()

    # -- alert sinks -------------------------------------------------------------------------
    def _on_alert(self, alert: Alert) -> None:
        log.warning("ALERT %s", alert.message)
        if self.out_dir is not None:
            with open(self.out_dir / ALERTS_FILE, "a", encoding="utf-8") as sink:
                sink.write(json.dumps(alert.as_dict()) + "\n")
        if self.otlp_endpoint:
            sender = threading.Thread(target=send_alert_log, args=(self.otlp_endpoint, alert),
                                      daemon=True)
            sender.start()
            self._senders = [s for s in self._senders if s.is_alive()] + [sender]


def send_alert_log(endpoint: str, alert: Alert) -> bool:
    """POST one alert as an OTLP log record (severity WARN) to ``endpoint``/v1/logs."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN

    from ray_sched.monitor.telemetry import otlp_url
    from ray_sched.otlp.forward import key_values

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(key_values({"service.name": "ray_sched"}))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "ray_sched.monitor"
    record = scope_logs.log_records.add()
    record.time_unix_nano = int(alert.wall * 1e9)
    record.observed_time_unix_nano = time.time_ns()
    record.severity_number = SEVERITY_NUMBER_WARN
    record.severity_text = "WARN"
    record.body.string_value = alert.message
    record.attributes.extend(key_values({
        "event.name": "ray_sched.alert", "alert.rule": alert.rule,
        "alert.metric": alert.metric, "alert.value": alert.value,
        "alert.threshold": alert.threshold, "alert.op": alert.op,
        "alert.scope": alert.scope}))
    url = otlp_url(endpoint, "/v1/logs")
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=request.SerializeToString(), method="POST",
                headers={"Content-Type": "application/x-protobuf"}),
                timeout=ALERT_SEND_TIMEOUT_S):
            return True
    except (urllib.error.URLError, OSError) as error:
        log.warning("alert %r not sent to %s: %s", alert.rule, url, error)
        return False
