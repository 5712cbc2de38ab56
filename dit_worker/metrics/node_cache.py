"""Single files the metrics read whole (Inception weights, ADM reference batches): a local path as
is, or an s3:// object copied once per node into the cache, keyed by its ETag."""

from __future__ import annotations

from pathlib import Path

from dit_worker.metrics.errors import MetricsInputError
from dit_worker.storage.node_cache import cache_root, node_lock
from dit_worker.storage.objects import S3Storage, open_storage


def local_file(url: str, *, flag: str, cache: str, s3_endpoint: str | None = None, hint: str = "") -> tuple[Path, str]:
    """(local path, version): the version (S3 ETag, or size and mtime) changes when the file does.

    `flag` names the option in error messages; `hint` is appended to them (what would be accepted).
    """
    hint = f"; {hint}" if hint else ""
    if not url.startswith("s3://"):
        path = Path(url).expanduser()
        if not path.is_file():
            raise MetricsInputError(f"{flag} {url}: no such file{hint}")
        st = path.stat()
        return path, f"{st.st_size}-{st.st_mtime_ns}"
    parent, _, name = url.rstrip("/").rpartition("/")
    store = open_storage(parent, s3_endpoint=s3_endpoint)
    assert isinstance(store, S3Storage)
    info = store.stat(name)
    if info is None:
        raise MetricsInputError(f"{flag} {url}: no such object{hint}")
    path = cache_root() / cache / info.etag / name
    with node_lock(path.parent / f".{name}.lock"):  # one download per node; the others wait and reuse it
        if not path.is_file():
            store.download(name, path)
    return path, info.etag
