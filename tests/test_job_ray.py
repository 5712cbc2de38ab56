"""The distributed job for real: a Ray head on 127.0.0.1, jobs sent with `ray job submit`, output in
SeaweedFS with enforced credentials. Drivers are stopped mid-run; a worker killed by PID mid-run is
tests/test_job_t2i.py's (the same pool for every backend), a whole node tests/test_cluster_faults.py's."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from pyarrow.fs import S3FileSystem
from s3_proxy import Faults, s3_proxy

from dit_worker.output.commit_index import committed_shards
from dit_worker.storage.objects import open_storage
from jobs.generate import main

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
CPU_WORKERS = ["--num-gpus-per-worker", "0", "--device", "cpu", "--dtype", "float32"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
RELEASED = r"lease released (\d+\.\d+) s after SIGTERM"  # the stopped driver's log line


def wait_for(fetch: Callable[[], T], timeout: float, what: str) -> T:
    """Poll until `fetch` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while not (value := fetch()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.25)
    return value


def generate(ray_cluster, s3_server, *args: object, wait: bool = True, env: dict[str, str] | None = None):
    """`ray job submit` of the job; S3 endpoint and credentials reach it through the runtime env."""
    sid = f"dit-{uuid.uuid4().hex[:12]}"
    entrypoint = ["python", "-m", "jobs.generate", *map(str, args)]
    env_vars = s3_server.env() | (env or {})
    return sid, ray_cluster.submit(entrypoint, working_dir=REPO, env_vars=env_vars, submission_id=sid, wait=wait)


def finish(ray_cluster, sid: str, timeout: float = 240) -> str:
    wait_for(lambda: ray_cluster.job_status(sid) in TERMINAL, timeout, f"job {sid} to end")
    return ray_cluster.job_status(sid)


def objects(s3_server, bucket: str, prefix: str) -> dict[str, tuple[str, float]]:
    """key below prefix -> (ETag, LastModified) for every stored object."""
    out = {}
    for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1 :]] = (o["ETag"], o["LastModified"].timestamp())
    return out


def committed(s3_server, bucket: str, prefix: str) -> list[str]:
    return [k for k in objects(s3_server, bucket, prefix) if k.startswith("metadata/part-")]


def check_complete(s3_server, bucket: str, prefix: str, num_samples: int) -> pa.Table:
    """Every sample exactly once: one PNG and one metadata row each, the row's sha256 that of the PNG."""
    fs = S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
        region=s3_server.region,
    )
    table = ds.dataset(f"{bucket}/{prefix}/metadata", filesystem=fs, format="parquet").to_table().sort_by("sample_id")
    ids = table["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == num_samples
    keys = set(objects(s3_server, bucket, prefix))
    pngs = {k for k in keys if k.startswith("images/")}
    assert pngs == set(table["image_key"].to_pylist())
    assert {"job.json", "_SUCCESS"} <= keys
    client = s3_server.client()
    for key, sha in zip(table["image_key"].to_pylist(), table["sha256"].to_pylist(), strict=True):
        data = client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == sha, key
    return table


def success(s3_server, bucket: str, prefix: str) -> dict:
    return json.loads(s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())


def test_job_submit_end_to_end_and_sharding_invariance(
    ray_cluster, s3_server, s3_bucket: str, tiny_ckpt: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"sample_id": 100 + i, "class_name": name, "seed": 1000 + 7 * i}
        for i, name in enumerate(["umbrella", "golden retriever", "otter", "white shark"] * 3)
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = s3_server.client()
    for path in tiny_ckpt.rglob("*"):  # the model too comes from S3, cached once on this (only) node
        if path.is_file():
            client.put_object(
                Bucket=s3_bucket, Key=f"models/tiny/{path.relative_to(tiny_ckpt)}", Body=path.read_bytes()
            )
    cache = tmp_path / "cache"
    fast = ["--manifest", manifest, "--sampler", "ddim", "--steps", "3"]
    _, proc = generate(
        ray_cluster, s3_server, *fast, "--model", f"s3://{s3_bucket}/models/tiny", *CPU_WORKERS, "--num-workers", 2,
        "--shard-size", 4, "--batch-size", 2, "--out", f"s3://{s3_bucket}/ray", env={"DIT_WORKER_CACHE": str(cache)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "samples: 100%|" in proc.stdout  # the progress bar, as `ray job logs` shows it
    table = check_complete(s3_server, s3_bucket, "ray", len(rows))
    assert table["class_id"].to_pylist() == [879, 207, 360, 2] * 3
    assert table["class_name"].to_pylist()[:4] == ["umbrella", "golden retriever", "otter", "great white shark"]
    summary = success(s3_server, s3_bucket, "ray")
    assert (summary["samples"], summary["shards"], summary["workers_placed"], summary["retries"]) == (12, 3, 2, 0)
    assert [p.name for p in cache.rglob(".complete")] == [".complete"]  # one copy for the driver and both workers

    # The same manifest in one local process, other shard and batch sizes: the same PNG bytes.
    local = tmp_path / "local"
    args = [*fast, "--model", tiny_ckpt, "--local", "--shard-size", 5, "--batch-size", 3, "--out", local]
    assert main([str(a) for a in args]) == 0
    local_table = ds.dataset(local / "metadata").to_table().sort_by("sample_id")
    assert local_table["sample_id"].to_pylist() == table["sample_id"].to_pylist()
    assert local_table["sha256"].to_pylist() == table["sha256"].to_pylist()
    assert local_table["image_key"].to_pylist() != table["image_key"].to_pylist()  # other shards, same pixels


# 24 shards of 2 samples: five stopped runs each commit a few, and the sixth still has shards to make.
STOP_JOB = ["--classes", "1,2,3,4", "--per-class", "12", "--sampler", "ddim", "--steps", "100", "--shard-size", "2"]
STOP_ROUNDS = 5
STOP_GRACE_S = 3.0  # Ray's RAY_JOB_STOP_WAIT_TIME_S default: SIGKILL follows SIGTERM after this long
WRITE_DELAY_S = 1.0  # the proxy holds every write this long: the unwinding of a stopped driver outlasts the grace


def lease_freed_after(s3_server, bucket: str, key: str, since: float, timeout: float = 10.0) -> float:
    """Seconds from `since` until the lease at `key` is released (no token, expired), read past the proxy."""
    client = s3_server.client()
    while time.monotonic() - since < timeout:
        lease = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        if lease["token"] is None and lease["expires_at_s"] == 0.0:
            return time.monotonic() - since
        time.sleep(0.02)
    raise AssertionError(f"the lease was still held {timeout} s after the stop: {lease}")


def test_a_stopped_driver_frees_its_output_at_once_and_the_same_command_resumes(
    ray_cluster, s3_server, s3_bucket: str, tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray job stop`, then the same command at once, five times, with storage holding every write 1 s from
    a moment before each stop until its lease is free (so writes are in flight when SIGTERM lands, and
    the release goes through slow storage): each resubmission takes the output (the stopped driver
    released its lease within Ray's grace), and the last one completes it, every sample once, leaving
    what the stopped runs recorded untouched."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_bucket}/stop"
    faults = Faults()  # fast until a run has recorded a shard: each round's start-up need not be slow
    with s3_proxy(s3_server.endpoint, faults) as slow:
        # One worker: each round starts one actor (an import of torch and a model load) on this 2-core machine.
        args = ["--model", tiny_ckpt, *STOP_JOB, *CPU_WORKERS, "--num-workers", 1, "--out", url]
        env = {"AWS_ENDPOINT_URL": slow}
        kept: dict[str, tuple[str, float]] = {}
        freed, stopped, recorded = [], [], set()
        sid, _ = generate(ray_cluster, s3_server, *args, wait=False, env=env)
        submitted = time.monotonic()
        for round_ in range(STOP_ROUNDS):

            def new_record(sid: str = sid, seen: int = len(recorded)) -> bool:
                if ray_cluster.job_status(sid) in TERMINAL:  # refused, or failed: no point waiting
                    raise AssertionError(ray_cluster.job_logs(sid)[-3000:])
                return len(committed_shards(open_storage(url))) > seen

            wait_for(new_record, 180, "a new shard recorded in the commit index")
            print(f"round {round_}: a new record {time.monotonic() - submitted:.1f} s after the submission")
            faults.delay_writes_s = WRITE_DELAY_S
            time.sleep(WRITE_DELAY_S + 0.5)  # the workers' and the driver's writes now in flight are held ones
            t0 = time.monotonic()
            ray_cluster.request_stop(sid)
            freed.append(lease_freed_after(s3_server, s3_bucket, "stop/_lease.json", t0))
            stopped.append(sid)  # it may still be unwinding: the next run starts beside it, as a user's would
            # Recorded in the commit index: those objects stay as they are (a part written while the
            # driver stopped is made again, identically).
            recorded = set(committed_shards(open_storage(url)))
            before = objects(s3_server, s3_bucket, "stop")
            shards = {f"{k:05d}" for k in recorded}
            kept |= {
                k: v
                for k, v in before.items()
                if k == "job.json"
                or k in {f"metadata/part-{s:05d}.parquet" for s in recorded}
                or (k.startswith("images/") and k.split("/")[1] in shards)
            }
            faults.delay_writes_s = 0.0
            if round_ == STOP_ROUNDS - 1:
                args[args.index("--num-workers") + 1] = 2  # may change between runs (not in the fingerprint)
            sid, _ = generate(ray_cluster, s3_server, *args, wait=False, env=env)  # at once: not refused
            submitted = time.monotonic()
            print(f"round {round_}: resubmitted {submitted - t0:.1f} s after the stop request")
            wait_for(lambda old=stopped[-1]: ray_cluster.job_status(old) == "STOPPED", 30, "the stopped job's end")
        assert finish(ray_cluster, sid) == "SUCCEEDED", ray_cluster.job_logs(sid)[-3000:]
    said = []  # each stopped driver's own line (read now: the dashboard's copy of a log may trail its end)
    for sid in stopped:
        try:
            wait_for(lambda sid=sid: re.search(RELEASED, ray_cluster.job_logs(sid)), 20, "the release line")
        except TimeoutError:
            raise AssertionError(ray_cluster.job_logs(sid)[-3000:]) from None
        said += re.findall(RELEASED, ray_cluster.job_logs(sid))
    assert len(said) == STOP_ROUNDS, said
    print(f"lease free after the stop request: {', '.join(f'{t:.2f}' for t in freed)} s; the driver's release: "
          f"{', '.join(said)} s after its SIGTERM handler ran")  # fmt: skip
    assert max(freed) < STOP_GRACE_S, freed
    after = objects(s3_server, s3_bucket, "stop")
    assert {k: after[k] for k in kept} == kept  # same ETag and LastModified
    check_complete(s3_server, s3_bucket, "stop", 48)
    summary = success(s3_server, s3_bucket, "stop")
    assert 1 <= len(recorded) < 24 and summary["shards_skipped"] == len(recorded)
    assert summary["shards_generated"] == 24 - len(recorded)

    # jobs.verify --full --ray checks the committed shards on Ray actors of the same cluster.
    sid = f"verify-{uuid.uuid4().hex[:12]}"
    entry = ["python", "-m", "jobs.verify", "--out", url, "--full", "--ray"]
    proc = ray_cluster.submit(entry, working_dir=REPO, env_vars=s3_server.env(), submission_id=sid, wait=True)
    logs = ray_cluster.job_logs(sid)
    assert proc.returncode == 0 and ray_cluster.job_status(sid) == "SUCCEEDED", logs[-3000:]
    assert '"shards_checked": 24, "shards_broken": [], "sha256_checked": true' in logs, logs[-3000:]


def test_more_workers_than_the_cluster_can_place_is_refused(
    ray_cluster, s3_server, s3_bucket: str, tiny_ckpt: Path
) -> None:
    args = ["--model", tiny_ckpt, "--classes", "1", "--per-class", "2", "--num-workers", 3, *CPU_WORKERS]
    sid, proc = generate(ray_cluster, s3_server, *args, "--out", f"s3://{s3_bucket}/big")
    assert proc.returncode != 0 and ray_cluster.job_status(sid) == "FAILED"
    logs = ray_cluster.job_logs(sid)
    assert "--num-workers 3 cannot be placed" in logs and "room for 2" in logs, logs[-3000:]
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_a_shard_failing_every_try_fails_the_job(ray_cluster, s3_server, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"  # a local folder: the one machine is the whole cluster
    (out / "images" / "00001" / "00000003.png").mkdir(parents=True)  # every put of this image fails
    args = ["--model", tiny_ckpt, "--classes", "1,2", "--per-class", "3", "--sampler", "ddim", "--steps", "2"]
    sid, proc = generate(
        ray_cluster, s3_server, *args, *CPU_WORKERS, "--num-workers", 1, "--shard-size", 2, "--out", out,
        "--max-tries", 3, "--retry-backoff", 0.1,
    )  # fmt: skip
    assert proc.returncode != 0 and ray_cluster.job_status(sid) == "FAILED"
    logs = ray_cluster.job_logs(sid)
    assert "error: shard 00001 failed 3 time(s), giving up; last error: IsADirectoryError" in logs, logs[-3000:]
    assert (out / "metadata" / "part-00000.parquet").is_file()
    assert not (out / "metadata" / "part-00001.parquet").exists() and not (out / "_SUCCESS").exists()


@pytest.fixture(autouse=True)
def _no_leftover_workers(request: pytest.FixtureRequest) -> None:
    """Each test starts with no worker of an earlier job still alive (they share one head)."""
    if "ray_cluster" in request.fixturenames:
        head = request.getfixturevalue("ray_cluster")
        wait_for(lambda: not head.actor_pids("ShardWorker"), 60, "earlier jobs' workers to exit")
