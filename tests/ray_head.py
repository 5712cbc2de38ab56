"""A private Ray head for tests: loopback only, free ports for every port Ray lets us set, its own
temp dir, its own process group (stopped with servers.stop, never `ray stop`, which would stop every
Ray instance on the machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import BIN, free_ports, stop


@contextmanager
def ray_head(env: dict[str, str] | None = None, num_cpus: int = 2) -> Iterator[str]:
    """Yields the GCS address (`127.0.0.1:PORT`) once a driver can connect."""
    ray = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
    if ray is None:
        raise RuntimeError("the ray CLI is missing: pip install 'ray[default]'")
    # Ray puts unix sockets under the temp dir: keep its path short (sockets are limited to 107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayfid-", dir="/tmp"))
    gcs, node_manager, object_manager, client, dashboard, agent_listen, agent_grpc, runtime_env, metrics, *workers = (
        free_ports(9 + 8)
    )
    cmd = [
        ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--ray-client-server-port={client}", "--include-dashboard=false", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        f"--worker-port-list={','.join(map(str, workers))}", f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=300000000", "--disable-usage-stats",
    ]  # fmt: skip
    full_env = (
        os.environ
        | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        # On SIGTERM, stop at once instead of first draining the node for 30 s.
        | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        | (env or {})
    )
    full_env.pop("RAY_ADDRESS", None)
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    try:
        deadline = time.monotonic() + 90
        while not list(temp_dir.glob("session_*/logs/raylet.out")) or not _gcs_ready(address):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray head exited with {proc.returncode}: {(temp_dir / 'head.log').read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray head not ready in 90 s: {(temp_dir / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        # The group holds only our head (gcs, raylet, agents); workers, in sessions of their own, exit with the raylet.
        stop(proc, timeout=15)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _gcs_ready(address: str) -> bool:
    import socket

    host, port = address.split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0
