"""OTLP pipeline benchmark: spans per second end to end through ``ray-sched serve``.

Protobuf over HTTP, requests of 512 spans of nested traces (ray_sched.otlp.synthetic),
sent by concurrent clients to a ``ray-sched serve`` process on this machine; the clock
stops when the receiver reports every span processed (span-tree assembly, tail
sampling, span metrics, in the exporter). Beside it, in the same run: the bare
``ExportTraceServiceRequest.ParseFromString`` rate of the same payloads (the ceiling
for Python) and our decode-to-columns rate. Then SIGTERM, and the rows in the export
dir are counted against the spans sent.

    .venv/bin/python benchmarks/otlp.py [--requests 600] [--concurrency 8] [--slots 2]

Writes benchmarks/results/<date>/otlp/{report.md,summary.json}. The target is the
OpenTelemetry Collector's published 2-CPU figure, 24,000 spans/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)

from ray_sched.otlp.decode import decode_request  # noqa: E402
from ray_sched.otlp.synthetic import trace_request  # noqa: E402

COLLECTOR_2CPU_SPANS_S = 24_000
SPANS_PER_REQUEST = 512
WARMUP_REQUESTS = 40


def bare_rates(payloads: list[bytes], spans: int) -> dict:
    """Single-process decode rates of the same payloads: protobuf alone, and ours."""
    start = time.perf_counter()
    for body in payloads:
        ExportTraceServiceRequest.FromString(body)
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    for body in payloads:
        decode_request("traces", body, "application/x-protobuf")
    decode_s = time.perf_counter() - start
    return {"parse_spans_s": spans / parse_s, "decode_spans_s": spans / decode_s}


class ServeProcess:
    def __init__(self, export_dir: Path, slots: int):
        command = [sys.executable, "-m", "ray_sched.cli", "serve", "--export-dir",
                   str(export_dir), "--http-port", "0", "--no-grpc", "--slots", str(slots),
                   "--model-dir", str(export_dir.parent / "models"), "--fresh"]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = None
        while self.url is None:
            line = self.next_line(300)
            if line.startswith("OTLP/HTTP listening on "):
                self.url = line.rsplit(" ", 1)[1]

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout_s: float) -> str:
        line = self.lines.get(timeout=timeout_s)
        if line is None:
            raise RuntimeError(f"serve exited: {self.output[-20:]}")
        self.output.append(line)
        return line

    def drain(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        while True:
            line = self.next_line(300)
            if line.startswith("drained: "):
                result = json.loads(line[len("drained: "):])
                self.process.wait(120)
                return result


async def send_all(url: str, payloads: list[bytes], concurrency: int) -> dict:
    """POST every payload with ``concurrency`` clients; honour 429/503 Retry-After."""
    pending = list(reversed(payloads))
    counts = {"ok": 0, "retried": 0, "failed": 0}
    headers = {"Content-Type": "application/x-protobuf"}

    async def client(session: aiohttp.ClientSession):
        while pending:
            body = pending.pop()
            while True:
                async with session.post(f"{url}/v1/traces", data=body,
                                        headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        counts["ok"] += 1
                        break
                    if response.status in (429, 503):
                        counts["retried"] += 1
                        await asyncio.sleep(float(response.headers.get("Retry-After", 1)))
                        continue
                    counts["failed"] += 1
                    break

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return counts


async def wait_processed(url: str, expected_spans: int, timeout_s: float = 600) -> float:
    """Poll ``/stats`` until every span sent is processed; returns when that happened."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{url}/stats") as response:
                stats = await response.json()
            if stats["processed"] + stats["lost"] >= expected_spans:
                return time.perf_counter()
            await asyncio.sleep(0.02)
    raise TimeoutError(f"not every span was processed in {timeout_s} s: {stats}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / "otlp")
    export_dir = out / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    shutil.rmtree(out / "models", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    print(f"generating {args.requests + WARMUP_REQUESTS} requests of {SPANS_PER_REQUEST} spans")
    payloads = [trace_request(SPANS_PER_REQUEST, seed=i).SerializeToString()
                for i in range(args.requests + WARMUP_REQUESTS)]
    warmup, timed = payloads[:WARMUP_REQUESTS], payloads[WARMUP_REQUESTS:]
    timed_spans = len(timed) * SPANS_PER_REQUEST
    rates = bare_rates(timed, timed_spans)
    print(f"bare ParseFromString: {rates['parse_spans_s']:,.0f} spans/s; "
          f"decode to columns: {rates['decode_spans_s']:,.0f} spans/s")

    server = ServeProcess(export_dir, args.slots)
    try:
        asyncio.run(send_all(server.url, warmup, args.concurrency))
        asyncio.run(wait_processed(server.url, len(warmup) * SPANS_PER_REQUEST))
        start = time.perf_counter()
        counts = asyncio.run(send_all(server.url, timed, args.concurrency))
        answered = time.perf_counter()
        done = asyncio.run(wait_processed(server.url, len(payloads) * SPANS_PER_REQUEST))
        drained = server.drain()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    e2e = timed_spans / (done - start)
    rows = len(pd.read_parquet(export_dir / "spans", columns=["span_id"]))
    summary = {
        "requests": len(timed), "spans": timed_spans, "concurrency": args.concurrency,
        "slots": args.slots, "end_to_end_spans_s": e2e,
        "accept_spans_s": timed_spans / (answered - start),
        **rates, "ratio_to_bare_parse": e2e / rates["parse_spans_s"],
        "collector_2cpu_spans_s": COLLECTOR_2CPU_SPANS_S,
        "ratio_to_collector": e2e / COLLECTOR_2CPU_SPANS_S,
        "retried_429_503": counts["retried"], "failed": counts["failed"],
        "rows_exported": rows, "spans_sent": len(payloads) * SPANS_PER_REQUEST,
        "drained": drained,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    verdict = "met" if e2e >= COLLECTOR_2CPU_SPANS_S else "NOT met"
    report = f"""# OTLP pipeline benchmark ({datetime.date.today().isoformat()})

Command: `.venv/bin/python benchmarks/otlp.py --requests {args.requests} --concurrency \
{args.concurrency} --slots {args.slots}`

| measure | value |
|---|---|
| end to end through `ray-sched serve` (protobuf/HTTP, {SPANS_PER_REQUEST}-span requests) | \
**{e2e:,.0f} spans/s** |
| accepted (answered 200) | {summary['accept_spans_s']:,.0f} spans/s |
| bare `ParseFromString`, same payloads, one process | {rates['parse_spans_s']:,.0f} spans/s |
| our decode to columns, one process | {rates['decode_spans_s']:,.0f} spans/s |
| end to end / bare parse | {summary['ratio_to_bare_parse']:.3f} |
| end to end / Collector 2-CPU figure (24,000) | {summary['ratio_to_collector']:.2f}x ({verdict}) |
| requests refused with 429/503 and retried | {counts['retried']} |
| spans sent / rows in `spans/` | {summary['spans_sent']:,} / {rows:,} |
"""
    (out / "report.md").write_text(report)
    print(report)
    return 0 if rows == summary["spans_sent"] and counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
