"""The execution layer's retry bookkeeping, shared by the Ray pool and the in-process runner."""

from __future__ import annotations

import pytest

from dit_worker.execution.tries import Backoff, TaskFailed, TaskQueue


def test_tasks_are_made_only_when_taken() -> None:
    """Tasks that carry data (reference image chunks) must not all be built up front."""
    made: list[int] = []

    def tasks():
        for k in range(5):
            made.append(k)
            yield k, f"task {k}"

    queue = TaskQueue(tasks(), max_tries=2)
    assert made == []
    assert queue.take() == (0, "task 0")
    assert bool(queue) and made == [0, 1]  # one look-ahead to answer "anything left?"
    assert [queue.take() for _ in range(4)] == [(k, f"task {k}") for k in range(1, 5)]
    assert not queue and made == [0, 1, 2, 3, 4]


def test_a_failed_task_comes_back_first_until_its_tries_are_used() -> None:
    queue = TaskQueue(((k, k * 10) for k in range(3)), max_tries=3, name=lambda k: f"shard {k:05d}")
    key, task = queue.take()
    queue.failed(key, task, "boom")
    assert queue.take() == (0, 0)  # before the untouched shards 1 and 2
    queue.failed(0, 0, "boom again")
    assert queue.retries == 2
    assert queue.take() == (0, 0)
    with pytest.raises(TaskFailed, match=r"^shard 00000 failed 3 time\(s\), giving up; last error: third$"):
        queue.failed(0, 0, "third")
    assert [queue.take() for _ in range(2)] == [(1, 10), (2, 20)]  # the others are still there


def test_tries_are_counted_per_task() -> None:
    queue = TaskQueue(((k, None) for k in range(2)), max_tries=2)
    taken = [queue.take(), queue.take()]  # both in flight, as on two workers
    for key, task in taken:
        queue.failed(key, task, "once")  # one failure each: neither is out of tries
    assert queue.retries == 2 and sorted([queue.take()[0], queue.take()[0]]) == [0, 1]
    with pytest.raises(ValueError, match="max_tries must be >= 1"):
        TaskQueue([], max_tries=0)


def test_retries_wait_out_an_exponential_backoff_with_jitter() -> None:
    now = [100.0]
    queue = TaskQueue(((k, k) for k in range(2)), max_tries=4, backoff=Backoff(10.0, 25.0), clock=lambda: now[0])
    queue.take()
    queue.failed(0, 0, "outage")  # first failure: 5..10 s
    assert queue.ready() and queue.take() == (1, 1)  # the fresh task is not held up by the retry
    assert bool(queue) and not queue.ready() and 5.0 <= queue.wait_s() <= 10.0
    with pytest.raises(IndexError):
        queue.take()
    now[0] += queue.wait_s()
    assert queue.take() == (0, 0)
    waits = []
    for _ in (2, 3):  # failures 2 and 3: 10..20 s, then capped at 12.5..25 s
        queue.failed(0, 0, "outage")
        waits.append(queue.wait_s())
        now[0] += waits[-1]
        assert queue.take() == (0, 0)
    assert 10.0 <= waits[0] <= 20.0 and 12.5 <= waits[1] <= 25.0
    with pytest.raises(TaskFailed, match="failed 4 time"):
        queue.failed(0, 0, "outage")


def test_a_final_error_is_not_retried() -> None:
    queue = TaskQueue([(7, None)], max_tries=5, name=lambda k: f"shard {k:05d}")
    queue.take()
    with pytest.raises(TaskFailed, match=r"^shard 00007 failed, not retried: non-finite$"):
        queue.failed(7, None, "non-finite", final=True)
