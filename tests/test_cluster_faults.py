"""Cluster-scale faults on a real multi-node Ray cluster on this machine: `ray.cluster_utils.Cluster`
with every raylet on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; checked with `ss -ltn`), jobs
sent with `ray job submit`, output in SeaweedFS. A whole worker node SIGKILLed mid-run, a node added
mid-run, the driver SIGKILLed and the job resubmitted, two concurrent submits on one --out, and S3
behind a fault-injecting proxy with a 30 s outage. Each ends with every sample exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from s3_proxy import Faults, outage, s3_proxy
from servers import RayHead, free_ports
from test_job_ray import CPU_WORKERS, check_complete, committed, finish, objects, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# 24 shards of 2 samples x 300 DDPM steps: well over a minute of work for 2 one-CPU workers.
JOB = ["--classes", "1,2,3,4", "--per-class", "12", "--sampler", "ddpm", "--steps", "300", "--shard-size", "2",
       "--batch-size", "2", *CPU_WORKERS, "--retry-backoff", "1", "--retry-backoff-max", "8"]  # fmt: skip
SAMPLES = 48


def listeners() -> set[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


class MultiNode:
    """A head (the driver's node, no CPUs for workers) plus one-CPU worker nodes, all on loopback."""

    def __init__(self, temp_dir: Path) -> None:
        from ray.cluster_utils import Cluster

        (dashboard,) = free_ports(1)
        head = {
            "num_cpus": 0,  # the driver's node: workers go to the worker nodes
            "node_ip_address": "127.0.0.1",
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
            "temp_dir": str(temp_dir),
            "object_store_memory": 80_000_000,
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.head = RayHead(self.cluster.address, f"http://127.0.0.1:{dashboard}")
        self.workers = [self.add() for _ in range(2)]

    def add(self):
        node = self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80_000_000)
        return node

    def kill(self, node) -> None:
        """SIGKILL every process of one worker node (raylet, object store, its workers)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNode]:
    before = listeners()
    temp_dir = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
    # Cluster() records its address in RAY_TMPDIR/ray/ray_current_cluster without creating the folder
    # (/tmp/ray on a fresh machine): point it inside this cluster's own folder.
    (temp_dir / "ray").mkdir()
    env = {
        "RAY_TMPDIR": str(temp_dir),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Notice a dead node within seconds rather than the default half minute.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    # An earlier test in this process may still be connected to another head (ray.init is process-wide):
    # nodes then added to this cluster never reached the job's driver (seen under pytest-xdist).
    ray.shutdown()
    cluster = MultiNode(temp_dir)
    try:
        new = listeners() - before
        loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")  # v4, v4-mapped v6, v6
        assert new and all(addr.startswith(loopback) for addr in new), sorted(new)  # nothing on 0.0.0.0 or [::]
        yield cluster
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(multinode: MultiNode, s3_server, *args: object, env: dict[str, str] | None = None) -> str:
    sid = f"dit-{uuid.uuid4().hex[:12]}"
    entrypoint = ["python", "-m", "jobs.generate", *map(str, args)]
    proc = multinode.head.submit(entrypoint, working_dir=REPO, env_vars=s3_server.env() | (env or {}),
                                 submission_id=sid, wait=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sid


def summary_of(s3_server, bucket: str, prefix: str) -> dict:
    return json.loads(s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())


def test_a_lost_node_and_a_joining_node(multinode: MultiNode, s3_server, s3_bucket: str, tiny_ckpt: Path) -> None:
    """Start with the 2 workers that fit; a third node joins and gets a worker; then a whole node is
    SIGKILLed mid-run: its shards are rerun on the others, and the set completes exactly once."""
    # 32 shards of 1000 steps: long enough that a node joining once the job runs still gets work.
    job = [*JOB, "--per-class", 16, "--steps", 1000]
    sid = submit(multinode, s3_server, "--model", tiny_ckpt, *job, "--num-workers", 3, "--min-workers", 1,
                 "--out", f"s3://{s3_bucket}/nodes")  # fmt: skip
    wait_for(lambda: "started 2 worker(s)" in multinode.head.job_logs(sid), 120, "the job's first two workers")
    joined = multinode.add()
    try:  # the new node's worker loads and commits a shard before another node is killed
        wait_for(lambda: "worker 2 returned its first result" in multinode.head.job_logs(sid), 240, "the new node")
    except TimeoutError:
        raise AssertionError(multinode.head.job_logs(sid)[-4000:]) from None
    assert "a node joined: started worker 2" in multinode.head.job_logs(sid)
    victim = next(n for n in multinode.workers if n is not joined)
    assert len(committed(s3_server, s3_bucket, "nodes")) < 28  # still mid-run
    multinode.kill(victim)
    assert finish(multinode.head, sid, timeout=480) == "SUCCEEDED", multinode.head.job_logs(sid)[-3000:]
    check_complete(s3_server, s3_bucket, "nodes", 64)
    summary = summary_of(s3_server, s3_bucket, "nodes")
    logs = multinode.head.job_logs(sid)
    assert summary["workers_placed"] == 3 and summary["shards_by_worker"][2] >= 1, (summary, logs[-3000:])
    assert summary["retries"] >= 1 or "died" in multinode.head.job_logs(sid)
    multinode.workers.append(multinode.add())  # back to two worker nodes for the next tests


def driver_pids(out: str) -> list[int]:
    """PIDs of the job drivers (jobs.generate processes) writing to `out`, all started by this test."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        if b"jobs.generate" in cmd and out.encode() in cmd:
            found.append(int(entry.name))
    return found


def recorded(s3_server, bucket: str, prefix: str) -> list[str]:
    """The commit index's logs under the output (each run writes an empty snapshot when it starts; a
    log holds recorded commits)."""
    return [k for k in objects(s3_server, bucket, prefix) if k.startswith("index/log-")]


def test_driver_sigkill_then_resubmit(multinode: MultiNode, s3_server, s3_bucket: str, tiny_ckpt: Path) -> None:
    out = f"s3://{s3_bucket}/driver"
    # The dead driver's lease (renewed every ttl/4) must outlive the next submission's start, sent the
    # moment the driver dies (its refusal came 6.7 s after the kill here; the lease holds 15 s at least),
    # then expire within the test.
    ttl = 20
    # 150-step shards: the run is still young when it is killed, and the resubmission has less to redo.
    args = ["--model", tiny_ckpt, *JOB, "--steps", 150, "--num-workers", 2, "--lease-ttl", ttl, "--out", out]
    sid = submit(multinode, s3_server, *args)
    # A commit counts for the next run once the driver has recorded it in the commit index (a log
    # object, written at most 2 s after the commit): a shard committed but not yet recorded when the
    # driver dies is made again, overwriting the same keys.
    wait_for(lambda: recorded(s3_server, s3_bucket, "driver"), 240, "a first recorded commit")
    pids = wait_for(lambda: driver_pids(out), 30, "the driver process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # no cleanup at all: the lease is left to expire
    killed = time.monotonic()
    early = submit(multinode, s3_server, *args)  # at once: the dead driver's lease still holds
    assert finish(multinode.head, sid) in ("FAILED", "STOPPED")
    assert "_SUCCESS" not in [k.rpartition("/")[2] for k in committed(s3_server, s3_bucket, "driver")]
    assert finish(multinode.head, early) == "FAILED"
    print(f"the early submission was refused within {time.monotonic() - killed:.1f} s of the kill (ttl {ttl} s)")
    assert "is being written by another run" in multinode.head.job_logs(early)
    time.sleep(max(0.0, killed + ttl + 0.5 - time.monotonic()))
    again = submit(multinode, s3_server, *args)
    assert finish(multinode.head, again, timeout=480) == "SUCCEEDED", multinode.head.job_logs(again)[-3000:]
    check_complete(s3_server, s3_bucket, "driver", SAMPLES)
    assert summary_of(s3_server, s3_bucket, "driver")["shards_skipped"] >= 1


def test_two_concurrent_submits_one_proceeds(multinode: MultiNode, s3_server, s3_bucket: str, tiny_ckpt) -> None:
    out = f"s3://{s3_bucket}/twice"
    # 6 shards of 20 steps: the loser is refused at its start whatever the job's length; the winner need
    # not run long.
    args = ["--model", tiny_ckpt, *JOB, "--per-class", 3, "--steps", 20, "--num-workers", 1, "--out", out]
    first, second = submit(multinode, s3_server, *args), submit(multinode, s3_server, *args)
    ends = {sid: finish(multinode.head, sid, timeout=480) for sid in (first, second)}
    assert sorted(ends.values()) == ["FAILED", "SUCCEEDED"], ends
    loser = next(sid for sid, end in ends.items() if end == "FAILED")
    assert "is being written by another run" in multinode.head.job_logs(loser)
    check_complete(s3_server, s3_bucket, "twice", 12)


def test_storage_faults_and_a_30_s_outage(multinode: MultiNode, s3_server, s3_bucket: str, tiny_ckpt) -> None:
    """Workers and driver reach S3 through a proxy answering 500s, 503 SlowDown, resets and stalls,
    which then drops everything for 30 s mid-run: backoff rides it out, nothing lost or doubled."""
    faults = Faults(error_500=0.05, slow_down_503=0.05, reset=0.03, stall=0.02, stall_s=2.0, seed=7)
    with s3_proxy(s3_server.endpoint, faults) as endpoint:
        # Tries 2-4, then 4-8 s apart: 12 tries span at least 42 s, so 30 s of outage cannot use them up
        # (botocore's own retry quota drains within seconds of an outage), and a shard is tried again
        # within 8 s of the outage's end.
        sid = submit(multinode, s3_server, "--model", tiny_ckpt, *JOB, "--num-workers", 2, "--retry-backoff", 4,
                     "--retry-backoff-max", 8, "--max-tries", 12, "--out", f"s3://{s3_bucket}/faults",
                     env={"AWS_ENDPOINT_URL": endpoint})  # fmt: skip
        wait_for(lambda: committed(s3_server, s3_bucket, "faults"), 240, "a first committed shard")
        outage(faults, 30.0)
        assert finish(multinode.head, sid, timeout=480) == "SUCCEEDED", multinode.head.job_logs(sid)[-3000:]
    assert faults.counts["outage"] > 0 and faults.counts["error_500"] + faults.counts["slow_down_503"] > 0
    check_complete(s3_server, s3_bucket, "faults", SAMPLES)
    summary = summary_of(s3_server, s3_bucket, "faults")
    print(f"faults: {dict(faults.counts)}; retries {summary['retries']}, wall {summary['wall_time_s']} s")
    assert summary["retries"] >= 1  # the outage failed shards, and their tries brought them back
