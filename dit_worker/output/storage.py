"""Output and model storage: a local folder or an S3 prefix (any S3-compatible endpoint).

Keys are relative, '/'-separated paths below the root (`images/00003/00000042.png`). Every `put`
replaces the whole object atomically, so a retried shard that writes the same keys leaves exactly
one copy of each sample.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

RetryMode = Literal["standard", "adaptive"]


class StorageError(RuntimeError):
    """A location that cannot be used; the message names it and says what to fix."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # S3 ETag, or size + mtime_ns for local files: changes whenever the object is rewritten
    modified: float  # seconds since the epoch


class Storage(ABC):
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """None when the object does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StorageError unless objects can be written here; leaves nothing behind."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def child(self, key: str) -> str:
        """The URL of one object, for messages and metadata."""
        return f"{self.url.rstrip('/')}/{key}"


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # readers see the old object or the new one, never a partial file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.child(key)}: no such object") from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix.endswith("/") or not prefix else self._path(prefix).parent
        if not base.is_dir():
            return
        keys = sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        for key in keys:
            if key.startswith(prefix) and (info := self.stat(key)) is not None:
                yield info

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check_writable(self) -> None:
        # Probe the nearest existing ancestor so a refused job does not even create the folder.
        probe_dir = self.root
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise StorageError(f"{self.root}: {probe_dir} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=probe_dir):
                pass
        except OSError as err:
            raise StorageError(f"{self.root}: folder is not writable ({err.strerror}: {probe_dir})") from None


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, retry_mode: RetryMode) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # Its own session: credentials are resolved now, not from boto3's process-wide cached default.
        # The client is thread-safe and retries throttling and transient errors itself.
        config = Config(retries={"mode": retry_mode, "max_attempts": 10}, max_pool_connections=32)
        self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint, config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StorageError(f"{self.child(key)}: no such object") from None
            raise

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][strip:], obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp()
                )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download(self, key: str, path: Path) -> None:
        """Stream one object to a local file (multi-GB weights never sit in memory)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        self.client.download_file(self.bucket, self._key(key), str(tmp))
        os.replace(tmp, path)

    def check_writable(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{self.url} (endpoint {self.endpoint or 'AWS default'})"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"{where}: bucket {self.bucket!r} does not exist; create it first") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(
                    f"{where}: access denied ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile"
                ) from None
            raise StorageError(f"{where}: {err}") from None
        except BotoCoreError as err:
            raise StorageError(f"{where}: cannot reach S3 ({err})") from None
        probe = f".write-probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.put(probe, b"")
            self.delete(probe)
        except ClientError as err:
            raise StorageError(f"{where}: cannot write objects ({err})") from None


def open_storage(url: str, *, s3_endpoint: str | None = None, retry_mode: RetryMode = "standard") -> Storage:
    """`s3://bucket/prefix` or a local folder. The S3 endpoint comes from `s3_endpoint`, else
    AWS_ENDPOINT_URL, else AWS; credentials from boto3's usual chain."""
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise StorageError(f"{url}: missing bucket name; expected s3://bucket/prefix")
        return S3Storage(parsed.netloc, parsed.path, endpoint=s3_endpoint, retry_mode=retry_mode)
    if "://" in url:
        raise StorageError(f"{url}: unsupported scheme; use a local folder or s3://bucket/prefix")
    return LocalStorage(Path(url))
