"""The driver's costs at scale (`python -m jobs.benchmark_scale`), measured without a model.

`resume`: an output with N committed shards recorded through the commit index, as a run records
them (batched logs, compaction, the final snapshot), then read back as a resuming driver reads it:
storage requests (counted at the client: boto3's `before-call` events on S3, calls on a local
folder) and seconds for each, and the index's bytes per shard.
"""

from __future__ import annotations

import resource
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dit_worker.output.commit_index import SNAPSHOT_KEY, CommitIndex, CommitRecorder
from dit_worker.storage.objects import LocalStorage, S3Storage, Storage, open_storage


@contextmanager
def counted(storage: Storage) -> Iterator[Counter[str]]:
    """Requests `storage` makes inside the block, by operation."""
    calls: Counter[str] = Counter()
    if isinstance(storage, S3Storage):

        def count(model: Any, **_: Any) -> None:
            calls[model.name] += 1

        storage.client.meta.events.register("before-call.s3", count)
        try:
            yield calls
        finally:
            storage.client.meta.events.unregister("before-call.s3", count)
        return
    assert isinstance(storage, LocalStorage)
    originals = {name: getattr(storage, name) for name in ("put", "get", "list", "delete", "stat")}

    def wrap(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    for name in originals:
        setattr(storage, name, wrap(name))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(storage, name, fn)


def resume_cost(url: str, committed: int, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Record `committed` shards under a fresh prefix of `url`, then read the index back."""
    storage = open_storage(f"{url.rstrip('/')}/{committed}-{uuid.uuid4().hex[:8]}", s3_endpoint=s3_endpoint)
    index = CommitIndex.empty(committed)
    recorder = CommitRecorder(storage, index, uuid.uuid4().hex, lambda: None, seconds=float("inf"))
    t0 = time.perf_counter()
    with counted(storage) as writes:
        for shard in range(committed):
            recorder.record(shard)
        recorder.close()
    record_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with counted(storage) as reads:
        read = CommitIndex.read(storage)
    resume_s = time.perf_counter() - t0
    assert read is not None and read.committed().size == committed
    snapshot = next(o.size for o in storage.list(SNAPSHOT_KEY))
    return {
        "benchmark": "resume",
        "storage": storage.url.split("://")[0] if "://" in storage.url else "local",
        "committed_shards": committed,
        "record_requests": sum(writes.values()),
        "record_requests_per_shard": round(sum(writes.values()) / committed, 5),
        "record_s": round(record_s, 3),
        "resume_requests": sum(reads.values()),
        "resume_requests_by_kind": dict(reads),
        "resume_s": round(resume_s, 4),
        "index_bytes": snapshot,
        "index_bytes_per_shard": round(snapshot / committed, 4),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
