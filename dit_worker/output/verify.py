"""Checking committed shards against their metadata parts: every stored object exists with the
recorded size (one listing per shard folder, so cheap at a million images), and with `full`, every
image's bytes match the recorded sha256 (which reads them all).

A shard that fails is uncommitted by removing its metadata part (and `_SUCCESS` first, since the set is
then incomplete): the next run of the same job regenerates exactly those shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dit_worker.output.layout import SUCCESS_KEY, part_key
from dit_worker.output.reader import OutputSet, OutputSetError, Shard, prefetch
from dit_worker.storage.objects import Storage


@dataclass(frozen=True)
class ShardReport:
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
    """Remove `_SUCCESS`, then each shard's metadata part: the shards are pending again."""
    storage.delete(SUCCESS_KEY)
    for k in shards:
        storage.delete(part_key(k))
