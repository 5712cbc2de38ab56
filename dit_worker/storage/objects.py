"""Output and model storage: a local folder or an S3 prefix (any S3-compatible endpoint).

Keys are relative, '/'-separated paths below the root (`images/00003/00000042.png`). Every `put`
replaces the whole object atomically, so a retried shard that writes the same keys leaves exactly
one copy of each sample. `create` and `replace` are the conditional writes a lease needs: create
only if absent, replace only if unchanged since it was read (by ETag).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import functools
import io
import mimetypes
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlparse

RetryMode = Literal["standard", "adaptive"]
# check_writable's client: 2 tries of at most 3 s to connect and 5 s per read, at most 1 s apart (standard
# mode's first backoff), so each of its requests ends within 2 x (3 + 5) + 1 s whatever is at the endpoint;
# an endpoint that is unreachable, silent or not S3 fails the first request.
PROBE_CONNECT_S, PROBE_READ_S, PROBE_ATTEMPTS = 3.0, 5.0, 2
PROBE_BOUND_S = PROBE_ATTEMPTS * (PROBE_CONNECT_S + PROBE_READ_S) + 1.0


class StorageError(RuntimeError):
    """A location that cannot be used; the message names it and says what to fix."""


class NoSpace(StorageError):
    """A local write failed for want of room (ENOSPC, EDQUOT): the same write fails again until room is made."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing or a stat sees it."""

    key: str
    size: int
    etag: str  # S3 ETag, or size + mtime_ns for local files: changes whenever the object is rewritten
    modified: float  # seconds since the epoch


class Storage(ABC):
    """The one storage layer: keys under a local folder or an s3:// prefix, with atomic whole-object
    writes and the conditional writes (create-if-absent, compare-and-swap) the output's lease needs.

    Usage::

        storage = open_storage("s3://bucket/run1", s3_endpoint="http://127.0.0.1:8333")
        storage.put("job.json", b"{}")
        [obj.key for obj in storage.list("metadata/")]
    """

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of one object (a manifest's row range, a Parquet footer)."""

    def open_object(self, key: str) -> BinaryIO:
        """A read-only, seekable file over one object, read with ranged requests (a Parquet
        manifest's footer and row groups, without fetching the whole object)."""
        info = self.stat(key)
        if info is None:
            raise StorageError(f"{self.child(key)}: no such object")
        return io.BufferedReader(_RangeFile(self, key, info.size), buffer_size=1 << 20)

    @abstractmethod
    def create(self, key: str, data: bytes) -> str | None:
        """Write `key` only if it does not exist: its new ETag, or None when it already exists."""

    @abstractmethod
    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite `key` only if its ETag is still `etag`: the new ETag, or None when it changed."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """None when the object does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def bounded(self, timeout_s: float) -> Storage:
        """The same objects through requests that each give up after `timeout_s` seconds to connect and
        as long to answer, tried once: for a write that must land within a deadline or not at all (a
        stopped run's lease release). A local folder answers at once: itself."""
        return self

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StorageError unless objects can be written here; leaves nothing behind."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def root_exists(self) -> bool:
        """Whether the folder (or prefix) is already there; an S3 prefix always is."""
        return True

    def remove_root_if_empty(self) -> None:  # noqa: B027 - a no-op where there is no folder (S3)
        """Undo a folder this run created and left empty (a failed first write)."""

    def child(self, key: str) -> str:
        """The URL of one object, for messages and metadata."""
        return f"{self.url.rstrip('/')}/{key}"


class _RangeFile(io.RawIOBase):
    """Storage.open_object's raw file: each read is one ranged GET."""

    def __init__(self, storage: Storage, key: str, size: int) -> None:
        self.storage, self.key, self.size, self.pos = storage, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(base + offset, 0)
        return self.pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.storage.get_range(self.key, self.pos, min(self.pos + len(buffer), self.size))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


# Files are created as `open()` would create them (0o666 minus the umask: 0644 by default), not with
# mkstemp's private 0600, so a shared dataset is readable by the team.
FILE_MODE = 0o666 & ~_umask()


class LocalStorage(Storage):
    """Keys as files under a folder; writes go to a temporary file renamed into place, so readers never see half an
    object."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def root_exists(self) -> bool:
        return self.root.exists()

    def remove_root_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            entries = list(self.root.iterdir())
            if entries and all(e.name.startswith(".") and e.name.endswith(".lock") for e in entries):
                for lock in entries:  # only compare-and-swap lock files left: no object, nothing to keep
                    lock.unlink()
            for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), reverse=True):
                folder.rmdir()  # only the empty subfolders a failed write made; raises on any file
            self.root.rmdir()

    def _write_temp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        except OSError as err:
            raise _no_space(err, path) from None
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)  # never half an object: the temporary file goes
            if isinstance(err, OSError):
                raise _no_space(err, path) from None
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)  # readers see the old object or the new one, never a partial file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and refuses an existing name: exclusive create of the whole file
        except FileExistsError:
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)
        info = self.stat(key)
        return info.etag if info else None

    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # compare and swap, against other replace() calls
            current = self.stat(key)
            if current is None or current.etag != etag:
                return None
            self.put(key, data)
            info = self.stat(key)
        return info.etag if info else None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(f"{self.child(key)}: no such object") from None

    def open_object(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StorageError(f"{self.child(key)}: no such object") from None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(start)
                return f.read(max(stop - start, 0))
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(f"{self.child(key)}: no such object") from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):  # NotADirectory: OUT (or a folder in the key) is a file
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


def _no_space(err: OSError, path: Path) -> OSError:
    """ENOSPC / EDQUOT as NoSpace naming the path and the room left; any other OSError as it is."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return err
    try:
        free = f"{shutil.disk_usage(path.parent).free} bytes free there"
    except OSError:
        free = "free space unknown"
    name = errno.errorcode[err.errno]
    return NoSpace(f"no space left on device ({name}) writing {path} ({free}); make room and rerun the same command")


@functools.cache
def _service_models():  # -> botocore.loaders.Loader
    """botocore's service models, read once per process and shared by every session: each new session
    would parse the same JSON again (a fifth of a second of CPU per storage opened)."""
    from botocore.loaders import create_loader

    return create_loader()


class S3Storage(Storage):
    """Keys under an s3:// prefix on AWS or any S3-compatible endpoint (SeaweedFS, MinIO), through one thread-safe
    boto3 client with retries."""

    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, retry_mode: RetryMode) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # Its own session: credentials are resolved now, not from boto3's process-wide cached default.
        # The client is thread-safe and retries throttling and transient errors itself.
        config = Config(retries={"mode": retry_mode, "max_attempts": 10}, max_pool_connections=32)
        core = botocore.session.Session()
        core.register_component("data_loader", _service_models())
        session = boto3.session.Session(botocore_session=core)
        self.client = session.client("s3", endpoint_url=self.endpoint, config=config)
        self._session = session

    @functools.cached_property
    def probe_client(self):  # -> botocore client; made on first use: most storages are never probed
        """The first touch's client (check_writable) is impatient: a closed port, a black hole or a server
        that is not S3 is one line within PROBE_BOUND_S, not minutes of the patient client's retries."""
        from botocore.config import Config

        probe = Config(
            connect_timeout=PROBE_CONNECT_S,
            read_timeout=PROBE_READ_S,
            retries={"mode": "standard", "total_max_attempts": PROBE_ATTEMPTS},
        )
        return self._session.client("s3", endpoint_url=self.endpoint, config=probe)

    def bounded(self, timeout_s: float) -> S3Storage:
        from botocore.config import Config

        # A view with its own client: botocore's timeouts and retries are set per client, not per request.
        view = copy.copy(self)
        once = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 1})
        view.client = self._session.client("s3", endpoint_url=self.endpoint, config=once)
        return view

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def _where(self) -> str:
        return f"{self.url} (endpoint {self.endpoint or 'AWS default'})"

    @contextlib.contextmanager
    def _errors(self, what: str, *, probing: bool = False) -> Iterator[None]:
        """botocore's errors as one StorageError line naming the location and what to fix; `probing` (the
        first touch) also names an endpoint whose errors are not S3's."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            answer = err.response.get("ResponseMetadata", {})
            if probing and not answer.get("RequestId"):  # every S3 answer carries one (x-amz-request-id)
                why = f"it answered HTTP {answer.get('HTTPStatusCode', code)} without an S3 request id to {what}"
                raise StorageError(self._not_s3(why)) from None
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"{self._where}: bucket {self.bucket!r} does not exist; create it first") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(
                    f"{self._where}: access denied ({code}) while trying to {what}; check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY or the profile"
                ) from None
            raise StorageError(f"{self._where}: cannot {what} ({code}: {err})") from None
        except NoCredentialsError:
            raise StorageError(
                f"{self._where}: no AWS credentials found; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile"
            ) from None
        except BotoCoreError as err:
            raise StorageError(f"{self._where}: cannot reach S3 to {what} ({err})") from None

    def put(self, key: str, data: bytes) -> None:
        # A type browsers act on (text/html, image/jpeg): jobs.report's page opens straight from the bucket.
        kind = {"ContentType": t} if (t := mimetypes.guess_type(key)[0]) else {}
        with self._errors(f"write {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kind)

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        with self._errors(f"write {key}"):
            try:
                head = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as err:
                # 412: the condition failed; 409: a concurrent conditional write won (AWS).
                if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return None
                raise
        return head["ETag"].strip('"')

    def create(self, key: str, data: bytes) -> str | None:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        return self._conditional_put(key, data, IfMatch=f'"{etag}"')

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        with self._errors(f"read {key}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise StorageError(f"{self.child(key)}: no such object") from None
                raise

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        with self._errors(f"read {key}"):
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{stop - 1}")
            return obj["Body"].read()

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        with self._errors(f"read {key}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    if not self._bucket_exists():  # HEAD says 404 for a missing bucket too
                        raise StorageError(
                            f"{self._where}: bucket {self.bucket!r} does not exist; create it first"
                        ) from None
                    return None
                raise
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp())

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(f"list {prefix or 'objects'}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][strip:], obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp()
                    )

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download(self, key: str, path: Path) -> None:
        """Stream one object to a local file (multi-GB weights never sit in memory)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with self._errors(f"read {key}"):
            self.client.download_file(self.bucket, self._key(key), str(tmp))
        os.replace(tmp, path)

    def _not_s3(self, why: str) -> str:
        return f"{self._where}: not an S3 endpoint ({why}); check --s3-endpoint / AWS_ENDPOINT_URL"

    def check_writable(self) -> None:
        """Reach the bucket, write a probe object, read it back and delete it, through the impatient
        probe client: within PROBE_BOUND_S whatever is at the endpoint."""
        client = self.probe_client
        with self._errors("reach the bucket", probing=True):
            client.head_bucket(Bucket=self.bucket)
        probe = self._key(f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
        data = b"dit-worker write probe"
        with self._errors("write a probe object", probing=True):
            client.put_object(Bucket=self.bucket, Key=probe, Body=data)
            try:  # a web server may answer 200 to anything: what was written must read back
                back = client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
            finally:
                client.delete_object(Bucket=self.bucket, Key=probe)
        if back != data:
            raise StorageError(self._not_s3("it accepted a probe object but returned other bytes for it"))


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
