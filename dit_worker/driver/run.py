"""A generation job from start to `_SUCCESS`, in the order it happens: plan (nothing written), check
that the workers fit (still nothing written), take OUT's lease (the first write; a second run is
refused here, before it loads a model), start the workers (a generic diffusers pipeline's batch check
runs on one), prepare OUT (uncommit broken shards, job.json, the commit index), run the pending
shards recording each commit in the index, and write `_SUCCESS` while still holding the lease.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dit_worker.backends import DiffusersSettings
from dit_worker.backends.diffusers.batch_check import SCAN_ROWS
from dit_worker.driver.config import JobConfig
from dit_worker.driver.errors import JobError, JobFailed
from dit_worker.driver.plan import JobPlan, plan_job
from dit_worker.driver.progress import progress_bar
from dit_worker.driver.workers import shard_pool, worker_spec
from dit_worker.execution.pool import ActorPool
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import Backoff, TaskFailed, TaskQueue
from dit_worker.output.commit_index import CommitRecorder
from dit_worker.output.layout import JOB_KEY, LEASE_KEY, SUCCESS_KEY
from dit_worker.output.lease import Lease, LeaseKeeper, LeaseLost, acquire, new_token, released_on_sigterm
from dit_worker.shard import BatchCheckTask, ShardResult, ShardTask, shard_name, shard_tasks
from dit_worker.storage.objects import Storage, StorageError

log = logging.getLogger(__name__)


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run (or resume) the job; returns the `_SUCCESS` summary."""
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    plan = plan_job(config)
    if plan.complete:
        log.info("%s is complete: all %d shards committed and intact", plan.storage.url, plan.num_shards)
        assert plan.previous_summary is not None
        return already_complete(plan.previous_summary, started_at, t0)
    token = new_token()
    # No workers when every shard is committed and only `_SUCCESS` is missing (a driver that died there).
    pool = shard_pool(worker_spec(config, plan.info), config) if plan.pending.size else None
    if pool is not None:
        pool.place()  # refuses a pool the cluster cannot place: still nothing written
    lease = take_lease(plan.storage, config.lease_ttl, token)
    try:
        with LeaseKeeper(lease) as keeper, released_on_sigterm(keeper):
            if pool is not None:
                start_workers(pool, plan)
            return _run(plan, pool, config, keeper, token, started_at, t0)
    except JobError:  # refused by the batch check: a new output is left as it was, without a lease
        if not plan.resuming:
            plan.storage.delete(LEASE_KEY)
            plan.storage.remove_root_if_empty()
        raise


def _run(
    plan: JobPlan,
    pool: ActorPool[ShardTask, ShardResult] | None,
    config: JobConfig,
    keeper: LeaseKeeper,
    token: str,
    started_at: datetime,
    t0: float,
) -> dict[str, Any]:
    """Under the lease, workers started: prepare OUT, run what is pending, write `_SUCCESS`."""
    prepare_output(plan)
    recorder = CommitRecorder(plan.storage, plan.index, token, keeper.check)
    queue = TaskQueue(
        shard_tasks(plan.manifest, map(int, plan.pending), config.shard_size),  # ints: they go into JSON logs
        config.max_tries,
        shard_name,
        Backoff(config.retry_backoff, config.retry_backoff_max),
    )
    stats, worker_seconds = PoolStats(0, 0, 0.0, 0.0), 0.0
    try:
        if pool is not None:
            stats, worker_seconds = run_pending(plan, pool, queue, recorder, config.shard_size)
    except BaseException:  # keep what did commit (failed shards, Ctrl-C, lost lease: nothing is recorded)
        if not keeper.lease.released:  # after a SIGTERM, the next run may already hold the output
            try:
                recorder.close(patience=0)  # stopping: one try, no wait for an outage
            except Exception as err:
                log.warning("could not record the last commits (%s): those shards will be made again", err)
        raise
    recorder.close()  # every commit of this run in the snapshot
    missing = plan.index.missing(plan.num_shards).tolist()
    if missing:
        raise JobFailed(f"shards {missing[:10]} have no metadata part after the run; rerun to finish them")
    summary = job_summary(plan, config, stats, queue.retries, worker_seconds, started_at, t0)
    keeper.check()
    plan.storage.put(SUCCESS_KEY, json.dumps(summary, indent=2).encode())
    return summary


def start_workers(pool: ActorPool[Any, Any], plan: JobPlan) -> None:
    """Start the workers (they load the model: the lease is held), and on a new output of a generic
    diffusers pipeline run the batch check (a batch-dependent pipeline is refused here)."""
    try:
        pool.start()
        if not plan.resuming:
            plan.record["batch_check"] = batch_check(pool, plan)
    except BaseException:
        pool.close()
        raise


def batch_check(pool: ActorPool[Any, Any], plan: JobPlan) -> dict[str, Any] | str | None:
    """The generic path's batch check on a started worker, before job.json is written
    (docs/backends.md); what job.json records of it. Raises JobError, with the one line to show,
    when it fails."""
    settings = plan.info.settings
    if not isinstance(settings, DiffusersSettings):
        return None
    if not settings.generic:
        return f"not run: {settings.pipeline} is a first-class family, tested against its pipeline per row"
    first = plan.manifest.rows(0, min(SCAN_ROWS, plan.manifest.num_rows)).load()
    queue = TaskQueue([(0, BatchCheckTask(first))], 1, lambda _: "the batch check")
    try:
        ((_, check),) = list(pool.map(queue))
    except TaskFailed as err:
        raise JobError(f"{settings.pipeline}: {err}") from None
    if not check.passed:
        raise JobError(check.refusal())
    log.info("batch check passed: %s", check)
    return check.model_dump() | {"passed": True}


def take_lease(storage: Storage, ttl: float, token: str) -> Lease:
    """The run's first write into OUT, as one clear error when OUT cannot take it (a full disk, a
    read-only mount), removing the folder it created if it is left empty."""
    existed = storage.root_exists()
    try:
        return acquire(storage, ttl, token)
    except OSError as err:
        if not existed:
            storage.remove_root_if_empty()
        raise StorageError(f"{storage.url}: cannot write ({err.strerror or err})") from None


def prepare_output(plan: JobPlan) -> None:
    """Uncommit the broken shards (they rerun), write job.json on a new output, and the commit
    index's snapshot (merging the logs a previous run left, or made from the parts of an output
    written before the index existed)."""
    for report in plan.broken:
        log.warning("%s is broken, regenerating it: %s", shard_name(report.shard), "; ".join(report.problems))
    if plan.broken:
        plan.storage.delete(SUCCESS_KEY)
        plan.index.remove(r.shard for r in plan.broken)
    if not plan.resuming:
        plan.storage.put(JOB_KEY, json.dumps(plan.record, indent=2).encode())
    plan.index.write_snapshot(plan.storage)
    log.info(
        "%s: %d samples in %d shards, %d shard(s) committed, %d to run (%d broken)",
        plan.storage.url, plan.manifest.num_rows, plan.num_shards, plan.num_shards - len(plan.pending),
        len(plan.pending), len(plan.broken),
    )  # fmt: skip


def run_pending(
    plan: JobPlan,
    pool: ActorPool[ShardTask, ShardResult],
    queue: TaskQueue[ShardTask],
    recorder: CommitRecorder,
    shard_size: int,
) -> tuple[PoolStats, float]:
    """The pending shards through the pool, each commit recorded in the index and fed to the progress
    bar; (pool stats, worker seconds)."""
    todo = samples_in(plan, shard_size)
    worker_seconds = 0.0
    with progress_bar(plan.manifest.num_rows, initial=plan.manifest.num_rows - todo) as bar:
        try:
            for _, result in pool.map(queue):
                recorder.record(result.shard)  # a run that lost its lease stops here, at once
                worker_seconds += result.seconds
                bar.update(result.samples)
        except (TaskFailed, LeaseLost) as err:
            raise JobFailed(
                f"{err}. Committed shards are kept: fix the cause and rerun the same command to finish the pending ones"
            ) from None
        finally:
            pool.close()
    return pool.stats, worker_seconds


def samples_in(plan: JobPlan, shard_size: int) -> int:
    ends = np.minimum((plan.pending + 1) * shard_size, plan.manifest.num_rows)
    return int((ends - plan.pending * shard_size).sum())


def already_complete(previous: dict[str, Any], started_at: datetime, t0: float) -> dict[str, Any]:
    """What a rerun on a complete output did: nothing, in this much time (the output and its
    `_SUCCESS`, the run that made it, are left as they are)."""
    return {
        "samples": previous["samples"],
        "shards": previous["shards"],
        "samples_generated": 0,
        "shards_generated": 0,
        "shards_skipped": previous["shards"],
        "shards_repaired": 0,
        "already_complete": True,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "fingerprint_sha256": previous["fingerprint_sha256"],
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "completed_by": {k: previous.get(k) for k in ("started_at", "finished_at", "wall_time_s", "images_per_s")},
    }


def job_summary(
    plan: JobPlan,
    config: JobConfig,
    stats: PoolStats,
    retries: int,
    worker_seconds: float,
    started_at: datetime,
    t0: float,
) -> dict[str, Any]:
    """What `_SUCCESS` records and jobs.generate prints."""
    todo, wall, pending = samples_in(plan, config.shard_size), time.perf_counter() - t0, len(plan.pending)
    return {
        "samples": plan.manifest.num_rows,
        "shards": plan.num_shards,
        "samples_generated": todo,
        "shards_generated": pending,
        "shards_skipped": plan.num_shards - pending,
        "shards_repaired": len(plan.broken),
        "workers_placed": stats.workers_placed,
        "workers_ran": stats.workers_ran,
        "shards_by_worker": list(stats.results_by_worker),
        "wall_time_s": round(wall, 3),
        "images_per_s": round(todo / wall, 3),
        "images_per_s_per_worker": round(todo / wall / max(stats.workers_ran, 1), 3),
        "run_time_s": round(stats.seconds, 3),  # the dispatch loop: worker start-up to the last commit
        "worker_seconds": round(worker_seconds, 3),  # inside the workers, summed over shards
        "driver_seconds_per_shard": round((stats.seconds - stats.waiting_seconds) / max(pending, 1), 6),
        "retries": retries,
        "fingerprint_sha256": plan.record["fingerprint_sha256"],
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
