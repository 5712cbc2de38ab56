"""A generation job from start to `_SUCCESS`: validate everything, then write, then run what is pending.

Nothing is written under OUT until the model, the sampling settings, the manifest, the output
location and (on Ray) the worker placement have all been checked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from dit_worker.driver.config import JobConfig
from dit_worker.driver.errors import JobError, JobFailed
from dit_worker.driver.model_info import ModelInfo, inspect_model
from dit_worker.driver.progress import progress_bar
from dit_worker.driver.record import check_resumable, job_record
from dit_worker.driver.row_checks import check_rows, check_sample_source
from dit_worker.driver.workers import shard_pool, worker_spec
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import Backoff, TaskFailed, TaskQueue
from dit_worker.manifest.samples import Samples, from_classes, from_count, from_prompts, parse_classes, read_manifest
from dit_worker.metrics.inception import resolve_inception_weights
from dit_worker.output.layout import JOB_KEY, SUCCESS_KEY, committed_shards
from dit_worker.output.lease import LeaseKeeper, LeaseLost, acquire, new_token
from dit_worker.output.verify import check_shards, uncommit
from dit_worker.shard import ShardResult, num_shards, shard_name, shard_task, shard_tasks
from dit_worker.storage.objects import Storage, StorageError, open_storage

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_samples(config: JobConfig, info: ModelInfo) -> Samples:
    """The job's rows, each checked against the model before anything is written."""
    check_sample_source(config, info)
    if config.manifest is not None:
        samples = read_manifest(config.manifest, info.names, info.conditioning)
    elif config.prompts is not None:
        assert config.per_prompt is not None
        samples = from_prompts(config.prompts, config.per_prompt, config.seed)
    elif config.num_samples is not None:
        samples = from_count(config.num_samples, config.seed)
    else:
        assert config.per_class is not None and info.names is not None
        samples = from_classes(parse_classes(config.classes, info.names), config.per_class, config.seed)
    check_rows(samples, info, config)
    return samples


@dataclass(frozen=True)
class JobPlan:
    """A validated job: what to make, where, and which shards are still to run."""

    storage: Storage
    samples: Samples
    record: dict[str, Any]
    resuming: bool  # OUT already holds this job's job.json
    num_shards: int
    committed: list[int]
    pending: list[int]
    info: ModelInfo  # the backend's spec and the resolved settings


def plan_job(config: JobConfig) -> JobPlan:
    """Check the model, settings, samples and output, and read what OUT already holds; writes nothing."""
    info = inspect_model(config)
    if config.score is not None and info.conditioning != "text":
        raise JobError(
            f"--score {config.score} scores each image against its prompt, and {config.model} is a "
            f"{info.pipeline_class} without prompts; drop --score (jobs.fid --set-metrics fd_dinov2,cmmd needs none)"
        )
    if config.metrics:  # a bad weights file fails now, not on every worker after sampling started
        resolve_inception_weights(config.inception_weights, s3_endpoint=config.s3_endpoint)
    samples = build_samples(config, info)
    storage = open_storage(config.out, s3_endpoint=config.s3_endpoint, retry_mode=config.s3_retry_mode)
    storage.check_writable()

    record = job_record(config, info, samples)
    stored = _read_json(storage, JOB_KEY)
    committed = committed_shards(storage)
    if stored is not None:
        check_resumable(stored, record, storage.child(JOB_KEY))
    elif committed:
        raise JobError(f"{storage.url} holds metadata parts but no {JOB_KEY}; pick an empty --out")
    total = num_shards(len(samples), config.shard_size)
    pending = [k for k in range(total) if k not in committed]
    return JobPlan(storage, samples, record, stored is not None, total, sorted(committed), pending, info)


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run (or resume) the job; returns the `_SUCCESS` summary.

    Order: validate and read OUT (plan_job), verify what is committed, check the workers can be
    placed, then take OUT's lease (the first write), uncommit broken shards, write job.json, run the
    pending shards with fenced commits, and write `_SUCCESS` while still holding the lease.
    """
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    plan = plan_job(config)
    storage = plan.storage
    broken = [r for r in check_shards(storage, plan.committed, full=config.verify) if not r.ok]
    previous_summary = _read_json(storage, SUCCESS_KEY)
    if not plan.pending and not broken and previous_summary is not None:
        log.info("%s is complete: all %d shards committed and intact", storage.url, plan.num_shards)
        return previous_summary

    token = new_token()
    pending = sorted({*plan.pending, *(r.shard for r in broken)})
    pool = shard_pool(worker_spec(config, plan.info, token), config) if pending else None
    if pool is not None:
        pool.start()  # refuses a pool the cluster cannot place: still nothing written
    try:
        lease = _first_write(storage, lambda: acquire(storage, config.lease_ttl, token))
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    with LeaseKeeper(lease) as keeper:
        if broken:
            for report in broken:
                log.warning("%s is broken, regenerating it: %s", shard_name(report.shard), "; ".join(report.problems))
            uncommit(storage, [r.shard for r in broken])
        if not plan.resuming:
            storage.put(JOB_KEY, json.dumps(plan.record, indent=2).encode())
        todo = sum(len(shard_task(plan.samples, k, config.shard_size).samples) for k in pending)
        log.info(
            "%s: %d samples in %d shards, %d shard(s) committed, %d to run (%d broken)",
            storage.url, len(plan.samples), plan.num_shards, plan.num_shards - len(pending), len(pending), len(broken),
        )  # fmt: skip
        backoff = Backoff(config.retry_backoff, config.retry_backoff_max)
        queue = TaskQueue(shard_tasks(plan.samples, pending, config.shard_size), config.max_tries, shard_name, backoff)
        stats, worker_seconds = PoolStats(0, 0, 0.0, 0.0), 0.0
        if pool is not None:
            with progress_bar(len(plan.samples), initial=len(plan.samples) - todo) as bar:

                def on_committed(result: ShardResult) -> None:
                    nonlocal worker_seconds
                    keeper.check()  # a run that lost its lease stops dispatching at once
                    worker_seconds += result.seconds
                    bar.update(result.samples)

                try:
                    for _, result in pool.map(queue):
                        on_committed(result)
                    stats = pool.stats
                except (TaskFailed, LeaseLost) as err:
                    raise JobFailed(
                        f"{err}. Committed shards are kept: fix the cause and rerun the same command to finish the "
                        "pending ones"
                    ) from None
                finally:
                    pool.close()

        missing = sorted(set(range(plan.num_shards)) - committed_shards(storage))
        if missing:
            raise JobFailed(f"shards {missing[:10]} have no metadata part after the run; rerun to finish them")
        wall = time.perf_counter() - t0
        summary = {
            "samples": len(plan.samples),
            "shards": plan.num_shards,
            "samples_generated": todo,
            "shards_generated": len(pending),
            "shards_skipped": plan.num_shards - len(pending),
            "shards_repaired": len(broken),
            "workers_placed": stats.workers_placed,
            "workers_ran": stats.workers_ran,
            "shards_by_worker": list(stats.results_by_worker),
            "wall_time_s": round(wall, 3),
            "images_per_s": round(todo / wall, 3),
            "images_per_s_per_worker": round(todo / wall / max(stats.workers_ran, 1), 3),
            "run_time_s": round(stats.seconds, 3),  # the dispatch loop: worker start-up to the last commit
            "worker_seconds": round(worker_seconds, 3),  # inside the workers, summed over shards
            "driver_seconds_per_shard": round((stats.seconds - stats.waiting_seconds) / max(len(pending), 1), 6),
            "retries": queue.retries,
            "fingerprint_sha256": plan.record["fingerprint_sha256"],
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        keeper.check()
        storage.put(SUCCESS_KEY, json.dumps(summary, indent=2).encode())
    return summary


def _first_write(storage: Storage, write: Callable[[], T]) -> T:
    """The run's first write into OUT, as one clear error when OUT cannot take it (a full disk, a
    read-only mount), removing the folder it created if it is left empty."""
    existed = storage.root_exists()
    try:
        return write()
    except OSError as err:
        if not existed:
            storage.remove_root_if_empty()
        raise StorageError(f"{storage.url}: cannot write ({err.strerror or err})") from None


def _read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    if not storage.exists(key):
        return None
    try:
        return json.loads(storage.get(key))
    except ValueError as err:
        raise JobError(f"{storage.child(key)}: not valid JSON ({err}); was OUT written by another tool?") from None
