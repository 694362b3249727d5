"""OTLP benchmark: ``ray-sched serve`` under the load generator our Collector figures were
measured with (``../shared/tools/otlp_load.py``: 4 threads, 512-span protobuf requests of
nested traces over 8 services, 5% error traces, fresh trace ids per request).

    .venv/bin/python benchmarks/otlp.py [--duration 20] [--processors N] [--cluster]

Phases, on one ``serve`` (defaults: whole-trace tail sampling, decision wait 2 s):

1. bare rates of the same payloads in this process: ``FromString`` (a ceiling no reader
   of the spans reaches), the reference decoder and the columnar one;
2. half rate: for 10 s, requests paced at half the rate measured in a 5 s probe, to read
   the p99 request latency below saturation;
3. full rate: ``otlp_load.py`` for ``--duration`` seconds; accepted spans/s is its own
   figure; CPU seconds of every process but the load generator are sampled meanwhile;
4. SIGTERM: the drain decides every waiting trace and writes it; then every row of
   ``spans/`` is counted (each accepted span exactly once) and ``traces/`` too.

End to end = rows the full-rate phase landed / (its load time + the drain time). With
``--cluster``, serve joins a 2-node ``ray.cluster_utils`` cluster (processors on both
nodes). Compared with the OpenTelemetry Collector measured on this machine type under the
same load (the figures below); never with figures published for other hardware.

Writes benchmarks/results/<date>/otlp[-cluster]/{report.md,summary.json}.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib.util
import json
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LOAD_TOOL = REPO.parent / "shared" / "tools" / "otlp_load.py"

#: The OpenTelemetry Collector on this 2-core machine type, under this same load.
COLLECTOR = {"batch": {"spans_s": 295_000, "p99_ms": 20},
             "tail_sampling": {"spans_s": 116_000, "p99_ms": 111}}
PROBE_S = 5.0
HALF_RATE_S = 10.0


def load_module():
    if not LOAD_TOOL.exists():
        sys.exit(f"{LOAD_TOOL} is not here: the benchmark drives serve with it")
    spec = importlib.util.spec_from_file_location("otlp_load", LOAD_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_rates(load) -> dict:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from ray_sched.otlp.columnar import decode_traces
    from ray_sched.otlp.decode import decode_request

    rng = random.Random(7)
    bodies = [load.build_request(rng, 512, time.time_ns())[0] for _ in range(16)]
    spans = 16 * 512

    def rate(run) -> float:
        run()                                             # warm
        start = time.perf_counter()
        run()
        return spans / (time.perf_counter() - start)

    return {
        "parse_spans_s": rate(lambda: [ExportTraceServiceRequest.FromString(b)
                                       for b in bodies]),
        "reference_decode_spans_s": rate(lambda: [
            decode_request("traces", b, "application/x-protobuf") for b in bodies]),
        "columnar_decode_spans_s": rate(lambda: [decode_traces(bodies[i:i + 4])
                                                 for i in range(0, 16, 4)]),
    }


class Serve:
    """A ``ray-sched serve`` subprocess on free ports."""

    def __init__(self, export_dir: Path, extra: list[str]):
        command = [sys.executable, "-m", "ray_sched.cli", "serve", "--export-dir",
                   str(export_dir), "--http-port", "0", "--grpc-port", "0", *extra]
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

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=30) as response:
            return json.load(response)

    def drain(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        while True:
            line = self.next_line(600)
            if line.startswith("drained: "):
                self.process.wait(120)
                return json.loads(line[len("drained: "):])


def run_load(url: str, seconds: float, threads: int = 4) -> dict:
    done = subprocess.run([sys.executable, str(LOAD_TOOL), "--url", f"{url}/v1/traces",
                           "--threads", str(threads), "--duration", str(seconds)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def paced(load, url: str, requests_per_s: float, seconds: float, threads: int = 4) -> dict:
    """Requests at a fixed rate (a schedule shared by ``threads`` keep-alive clients), each
    with fresh trace ids; latencies of the 200s."""
    rng = random.Random(3)
    built = [load.build_request(rng, 512, time.time_ns()) for _ in range(16)]
    bodies = [(body, load.id_offsets(body, ids)) for body, ids in built]
    parts = urllib.parse.urlsplit(url)
    start = time.perf_counter() + 0.2
    total = int(requests_per_s * seconds)
    slots = iter(range(total))
    lock = threading.Lock()
    latencies, statuses = [], {}

    def client():
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while True:
            with lock:
                n = next(slots, None)
            if n is None:
                break
            time.sleep(max(0.0, start + n / requests_per_s - time.perf_counter()))
            body = fresh_ids(*bodies[n % len(bodies)], n)
            sent = time.perf_counter()
            connection.request("POST", "/v1/traces", body=body,
                               headers={"Content-Type": "application/x-protobuf"})
            response = connection.getresponse()
            response.read()
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append(time.perf_counter() - sent)
        connection.close()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()

    def quantile(q):
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {"requests_per_s": requests_per_s, "requests": total, "status_counts": statuses,
            "latency_ms": {"p50": quantile(0.5), "p99": quantile(0.99),
                           "max": quantile(1.0)}}


def fresh_ids(body: bytes, offsets: list[list[int]], n: int) -> bytes:
    """The same request with new trace ids (as otlp_load.py makes them: the first 10 bytes
    of each id replaced by a tag of this request)."""
    patched = bytearray(body)
    tag = b"\x5e\xed" + n.to_bytes(6, "big")
    for index, places in enumerate(offsets):
        new = tag + index.to_bytes(2, "big")
        for place in places:
            patched[place:place + 10] = new
    return bytes(patched)


def cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every process on the machine but ``exclude``."""
    seconds = {}
    for process in psutil.process_iter():
        if process.pid in exclude:
            continue
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.Error:
            pass
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--processors", type=int, default=None)
    parser.add_argument("--cluster", action="store_true",
                        help="serve joins a 2-node ray.cluster_utils cluster")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    load = load_module()
    name = "otlp-cluster" if args.cluster else "otlp"
    out = Path(args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat()
               / name)
    export_dir = out / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    rates = bare_rates(load)
    print(f"bare rates: {json.dumps({k: round(v) for k, v in rates.items()})}", flush=True)
    extra = ["--processors", str(args.processors)] if args.processors else []
    cluster = None
    if args.cluster:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        extra += ["--address", cluster.address]
    server = Serve(export_dir, extra)
    try:
        probe = run_load(server.url, PROBE_S)
        half_rate = probe["requests_per_s"] / 2
        half = paced(load, server.url, half_rate, HALF_RATE_S)
        print(f"half rate ({half_rate:.1f} requests/s): {json.dumps(half)}", flush=True)
        before = server.stats()
        me = {psutil.Process().pid}
        cpu_before = cpu_seconds(me)
        full = run_load(server.url, args.duration)
        cpu_after = cpu_seconds(me)
        load_end = time.perf_counter()
        print(f"full rate: {json.dumps(full)}", flush=True)
        stats = server.stats()
        drained = server.drain()
        drain_s = time.perf_counter() - load_end
    finally:
        if server.process.poll() is None:
            server.process.kill()
        if cluster is not None:
            cluster.shutdown()
    spans = pq.read_table(export_dir / "spans", columns=["trace_id", "span_id"])
    unique = spans.group_by(["trace_id", "span_id"]).aggregate([]).num_rows
    traces = pq.read_table(export_dir / "traces", columns=["trace_id"]).num_rows
    accepted_all = drained["accepted"]
    full_spans = accepted_all - before["accepted"]
    serve_cpu_s = sum(cpu_after.get(pid, 0) - cpu_before.get(pid, 0) for pid in cpu_after)
    summary = {
        "duration_s": args.duration, "processors": stats["processors"],
        "processor_nodes": stats["processor_nodes"], "bare": rates,
        "probe": probe, "half_rate": half, "full_rate": full,
        "accepted_spans_s": full["accepted_spans_per_s"],
        "end_to_end_spans_s": full_spans / (full["wall_s"] + drain_s),
        "drain_s": drain_s, "accepted_spans_total": accepted_all,
        "rows_in_spans": spans.num_rows, "distinct_spans_in_spans": unique,
        "every_accepted_span_landed_once": spans.num_rows == unique == accepted_all,
        "rows_in_traces": traces, "traces_decided": drained["traces_decided"],
        "cpu_s_per_million_spans": serve_cpu_s / full_spans * 1e6,
        "sampler": drained["sampler"], "collector": COLLECTOR,
        "ratio_to_collector_tail_sampling":
            full["accepted_spans_per_s"] / COLLECTOR["tail_sampling"]["spans_s"],
        "ratio_to_collector_batch":
            full["accepted_spans_per_s"] / COLLECTOR["batch"]["spans_s"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    command = "benchmarks/otlp.py" + (" --cluster" if args.cluster else "") + (
        f" --processors {args.processors}" if args.processors else "")
    report = f"""# OTLP benchmark ({datetime.date.today().isoformat()})

Command: `.venv/bin/python {command} --duration {args.duration:g}`; {stats['processors']}
processors on {stats['processor_nodes']} node(s).

| measure | ray-sched serve | Collector, tail sampling | Collector, batch |
|---|---|---|---|
| accepted spans/s (otlp_load, 4 threads) | {full['accepted_spans_per_s']:,.0f} | \
{COLLECTOR['tail_sampling']['spans_s']:,} | {COLLECTOR['batch']['spans_s']:,} |
| end to end spans/s (rows / (load + drain)) | {summary['end_to_end_spans_s']:,.0f} | | |
| p99 request latency at full rate | {full['latency_ms']['p99']} ms | \
{COLLECTOR['tail_sampling']['p99_ms']} ms | {COLLECTOR['batch']['p99_ms']} ms |
| p99 at half rate ({half_rate:.0f} requests/s) | {half['latency_ms']['p99']} ms | | |
| CPU s per million spans (all but the load generator) | \
{summary['cpu_s_per_million_spans']:.1f} | | |

- Every accepted span landed exactly once: {summary['every_accepted_span_landed_once']} \
({spans.num_rows:,} rows, {unique:,} distinct, {accepted_all:,} accepted); \
{traces:,} rows in `traces/`.
- Ratio to the Collector's tail-sampling pipeline: \
{summary['ratio_to_collector_tail_sampling']:.2f}x; to its batch pipeline: \
{summary['ratio_to_collector_batch']:.2f}x.
- Bare rates in one process: FromString {rates['parse_spans_s']:,.0f} spans/s, reference \
decode {rates['reference_decode_spans_s']:,.0f}, columnar decode \
{rates['columnar_decode_spans_s']:,.0f}.
- Sampling: {json.dumps(drained['sampler']['by_reason'])}.
"""
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
