"""A job planned before anything is written: the model, its rows, and what OUT already holds
(its record, its commit index, and, with --verify, which committed shards are broken), in that order.

What OUT holds is learned with a handful of requests whatever the number of committed shards (the
commit index); only --verify reads every committed shard's objects."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from dit_worker.driver.config import JobConfig
from dit_worker.driver.errors import JobError
from dit_worker.driver.model_info import ModelInfo, inspect_model
from dit_worker.driver.record import check_resumable, job_record
from dit_worker.driver.rows import job_rows
from dit_worker.manifest.sources import Manifest
from dit_worker.metrics.inception import resolve_inception_weights
from dit_worker.output.commit_index import CommitIndex, listed_parts
from dit_worker.output.layout import JOB_KEY, SUCCESS_KEY
from dit_worker.output.verify import ShardReport, check_shards
from dit_worker.shard import num_shards
from dit_worker.storage.objects import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """A validated job: what to make, where, and which shards are still to run."""

    info: ModelInfo  # the backend's spec and the resolved settings
    manifest: Manifest  # the rows, planned: a shard's are read or computed when it is handed out
    storage: Storage
    record: dict[str, Any]  # job.json
    resuming: bool  # OUT already holds this job's job.json
    num_shards: int
    index: CommitIndex  # the committed shards (from the index, or listed on an output from before it)
    broken: list[ShardReport]  # committed shards whose objects are missing or differ: regenerated
    pending: np.ndarray  # int64, sorted: shards to run (never committed, or broken); 8 bytes a shard
    previous_summary: dict[str, Any] | None  # `_SUCCESS` of an earlier run

    @property
    def complete(self) -> bool:
        return self.pending.size == 0 and self.previous_summary is not None


def plan_job(config: JobConfig) -> JobPlan:
    """Check the model, settings, rows and output, and read what OUT already holds; writes nothing."""
    info = inspect_model(config)
    if config.metrics:  # a bad weights file fails now, not on every worker after sampling started
        resolve_inception_weights(config.inception_weights, s3_endpoint=config.s3_endpoint)
    manifest = job_rows(config, info)
    storage = open_storage(config.out, s3_endpoint=config.s3_endpoint, retry_mode=config.s3_retry_mode)
    storage.check_writable()
    record = job_record(config, info, manifest)
    stored = read_json(storage, JOB_KEY)
    total = num_shards(manifest.num_rows, config.shard_size)
    index = CommitIndex.read(storage) if stored is not None else None
    if index is None:  # a new output, or one written before the index: its parts are its commits
        index = CommitIndex.empty(total)
        index.add(listed_parts(storage))
    if stored is not None:
        check_resumable(stored, record, storage.child(JOB_KEY))
    elif index.committed().size:
        raise JobError(f"{storage.url} holds metadata parts but no {JOB_KEY}; pick an empty --out")
    committed = index.committed()
    broken = [r for r in check_shards(storage, committed.tolist(), full=True) if not r.ok] if config.verify else []
    pending = index.missing(total)
    if broken:  # (np.union1d sorts: seconds at 10M shards, so only when there is something to add)
        pending = np.union1d(pending, np.array([r.shard for r in broken], np.int64))
    summary = read_json(storage, SUCCESS_KEY)
    return JobPlan(info, manifest, storage, record, stored is not None, total, index, broken, pending, summary)


def read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    if not storage.exists(key):
        return None
    try:
        return json.loads(storage.get(key))
    except ValueError as err:
        raise JobError(f"{storage.child(key)}: not valid JSON ({err}); was OUT written by another tool?") from None
