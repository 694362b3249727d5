"""The OTLP data plane: processors that receive, decode, partition by trace id and export.

Stages and where they run::

    K ProcessorActors (one per CPU by default, spread over the nodes), each with its own
    OTLP/HTTP and OTLP/gRPC listener on the same ports (SO_REUSEPORT: the kernel spreads the
    clients' connections over them), so that receiving and decoding use every core
      │ admission: bounded pending requests and bytes, memory limits   → 429 / 503
      │ requests arriving within ``batch_wait_s`` are decoded together (columnar, in one
      │ pass)                                                           → 200 / 400 / 413 / 415
      │ spans split by trace id: each part goes to the processor that owns it, so every
      │ span of a trace meets the others whichever request, protocol or listener carried
      │ it; a request is answered once every part is held by its processor
      ▼
    TraceProcessor (in each processor actor)
      │ whole traces held for decision_wait_s, then span-tree assembly, tail sampling,
      │ spans/ + traces/ part files, forwarding; metrics/ and logs/ part files
      ▼ running aggregates, shipped every second
    Aggregator actor                    span_metrics/, metric_series/, log_counts/ per window

The serve process starts them, prints where they listen and, on SIGTERM, drains them.
Payloads go from a listener to the processors, never through the GlobalScheduler: the data
plane does not ride the control plane, and a request costs one hop at most (its spans of
other partitions to their processors).

Everything answered with 200 is held by a processor; :meth:`OtlpPipeline.drain` closes the
listeners, lets the requests in flight finish, then closes the processors (each decides
every waiting trace and writes what it holds) and the aggregator, so that a SIGTERM loses
nothing already accepted. A request whose spans cannot be handed to their processor is
answered 503 (the client retries). A processor that dies takes the traces it was holding (at
most ``decision_wait_s`` and ``flush_interval_s`` worth) with it: at-least-once up to that
buffer, as a Collector's in-memory tail sampler. It is restarted on its node and finds its
peers again; a processor whose node is lost is not replaced yet (its partition's requests
get 503).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.errors import (
    ConfigError,
    InvalidPayloadError,
    OtlpError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from ray_sched.otlp.columnar import SPAN_BATCH_SCHEMA, decode_traces, to_batch_table
from ray_sched.otlp.decode import DEFAULT_MAX_BODY_BYTES, SIGNALS, decode_request, decompress
from ray_sched.otlp.export import DEFAULT_FLUSH_INTERVAL_S, ParquetSink
from ray_sched.otlp.forward import Forwarder
from ray_sched.otlp.processing import SpanMetrics
from ray_sched.otlp.processor import (
    DEFAULT_DECIDED_CACHE,
    DEFAULT_DECISION_WAIT_S,
    DEFAULT_MAX_TRACES,
    ON_MAX_DEPTH,
    TraceProcessor,
    new_totals,
)
from ray_sched.otlp.schema import Columns
from ray_sched.otlp.spantree import DEFAULT_MAX_DEPTH
from ray_sched.otlp.traceid import partition_of
from ray_sched.params import check_range

log = logging.getLogger(__name__)

#: Content types the receiver speaks (parameters such as charset are ignored).
CONTENT_TYPES = ("application/x-protobuf", "application/json")
PROTOBUF = "application/x-protobuf"
#: What a refused request is told to wait before retrying.
RETRY_AFTER_S = 1.0
#: Memory use is sampled at most this often (psutil costs ~20 µs; requests come faster).
MEMORY_CHECK_EVERY_S = 0.1
#: A processor decides due traces and writes due files this often.
TICK_S = 0.1
#: Aggregates go from a processor to the aggregator this often (one small call).
SHIP_EVERY_S = 1.0

_ERRORS = {cls.__name__: cls for cls in
           (InvalidPayloadError, PayloadTooLargeError, UnsupportedMediaTypeError)}


def _add_counts(counts: list[dict]) -> dict:
    """Sum per-table row counts (each stage reports its own)."""
    total: dict[str, int] = {}
    for one in counts:
        for name, rows in (one or {}).items():
            total[name] = total.get(name, 0) + rows
    return total


@dataclasses.dataclass
class PipelineConfig:
    """Settings of :class:`OtlpPipeline` (the ``ray-sched serve`` flags of the same names).

    Args:
        export_dir: where the Parquet tables go (``spans/``, ``traces/``, ``metrics/``,
            ``logs/``, ``span_metrics/``, ``metric_series/``, ``log_counts/``).
        processors: processor actors (trace partitions); default one per CPU of the
            cluster, spread over its nodes.
        address: an existing Ray cluster; default an embedded one.
        max_body_bytes: largest body accepted, after decompression (413 above).
        max_pending_requests, max_pending_bytes: received but not yet held by a processor;
            past either a request is refused with 429 and Retry-After (the bounded queue).
        memory_limit: share of the machine's memory in use above which requests are refused
            with 503 and Retry-After, before memory runs out.
        memory_limit_mib: the same for the memory of the receiver and its processors
            together (resident set, MiB), like the Collector's memory_limiter; None: off.
        decision_wait_s: how long a trace is held after its first span before it is decided.
        max_traces: traces held at most per processor; past it the oldest are decided early.
        decided_cache: decisions remembered per processor, for spans that come late.
        sample_probability: share of the traces neither erroneous nor slow that are kept.
        slow_quantile: a trace slower than this running quantile of its root operation's
            durations (per service and operation) is kept.
        rate_limit_per_s: slow or probabilistic traces kept per second per root service at
            most (errors are always kept); None: no limit.
        max_depth: span trees deeper than this are handled by ``on_max_depth``: ``flag``
            (``trace_depth_exceeded``), ``truncate`` (deeper spans not written) or ``drop``.
        flush_interval_s: the longest a decided row waits before it is in a Parquet file.
        metrics_window_s: the window of the derived aggregates (span metrics and others).
        batch_wait_s, batch_bytes: requests arriving within ``batch_wait_s`` of the first of
            a micro-batch go to a processor together, up to ``batch_bytes``.
        max_attempts: sends of a micro-batch to a processor before its requests get a 503.
        forward_endpoint: an OTLP/HTTP traces URL the kept traces are also sent to.
        forward_headers: HTTP headers of those requests (e.g. authorization).
    """

    export_dir: str
    processors: int | None = None
    address: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pending_requests: int = 1024
    max_pending_bytes: int = 512 * 1024 * 1024
    memory_limit: float = 0.9
    memory_limit_mib: int | None = None
    decision_wait_s: float = DEFAULT_DECISION_WAIT_S
    max_traces: int = DEFAULT_MAX_TRACES
    decided_cache: int = DEFAULT_DECIDED_CACHE
    sample_probability: float = 0.1
    slow_quantile: float = 0.95
    rate_limit_per_s: float | None = None
    max_depth: int = DEFAULT_MAX_DEPTH
    on_max_depth: str = "flag"
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    metrics_window_s: float = 10.0
    batch_wait_s: float = 0.002
    batch_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 3
    forward_endpoint: str | None = None
    forward_headers: dict | None = None

    def __post_init__(self):
        try:
            if self.processors is not None:
                check_range("processors", self.processors, 1, 1024)
            check_range("max_body_bytes", self.max_body_bytes, 1)
            check_range("max_pending_requests", self.max_pending_requests, 1)
            check_range("max_pending_bytes", self.max_pending_bytes, 1)
            check_range("memory_limit", self.memory_limit, 0, 1, low_open=True)
            if self.memory_limit_mib is not None:
                check_range("memory_limit_mib", self.memory_limit_mib, 1)
            check_range("decision_wait_s", self.decision_wait_s, 0)
            check_range("max_traces", self.max_traces, 1)
            check_range("decided_cache", self.decided_cache, 1)
            check_range("sample_probability", self.sample_probability, 0, 1)
            check_range("slow_quantile", self.slow_quantile, 0, 1, low_open=True, high_open=True)
            if self.rate_limit_per_s is not None:
                check_range("rate_limit_per_s", self.rate_limit_per_s, 0, low_open=True)
            check_range("max_depth", self.max_depth, 1)
            if self.on_max_depth not in ON_MAX_DEPTH:
                raise ValueError(f"on_max_depth must be one of {ON_MAX_DEPTH}, got "
                                 f"{self.on_max_depth!r}")
            check_range("flush_interval_s", self.flush_interval_s, 0, low_open=True)
            check_range("metrics_window_s", self.metrics_window_s, 0, low_open=True)
            check_range("batch_wait_s", self.batch_wait_s, 0)
            check_range("batch_bytes", self.batch_bytes, 1)
            check_range("max_attempts", self.max_attempts, 1)
            if self.forward_endpoint is not None and not str(self.forward_endpoint).startswith(
                    ("http://", "https://")):
                raise ValueError(f"forward_endpoint must be an http(s) URL, got "
                                 f"{self.forward_endpoint!r}")
        except ValueError as error:
            raise ConfigError(str(error)) from None


# -- decoding a micro-batch (in the processors) ----------------------------------------------


@dataclasses.dataclass
class DecodedBatch:
    """What a micro-batch of requests decodes to.

    Attributes:
        results: per request, ``{"accepted", "rejected", "message"}`` or, for a refused
            body, ``{"error": <OtlpError class name>, "message": ...}``.
        spans: the spans of every trace request, in ``SPAN_BATCH_SCHEMA``.
        metrics, logs: the columns of each metrics / logs request.
    """

    results: list[dict]
    spans: pa.Table
    metrics: list[Columns]
    logs: list[Columns]


def _refusal(error: OtlpError) -> dict:
    return {"error": type(error).__name__, "message": str(error)}


def _summary(accepted: int, rejected: int, message: str) -> dict:
    return {"accepted": accepted, "rejected": rejected, "message": message}


def decode_batch(items: list[tuple], max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
                 ) -> DecodedBatch:
    """Decompress and decode requests: protobuf traces all together in one columnar pass
    (:func:`~ray_sched.otlp.columnar.decode_traces`), anything else (OTLP/JSON, metrics,
    logs, and what the columnar pass leaves to it) with the reference decoder.

    Args:
        items: ``(signal, body, media type, content encoding)`` per request.
        max_body_bytes: the largest body accepted after decompression.
    """
    results: list = [None] * len(items)
    columnar: list[tuple[int, bytes]] = []
    tables: list[pa.Table] = []
    metrics: list[Columns] = []
    logs: list[Columns] = []

    def reference(i: int, signal: str, raw: bytes, media: str) -> None:
        try:
            decoded = decode_request(signal, raw, media)
        except OtlpError as error:
            results[i] = _refusal(error)
            return
        results[i] = _summary(decoded.accepted, decoded.rejected,
                              decoded.partial_success_message())
        if decoded.accepted:
            if signal == "traces":
                tables.append(to_batch_table(decoded.columns))
            else:
                (metrics if signal == "metrics" else logs).append(decoded.columns)

    for i, (signal, body, media, encoding) in enumerate(items):
        try:
            raw = decompress(body, encoding, max_body_bytes)
        except OtlpError as error:
            results[i] = _refusal(error)
            continue
        if signal == "traces" and media == PROTOBUF:
            columnar.append((i, raw))
        else:
            reference(i, signal, raw, media)
    if columnar:
        table, outcomes = decode_traces([raw for _, raw in columnar])
        if table.num_rows:
            tables.append(table)
        for (i, raw), outcome in zip(columnar, outcomes):
            if isinstance(outcome, dict):
                results[i] = _summary(outcome["accepted"], 0, "")
            elif isinstance(outcome, OtlpError):
                results[i] = _refusal(outcome)
            else:
                reference(i, "traces", raw, PROTOBUF)
    spans = (pa.concat_tables(tables) if len(tables) > 1 else
             tables[0] if tables else SPAN_BATCH_SCHEMA.empty_table())
    return DecodedBatch(results=results, spans=spans, metrics=metrics, logs=logs)


class Aggregator:
    """The derived tables: running aggregates merged from every processor, written per
    window of ``metrics_window_s`` to ``span_metrics/``, ``metric_series/``, ``log_counts/``."""

    #: The aggregate table fed by each item table's partials.
    TABLES = {"spans": "span_metrics", "metrics": "metric_series", "logs": "log_counts"}

    def __init__(self, export_dir: str, *, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 metrics_window_s: float = 10.0):
        self.sink = ParquetSink(export_dir, flush_interval_s=flush_interval_s)
        self.metrics_window_s = metrics_window_s
        self.totals = new_totals()
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


# -- the request path inside a processor: admission, micro-batches, decode, hand-off


class Ingest:
    """What a processor's listeners call: ``await accept(...)`` per request.

    Requests arriving within ``batch_wait_s`` of each other are decoded together on one
    worker thread (:func:`decode_batch`), then ``handoff`` places the decoded batch (its
    spans with their trace's processor); each request is answered once that is done.

    Args:
        config: the pipeline's settings (admission limits, batching).
        handoff: ``async handoff(DecodedBatch)``: raises when the items cannot be placed
            (the requests are then answered 503, to be retried).
        memory_share: this process's share of ``memory_limit_mib`` (1 / processors).
    """

    def __init__(self, config: PipelineConfig, handoff, *, memory_share: float = 1.0):
        self.config = config
        self.handoff = handoff
        self.memory_share = memory_share
        self.pending_requests = 0
        self.pending_bytes = 0
        self.closing = False
        self.counts = dict.fromkeys(
            ("requests", "accepted", "rejected", "refused", "processed", "failed", "batches"), 0)
        self._decoding = concurrent.futures.ThreadPoolExecutor(1, "otlp-decode")
        self._batch: list[tuple] = []
        self._batch_bytes = 0
        self._tracked: set[asyncio.Task] = set()
        self._memory_checked = 0.0
        self._memory_used = 0.0
        self._memory_mib = 0.0
        self.decode_s = self.handoff_s = 0.0        # wall seconds over all batches
        self.decode_cpu_s = 0.0                     # CPU seconds of the decoding thread

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
            if self.config.memory_limit_mib is not None:
                self._memory_mib = psutil.Process().memory_info().rss / 2**20
        if self._memory_used > self.config.memory_limit:
            raise OverloadedError(
                f"memory limit: {self._memory_used:.0%} of memory in use "
                f"(memory_limit={self.config.memory_limit:.0%})", RETRY_AFTER_S, 503)
        limit_mib = self.config.memory_limit_mib
        if limit_mib is not None and self._memory_mib > limit_mib * self.memory_share:
            raise OverloadedError(
                f"memory limit: this processor uses {self._memory_mib:.0f} MiB, over its "
                f"share of memory_limit_mib={limit_mib}", RETRY_AFTER_S, 503)

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
        """Decode one request and place its items; returns once they are held.

        Returns:
            ``{"accepted", "rejected", "message"}``: the accepted items are then this
            pipeline's to export.

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
        try:
            summary = await self._enqueue((signal, body, media, content_encoding))
        except OtlpError:
            self.counts["refused"] += 1
            raise
        finally:
            self.pending_requests -= 1
            self.pending_bytes -= len(body)
        if "error" in summary:
            self.counts["refused"] += 1
            raise _ERRORS.get(summary["error"], InvalidPayloadError)(summary["message"])
        self.counts["accepted"] += summary["accepted"]
        self.counts["rejected"] += summary["rejected"]
        self.counts["processed"] += summary["accepted"]
        return summary

    def _enqueue(self, item: tuple) -> asyncio.Future:
        """Add a request to the open micro-batch (decoded after batch_wait_s, or at once
        when it reaches batch_bytes)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._batch.append((item, waiter))
        self._batch_bytes += len(item[1])
        if self._batch_bytes >= self.config.batch_bytes:
            self._send_batch()
        elif len(self._batch) == 1:
            loop.call_later(self.config.batch_wait_s, self._send_batch)
        return waiter

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._batch_bytes = 0
        if batch:
            task = asyncio.ensure_future(self._run_batch(batch))
            self._tracked.add(task)
            task.add_done_callback(self._tracked.discard)

    async def _run_batch(self, batch: list[tuple]) -> None:
        self.counts["batches"] += 1
        started = time.perf_counter()
        try:
            decoded = await asyncio.get_running_loop().run_in_executor(
                self._decoding, self._decode, [item for item, _ in batch])
            placed = time.perf_counter()
            self.decode_s += placed - started
            await self.handoff(decoded)
            self.handoff_s += time.perf_counter() - placed
        except Exception as error:  # noqa: BLE001 - every request hears of it, as a 503
            self.counts["failed"] += len(batch)
            log.error("a batch of %d requests could not be placed; answered 503: %s",
                      len(batch), error)
            failure = OverloadedError(f"processing failed: {error}", RETRY_AFTER_S, 503)
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(failure)
            return
        for (_, waiter), result in zip(batch, decoded.results):
            if not waiter.done():
                waiter.set_result(result)

    def _decode(self, items: list[tuple]) -> DecodedBatch:
        started = time.thread_time()
        try:
            return decode_batch(items, self.config.max_body_bytes)
        finally:
            self.decode_cpu_s += time.thread_time() - started

    def stats(self) -> dict:
        return {**self.counts, "pending_requests": self.pending_requests,
                "pending_bytes": self.pending_bytes, "decode_s": round(self.decode_s, 3),
                "decode_cpu_s": round(self.decode_cpu_s, 3),
                "handoff_s": round(self.handoff_s, 3)}

    async def finish(self) -> None:
        """Refuse new requests and wait for the batches in flight."""
        self.closing = True
        self._send_batch()
        while self._tracked:
            await asyncio.wait(set(self._tracked))
        self._decoding.shutdown(wait=True)


@ray.remote(num_cpus=0, max_restarts=-1)
class ProcessorActor:
    """One trace partition: listens for OTLP (on ports it shares with the other
    processors), decodes what it receives, sends each other partition's spans to its
    processor, and hosts a :class:`TraceProcessor` for its own.

    Threads: the event loop only receives (requests, peers' spans, stats calls), so that
    a peer waiting for its spans to be taken waits for nothing else; decoding runs on one
    worker thread, and the :class:`TraceProcessor` (taking spans, deciding traces) on
    another, fed through an inbox. Peers and the aggregator are found by name, so that a
    restarted processor finds them again (what the lost one held is lost with it).

    Args:
        index, count: this partition and how many there are.
        names: the named actors of this pipeline: ``processors`` (a list by partition) and
            ``aggregator``.
        settings: the PipelineConfig as a dict.
    """

    def __init__(self, index: int, count: int, names: dict, settings: dict):
        config = PipelineConfig(**settings)
        self.index, self.count, self.names = index, count, names
        forwarder = (Forwarder(config.forward_endpoint, headers=config.forward_headers)
                     if config.forward_endpoint else None)
        self.processor = TraceProcessor(
            export_dir=str(config.export_dir), decision_wait_s=config.decision_wait_s,
            max_traces=config.max_traces, decided_cache=config.decided_cache,
            max_depth=config.max_depth, on_max_depth=config.on_max_depth,
            sample_probability=config.sample_probability, slow_quantile=config.slow_quantile,
            rate_limit_per_s=config.rate_limit_per_s, flush_interval_s=config.flush_interval_s,
            forwarder=forwarder, background_writes=True)
        self.ingest = Ingest(config, self._handoff, memory_share=1.0 / count)
        self.receiver = None
        self._peers: dict[int, object] = {}
        self._aggregator = None
        self._inbox: collections.deque = collections.deque()   # (kind, payload, arrived)
        self._deciding = concurrent.futures.ThreadPoolExecutor(1, "otlp-decide")
        self._shipped_at = time.monotonic()
        self._shipments: list = []
        self._ticker: asyncio.Task | None = None
        self.decide_cpu_s = 0.0                     # CPU seconds of the deciding thread

    def _peer(self, index: int):
        if index not in self._peers:
            self._peers[index] = ray.get_actor(self.names["processors"][index])
        return self._peers[index]

    def _start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick_loop())

    async def listen(self, host: str, http_port: int | None, grpc_port: int | None,
                     auth_token: str | None) -> dict:
        """Open this processor's listeners (sharing the ports with its peers); returns the
        ports bound, by protocol."""
        from ray_sched.otlp.receiver import Receiver  # the receiver imports this module

        self._start()
        self.receiver = Receiver(self.ingest, host=host, http_port=http_port,
                                 grpc_port=grpc_port, auth_token=auth_token, reuse_port=True,
                                 stats=self.pipeline_stats)
        await self.receiver.start()
        return {"http": self.receiver.http_port, "grpc": self.receiver.grpc_port}

    async def _handoff(self, batch: DecodedBatch) -> None:
        """Place a decoded batch: this partition's spans here, the others' with their
        processors (awaited: a request is answered once its spans are held)."""
        self._start()
        sends = []
        if batch.spans.num_rows:
            owner = partition_of(batch.spans.column("trace_id"), self.count)
            for part in np.unique(owner).tolist():
                spans = batch.spans.filter(pa.array(owner == part))
                if part == self.index:
                    self._inbox.append(("spans", spans, time.monotonic()))
                else:
                    sends.append(self._peer(part).add_spans.remote(to_ipc(spans)))
        for columns in batch.metrics:
            self._inbox.append(("metrics", columns, None))
        for columns in batch.logs:
            self._inbox.append(("logs", columns, None))
        if sends:
            await asyncio.gather(*sends)

    async def add_spans(self, spans: bytes) -> None:
        """Take spans of this partition from a peer (an Arrow IPC stream: cheaper to pass
        than the table itself, which Ray pickles column by column)."""
        self._start()
        self._inbox.append(("spans", pa.ipc.open_stream(spans).read_all(), time.monotonic()))

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await loop.run_in_executor(self._deciding, self._tick)
            except Exception:  # noqa: BLE001 - logged; the next tick tries again
                log.exception("processor %d: tick failed", self.index)

    def _take_inbox(self) -> None:
        """Hand what arrived to the TraceProcessor (on the deciding thread)."""
        inbox, processor = self._inbox, self.processor
        while inbox:
            kind, payload, arrived = inbox.popleft()
            if kind == "spans":
                processor.add_spans(payload, now=arrived)
            elif kind == "metrics":
                processor.metrics(payload)
            else:
                processor.logs(payload)

    def _tick(self) -> None:
        started = time.thread_time()
        self._take_inbox()
        self.processor.tick()
        if time.monotonic() - self._shipped_at >= SHIP_EVERY_S:
            self._ship()
        self.decide_cpu_s += time.thread_time() - started

    def _ship(self) -> None:
        self._shipped_at = time.monotonic()
        if self._aggregator is None:
            self._aggregator = ray.get_actor(self.names["aggregator"])
        for table_name, totals in self.processor.totals.items():
            if len(totals):
                self._shipments.append(
                    self._aggregator.merge.remote(table_name, totals.as_partial()))
                totals.reset()
        if self._shipments:  # forget the ones already delivered
            _, self._shipments = ray.wait(self._shipments, num_returns=len(self._shipments),
                                          timeout=0)

    async def stats(self) -> dict:
        """This processor's counts (its listeners' and its partition's)."""
        process = psutil.Process()
        times = process.cpu_times()
        return {**self.ingest.stats(), **self.processor.stats(), "index": self.index,
                "decide_cpu_s": round(self.decide_cpu_s, 3),
                "process_cpu_s": round(times.user + times.system, 3),
                "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "rss_bytes": process.memory_info().rss}

    async def pipeline_stats(self) -> dict:
        """Every processor's counts, summed (``GET /stats`` on any listener)."""
        others = [self._peer(i).stats.remote() for i in range(self.count) if i != self.index]
        return summed_stats([await self.stats(), *await asyncio.gather(*others)])

    async def stop_listening(self) -> None:
        """Close the listeners, finish the requests in flight (they are answered)."""
        if self.receiver is not None:
            await self.receiver.stop()
        await self.ingest.finish()

    async def close(self) -> dict:
        """Decide every waiting trace, write everything, deliver the aggregates; returns rows
        written per table."""
        if self._ticker is not None:
            self._ticker.cancel()
        written = await asyncio.get_running_loop().run_in_executor(self._deciding, self._close)
        await asyncio.gather(*self._shipments)
        return written

    def _close(self) -> dict:
        self._take_inbox()
        written = self.processor.close()
        self._ship()
        return written


def to_ipc(table: pa.Table) -> pa.Buffer:
    """A table as one Arrow IPC stream (near a memory copy to write and to read)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def summed_stats(stats: list[dict]) -> dict:
    """Processors' counts added up (nested ones such as the sampler's too), with how many
    processors and nodes there are."""
    total: dict = {}

    def add(into: dict, one: dict) -> None:
        for name, value in one.items():
            if name in ("index", "pid", "node_id"):
                continue
            if isinstance(value, dict):
                add(into.setdefault(name, {}), value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                into[name] = into.get(name, 0) + value

    for one in stats:
        add(total, one)
    total["processors"] = len(stats)
    total["processor_nodes"] = len({one.get("node_id") for one in stats})
    return total


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
            try:
                self.aggregator.tick()
            except Exception:  # noqa: BLE001 - logged; the next tick tries again
                log.exception("aggregator: tick failed")

    async def close(self) -> dict:
        return self.aggregator.close()


# -- the serve process: start, listen, stats, drain


class OtlpPipeline:
    """The processors and the aggregator of one ``ray-sched serve``: ``await listen(...)``,
    ``await stats()``, ``await drain()``, ``close()``.

    Example:
        >>> pipeline = OtlpPipeline(PipelineConfig(export_dir="out"))     # doctest: +SKIP
        >>> urls = await pipeline.listen("127.0.0.1", 4318, 4317)
        >>> await pipeline.drain()
    """

    def __init__(self, config: PipelineConfig):
        from ray_sched.actors.runtime import ensure_ray

        self.config = config
        self._owns_ray = ensure_ray(config.processors, config.address)
        here = ray.get_runtime_context().get_node_id()
        pinned = NodeAffinitySchedulingStrategy(here, soft=True)
        export_dir = str(Path(config.export_dir).resolve())
        count = config.processors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        prefix = f"ray_sched-otlp-{uuid.uuid4().hex[:12]}"
        names = {"aggregator": f"{prefix}-aggregator",
                 "processors": [f"{prefix}-processor-{index}" for index in range(count)]}
        self.aggregator = AggregatorActor.options(
            name=names["aggregator"], scheduling_strategy=pinned).remote(
            export_dir, config.flush_interval_s, config.metrics_window_s)
        settings = {**dataclasses.asdict(config), "export_dir": export_dir}
        # Processor i on node i mod nodes, this one first: spread over the cluster. A hard
        # affinity: a soft one let Ray put both of two processors on one node about half
        # the time (seen on a 2-node cluster_utils cluster). A processor whose node is lost
        # is not placed elsewhere: requests with spans of its partition get 503 from then on.
        nodes = [here] + sorted(n["NodeID"] for n in ray.nodes()
                                if n["Alive"] and n["NodeID"] != here
                                and n.get("Resources", {}).get("CPU", 0) > 0)
        self.processors = [ProcessorActor.options(
            name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(
                nodes[index % len(nodes)], soft=False)).remote(index, count, names, settings)
            for index, name in enumerate(names["processors"])]
        ray.get([actor.__ray_ready__.remote() for actor in [self.aggregator, *self.processors]],
                timeout=120)
        self.listening: dict[str, int | None] = {}

    async def listen(self, host: str, http_port: int | None, grpc_port: int | None,
                     auth_token: str | None = None) -> dict[str, str]:
        """Open every processor's listeners on the same ports (0: the first one picks a free
        port, the others share it). Returns the URLs by protocol."""
        first = await self.processors[0].listen.remote(host, http_port, grpc_port, auth_token)
        await asyncio.gather(*[p.listen.remote(host, first["http"], first["grpc"], auth_token)
                               for p in self.processors[1:]])
        self.listening = first
        urls = {}
        if first["http"] is not None:
            urls["http"] = f"http://{host}:{first['http']}"
        if first["grpc"] is not None:
            urls["grpc"] = f"{host}:{first['grpc']}"
        return urls

    async def stats(self) -> dict:
        return summed_stats(await asyncio.gather(*[p.stats.remote() for p in self.processors]))

    async def drain(self) -> dict:
        """Close the listeners, finish every accepted request, write everything. Returns the
        rows written per table."""
        await asyncio.gather(*[p.stop_listening.remote() for p in self.processors])
        written = _add_counts(await asyncio.gather(*[p.close.remote() for p in self.processors]))
        return _add_counts([written, await self.aggregator.close.remote()])

    def close(self) -> None:
        """Stop the actors (after :meth:`drain`), and Ray when this pipeline started it."""
        for actor in [self.aggregator, *self.processors]:
            ray.kill(actor, no_restart=True)
        if self._owns_ray:
            ray.shutdown()
