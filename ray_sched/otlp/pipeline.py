"""The OTLP processing pipeline: decode, assemble, tail-sample, span metrics, export.

Stages and where they run::

    receiver (HTTP / gRPC, in the serve process)
      │ admission: bounded pending requests and bytes, memory limit  → 429 / 503
      ▼
    Decoder actors (a small pool)       decompress + decode + validate → 200 / 400 / 413 / 415
      │ + span-tree assembly; columns stay in Ray's object store; the client is answered
      ▼
    Scheduler task, kind "otlp.<signal>", features from the payload
      │ GlobalScheduler asks the Learner for its processing time, places it
      ▼
    OtlpProcessor (stage actors, one per slot of each LocalScheduler)
      │ tail sampling → Parquet part files (spans/, metrics/, logs/), forwarding
      ▼ running aggregates, shipped every second
    Aggregator actor                    span_metrics/, metric_series/, log_counts/ per window

Everything answered with 200 is tracked until a processor holds its rows;
:meth:`OtlpPipeline.drain` waits for all of it, then closes the processors and the aggregator
(each writes what it holds), so that a SIGTERM loses nothing already accepted. A processing
task that fails for a system reason (a lost worker) is submitted again, up to
``max_attempts`` times; a processor that dies takes the rows it buffered (at most
``flush_interval_s`` worth) with it: at-least-once up to that buffer, as a Collector's
in-memory queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import ray

from ray_sched.errors import (
    ConfigError,
    InvalidPayloadError,
    OtlpError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from ray_sched.otlp.decode import DEFAULT_MAX_BODY_BYTES, SIGNALS, decode_request, decompress
from ray_sched.otlp.export import DEFAULT_FLUSH_INTERVAL_S, ParquetSink
from ray_sched.otlp.forward import Forwarder
from ray_sched.otlp.processing import (
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
    Columns,
    to_table,
)
from ray_sched.otlp.spantree import DEFAULT_MAX_DEPTH, assemble
from ray_sched.params import check_range

log = logging.getLogger(__name__)

#: The stage name of the processors inside the Scheduler.
STAGE = "otlp"
#: Content types the receiver speaks (parameters such as charset are ignored).
CONTENT_TYPES = ("application/x-protobuf", "application/json")
#: What a refused request is told to wait before retrying.
RETRY_AFTER_S = 1.0
#: Decoded requests are submitted to the scheduler together when they finish decoding
#: within this long of each other (one call and one prediction for the lot).
SUBMIT_BATCH_S = 0.002
#: Memory use is sampled at most this often (psutil costs ~20 µs; requests come faster).
MEMORY_CHECK_EVERY_S = 0.1

def _add_counts(counts: list[dict]) -> dict:
    """Sum per-table row counts (each stage reports its own)."""
    total: dict[str, int] = {}
    for one in counts:
        for name, rows in (one or {}).items():
            total[name] = total.get(name, 0) + rows
    return total


_ERRORS = {cls.__name__: cls for cls in
           (InvalidPayloadError, PayloadTooLargeError, UnsupportedMediaTypeError)}


@dataclasses.dataclass
class PipelineConfig:
    """Settings of :class:`OtlpPipeline` (the ``ray-sched serve`` flags of the same names).

    Args:
        export_dir: where the Parquet tables go (``spans/``, ``metrics/``, ``logs/``,
            ``span_metrics/``, ``metric_series/``, ``log_counts/``).
        policy: the scheduling policy of the processing tasks.
        slots: processing slots in all (default: the cluster's CPUs).
        address: an existing Ray cluster; default an embedded one.
        decoders: decoder actors.
        max_body_bytes: largest body accepted, after decompression (413 above).
        max_pending_requests, max_pending_bytes: accepted but not yet exported; past either
            a request is refused with 429 and Retry-After (the bounded queue).
        memory_limit: share of the machine's memory in use above which requests are refused
            with 503 and Retry-After, before memory runs out.
        sample_probability: share of the traces neither erroneous nor slow that are kept.
        slow_quantile: a trace slower than this running quantile of its root operation's
            durations is kept.
        max_depth: span trees deeper than this are flagged (``trace_depth_exceeded``).
        flush_interval_s: the longest an accepted row waits before it is in a Parquet file.
        metrics_window_s: the window of the derived aggregates (span metrics and others).
        max_attempts: runs of a processing task before its batch is declared lost.
        forward_endpoint: an OTLP/HTTP traces URL the kept traces are also sent to.
        forward_headers: HTTP headers of those requests (e.g. authorization).
        model_dir, model, fresh: the learner's checkpoints, as for ``ray-sched replay``.
        alerts: alert rules on the processing tasks (a TOML path or AlertRule list); fired
            alerts go to the console and ``export_dir/alerts.jsonl``.
        otlp_endpoint: where the scheduler's own metrics and alert log records go; may be
            this very receiver (``http://127.0.0.1:4318``).
    """

    export_dir: str
    policy: str = "ml"
    slots: int | None = None
    address: str | None = None
    local_schedulers: int | None = None
    decoders: int = 2
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pending_requests: int = 1024
    max_pending_bytes: int = 512 * 1024 * 1024
    memory_limit: float = 0.9
    sample_probability: float = 0.1
    slow_quantile: float = 0.95
    max_depth: int = DEFAULT_MAX_DEPTH
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    metrics_window_s: float = 10.0
    max_attempts: int = 3
    forward_endpoint: str | None = None
    forward_headers: dict | None = None
    model_dir: str | None = "models"
    model: str | None = None
    fresh: bool = False
    alerts: object = None
    otlp_endpoint: str | None = None

    def __post_init__(self):
        try:
            check_range("decoders", self.decoders, 1, 64)
            check_range("max_body_bytes", self.max_body_bytes, 1)
            check_range("max_pending_requests", self.max_pending_requests, 1)
            check_range("max_pending_bytes", self.max_pending_bytes, 1)
            check_range("memory_limit", self.memory_limit, 0, 1, low_open=True)
            check_range("sample_probability", self.sample_probability, 0, 1)
            check_range("slow_quantile", self.slow_quantile, 0, 1, low_open=True, high_open=True)
            check_range("max_depth", self.max_depth, 1)
            check_range("flush_interval_s", self.flush_interval_s, 0, low_open=True)
            check_range("metrics_window_s", self.metrics_window_s, 0, low_open=True)
            check_range("max_attempts", self.max_attempts, 1)
            if self.forward_endpoint is not None and not str(self.forward_endpoint).startswith(
                    ("http://", "https://")):
                raise ValueError(f"forward_endpoint must be an http(s) URL, got "
                                 f"{self.forward_endpoint!r}")
        except ValueError as error:
            raise ConfigError(str(error)) from None


# -- stage objects (plain classes; the actors below and the Scheduler's stage actors host them)


class Decoder:
    """Decompress, decode and validate one request body; for traces, assemble the span
    trees too (the deepest tree and the trace count are features of the processing task,
    so they must be known before it is scheduled).

    Args:
        max_depth: span trees deeper than this are flagged.
    """

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH):
        self.max_depth = max_depth

    def decode(self, signal: str, body: bytes, content_type: str, content_encoding: str | None,
               max_body_bytes: int) -> tuple[dict, Columns | None]:
        """Returns (summary, columns); a refused body gives ({"error": …}, None)."""
        try:
            raw = decompress(body, content_encoding, max_body_bytes)
            decoded = decode_request(signal, raw, content_type)
        except OtlpError as error:
            return {"error": type(error).__name__, "message": str(error)}, None
        features = decoded.features()
        columns = decoded.columns
        if signal == "traces":
            columns = assemble(columns, max_depth=self.max_depth)
            depth = columns["trace_depth"]
            features["deepest_tree"] = int(depth.max()) + 1 if len(depth) else 0
            features["traces"] = len(np.unique(columns["trace_id"]))
        summary = {"accepted": decoded.accepted, "rejected": decoded.rejected,
                   "message": decoded.partial_success_message(),
                   "features": features, "body_bytes": decoded.body_bytes}
        return summary, columns


def _new_totals() -> dict:
    """Running aggregates per item table: span metrics, metric series, log counts."""
    return {"spans": SpanMetrics(), "metrics": MetricSeries(), "logs": LogCounts()}


class OtlpProcessor:
    """The processing stage: one request's columns in, its rows in Parquet.

    Each processor writes its own part files (no second copy of the rows through another
    actor: that hop cost more than the processing), keeps running aggregates of what it
    processed and ships them to the :class:`Aggregator` every ``SHIP_EVERY_S``. Its tail
    sampler learns per-operation latency quantiles from the traffic it serves (the same
    distribution as its peers see). A timer thread writes rows that are due even when no
    request comes. On a cluster, ``export_dir`` must be a path every node can write.
    """

    #: Aggregates go to the aggregator this often (one small call, not one per request).
    SHIP_EVERY_S = 1.0

    def __init__(self, *, export_dir: str, aggregator, sample_probability: float = 0.1,
                 slow_quantile: float = 0.95, max_depth: int = DEFAULT_MAX_DEPTH,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 forward_endpoint: str | None = None, forward_headers: dict | None = None):
        self.aggregator = aggregator
        self.forwarder = (Forwarder(forward_endpoint, headers=forward_headers)
                          if forward_endpoint else None)
        self.max_depth = max_depth
        self.sampler = TailSampler(probability=sample_probability, slow_quantile=slow_quantile)
        self.sink = ParquetSink(export_dir, flush_interval_s=flush_interval_s)
        self.totals = _new_totals()
        self._shipped_at = time.monotonic()
        self._shipments: list = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._flush_loop, name="otlp-flush", daemon=True).start()

    def traces(self, columns: Columns) -> dict:
        """Sample and keep one request's spans (assembled by the decoder, or here)."""
        assembled = (columns if "trace_depth" in columns
                     else assemble(columns, max_depth=self.max_depth))
        decided = self.sampler.decide(assembled)
        table = to_table(decided, SPAN_FIELDS, ASSEMBLY_FIELDS, SAMPLING_FIELDS)
        self._keep("spans", table, span_metrics_partial(columns))
        if self.forwarder is not None:
            self.forwarder.add(decided, decided["sampled"])
        return {"spans": table.num_rows, "kept": int(decided["sampled"].sum())}

    def metrics(self, columns: Columns) -> dict:
        table = to_table(columns, METRIC_POINT_FIELDS)
        self._keep("metrics", table, metric_series_partial(columns))
        return {"points": table.num_rows}

    def logs(self, columns: Columns) -> dict:
        table = to_table(columns, LOG_FIELDS)
        self._keep("logs", table, log_counts_partial(columns))
        return {"records": table.num_rows}

    def _keep(self, table_name: str, table, partial: Columns) -> None:
        with self._lock:
            self.sink.write(table_name, table)
            self.totals[table_name].merge(partial)
        if time.monotonic() - self._shipped_at >= self.SHIP_EVERY_S:
            self._ship()

    def _ship(self) -> None:
        with self._lock:
            self._shipped_at = time.monotonic()
            for table_name, totals in self.totals.items():
                if len(totals):
                    self._shipments.append(
                        self.aggregator.merge.remote(table_name, totals.as_partial()))
                    totals.reset()
        if self._shipments:  # forget the ones already delivered
            _, self._shipments = ray.wait(self._shipments, num_returns=len(self._shipments),
                                          timeout=0)

    def _flush_loop(self) -> None:
        period = min(self.sink.flush_interval_s, 1.0) / 2
        while not self._closed.wait(period):
            with self._lock:
                self.sink.flush_due()

    def close(self) -> dict:
        """Write every row held, deliver the aggregates; returns rows written per table."""
        self._closed.set()
        self._ship()
        ray.get(self._shipments)
        with self._lock:
            written = self.sink.flush()
        if self.forwarder is not None:
            forwarded = self.forwarder.close()
            written["forwarded_spans"] = forwarded["sent"]
            written["forward_dropped_spans"] = forwarded["dropped"]
        return written


class Aggregator:
    """The derived tables: running aggregates merged from every processor, written per
    window of ``metrics_window_s`` to ``span_metrics/``, ``metric_series/``, ``log_counts/``."""

    #: The aggregate table fed by each item table's partials.
    TABLES = {"spans": "span_metrics", "metrics": "metric_series", "logs": "log_counts"}

    def __init__(self, export_dir: str, *, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 metrics_window_s: float = 10.0):
        self.sink = ParquetSink(export_dir, flush_interval_s=flush_interval_s)
        self.metrics_window_s = metrics_window_s
        self.totals = _new_totals()
        self.window_start_ns = time.time_ns()

    def merge(self, table_name: str, partial: Columns) -> None:
        self.totals[table_name].merge(partial)
        self.tick()

    def tick(self) -> None:
        """Write what is due, and close the window when it is over."""
        self.sink.flush_due()
        if time.time_ns() - self.window_start_ns >= self.metrics_window_s * 1e9:
            self.close_window()

    def close_window(self) -> None:
        end_ns = time.time_ns()
        for table_name, totals in self.totals.items():
            if len(totals):
                if isinstance(totals, SpanMetrics):  # it reports rates over the window
                    rows = totals.rows(self.window_start_ns, end_ns)
                else:
                    rows = dict(totals.rows())
                    size = len(next(iter(rows.values())))
                    rows["window_start_ns"] = np.full(size, self.window_start_ns, np.int64)
                    rows["window_end_ns"] = np.full(size, end_ns, np.int64)
                self.sink.write(self.TABLES[table_name], _table_of(rows))
                totals.reset()
        self.window_start_ns = end_ns

    def close(self) -> dict:
        """Close the window and write everything; returns rows written per table."""
        self.close_window()
        return self.sink.flush()


def _table_of(columns: Columns):
    return pa.table({name: pa.array(values) for name, values in columns.items()})


@ray.remote(num_cpus=0)
class DecoderActor(Decoder):
    @ray.method(num_returns=2)
    def decode(self, *args):
        return super().decode(*args)


@ray.remote(num_cpus=0)
class AggregatorActor:
    """The aggregator as an async actor: partials arrive from every processor; a timer
    closes windows and writes what is due."""

    def __init__(self, export_dir: str, flush_interval_s: float, metrics_window_s: float):
        self.aggregator = Aggregator(export_dir, flush_interval_s=flush_interval_s,
                                     metrics_window_s=metrics_window_s)
        self._timer: asyncio.Task | None = None

    async def merge(self, table_name: str, partial: Columns) -> None:
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._tick_loop())
        self.aggregator.merge(table_name, partial)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.aggregator.sink.flush_interval_s, 1.0) / 2)
            self.aggregator.tick()

    async def close(self) -> dict:
        return self.aggregator.close()


# -- the front: admission, decoding, submission, tracking, drain


class OtlpPipeline:
    """What the receiver calls: ``await accept(...)`` per request, ``await drain()`` at the end.

    Must be created and used inside one running asyncio loop.

    Example:
        >>> pipeline = OtlpPipeline(PipelineConfig(export_dir="out"))     # doctest: +SKIP
        >>> summary = await pipeline.accept("traces", body, "application/x-protobuf")
        >>> await pipeline.drain()
    """

    def __init__(self, config: PipelineConfig):
        from ray_sched.actors.runtime import ensure_ray
        from ray_sched.scheduler import Scheduler  # the facade sits one floor below

        self.config = config
        self._owns_ray = ensure_ray(config.slots, config.address)
        here = ray.get_runtime_context().get_node_id()
        pinned = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=True)
        # The aggregator runs beside the receiver, with the decoders.
        self.aggregator = AggregatorActor.options(scheduling_strategy=pinned).remote(
            str(config.export_dir), config.flush_interval_s, config.metrics_window_s)
        self.decoders = [DecoderActor.options(scheduling_strategy=pinned).remote(
            config.max_depth) for _ in range(config.decoders)]
        self._next_decoder = itertools.cycle(self.decoders)
        processor = functools.partial(
            OtlpProcessor, export_dir=str(Path(config.export_dir).resolve()),
            aggregator=self.aggregator, sample_probability=config.sample_probability,
            slow_quantile=config.slow_quantile, max_depth=config.max_depth,
            flush_interval_s=config.flush_interval_s, forward_endpoint=config.forward_endpoint,
            forward_headers=config.forward_headers)
        self.scheduler = Scheduler(
            policy=config.policy, slots=config.slots, address=config.address,
            local_schedulers=config.local_schedulers, model_dir=config.model_dir,
            model=config.model, fresh=config.fresh, stages={STAGE: processor},
            alerts=config.alerts, otlp_endpoint=config.otlp_endpoint,
            monitor_dir=config.export_dir if config.alerts else None)
        ray.get([d.__ray_ready__.remote() for d in self.decoders] +
                [self.aggregator.__ray_ready__.remote()], timeout=120)
        self.pending_requests = 0
        self.pending_bytes = 0
        self.closing = False
        self.counts = dict.fromkeys(
            ("requests", "accepted", "rejected", "refused", "processed", "lost", "retries"), 0)
        self._tracked: set[asyncio.Task] = set()
        self._batch: list[tuple] = []
        self._memory_checked = 0.0
        self._memory_used = 0.0

    # -- admission ---------------------------------------------------------------------
    def _admit(self, size_bytes: int) -> None:
        if self.closing:
            raise OverloadedError("the receiver is shutting down", RETRY_AFTER_S, 503)
        if self.pending_requests >= self.config.max_pending_requests:
            raise OverloadedError(
                f"queue full: {self.pending_requests} requests pending "
                f"(max_pending_requests={self.config.max_pending_requests})", RETRY_AFTER_S)
        if self.pending_bytes + size_bytes > self.config.max_pending_bytes:
            raise OverloadedError(
                f"queue full: {self.pending_bytes} bytes pending "
                f"(max_pending_bytes={self.config.max_pending_bytes})", RETRY_AFTER_S)
        now = time.monotonic()
        if now - self._memory_checked >= MEMORY_CHECK_EVERY_S:
            self._memory_checked = now
            self._memory_used = psutil.virtual_memory().percent / 100.0
        if self._memory_used > self.config.memory_limit:
            raise OverloadedError(
                f"memory limit: {self._memory_used:.0%} of memory in use "
                f"(memory_limit={self.config.memory_limit:.0%})", RETRY_AFTER_S, 503)

    @staticmethod
    def check_content_type(content_type: str | None) -> str:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in CONTENT_TYPES:
            raise UnsupportedMediaTypeError(
                f"unsupported content type {content_type!r}; use one of {list(CONTENT_TYPES)}")
        return media

    # -- the request path ----------------------------------------------------------------
    async def accept(self, signal: str, body: bytes, content_type: str | None,
                     content_encoding: str | None = None) -> dict:
        """Decode one request and schedule its processing.

        Returns:
            ``{"accepted", "rejected", "message", ...}`` once the body is decoded; the
            accepted items are then this pipeline's to export.

        Raises:
            OtlpError: the subclass tells the status (400, 413, 415, 429, 503).
        """
        if signal not in SIGNALS:
            raise ConfigError(f"unknown signal {signal!r}; one of {SIGNALS}")
        self.counts["requests"] += 1
        try:
            media = self.check_content_type(content_type)
            if len(body) > self.config.max_body_bytes:
                raise PayloadTooLargeError(f"body of {len(body)} bytes is over the limit of "
                                           f"{self.config.max_body_bytes} bytes")
            self._admit(len(body))
        except OtlpError:
            self.counts["refused"] += 1
            raise
        self.pending_requests += 1
        self.pending_bytes += len(body)
        tracked = False
        try:
            summary_ref, columns_ref = next(self._next_decoder).decode.remote(
                signal, body, media, content_encoding, self.config.max_body_bytes)
            summary = await summary_ref
            if "error" in summary:
                self.counts["refused"] += 1
                raise _ERRORS[summary["error"]](summary["message"])
            self.counts["accepted"] += summary["accepted"]
            self.counts["rejected"] += summary["rejected"]
            if summary["accepted"]:
                task = asyncio.ensure_future(
                    self._process(signal, columns_ref, summary, len(body)))
                self._tracked.add(task)
                task.add_done_callback(self._tracked.discard)
                tracked = True
            return summary
        finally:
            if not tracked:
                self._release(len(body))

    def _submit(self, task) -> asyncio.Future:
        """Queue a task for the next batch: requests decoded within one SUBMIT_BATCH_S go to
        the global scheduler in one call (and get their predictions in one)."""
        waiter = asyncio.get_running_loop().create_future()
        self._batch.append((task, waiter))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_later(SUBMIT_BATCH_S, self._submit_batch)
        return waiter

    def _submit_batch(self) -> None:
        batch, self._batch = self._batch, []
        try:
            futures = self.scheduler.submit_tasks([task for task, _ in batch])
        except Exception as error:  # noqa: BLE001 - every waiter hears of it
            for _, waiter in batch:
                waiter.set_exception(error)
            return
        for (_, waiter), future in zip(batch, futures):
            waiter.set_result(future)

    async def _process(self, signal: str, columns_ref, summary: dict, size_bytes: int) -> None:
        """Run the processing task until it succeeds or ``max_attempts`` runs failed."""
        try:
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    task = self.scheduler.stage_task(
                        STAGE, signal, columns_ref, kind=f"{STAGE}.{signal}",
                        features=summary["features"])
                    future = await self._submit(task)
                    await future
                    self.counts["processed"] += summary["accepted"]
                    return
                except Exception as error:  # noqa: BLE001 - retried, then counted as lost
                    if attempt < self.config.max_attempts:
                        self.counts["retries"] += 1
                        log.warning("processing %s failed (attempt %d), retrying: %s",
                                    signal, attempt, error)
                    else:
                        self.counts["lost"] += summary["accepted"]
                        log.error("processing %s failed %d times; %d items lost: %s", signal,
                                  attempt, summary["accepted"], error)
        finally:
            self._release(size_bytes)

    def _release(self, size_bytes: int) -> None:
        self.pending_requests -= 1
        self.pending_bytes -= size_bytes

    # -- lifecycle ---------------------------------------------------------------------
    def stats(self) -> dict:
        return {**self.counts, "pending_requests": self.pending_requests,
                "pending_bytes": self.pending_bytes}

    async def drain(self, timeout_s: float = 300.0) -> dict:
        """Refuse new requests, finish every accepted one, write everything. Returns the rows
        written per table."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while self._tracked and time.monotonic() < deadline:
            await asyncio.wait(set(self._tracked), timeout=max(0.0, deadline - time.monotonic()))
        if self._tracked:
            log.error("drain timed out with %d requests still processing", len(self._tracked))
        loop = asyncio.get_running_loop()
        written = _add_counts(await loop.run_in_executor(None, self.scheduler.close_stages))
        return _add_counts([written, await self.aggregator.close.remote()])

    def close(self) -> None:
        """Stop the actors (after :meth:`drain`), and Ray when this pipeline started it."""
        self.scheduler.shutdown()
        for actor in [self.aggregator, *self.decoders]:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()
