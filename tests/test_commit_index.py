"""The commit index: the committed set read with a handful of requests whatever its size, batched
records, compaction, fencing by the lease, and uncommit; and the lease renewed on time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from dit_worker.benchmarks.scale import counted
from dit_worker.output.commit_index import (
    SNAPSHOT_KEY,
    CommitIndex,
    CommitRecorder,
    committed_shards,
)
from dit_worker.output.layout import LEASE_KEY
from dit_worker.output.lease import LeaseHeld, LeaseKeeper, LeaseLost, acquire, holds
from dit_worker.output.verify import uncommit
from dit_worker.storage.objects import LocalStorage, StorageError


class OutageStorage(LocalStorage):
    """A real local storage refusing writes while `down` (an S3 outage as the driver sees it)."""

    down = False

    def put(self, key: str, data: bytes) -> None:
        if self.down:
            raise StorageError(f"{self.child(key)}: cannot reach storage to write {key} (outage)")
        super().put(key, data)


def record_run(storage: LocalStorage, shards: range, every: int = 64, compact_after: int = 8) -> CommitRecorder:
    """A run's recorder after every shard of `shards` was recorded (not closed: the caller decides)."""
    index = CommitIndex.empty(len(shards))
    recorder = CommitRecorder(storage, index, "run-token", lambda: None, every=every, seconds=1e9,
                              compact_after=compact_after)  # fmt: skip
    for k in shards:
        recorder.record(k)
    return recorder


@pytest.mark.parametrize("num_shards", [100, 20_000])
def test_reading_the_index_costs_the_same_whatever_its_size(tmp_path: Path, num_shards: int) -> None:
    storage = LocalStorage(tmp_path / "out")
    with counted(storage) as calls:
        recorder = record_run(storage, range(num_shards))
        recorder.close()
    # Writing: one log per 64 commits and a snapshot per 8 logs, never a request per shard.
    assert calls["put"] <= num_shards / 64 + num_shards / 512 + 2
    with counted(storage) as calls:
        read = CommitIndex.read(storage)
    assert read is not None and np.array_equal(read.committed(), np.arange(num_shards))
    assert dict(calls) == {"list": 1, "get": 1}  # the listing of index/ and the snapshot


def test_a_crashed_run_leaves_its_logs_which_the_next_reader_merges(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    record_run(storage, range(1000), every=100, compact_after=4)
    # No close(): the driver died. 1000 commits = 10 logs; 8 merged by two compactions, 2 left.
    with counted(storage) as calls:
        read = CommitIndex.read(storage)
    assert dict(calls) == {"list": 1, "get": 3}
    assert np.array_equal(read.committed(), np.arange(1000)) and len(read.logs) == 2
    # A record that never reached a log (the last < 100 commits) is simply not committed.
    record_run(storage, range(1000, 1050), every=100)
    assert 1049 not in CommitIndex.read(storage)
    assert CommitIndex.read(storage).missing(1050).tolist() == list(range(1000, 1050))  # pending again


def test_a_run_that_lost_its_lease_records_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    lease = acquire(storage, ttl=60)

    def live() -> None:
        raise LeaseLost("taken over")

    recorder = CommitRecorder(storage, CommitIndex.empty(4), lease.token, live, every=1)
    with pytest.raises(LeaseLost):
        recorder.record(0)
    assert CommitIndex.read(storage) is None  # nothing under index/
    # The same recorder with a live lease writes at once (every=1): the check is what stopped it.
    CommitRecorder(storage, CommitIndex.empty(4), lease.token, lambda: None, every=1).record(0)
    assert committed_shards(storage) == {0}


def test_uncommit_removes_shards_from_the_index(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    recorder = record_run(storage, range(10))
    recorder.close()
    storage.put("_SUCCESS", b"{}")
    uncommit(storage, [3, 7])
    assert committed_shards(storage) == set(range(10)) - {3, 7}
    assert not storage.exists("_SUCCESS") and storage.exists(SNAPSHOT_KEY)


def test_an_output_without_an_index_is_its_listed_parts(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    for k in (0, 2):
        storage.put(f"metadata/part-{k:05d}.parquet", b"part")
    assert CommitIndex.read(storage) is None and committed_shards(storage) == {0, 2}


def test_the_lease_is_renewed_on_time_and_taken_over_when_it_is_not(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    keeper = LeaseKeeper(acquire(storage, ttl=1.0))
    with keeper:
        time.sleep(2.5)  # 2.5 ttl: without renewals (every ttl/4) it would have expired twice
        with pytest.raises(LeaseHeld):
            acquire(storage, ttl=1.0)
        keeper._stop.set()  # the holder stops renewing (a frozen driver) ...
        keeper._thread.join()
        time.sleep(1.2)  # ... and its lease expires one ttl after the last renewal
        taker = acquire(storage, ttl=30.0)
        keeper.lost = LeaseLost("taken over")  # what its next beat would find; no release on exit
    assert taker.token != keeper.lease.token


def test_a_lease_left_unrenewed_for_most_of_its_ttl_counts_as_lost(tmp_path: Path) -> None:
    """An outage that outlasts 3/4 of the ttl: another run may take the output any moment, so the
    run stops recording commits, although nobody has taken the lease yet."""
    storage = LocalStorage(tmp_path / "out")
    keeper = LeaseKeeper(acquire(storage, ttl=1.0))  # not entered: no renewals, as in an outage
    keeper.check()  # fresh
    time.sleep(0.8)
    with pytest.raises(LeaseLost, match="could not be renewed for 1 s"):
        keeper.check()


def test_a_stop_releases_the_lease_even_when_a_renewal_lands_first(tmp_path: Path) -> None:
    """The race of a renewal in flight when SIGTERM arrives: a renewal that wins the compare-and-swap
    just before the release is undone by the release's retry; one that comes after it cannot resurrect
    the lease; and the released lease fences the run's workers and is taken by the next run at once."""
    storage = LocalStorage(tmp_path / "out")
    lease = acquire(storage, ttl=60.0)
    keeper = LeaseKeeper(lease)  # not entered: the renewals are played by hand, in the racing order
    # A renewal's write lands after the release read the ETag (the release's first swap then fails).
    raced = storage.replace(LEASE_KEY, lease._body(time.time() + 60.0, lease.token), lease.etag)
    assert raced is not None
    keeper.stop()
    assert json.loads(storage.get(LEASE_KEY))["token"] is None and not holds(storage, lease.token)
    lease.renew()  # a late beat: no write
    assert json.loads(storage.get(LEASE_KEY))["expires_at_s"] == 0.0
    with pytest.raises(LeaseLost, match="released, this run is stopping"):
        keeper.check()  # the recorder's fence: nothing more is recorded
    assert acquire(storage, ttl=60.0).token != lease.token  # not refused: the next run takes it at once

    # Beside it, the same race with no time for a second swap: the release fails and the lease stays held.
    other = acquire(LocalStorage(tmp_path / "other"), ttl=60.0)
    other.storage.replace(LEASE_KEY, other._body(time.time() + 60.0, other.token), other.etag)
    with pytest.raises(StorageError, match="kept changing"):
        other.release(bound_s=0.0)
    with pytest.raises(LeaseHeld, match="is being written by another run"):
        acquire(other.storage, ttl=60.0)


def test_benchmark_scale_resume_requests_do_not_grow_with_commits(tmp_path: Path) -> None:
    """jobs.benchmark_scale's resume figure on a local folder: the same requests at 100 and 5,000 shards."""
    from dit_worker.benchmarks.scale import resume_cost

    small, large = (resume_cost(str(tmp_path), n) for n in (100, 5000))
    assert small["resume_requests"] == large["resume_requests"] == 2  # list and get
    assert large["record_requests_per_shard"] < 0.01  # one log per 256 commits, a snapshot per 32 logs


def test_an_outage_while_recording_delays_the_records_without_losing_them(tmp_path: Path) -> None:
    storage = OutageStorage(tmp_path / "out")
    index = CommitIndex.empty(300)
    recorder = CommitRecorder(storage, index, "run-token", lambda: None, every=50, seconds=1e9, compact_after=100)
    for k in range(100):
        recorder.record(k)
    storage.down = True  # shards 100-199 commit while the index cannot be written: no exception
    for k in range(100, 200):
        recorder.record(k)
    assert CommitIndex.read(storage).committed().tolist() == list(range(100))
    storage.down = False
    for k in range(200, 300):
        recorder.record(k)
    recorder.close()
    assert np.array_equal(CommitIndex.read(storage).committed(), np.arange(300))
    # An outage that outlasts close()'s patience is one StorageError (the driver names it).
    storage.down = True
    recorder.record(300 - 1)
    with pytest.raises(StorageError, match="outage"):
        recorder.close(patience=0)
