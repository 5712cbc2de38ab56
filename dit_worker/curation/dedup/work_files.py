"""The work files under OUT/dedup/work/: raw little-endian numpy records, one object per step's unit of
work, written whole (its existence means the unit is done).

A *blocked* file holds records grouped by a block number (a partition, or a run) behind a header of
blocks + 1 int64 byte offsets, so a reader takes block b with two ranged requests: the 16 bytes of
offsets b and b + 1, then the block itself.
"""

from __future__ import annotations

import numpy as np

from dit_worker.storage.objects import Storage

WORK = "dedup/work/"
EMBED_PREFIX = f"{WORK}embed/"  # per run: EMBED records in (shard, sample_id) order
ROUTE_PREFIX = f"{WORK}route/"  # per run: blocked by partition, ROUTE records
LINKS_PREFIX = f"{WORK}links/"  # per partition: LINK records (pairs at or above the threshold)
NEAREST_PREFIX = f"{WORK}nearest/"  # per partition, written after its links: blocked by run, NEAREST records
CELLS_KEY = f"{WORK}cells.npy"  # --within set: the k-means centroids, float32 [cells, dim]
PLAN_KEY = f"{WORK}plan.json"  # rows, dim, partitions, cells: fixed once every run is embedded
MERGE_KEY = f"{WORK}merge.json"  # the components' counts, written before GROUPS_KEY
GROUPS_KEY = f"{WORK}groups.bin"  # blocked by run: GROUP records of every sample in a group of 2 or more
SETTINGS_KEY = f"{WORK}settings.json"  # what the run was started with (a rerun must match)


def embed_dtype(dim: int) -> np.dtype:
    # key: 128 bits of blake2b of the prompt (two int64), or (class_id, 0), or (0, 0) for --within set.
    return np.dtype([("sample_id", "<i8"), ("shard", "<i8"), ("key", "<i8", (2,)), ("vec", "<f2", (dim,))])


def route_dtype(dim: int) -> np.dtype:
    # key: the bucket (as in EMBED, or (cell, 0)); owner: 1 in the one bucket that answers for the row.
    return np.dtype(
        [("sample_id", "<i8"), ("shard", "<i8"), ("key", "<i8", (2,)), ("run", "<i4"), ("owner", "u1"),
         ("vec", "<f2", (dim,))]
    )  # fmt: skip


LINK = np.dtype([("a", "<i8"), ("b", "<i8"), ("run_a", "<i4"), ("run_b", "<i4")])
NEAREST = np.dtype([("sample_id", "<i8"), ("shard", "<i8"), ("nearest", "<i8"), ("similarity", "<f4")])
GROUP = np.dtype([("sample_id", "<i8"), ("group", "<i8"), ("size", "<i4"), ("rank", "<i4")])


def run_key(prefix: str, index: int) -> str:
    return f"{prefix}{index:06d}.bin"


def blocked_bytes(records: np.ndarray, blocks_of: np.ndarray, blocks: int) -> bytes:
    """`records` grouped by `blocks_of` (stable: their order kept within a block), behind the offsets."""
    order = np.argsort(blocks_of, kind="stable")
    counts = np.bincount(blocks_of, minlength=blocks) if blocks_of.size else np.zeros(blocks, np.int64)
    head = 8 * (blocks + 1)
    offsets = head + np.concatenate([[0], np.cumsum(counts)]) * records.dtype.itemsize
    return offsets.astype("<i8").tobytes() + records[order].tobytes()


def read_block(storage: Storage, key: str, block: int, dtype: np.dtype) -> np.ndarray:
    """Block `block` of a blocked file: two ranged requests (one when it is empty)."""
    lo, hi = np.frombuffer(storage.get_range(key, 8 * block, 8 * block + 16), "<i8").tolist()
    if hi <= lo:
        return np.zeros(0, dtype)
    return np.frombuffer(storage.get_range(key, lo, hi), dtype)
