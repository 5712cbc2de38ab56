"""Checking committed shards against their metadata parts: every stored object exists with the
recorded size (one listing per shard folder, so cheap at a million images), and with `full`, every
image's bytes match the recorded sha256 (which reads them all).

A shard that fails is uncommitted by removing its metadata part (and `_SUCCESS` first, since the set is
then incomplete): the next run of the same job regenerates exactly those shards. `verify_output`
(python -m jobs.verify) checks a whole set through the one pool, in this process or on Ray actors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dit_worker.execution.pool import make_pool
from dit_worker.execution.tries import TaskQueue
from dit_worker.output.commit_index import CommitIndex, committed_shards
from dit_worker.output.layout import SUCCESS_KEY, part_key
from dit_worker.output.lease import DEFAULT_TTL_S, LeaseKeeper, acquire, released_on_sigterm
from dit_worker.output.reader import OutputSet, OutputSetError, Shard, prefetch
from dit_worker.storage.objects import Storage, open_storage

CHECKS_IN_FLIGHT = 8  # per checker: shard checks wait on storage, not on the CPU
MAX_TRIES = 3  # a check that raised (an outage) is tried again


@dataclass(frozen=True)
class ShardReport:
    """What a check found wrong with one committed shard."""

    shard: int
    problems: tuple[str, ...]  # empty: the shard is intact

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard(storage: Storage, index: int, full: bool = False) -> ShardReport:
    """Existence and size of every object the shard's metadata names; with `full`, their sha256 too."""
    try:
        shard = OutputSet.read_part(storage, index)
    except OutputSetError as err:
        return ShardReport(index, (str(err),))
    problems = _check_objects(storage, shard)
    if full and not problems:
        try:
            for _ in OutputSet(storage, [shard], complete=False).iter_samples():
                pass
        except OutputSetError as err:
            problems.append(str(err))
    return ShardReport(index, tuple(problems))


def _check_objects(storage: Storage, shard: Shard) -> list[str]:
    problems: list[str] = []
    direct: dict[str, int | None] = {}  # object key -> recorded size
    containers: set[str] = set()  # tar (or other container) keys: `container#member`
    for i, key in enumerate(shard.image_keys):
        if "#" in key:
            containers.add(key.split("#", 1)[0])
        else:
            direct[key] = None if shard.image_bytes is None else int(shard.image_bytes[i])
    listed: dict[str, int] = {}
    for folder in sorted({key.rpartition("/")[0] + "/" for key in direct}):
        listed.update((obj.key, obj.size) for obj in storage.list(folder))
    for key, size in direct.items():
        if key not in listed:
            problems.append(f"{storage.child(key)}: missing")
        elif size is not None and listed[key] != size:
            problems.append(f"{storage.child(key)}: {listed[key]} bytes, the metadata says {size}")
    for key in sorted(containers):
        if not storage.exists(key):
            problems.append(f"{storage.child(key)}: missing")
    return problems


def check_shards(storage: Storage, shards: Iterable[int], full: bool = False) -> Iterator[ShardReport]:
    """Reports in shard order; shards are checked concurrently (S3 latency bounds a serial check)."""
    yield from prefetch(lambda k: check_shard(storage, k, full), shards)


def uncommit(storage: Storage, shards: Iterable[int]) -> None:
    """Remove `_SUCCESS`, then the shards from the commit index, then their metadata parts: the
    shards are pending again. Only under the output's lease."""
    shards = list(shards)
    storage.delete(SUCCESS_KEY)
    index = CommitIndex.read(storage)
    if index is not None:
        index.remove(shards)
        index.write_snapshot(storage)
    for k in shards:
        storage.delete(part_key(k))


class ShardChecker:
    """The pool's actor for `verify_output`: checks shards of one output, `CHECKS_IN_FLIGHT` at once."""

    def __init__(self, url: str, s3_endpoint: str | None, full: bool) -> None:
        self.storage, self.full = open_storage(url, s3_endpoint=s3_endpoint), full

    def ready(self) -> str:
        return f"pid {os.getpid()} on {socket.gethostname()}"

    def run(self, shard: int) -> ShardReport:
        return check_shard(self.storage, shard, self.full)


def verify_output(
    url: str, *, full: bool, repair: bool, s3_endpoint: str | None = None, ray: bool = False
) -> dict[str, Any]:
    """Check every committed shard of the output at `url` on the one pool (Ray actors when `ray`);
    with `repair`, take the output's lease and uncommit the broken ones. Returns the summary that
    `python -m jobs.verify` prints; `broken` lists (shard, problems), in shard order.

    Usage::

        summary = verify_output("s3://bucket/set", full=True, repair=False)
        summary["shards_broken"]  # [] when intact
    """
    storage = open_storage(url, s3_endpoint=s3_endpoint)
    shards = sorted(committed_shards(storage))
    if not shards:
        raise OutputSetError(f"{storage.url}: no committed shard (no metadata/part-*.parquet); nothing to verify")
    pool = make_pool(
        ShardChecker,
        (url, s3_endpoint, full),
        local=not ray,
        per_actor={"CPU": 1.0},
        num_workers=None if ray else 1,
        tasks_per_actor=CHECKS_IN_FLIGHT,
        max_concurrency=CHECKS_IN_FLIGHT,
        placement_hint="add nodes, or verify without --ray",
    )
    pool.start()
    try:
        queue = TaskQueue(((k, k) for k in shards), MAX_TRIES, name=lambda k: f"shard {k:05d}")
        broken = sorted((r for _, r in pool.map(queue) if not r.ok), key=lambda r: r.shard)
    finally:
        pool.close()
    if broken and repair:
        # Never while a job writes this output; a stop releases the lease before the process ends.
        with LeaseKeeper(acquire(storage, DEFAULT_TTL_S)) as keeper, released_on_sigterm(keeper):
            uncommit(storage, [r.shard for r in broken])
    return {
        "out": storage.url,
        "shards_checked": len(shards),
        "shards_broken": [r.shard for r in broken],
        "problems": {f"{r.shard:05d}": list(r.problems) for r in broken},
        "sha256_checked": full,
        "repaired": bool(broken and repair),
    }
