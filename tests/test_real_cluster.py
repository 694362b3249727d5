"""A real multi-node Ray cluster on this machine, the way the README documents it:
``ray start --head`` plus two ``ray start --address`` workers on loopback, then
``ray-sched replay --address`` and ``ray job submit -- ray-sched replay``; one local
scheduler per node, tasks on every node.

The cluster's processes live under their own temp dir and are stopped by it, so that
nothing else on the machine (another Ray) is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BIN = Path(sys.executable).parent
TRACE = REPO / "examples" / "mixed-300.csv"
#: CPUs of the head and of each worker node (small: the machine has 2 cores).
NODE_CPUS = (2, 1, 1)
#: How long `ray job submit` may be told that no job agent is up yet.
AGENT_WAIT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], timeout_s: float = 180, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                            cwd=REPO, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def processes_under(temp_dir: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if temp_dir in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    import ray
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rsc", dir="/tmp")  # short: Ray's socket paths
    port, dashboard = free_port(), free_port()
    # Loopback only: no token needed (Ray 2.60 enables token auth by default; on a real
    # cluster, copy ~/.ray/auth_token to every node instead).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
              "--object-store-memory=150000000"]

    def own_ports() -> list[str]:
        # Several nodes on one machine (and any other Ray on it) must not share an agent's
        # ports; Ray's defaults are fixed numbers.
        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}"]
    try:
        run([str(BIN / "ray"), "start", "--head", f"--port={port}",
             f"--num-cpus={NODE_CPUS[0]}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *common,
             *own_ports()], env=env)
        for cpus in NODE_CPUS[1:]:
            run([str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}",
                 f"--num-cpus={cpus}", *common, *own_ports()], env=env)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}",
               "env": env}
    finally:
        for pid in processes_under(temp_dir):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5  # then SIGKILL: waiting longer only costs CI time
        while processes_under(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in processes_under(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def check_results(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == summary["n_tasks"] == 300
    tasks = pd.read_parquet(out / "tasks.parquet")
    assert tasks["node"].nunique() == len(NODE_CPUS)     # every node ran tasks
    assert tasks["worker"].nunique() == len(NODE_CPUS)   # one local scheduler per node


def test_replay_with_address_uses_one_local_scheduler_per_node(cluster, tmp_path):
    out = tmp_path / "replay"
    run([sys.executable, "-m", "ray_sched.cli", "replay", str(TRACE), "--policy", "ml",
         "--slots", "4", "--address", cluster["address"], "--time-scale", "0.5",
         "--fresh", "--model-dir", str(tmp_path / "models"), "--out", str(out),
         "--no-progress"], env=cluster["env"], timeout_s=300)
    check_results(out)


def test_ray_job_submit_runs_a_replay_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "job"
    entrypoint = (f"{sys.executable} -m ray_sched.cli replay {TRACE} --policy fifo --slots 4 "
                  f"--address auto --time-scale 0.5 --out {out} --no-progress")
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--",
               *entrypoint.split()]
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:  # the head's job agent comes up some seconds after `ray start` returns
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                cwd=REPO, env=cluster["env"])
        if result.returncode == 0 or "No available agent" not in result.stderr + result.stdout:
            break
        assert time.monotonic() < deadline, "the job agent never came up"
        time.sleep(2)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    check_results(out)
