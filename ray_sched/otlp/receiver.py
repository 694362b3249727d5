"""``ray-sched serve``: OTLP/HTTP and OTLP/gRPC listeners in front of the data plane.

Each processor of :class:`~ray_sched.otlp.pipeline.OtlpPipeline` runs a :class:`Receiver`
on the same ports (SO_REUSEPORT), so that the kernel spreads the clients' connections
over them.

As the OTLP specification asks:

- HTTP ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` with ``application/x-protobuf``
  or ``application/json`` bodies, optionally gzip; the response uses the request's content
  type: 200 with the ``Export*ServiceResponse`` (``partial_success`` with the rejected
  count and a message when some items were rejected), 400 with a ``google.rpc.Status``
  for a body that does not decode, 413 over the size limit (after decompression), 415
  for another content type, 401 without the bearer token (when one is set), 429 (queue
  full) or 503 (memory limit, shutting down) with ``Retry-After``.
- gRPC ``opentelemetry.proto.collector.{trace,metrics,logs}.v1.*Service/Export``: the
  same, with INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, and UNAVAILABLE with
  a ``google.rpc.RetryInfo`` detail when overloaded.

SIGTERM (or Ctrl-C) drains: the listeners close, requests in flight finish, and every
item answered with 200 is processed and written before the process exits.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import signal as signals
import sys

import grpc
from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from ray_sched.errors import OtlpError, OverloadedError, UnauthenticatedError
from ray_sched.otlp.pipeline import OtlpPipeline, PipelineConfig

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 4318
DEFAULT_GRPC_PORT = 4317
#: How long in-flight requests get to finish once the listeners close.
SHUTDOWN_GRACE_S = 30.0

#: Per signal: the HTTP path, the gRPC service, the response class and its rejected field.
SIGNAL_API = {
    "traces": ("/v1/traces", "opentelemetry.proto.collector.trace.v1.TraceService",
               trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "metrics": ("/v1/metrics", "opentelemetry.proto.collector.metrics.v1.MetricsService",
                metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": ("/v1/logs", "opentelemetry.proto.collector.logs.v1.LogsService",
             logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
}
_GRPC_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}


def export_response(signal: str, summary: dict):
    """The Export*ServiceResponse for a decoded request (partial_success when rejected)."""
    _, _, response_class, rejected_field = SIGNAL_API[signal]
    response = response_class()
    if summary["rejected"]:
        setattr(response.partial_success, rejected_field, summary["rejected"])
        response.partial_success.error_message = summary["message"]
    return response


def error_status(error: OtlpError):
    """The google.rpc.Status for a refused request (with RetryInfo when overloaded)."""
    status = status_pb2.Status(code=_GRPC_CODE_NUMBERS[error.grpc_code], message=str(error))
    if isinstance(error, OverloadedError):
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(error.retry_after_s),
                                              nanos=int(error.retry_after_s % 1 * 1e9)))
        status.details.add().Pack(retry)
    return status


def _http_body(message, json_wanted: bool) -> tuple[bytes, str]:
    if json_wanted:
        return (json.dumps(json_format.MessageToDict(message)).encode(), "application/json")
    return message.SerializeToString(), "application/x-protobuf"


class Receiver:
    """HTTP and gRPC listeners handing each request to ``pipeline.accept``.

    Args:
        pipeline: where requests go: ``await pipeline.accept(signal, body, content_type,
            content_encoding)`` and ``pipeline.config.max_body_bytes`` (an
            :class:`~ray_sched.otlp.pipeline.Ingest`).
        host: the address to listen on (loopback unless told otherwise).
        http_port, grpc_port: 0 picks a free port; None turns that protocol off.
        auth_token: when set, requests must carry ``Authorization: Bearer <token>``.
        reuse_port: share the ports with other receivers (SO_REUSEPORT).
        stats: what ``GET /stats`` answers (a function, maybe async); default
            ``pipeline.stats``.
    """

    def __init__(self, pipeline, *, host: str = DEFAULT_HOST,
                 http_port: int | None = DEFAULT_HTTP_PORT,
                 grpc_port: int | None = DEFAULT_GRPC_PORT, auth_token: str | None = None,
                 reuse_port: bool = False, stats=None):
        self.pipeline = pipeline
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.reuse_port = reuse_port
        self._stats_of = stats or pipeline.stats
        self._token = auth_token
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None

    # -- HTTP --------------------------------------------------------------------------
    def _authorized(self, value: str | None) -> bool:
        if self._token is None:
            return True
        expected = f"Bearer {self._token}"
        return value is not None and hmac.compare_digest(value.encode(), expected.encode())

    def _http_handler(self, signal: str):
        async def handle(request: web.Request) -> web.Response:
            json_wanted = (request.content_type or "").lower() == "application/json"
            try:
                if not self._authorized(request.headers.get("Authorization")):
                    raise UnauthenticatedError("missing or wrong bearer token")
                body = await request.read()
                summary = await self.pipeline.accept(
                    signal, body, request.headers.get("Content-Type"),
                    request.headers.get("Content-Encoding"))
            except web.HTTPRequestEntityTooLarge as error:
                error_body = status_pb2.Status(code=_GRPC_CODE_NUMBERS["RESOURCE_EXHAUSTED"],
                                               message=error.text or "body too large")
                data, content_type = _http_body(error_body, json_wanted)
                return web.Response(status=413, body=data, content_type=content_type)
            except OtlpError as error:
                data, content_type = _http_body(error_status(error), json_wanted)
                headers = {}
                if isinstance(error, OverloadedError):
                    headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
                if error.http_status == 401:
                    headers["WWW-Authenticate"] = "Bearer"
                return web.Response(status=error.http_status, body=data, headers=headers,
                                    content_type=content_type)
            data, content_type = _http_body(export_response(signal, summary), json_wanted)
            return web.Response(status=200, body=data, content_type=content_type)
        return handle

    async def _stats(self, request: web.Request) -> web.Response:
        """``GET /stats``: the pipeline's counts (requests, accepted, processed, pending, …)."""
        if not self._authorized(request.headers.get("Authorization")):
            return web.json_response({"message": "missing or wrong bearer token"}, status=401)
        stats = self._stats_of()
        if inspect.isawaitable(stats):
            stats = await stats
        return web.json_response(stats)

    # -- gRPC --------------------------------------------------------------------------
    def _grpc_handler(self, signal: str):
        async def export(body: bytes, context: grpc.aio.ServicerContext):
            try:
                metadata = dict(context.invocation_metadata() or ())
                if not self._authorized(metadata.get("authorization")):
                    raise UnauthenticatedError("missing or wrong bearer token")
                summary = await self.pipeline.accept(signal, body, "application/x-protobuf")
            except OtlpError as error:
                status = error_status(error)
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status.SerializeToString()),))
                await context.abort(grpc.StatusCode[error.grpc_code], str(error))
            return export_response(signal, summary)
        return export

    def _grpc_services(self) -> list:
        handlers = []
        for signal, (_, service, _, _) in SIGNAL_API.items():
            method = grpc.unary_unary_rpc_method_handler(
                self._grpc_handler(signal), request_deserializer=None,
                response_serializer=lambda message: message.SerializeToString())
            handlers.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
        return handlers

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> dict[str, str]:
        """Open the listeners; returns their URLs by protocol."""
        urls = {}
        if self.http_port is not None:
            app = web.Application(client_max_size=self.pipeline.config.max_body_bytes)
            for signal, (path, _, _, _) in SIGNAL_API.items():
                app.router.add_post(path, self._http_handler(signal))
            app.router.add_get("/stats", self._stats)
            # auto_decompress off: our own decompression is bounded (a gzip bomb stops at
            # the limit) and counts the limit after decompression, as OTLP asks.
            self._runner = web.AppRunner(app, access_log=None, auto_decompress=False,
                                         shutdown_timeout=SHUTDOWN_GRACE_S)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.http_port, backlog=1024,
                               reuse_port=self.reuse_port or None)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.http_port = port
            urls["http"] = f"http://{self.host}:{port}"
        if self.grpc_port is not None:
            limit = self.pipeline.config.max_body_bytes
            self._grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                                  ("grpc.so_reuseport", int(self.reuse_port))])
            self._grpc.add_generic_rpc_handlers(self._grpc_services())
            port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
            await self._grpc.start()
            self.grpc_port = port
            urls["grpc"] = f"{self.host}:{port}"
        return urls

    async def stop(self) -> None:
        """Close the listeners and let requests in flight finish (they are answered)."""
        closing = []
        if self._grpc is not None:
            closing.append(self._grpc.stop(SHUTDOWN_GRACE_S))
        if self._runner is not None:
            closing.append(self._runner.cleanup())
        await asyncio.gather(*closing)


async def serve(config: PipelineConfig, *, host: str = DEFAULT_HOST,
                http_port: int | None = DEFAULT_HTTP_PORT,
                grpc_port: int | None = DEFAULT_GRPC_PORT, auth_token: str | None = None,
                stop: asyncio.Event | None = None, out=sys.stdout) -> dict:
    """Run the data plane until ``stop`` is set (or SIGTERM/SIGINT), then drain.

    Returns:
        the pipeline's counts and the rows written per table.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    pipeline = await loop.run_in_executor(None, OtlpPipeline, config)
    try:
        urls = await pipeline.listen(host, http_port, grpc_port, auth_token)
        for sig in (signals.SIGTERM, signals.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        for protocol, url in urls.items():
            print(f"OTLP/{protocol.upper()} listening on {url}", file=out, flush=True)
        print(f"exporting to {config.export_dir} ({len(pipeline.processors)} processors)",
              file=out, flush=True)
        await stop.wait()
        print("draining: finishing every accepted request", file=out, flush=True)
        written = await pipeline.drain()
        result = {**await pipeline.stats(), "rows_written": written}
        print(f"drained: {json.dumps(result)}", file=out, flush=True)
        return result
    finally:
        await loop.run_in_executor(None, pipeline.close)
