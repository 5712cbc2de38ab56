"""Single files the metrics read whole (Inception weights, ADM reference batches): a local path as
is, or an s3:// object copied once per node into the cache, keyed by its ETag."""

from __future__ import annotations

from pathlib import Path

from dit_worker.metrics.errors import MetricsInputError
from dit_worker.storage.node_cache import cached_object


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
    cached = cached_object(url, cache, s3_endpoint)
    if cached is None:
        raise MetricsInputError(f"{flag} {url}: no such object{hint}")
    return cached
