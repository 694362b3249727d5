"""The receiver's protocol mapping (HTTP statuses, bodies, headers, gRPC codes) against a
stand-in pipeline: no Ray, so every status is checked quickly and exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ray_sched.errors import (
    InvalidPayloadError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from ray_sched.otlp.pipeline import Ingest
from ray_sched.otlp.receiver import Receiver

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class FakeConfig:
    max_body_bytes: int = 1024 * 1024


class FakePipeline:
    """Answers like Ingest.accept: a summary, or the error it was told to raise."""

    def __init__(self, error: Exception | None = None, rejected: int = 0):
        self.config = FakeConfig()
        self.error = error
        self.rejected = rejected
        self.calls = []

    def stats(self):
        return {"requests": len(self.calls)}

    async def accept(self, signal, body, content_type, content_encoding=None):
        self.calls.append((signal, body, content_type, content_encoding))
        Ingest.check_content_type(content_type)
        if self.error is not None:
            raise self.error
        return {"accepted": 3, "rejected": self.rejected,
                "message": "1 of 4 spans rejected: spans[2].spanId: bad" if self.rejected else ""}


def run_against(pipeline, scenario, token=None):
    """Start a receiver on free ports, run ``scenario(receiver)``, stop it."""
    async def main():
        receiver = Receiver(pipeline, http_port=0, grpc_port=0, auth_token=token)
        await receiver.start()
        try:
            return await scenario(receiver)
        finally:
            await receiver.stop()
    return asyncio.run(main())


async def post(receiver, path, body, content_type="application/x-protobuf", headers=None):
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{receiver.http_port}{path}"
        async with session.post(url, data=body, headers={"Content-Type": content_type,
                                                         **(headers or {})}) as response:
            return response.status, dict(response.headers), await response.read()


def test_good_protobuf_request_gets_200_with_an_empty_response():
    status, headers, body = run_against(
        FakePipeline(), lambda r: post(r, "/v1/traces", b"\x0a\x00"))
    assert status == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert not response.HasField("partial_success")


def test_rejected_items_come_back_as_partial_success_in_json_for_json():
    status, headers, body = run_against(
        FakePipeline(rejected=1), lambda r: post(r, "/v1/traces", b"{}", "application/json"))
    assert status == 200 and headers["Content-Type"] == "application/json"
    import json
    partial = json.loads(body)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and "spanId" in partial["errorMessage"]


def test_invalid_payload_gets_400_with_a_status_naming_the_field():
    error = InvalidPayloadError("must be 16 bytes, got 3", "resourceSpans[0].traceId")
    status, _, body = run_against(FakePipeline(error), lambda r: post(r, "/v1/traces", b"x"))
    assert status == 400
    message = status_pb2.Status.FromString(body)
    assert message.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "resourceSpans[0].traceId" in message.message


def test_unsupported_content_type_gets_415():
    status, _, _ = run_against(FakePipeline(), lambda r: post(r, "/v1/logs", b"<x/>", "text/xml"))
    assert status == 415


def test_too_large_gets_413():
    status, _, _ = run_against(FakePipeline(PayloadTooLargeError("over 1 MiB")),
                               lambda r: post(r, "/v1/metrics", gzip.compress(b"x")))
    assert status == 413


def test_body_over_the_transport_limit_gets_413_before_reading_it_all():
    pipeline = FakePipeline()
    pipeline.config.max_body_bytes = 1000
    status, _, _ = run_against(pipeline, lambda r: post(r, "/v1/traces", b"x" * 5000))
    assert status == 413 and pipeline.calls == []


def test_overload_gets_429_with_retry_after():
    status, headers, _ = run_against(FakePipeline(OverloadedError("queue full", 2.0)),
                                     lambda r: post(r, "/v1/traces", b""))
    assert status == 429 and headers["Retry-After"] == "2"


def test_memory_limit_gets_503_with_retry_after():
    error = OverloadedError("memory limit", 1.0, http_status=503)
    status, headers, _ = run_against(FakePipeline(error), lambda r: post(r, "/v1/traces", b""))
    assert status == 503 and headers["Retry-After"] == "1"


def test_unknown_path_is_404_and_get_is_405():
    async def scenario(receiver):
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{receiver.http_port}"
            async with session.post(base + "/v1/nope", data=b"") as missing:
                async with session.get(base + "/v1/traces") as wrong_method:
                    return missing.status, wrong_method.status
    assert run_against(FakePipeline(), scenario) == (404, 405)


def test_bearer_token_required_when_set():
    async def scenario(receiver):
        without = await post(receiver, "/v1/traces", b"")
        wrong = await post(receiver, "/v1/traces", b"", headers={"Authorization": "Bearer no"})
        right = await post(receiver, "/v1/traces", b"", headers={"Authorization": "Bearer s3"})
        return without[0], wrong[0], right[0]
    assert run_against(FakePipeline(), scenario, token="s3") == (401, 401, 200)


def grpc_export(receiver, request, metadata=()):
    async def call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            return await stub.Export(request, metadata=metadata, timeout=10)
    return call()


def test_grpc_export_gets_the_response_with_partial_success():
    request = trace_service_pb2.ExportTraceServiceRequest()
    response = run_against(FakePipeline(rejected=1), lambda r: grpc_export(r, request))
    assert response.partial_success.rejected_spans == 1


def test_grpc_overload_is_unavailable_with_retry_info():
    async def scenario(receiver):
        try:
            await grpc_export(receiver, trace_service_pb2.ExportTraceServiceRequest())
        except grpc.aio.AioRpcError as error:
            return error
    error = run_against(FakePipeline(OverloadedError("queue full", 1.0)), scenario)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry) and retry.retry_delay.seconds == 1


def test_grpc_invalid_payload_is_invalid_argument_and_token_checked():
    async def scenario(receiver):
        codes = []
        for metadata in ((), (("authorization", "Bearer t"),)):
            try:
                await grpc_export(receiver, trace_service_pb2.ExportTraceServiceRequest(),
                                  metadata)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
        return codes
    codes = run_against(FakePipeline(InvalidPayloadError("bad")), scenario, token="t")
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT]


def test_unsupported_media_type_error_maps_to_415_class():
    assert UnsupportedMediaTypeError("x").http_status == 415


def test_stats_endpoint_answers_the_pipeline_counts_as_json():
    async def scenario(receiver):
        await post(receiver, "/v1/traces", b"")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{receiver.http_port}/stats") as response:
                return response.status, await response.json()
    assert run_against(FakePipeline(), scenario) == (200, {"requests": 1})
