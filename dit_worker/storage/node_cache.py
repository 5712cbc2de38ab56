"""This node's cache folder (`$DIT_WORKER_CACHE`, default `~/.cache/dit_worker`): model snapshots
from s3://, Inception weights, reference features. Fills are locked per node, so concurrent workers
on one machine download once and the others wait."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dit_worker.storage.objects import S3Storage, StorageError, open_storage


def cache_root() -> Path:
    return Path(os.environ.get("DIT_WORKER_CACHE", Path.home() / ".cache" / "dit_worker"))


@contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file beside what it guards) for this node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_prefix(url: str, s3_endpoint: str | None = None) -> Path:
    """Copy every object under an s3:// prefix into this node's cache once (a model snapshot).

    A `.complete` marker, written after every file, makes a half-finished copy (a process killed
    mid-download) invisible: the next caller starts over. Raises StorageError (an empty prefix too).
    """
    store = open_storage(url, s3_endpoint=s3_endpoint)
    assert isinstance(store, S3Storage), "cached_prefix copies s3:// prefixes"
    target = cache_root() / "s3" / store.bucket / store.prefix
    marker = target / ".complete"
    if marker.is_file():
        return target
    with node_lock(target.parent / f".{target.name}.lock"):
        if marker.is_file():
            return target
        keys = [obj.key for obj in store.list()]
        if not keys:
            raise StorageError(f"{store.url}: no objects under this prefix")
        for key in keys:
            store.download(key, target / key)
        marker.write_text(url + "\n")
    return target


def cached_object(url: str, cache: str, s3_endpoint: str | None = None) -> tuple[Path, str] | None:
    """One s3:// object copied into `cache_root()/cache/<etag>/` once per node: (path, ETag), or None
    when there is no such object. Other processes on the node wait for the first one's download."""
    parent, _, name = url.rstrip("/").rpartition("/")
    store = open_storage(parent, s3_endpoint=s3_endpoint)
    info = store.stat(name)
    if info is None:
        return None
    path = cache_root() / cache / info.etag / name
    with node_lock(path.parent / f".{name}.lock"):
        if not path.is_file():
            store.download(name, path)
    return path, info.etag
