"""Self-telemetry: the scheduler's own metrics, sent two ways at once.

- Through the OpenTelemetry SDK to an OTLP/HTTP endpoint, when one is given (any
  Collector, or ``ray-sched serve`` itself). A private ``MeterProvider`` per instance:
  the global one is never set, so several schedulers can live in one process.
- Through ``ray.util.metrics``, so that the same numbers appear on Ray's metrics endpoint
  (Prometheus) next to Ray's own. Only inside a connected Ray process
  (``ray.is_initialized()``); elsewhere that half is skipped without a word.

=============================  =============================  ======  ==================
OpenTelemetry                  Ray (Prometheus)               unit    attributes / tags
=============================  =============================  ======  ==================
ray_sched.tasks.completed      ray_sched_tasks_completed      {task}  status: ok|failed
ray_sched.tasks.throughput     ray_sched_tasks_throughput     {task}/s
ray_sched.queue.length         ray_sched_queue_length         {task}  local
ray_sched.slots.busy           ray_sched_slots_busy           {cpu}   local
ray_sched.jct                  ray_sched_jct_seconds          s
ray_sched.prediction.error     ray_sched_prediction_error     1
ray_sched.decisions.rate       ray_sched_decisions_rate       {decision}/s
ray_sched.learner.mae_log      ray_sched_learner_mae_log      1
=============================  =============================  ======  ==================

The OTel gauges are observable: the exporter reads the latest :meth:`SelfTelemetry.sample`
when it collects, so a sample costs one attribute store, and a local scheduler that is
gone from the latest sample stops being reported instead of repeating its last value.

An endpoint that is down never raises into the caller: the SDK retries within
``EXPORT_TIMEOUT_S`` on its own thread, its log lines are held back, and one warning per
outage is logged here (with the SDK's reason), one info line when exports succeed again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import ray
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from ray_sched.errors import ConfigError
from ray_sched.params import check_range

logger = logging.getLogger(__name__)

#: The OTLP/HTTP path of metrics, appended to a base URL.
METRICS_PATH = "/v1/metrics"
#: Seconds one export may take, SDK retries included: short, so that an endpoint that is
#: down delays only the exporter's own thread, and shutdown by at most about this much.
EXPORT_TIMEOUT_S = 5.0
#: JCT buckets (s): 1-2-5 steps from 1 ms to 10 min, the range of tasks we schedule.
JCT_BOUNDARIES_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: |log(predicted / measured)| buckets: 0.1 is a 10 % miss, 0.69 a factor 2, 2.3 a factor 10.
PREDICTION_ERROR_BOUNDARIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0,
                               3.0, 5.0)
#: Most values one call observes into a Ray histogram (Ray observes one value per Python
#: call, ~10 us each). Larger batches are thinned to this many evenly spaced order
#: statistics, which keeps the distribution's shape but not its count: the count is in
#: ``ray_sched_tasks_completed``. The OTel histograms record every value (~5 us each).
MAX_RAY_OBSERVATIONS_PER_CALL = 1_000
#: Loggers through which the OTLP/HTTP metric exporter reports failed exports: 1.45 logs
#: through the first; the others are its helpers' own, in case a version uses them.
_SDK_EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                       "opentelemetry.exporter.otlp.proto.http._common",
                       "opentelemetry.exporter.otlp.common.http")

_OK = {"status": "ok"}
_FAILED = {"status": "failed"}


class SelfTelemetry:
    """The scheduler's own metrics, to an OTLP/HTTP endpoint and to Ray's metrics.

    Args:
        endpoint: OTLP/HTTP base URL such as ``http://127.0.0.1:4318`` (``/v1/metrics`` is
            appended unless the URL already ends with it), or None for no OTLP export.
        ray_metrics: also record through ``ray.util.metrics`` when Ray is initialized.
        export_interval_s: seconds between OTLP exports (> 0).
        service_name: the ``service.name`` resource attribute.
        headers: HTTP headers of every export (an auth token, say).
        resource_attributes: more resource attributes (``service.instance.id`` tells
            several schedulers of one service apart); ``service_name`` wins over a
            ``service.name`` here.

    Raises:
        ConfigError: an endpoint that is not an http(s) URL with a host, a non-positive
            interval or an empty service name; the message quotes the value.

    Example:
        >>> telemetry = SelfTelemetry("http://127.0.0.1:4318", ray_metrics=False)
        >>> telemetry.completions([0.5, 1.2], ok=2, failed=0)
        >>> telemetry.shutdown()
    """

    def __init__(self, endpoint: str | None = None, *, ray_metrics: bool = True,
                 export_interval_s: float = 1.0, service_name: str = "ray_sched",
                 headers: dict[str, str] | None = None, resource_attributes: dict | None = None):
        try:
            check_range("export_interval_s", export_interval_s, 0, low_open=True)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not isinstance(service_name, str) or not service_name:
            raise ConfigError(f"service_name must be a non-empty string, got {service_name!r}")
        self.endpoint = endpoint
        self.ray_metrics = ray_metrics
        self.export_interval_s = export_interval_s
        self.service_name = service_name
        self.headers = headers
        self.resource_attributes = resource_attributes
        self.metrics_url_ = None if endpoint is None else metrics_url(endpoint)
        self._latest = _LatestSample()
        self._ray: _RayMetrics | None = None
        self._otel: _OtelMetrics | None = None
        self._provider: MeterProvider | None = None
        self._finalizer = None
        self._exporter: _QuietExporter | None = None
        self._closed = False
        if self.metrics_url_ is not None:
            self._provider, self._otel = self._start_otel()
            # Callable once: shutdown() and garbage collection or exit share it.
            self._finalizer = weakref.finalize(self, _shut_down, self._provider)

    def _start_otel(self) -> tuple[MeterProvider, _OtelMetrics]:
        _install_muffle()
        self._exporter = _QuietExporter(
            OTLPMetricExporter(endpoint=self.metrics_url_, headers=self.headers,
                               timeout=EXPORT_TIMEOUT_S),
            self.metrics_url_)
        reader = PeriodicExportingMetricReader(
            self._exporter, export_interval_millis=self.export_interval_s * 1000,
            export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
        attributes = {**(self.resource_attributes or {}), "service.name": self.service_name}
        provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create(attributes),
            shutdown_on_exit=False,  # the finalizer does it, once, without keeping us alive
            views=[View(instrument_name="ray_sched.jct",
                        aggregation=ExplicitBucketHistogramAggregation(JCT_BOUNDARIES_S)),
                   View(instrument_name="ray_sched.prediction.error",
                        aggregation=ExplicitBucketHistogramAggregation(
                            PREDICTION_ERROR_BOUNDARIES))])
        return provider, _OtelMetrics(provider, self._latest)

    def completions(self, jct_s, *, ok: int, failed: int, prediction_error_log=None) -> None:
        """Record a batch of completed tasks.

        Args:
            jct_s: array-like of shape (n_ok,), seconds: job completion times of the ok
                tasks. Non-finite and negative values are dropped.
            ok: tasks that finished ok (>= 0).
            failed: tasks that failed (>= 0).
            prediction_error_log: array-like of shape (n_predicted,), ``|log(predicted_s)
                - log(measured_s)|`` of the tasks that had a prediction, or None.

        Raises:
            ConfigError: a negative or non-integer count.
        """
        for name, count in (("ok", ok), ("failed", failed)):
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {count!r}")
        jct = _clean(jct_s)
        errors = _clean(prediction_error_log)
        if self._otel is not None:
            self._otel.completions(jct, int(ok), int(failed), errors)
        if ray_metrics := self._ray_metrics():
            ray_metrics.completions(jct, int(ok), int(failed), errors)

    def sample(self, *, queue_lengths: dict[str, int], busy_cpu: dict[str, float],
               tasks_per_s: float, decisions_per_s: float,
               learner_mae_log: float | None) -> None:
        """Record the monitor's once-a-second state; the gauges take these latest values.

        Args:
            queue_lengths: local scheduler name -> tasks queued there.
            busy_cpu: local scheduler name -> CPUs busy running tasks.
            tasks_per_s: completions per second, over the monitor's window.
            decisions_per_s: placement and ordering decisions per second.
            learner_mae_log: the learner's mean |log error|, or None before it has one.
        """
        latest = Sample(queue_lengths={str(k): int(v) for k, v in queue_lengths.items()},
                        busy_cpu={str(k): float(v) for k, v in busy_cpu.items()},
                        tasks_per_s=float(tasks_per_s), decisions_per_s=float(decisions_per_s),
                        learner_mae_log=None if learner_mae_log is None
                        else float(learner_mae_log))
        self._latest.value = latest  # one reference swap: the exporter thread reads it whole
        if ray_metrics := self._ray_metrics():
            ray_metrics.sample(latest)

    def shutdown(self) -> None:
        """Export what is recorded, stop the exporter; later calls record nothing. Idempotent.

        The reader's shutdown makes one last collection and export (every SDK version
        has), which is the flush: a force_flush first would export everything twice.
        Takes at most about ``2 * EXPORT_TIMEOUT_S`` when the endpoint is down.
        """
        self._closed = True
        self._otel = self._ray = None
        if self._finalizer is not None:
            self._finalizer()

    @property
    def export_failures(self) -> int:
        """OTLP exports failed in a row (0 while they succeed, and without an endpoint)."""
        return 0 if self._exporter is None else self._exporter.failures_

    @property
    def ray_metric_names(self) -> tuple[str, ...]:
        """Names of the ``ray.util.metrics`` recorded into (none before a call inside Ray)."""
        if self._ray is None:
            return ()
        return tuple(sorted(metric.info["name"] for metric in vars(self._ray).values()))

    def _ray_metrics(self) -> _RayMetrics | None:
        if not self.ray_metrics or self._closed or not ray.is_initialized():
            return None
        if self._ray is None:
            self._ray = _RayMetrics()
        return self._ray


def otlp_url(endpoint: str, path: str) -> str:
    """The OTLP/HTTP URL of one signal (``path``: ``/v1/metrics``, ``/v1/logs``) from a base
    URL, or from a URL that already ends in a signal's path (replaced by ``path``).

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    try:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        if ok:
            _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"endpoint must be an http(s) URL with a host, such as "
                          f"http://127.0.0.1:4318, got {endpoint!r}")
    url = endpoint.rstrip("/")
    for known in (METRICS_PATH, "/v1/logs", "/v1/traces"):
        if url.endswith(known):
            url = url[:-len(known)]
            break
    return url + path


def metrics_url(endpoint: str) -> str:
    """The OTLP/HTTP metrics URL of ``endpoint`` (see :func:`otlp_url`)."""
    return otlp_url(endpoint, METRICS_PATH)


@dataclass(frozen=True)
class Sample:
    """One :meth:`SelfTelemetry.sample`, as the gauges report it."""

    queue_lengths: dict[str, int] = field(default_factory=dict)
    busy_cpu: dict[str, float] = field(default_factory=dict)
    tasks_per_s: float = 0.0
    decisions_per_s: float = 0.0
    learner_mae_log: float | None = None


class _LatestSample:
    """The latest Sample, shared by the caller and the observable gauges' callbacks.

    The callbacks hold this, not the SelfTelemetry, so that a SelfTelemetry nobody holds
    can be collected (and its finalizer shut the provider down).
    """

    def __init__(self):
        self.value: Sample | None = None

    def per_local(self, name: str):
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sample = self.value
            if sample is None:
                return []
            return [Observation(v, {"local": k}) for k, v in getattr(sample, name).items()]
        return observe

    def scalar(self, name: str):
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sample = self.value
            value = None if sample is None else getattr(sample, name)
            return [] if value is None else [Observation(value)]
        return observe


class _OtelMetrics:
    """The OpenTelemetry instruments of one MeterProvider."""

    def __init__(self, provider: MeterProvider, latest: _LatestSample):
        meter = provider.get_meter("ray_sched.monitor")
        self.completed = meter.create_counter(
            "ray_sched.tasks.completed", unit="{task}", description="tasks completed, by status")
        self.jct = meter.create_histogram(
            "ray_sched.jct", unit="s", description="job completion time of ok tasks")
        self.prediction_error = meter.create_histogram(
            "ray_sched.prediction.error", unit="1",
            description="|log(predicted runtime) - log(measured runtime)|")
        meter.create_observable_gauge(
            "ray_sched.tasks.throughput", [latest.scalar("tasks_per_s")], unit="{task}/s",
            description="tasks completed per second")
        meter.create_observable_gauge(
            "ray_sched.queue.length", [latest.per_local("queue_lengths")], unit="{task}",
            description="tasks queued, per local scheduler")
        meter.create_observable_gauge(
            "ray_sched.slots.busy", [latest.per_local("busy_cpu")], unit="{cpu}",
            description="CPUs busy running tasks, per local scheduler")
        meter.create_observable_gauge(
            "ray_sched.decisions.rate", [latest.scalar("decisions_per_s")],
            unit="{decision}/s", description="scheduling decisions per second")
        meter.create_observable_gauge(
            "ray_sched.learner.mae_log", [latest.scalar("learner_mae_log")], unit="1",
            description="the learner's mean |log error| of runtime predictions")

    def completions(self, jct: np.ndarray, ok: int, failed: int, errors: np.ndarray) -> None:
        self.completed.add(ok, _OK)  # a 0 too: the series exists from the first batch
        self.completed.add(failed, _FAILED)
        record = self.jct.record
        for value in jct.tolist():
            record(value)
        record = self.prediction_error.record
        for value in errors.tolist():
            record(value)


class _RayMetrics:
    """The ``ray.util.metrics`` of this process, created at the first call inside Ray."""

    def __init__(self):
        from ray.util import metrics

        self.completed = metrics.Counter(
            "ray_sched_tasks_completed", "tasks completed, by status", tag_keys=("status",))
        self.jct = metrics.Histogram(
            "ray_sched_jct_seconds", "job completion time of ok tasks (s)",
            boundaries=list(JCT_BOUNDARIES_S))
        self.prediction_error = metrics.Histogram(
            "ray_sched_prediction_error", "|log(predicted runtime) - log(measured runtime)|",
            boundaries=list(PREDICTION_ERROR_BOUNDARIES))
        self.throughput = metrics.Gauge(
            "ray_sched_tasks_throughput", "tasks completed per second")
        self.queue_length = metrics.Gauge(
            "ray_sched_queue_length", "tasks queued, per local scheduler", tag_keys=("local",))
        self.slots_busy = metrics.Gauge(
            "ray_sched_slots_busy", "CPUs busy running tasks, per local scheduler",
            tag_keys=("local",))
        self.decisions_rate = metrics.Gauge(
            "ray_sched_decisions_rate", "scheduling decisions per second")
        self.learner_mae_log = metrics.Gauge(
            "ray_sched_learner_mae_log", "the learner's mean |log error| of runtime predictions")

    def completions(self, jct: np.ndarray, ok: int, failed: int, errors: np.ndarray) -> None:
        if ok:  # Ray's counters refuse an increment of 0
            self.completed.inc(ok, _OK)
        if failed:
            self.completed.inc(failed, _FAILED)
        for histogram, values in ((self.jct, jct), (self.prediction_error, errors)):
            observe = histogram.observe
            for value in _thin(values, MAX_RAY_OBSERVATIONS_PER_CALL).tolist():
                observe(value)

    def sample(self, sample: Sample) -> None:
        self.throughput.set(sample.tasks_per_s)
        self.decisions_rate.set(sample.decisions_per_s)
        self.learner_mae_log.set(sample.learner_mae_log)  # None: a no-op
        for local, length in sample.queue_lengths.items():
            self.queue_length.set(length, {"local": local})
        for local, busy in sample.busy_cpu.items():
            self.slots_busy.set(busy, {"local": local})


def _clean(values) -> np.ndarray:
    """float64 array of the finite, non-negative values (empty for None)."""
    if values is None:
        return np.empty(0)
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array) & (array >= 0)]


def _thin(values: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced order statistics of ``values`` (all, if fewer)."""
    if len(values) <= limit:
        return values
    positions = np.linspace(0, len(values) - 1, limit).round().astype(np.int64)
    return np.sort(values)[positions]


def _shut_down(provider: MeterProvider) -> None:
    provider.shutdown(timeout_millis=2 * EXPORT_TIMEOUT_S * 1000)


class _Muffle(logging.Filter):
    """Holds back the SDK's export log lines while this thread is inside a _QuietExporter,
    keeping the first (it names the cause) so that our single warning can say it."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.local, "active", False):
            return True
        if self.local.first is None:
            self.local.first = record.getMessage()
        return False


_MUFFLE = _Muffle()
_MUFFLE_LOCK = threading.Lock()


def _install_muffle() -> None:
    with _MUFFLE_LOCK:
        for name in _SDK_EXPORT_LOGGERS:
            if _MUFFLE not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_MUFFLE)


class _QuietExporter(MetricExporter):
    """Delegates to the OTLP exporter; never raises, and logs one warning per outage."""

    def __init__(self, exporter: OTLPMetricExporter, url: str):
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self.exporter = exporter
        self.url = url
        self.failing_ = False
        self.failures_ = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs) -> MetricExportResult:
        _MUFFLE.local.active, _MUFFLE.local.first = True, None
        try:
            result = self.exporter.export(metrics_data, timeout_millis=timeout_millis)
        except Exception as error:  # an SDK bug must not stop the exporter's thread
            _MUFFLE.local.first = _MUFFLE.local.first or repr(error)
            result = MetricExportResult.FAILURE
        finally:
            _MUFFLE.local.active = False
        if result is MetricExportResult.SUCCESS:
            if self.failing_:
                logger.info("self-telemetry: exports to %s succeed again after %d failures",
                            self.url, self.failures_)
            self.failing_, self.failures_ = False, 0
        else:
            self.failures_ += 1
            if not self.failing_:
                logger.warning("self-telemetry: export to %s failed (%s); not logged again "
                               "until one succeeds", self.url, _MUFFLE.local.first or "no reason")
            self.failing_ = True
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        try:
            self.exporter.shutdown()
        except Exception:  # shutting down a broken exporter is best effort
            logger.debug("self-telemetry: exporter shutdown failed", exc_info=True)
