"""OutputSet keeps memory flat in the number of samples: opening a set reads no metadata part, its
summary keeps O(shards) numbers, and iterating holds a bounded number of parts at a time, whatever
the number of shards, while still returning every sample once, in sample_id order."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from output_sets import write_output_set

from dit_worker import distinct
from dit_worker.output import reader
from dit_worker.output.reader import OutputSet, OutputSetError, Shard
from dit_worker.storage.objects import open_storage


def tiny_set(path: Path, n: int, shard_size: int, sample_ids: list[int] | None = None, fmt: str = "parquet") -> Path:
    images = np.random.default_rng(n).integers(0, 256, (n, 4, 6, 3), dtype=np.uint8)
    write_output_set(open_storage(str(path)), images, [i % 5 for i in range(n)], shard_size=shard_size,
                     sample_ids=sample_ids, fmt=fmt)  # fmt: skip
    return path


def count_part_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    read_part = OutputSet.read_part

    def counted(storage, index: int) -> Shard:
        reads.append(int(index))
        return read_part(storage, index)

    monkeypatch.setattr(OutputSet, "read_part", staticmethod(counted))
    return reads


def test_open_reads_no_part_and_the_summary_is_per_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tiny_set(tmp_path / "out", 60, shard_size=7)
    reads = count_part_reads(monkeypatch)
    output = OutputSet.open(str(out))
    assert reads == [] and output.num_shards == 9
    summary = output.summary()
    assert sorted(reads) == list(range(9))  # each part once
    for array in (summary.indices, summary.counts, summary.first_ids, summary.last_ids):
        assert array.shape == (9,)  # per shard, not per sample
    assert output.num_samples == 60 and output.image_size() == (4, 6) and output.labelled and not output.prompted
    assert output.image_formats() == {"png"}
    output.check_unique_ids()
    assert len(reads) == 9  # the checks ran on the summary: no part read again
    assert [s.sample_id for s in output.iter_samples()] == list(range(60))
    assert len(reads) == 18


def test_iteration_holds_a_bounded_number_of_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 shards: at no point are more than a few shards' metadata alive, during the summary pass or
    while samples are read."""
    out = tiny_set(tmp_path / "out", 160, shard_size=4)
    alive: set[int] = set()  # ids of the Shard objects not yet collected
    read_part = OutputSet.read_part

    def tracked(storage, index: int) -> Shard:
        shard = read_part(storage, index)
        alive.add(id(shard))
        weakref.finalize(shard, alive.discard, id(shard))
        return shard

    monkeypatch.setattr(OutputSet, "read_part", staticmethod(tracked))
    output = OutputSet.open(str(out))
    # Parts freed by reference counting alone: the cycle collector (a pass costs about a second in
    # the full suite's heap) is off, so a part kept alive by a cycle counts as held, a stricter bound.
    gc.disable()
    try:
        most = 0
        for _ in output.iter_shards():
            most = max(most, len(alive))
        bound = reader.PARTS_AHEAD + 2
        assert 1 < most <= bound
        most = 0
        ids = []
        for sample in output.iter_samples():
            ids.append(sample.sample_id)
            most = max(most, len(alive))
    finally:
        gc.enable()
    assert ids == list(range(160))
    assert 1 <= most <= 4  # the group being read and the two read ahead
    # The same walk through `shards` (the report's O(samples) view) holds every part.
    assert len(output.shards) == 40 and len(alive) >= 40


def test_interleaved_ids_stay_in_sample_id_order_and_duplicates_are_found(tmp_path: Path, monkeypatch) -> None:
    # Shards 0-1 interleave (ids 0..15 alternate), shards 2-3 hold contiguous ranges after them.
    ids = [2 * i for i in range(8)] + [2 * i + 1 for i in range(8)] + list(range(100, 116))
    output = OutputSet.open(str(tiny_set(tmp_path / "out", 32, shard_size=8, sample_ids=ids, fmt="webdataset")))
    runs = [output.summary().indices[run].tolist() for run in output.summary().runs()]
    assert runs == [[0, 1], [2], [3]]
    assert [s.sample_id for s in output.iter_samples()] == sorted(ids)
    output.check_unique_ids()

    across = [2 * i for i in range(8)] + [2 * i + 2 for i in range(8)]  # 2..14 in both shards
    dup = OutputSet.open(str(tiny_set(tmp_path / "dup", 16, shard_size=8, sample_ids=across)))
    with pytest.raises(OutputSetError, match=r"committed more than once: \[2\]"):  # the group's smallest repeat
        dup.check_unique_ids()
    monkeypatch.setattr(distinct, "IN_MEMORY_ROWS", 4)  # a group too large to hold: spilled, the same answer
    with pytest.raises(OutputSetError, match=r"committed more than once: \[2\]"):
        dup.check_unique_ids()
    output.check_unique_ids()
    within = [*range(7), 3, *range(8, 16)]
    dup = OutputSet.open(str(tiny_set(tmp_path / "within", 16, shard_size=8, sample_ids=within)))
    with pytest.raises(OutputSetError, match=r"committed more than once: \[3\]"):
        dup.check_unique_ids()


def test_the_benchmarks_synthetic_set_reads_back(tmp_path: Path) -> None:
    """jobs.benchmark_readers measures sets from `build_set`: they must be sets every reader takes."""
    from dit_worker.benchmarks.reader_memory import build_set, child, table

    build_set(str(tmp_path / "set"), 300, shard_size=70, side=4)
    output = OutputSet.open(str(tmp_path / "set"))
    assert output.num_samples == 300 and output.num_shards == 5 and output.labelled
    assert [s.sample_id for s in output.iter_samples()] == list(range(300))
    line = child("export", str(tmp_path / "set"), str(tmp_path / "x.npz"))
    assert line["samples"] == 300 and line["peak_rss_mib"] > 0 and not (tmp_path / "x.npz").exists()
    opened = child("open", str(tmp_path / "set"))
    assert opened["samples"] == 300 and opened["shards"] == 5
    rows = [{**r, "set_samples": 300, "peak_vs_smaller_set": 1.0} for r in (line, opened)]
    assert table(rows).count("\n") == 3


def test_a_set_from_an_unsorted_manifest_is_read_shard_by_shard(tmp_path: Path, monkeypatch) -> None:
    """Shards are ranges of manifest rows: a manifest out of sample_id order makes every shard's id
    range overlap the others, and merging them would hold the whole set. Past MERGE_SHARDS overlapping
    shards the set is read in manifest (shard) order, each shard in sample_id order."""
    from dit_worker.output import reader

    ids = [(7 * i) % 32 for i in range(32)]  # a permutation: every 8-row shard spans most of 0..31
    output = OutputSet.open(str(tiny_set(tmp_path / "out", 32, shard_size=8, sample_ids=ids)))
    assert [s.sample_id for s in output.iter_samples()] == sorted(ids)  # 4 overlapping shards: merged
    monkeypatch.setattr(reader, "MERGE_SHARDS", 3)
    by_shard = [sorted(ids[k : k + 8]) for k in range(0, 32, 8)]
    assert [s.sample_id for s in output.iter_samples()] == [i for shard in by_shard for i in shard]


def test_a_reader_left_unfinished_closes_without_waiting_for_its_reads() -> None:
    """A prefetch stopped early (a bad image) is closed by whoever drops it, the garbage collector in
    any thread included: closing must not join its read threads, or it can deadlock inside
    threading's own lock (jobs.verify --full once hung so)."""
    release = threading.Event()

    def read(i: int) -> int:
        if i == 2:
            release.wait(30)  # a read still running when the reader is dropped
        return i

    reads = reader.prefetch(read, iter(range(5)), window=3)  # reads 0, 1 and 2 start before 0 is taken
    assert next(reads) == 0
    closer = threading.Thread(target=reads.close)
    closer.start()
    closer.join(10)
    try:
        assert not closer.is_alive(), "closing the reader waited for a running read"
    finally:
        release.set()
        closer.join()
