"""The commit index (`OUT/index/`): which shards are committed, read with a handful of requests
whatever their number, so a resume costs O(pending) and readers never list a million parts.

A shard is written by its worker objects first, metadata part last; the driver that holds the
output's lease then records it here. Records are batched: a log object per `LOG_EVERY` commits (or
`LOG_SECONDS`), merged into one bitmap snapshot every `COMPACT_AFTER` logs and at the end of the run,
so index writes cost a small fraction of a request per shard. Only the lease holder writes the
index, and only while its lease is live: a driver that lost its lease records nothing, so whatever
its workers still write is not committed, and the shard is made again (identically: same keys,
same bytes) by the run that holds the lease. Parts that no record names (a driver that died before
its next log) are simply regenerated.

Outputs written before the index existed have parts only: their committed set is the listing of
`metadata/part-*`, turned into a snapshot by the next run that takes the lease.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from dit_worker.output.layout import METADATA_PREFIX, PART_KEY
from dit_worker.storage.objects import Storage, StorageError

INDEX_PREFIX = "index/"
SNAPSHOT_KEY = "index/committed.bits"  # 8-byte little-endian shard count, then numpy.packbits of the flags
log = logging.getLogger(__name__)
LOG_PREFIX = "index/log-"
LOG_EVERY = 256  # commits per log object
LOG_SECONDS = 2.0  # or sooner: a driver killed mid-run loses at most this much of its record
COMPACT_AFTER = 32  # logs merged into the snapshot once this many exist: a resume reads at most this many
# A storage outage while recording: records wait in memory and are written on a later try; the run's
# last write waits this long for storage to come back (its shards' parts are committed either way).
CLOSE_PATIENCE_S = 120.0
RETRY_S = 2.0


@dataclass
class CommitIndex:
    """The committed shards of one output as flags, and the log objects not yet merged into its snapshot.

    Usage::

        index = CommitIndex.read(storage)  # None: no index (an empty output, or one from before it)
        index.committed()  # array([0, 1, 5]): the shard ids, sorted
    """

    flags: np.ndarray  # bool [num_shards]
    logs: list[str] = field(default_factory=list)  # log keys merged into `flags`, not yet into the snapshot

    @classmethod
    def empty(cls, num_shards: int) -> CommitIndex:
        return cls(np.zeros(num_shards, bool))

    @classmethod
    def read(cls, storage: Storage) -> CommitIndex | None:
        """One listing of `index/`, the snapshot and the unmerged logs; None when there is no index."""
        keys = [obj.key for obj in storage.list(INDEX_PREFIX)]
        if not keys:
            return None
        flags = np.zeros(0, bool)
        if SNAPSHOT_KEY in keys:
            data = storage.get(SNAPSHOT_KEY)
            count = int.from_bytes(data[:8], "little")
            flags = np.unpackbits(np.frombuffer(data[8:], np.uint8), count=count).astype(bool)
        index = cls(flags)
        logs = sorted(k for k in keys if k.startswith(LOG_PREFIX))
        for key in logs:
            try:
                shards = json.loads(storage.get(key))["shards"]
            except StorageError:
                continue  # merged and deleted by a compaction since the listing
            index.add(shards)
        index.logs = logs
        return index

    def add(self, shards: Iterable[int]) -> None:
        ids = np.fromiter(shards, np.int64)
        if ids.size and ids.max() >= self.flags.size:
            self.flags = np.concatenate([self.flags, np.zeros(int(ids.max()) + 1 - self.flags.size, bool)])
        self.flags[ids] = True

    def remove(self, shards: Iterable[int]) -> None:
        ids = np.fromiter((s for s in shards if s < self.flags.size), np.int64)
        self.flags[ids] = False

    def committed(self) -> np.ndarray:
        return np.flatnonzero(self.flags)

    def missing(self, num_shards: int) -> np.ndarray:
        """The shards of 0..num_shards-1 the index does not name, sorted."""
        flags = np.zeros(num_shards, bool)
        known = min(num_shards, self.flags.size)
        flags[:known] = self.flags[:known]
        return np.flatnonzero(~flags)

    def __contains__(self, shard: int) -> bool:
        return 0 <= shard < self.flags.size and bool(self.flags[shard])

    def snapshot_bytes(self) -> bytes:
        return self.flags.size.to_bytes(8, "little") + np.packbits(self.flags).tobytes()

    def write_snapshot(self, storage: Storage) -> None:
        """The flags as the snapshot, then the logs it now holds deleted (a crash in between only
        leaves logs that merge again to the same flags)."""
        storage.put(SNAPSHOT_KEY, self.snapshot_bytes())
        for key in self.logs:
            storage.delete(key)
        self.logs = []


def listed_parts(storage: Storage) -> set[int]:
    """Shards whose metadata part exists (one listing of metadata/): the committed set of an output
    written before the index, and what `jobs.verify` compares the index with."""
    return {int(m[1]) for obj in storage.list(METADATA_PREFIX) if (m := PART_KEY.match(obj.key))}


def committed_shards(storage: Storage) -> set[int]:
    """The committed shards: the index's, or (an output without one) those whose part exists."""
    index = CommitIndex.read(storage)
    if index is None:
        return listed_parts(storage)
    return set(index.committed().tolist())


class CommitRecorder:
    """The lease holder's side of the index: records each committed shard, in batched log objects.

    `live()` raises when the run may no longer write (its lease is lost) and is checked before every
    write. Usage::

        recorder = CommitRecorder(storage, index, token, keeper.check)
        for result in results:
            recorder.record(result.shard)
        recorder.close()  # last log merged: the snapshot holds every commit
    """

    def __init__(
        self,
        storage: Storage,
        index: CommitIndex,
        token: str,
        live: Callable[[], None],
        every: int = LOG_EVERY,
        seconds: float = LOG_SECONDS,
        compact_after: int = COMPACT_AFTER,
    ) -> None:
        self.storage, self.index, self.token, self.live = storage, index, token, live
        self.every, self.seconds, self.compact_after = every, seconds, compact_after
        self._buffer: list[int] = []
        self._seq = 0
        self._last = time.monotonic()
        self._retry_at = 0.0  # after a failed write, none before this

    def record(self, shard: int) -> None:
        self._buffer.append(shard)
        now = time.monotonic()
        due = len(self._buffer) >= self.every or now - self._last >= self.seconds
        if due and now >= self._retry_at:
            try:
                self.flush()
            except StorageError as err:  # an outage: keep the records, try again a little later
                self._retry_at = now + RETRY_S
                log.warning("could not record %d commit(s) yet, will retry: %s", len(self._buffer), err)

    def flush(self) -> None:
        """Write the buffered records as one log object (and compact when enough logs piled up)."""
        if not self._buffer:
            return
        self.live()
        key = f"{LOG_PREFIX}{self.token[:12]}-{self._seq:08d}.json"
        self.storage.put(key, json.dumps({"shards": self._buffer}).encode())
        self.index.add(self._buffer)
        self.index.logs.append(key)
        self._buffer, self._seq, self._last = [], self._seq + 1, time.monotonic()
        if len(self.index.logs) >= self.compact_after:
            self.compact()

    def compact(self) -> None:
        self.live()
        self.index.write_snapshot(self.storage)

    def close(self, patience: float = CLOSE_PATIENCE_S) -> None:
        """Write what is left and merge it into the snapshot, waiting out a storage outage of up to
        `patience` seconds."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.flush()
                self.compact()
                return
            except StorageError as err:
                if time.monotonic() >= deadline:
                    raise
                log.warning("could not record the last commits yet, retrying: %s", err)
                time.sleep(2.0)
