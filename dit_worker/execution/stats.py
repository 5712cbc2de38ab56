"""What one run of a pool (or of the in-process runner) measured."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStats:
    """The driver's own cost per task is (seconds - waiting_seconds) / tasks."""

    workers_placed: int  # workers started
    workers_ran: int  # of which returned at least one result
    seconds: float  # the dispatch loop, from its start to the last result
    waiting_seconds: float  # of which blocked, waiting for workers
    results_by_worker: tuple[int, ...] = ()  # tasks each worker completed, by worker index
