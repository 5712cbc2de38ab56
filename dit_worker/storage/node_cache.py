"""This node's cache folder (`$DIT_WORKER_CACHE`, default `~/.cache/dit_worker`): model snapshots
from s3://, Inception weights, reference features. Fills are locked per node, so concurrent workers
on one machine download once and the others wait."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DIT_WORKER_CACHE", Path.home() / ".cache" / "dit_worker"))


@contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file beside what it guards) for this node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
