"""One writer per output: a lease object under OUT (`OUT/_lease.json`), taken atomically before
anything is written and renewed by the driver while the job runs.

Taken with an exclusive create (local: a hard link that refuses an existing name; S3: `PutObject`
with `If-None-Match: *`); renewed and released with compare-and-swap on its ETag (local: under a
lock file; S3: `If-Match`), so of two drivers racing for an expired lease exactly one wins. A lease
whose holder stopped renewing expires `ttl` seconds after its last renewal and may then be taken
over. Commits are fenced: a worker writes a shard's metadata part only while the lease still holds
its driver's token, so the workers of a driver that lost its lease cannot commit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dit_worker.execution.tries import PermanentError
from dit_worker.output.layout import LEASE_KEY
from dit_worker.storage.objects import NoSpace, Storage, StorageError

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0


class LeaseHeld(ValueError):
    """Another run holds the output's lease: refused before anything is written (exit 2)."""


class LeaseLost(PermanentError):
    """This run's lease was taken over (it expired while we could not renew it): retrying cannot help."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class Lease:
    """A lease this run holds on an output: its token, holder and ttl, and the ETag that its next renewal must match
    (compare-and-swap)."""

    storage: Storage
    token: str
    holder: str
    ttl: float
    etag: str

    def _body(self, expires_at: float) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "holder": self.holder,
                "token": self.token,
                "renewed_at": _iso(now),
                "expires_at": _iso(expires_at),
                "expires_at_s": expires_at,
                "ttl_s": self.ttl,
            },
            indent=2,
        ).encode()

    def renew(self) -> None:
        """Push the expiry `ttl` seconds ahead; LeaseLost if another run took the lease over."""
        etag = self.storage.replace(LEASE_KEY, self._body(time.time() + self.ttl), self.etag)
        if etag is None:
            raise LeaseLost(f"{self.storage.child(LEASE_KEY)}: the lease was taken over by another run")
        self.etag = etag

    def release(self) -> None:
        """Mark the lease expired, so the next run takes it at once (unless it was taken over)."""
        try:
            etag = self.storage.replace(LEASE_KEY, self._body(0.0), self.etag)
        except NoSpace:  # a full disk cannot take the expired lease's bytes: remove the lease, if still ours
            info = self.storage.stat(LEASE_KEY)
            if info is not None and info.etag == self.etag:
                self.storage.delete(LEASE_KEY)
            return
        if etag is not None:
            self.etag = etag


def new_token() -> str:
    return uuid.uuid4().hex


def acquire(storage: Storage, ttl: float = DEFAULT_TTL_S, token: str | None = None) -> Lease:
    """Take the output's lease, or raise LeaseHeld naming the holder and when its lease expires."""
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    lease = Lease(storage, token or new_token(), holder, ttl, "")
    body = lease._body(time.time() + ttl)
    etag = storage.create(LEASE_KEY, body)
    if etag is None:
        info = storage.stat(LEASE_KEY)
        current = _read(storage)
        now = time.time()
        if info is not None and current.get("expires_at_s", 0.0) > now:
            left = current["expires_at_s"] - now
            raise LeaseHeld(
                f"{storage.url} is being written by another run ({current.get('holder', '?')}, lease expires "
                f"{current.get('expires_at', '?')}, in {left:.0f} s); wait for it to finish, or for its lease "
                "to expire if it died, or pick another --out"
            )
        etag = storage.replace(LEASE_KEY, body, info.etag) if info is not None else storage.create(LEASE_KEY, body)
        if etag is None:
            raise LeaseHeld(f"{storage.url}: another run took the expired lease at the same moment; pick another --out")
        if current:
            log.info("took over the expired lease of %s (expired %s)", current.get("holder"), current.get("expires_at"))
    lease.etag = etag
    return lease


def _read(storage: Storage) -> dict[str, Any]:
    try:
        data = json.loads(storage.get(LEASE_KEY))
    except (StorageError, ValueError):
        return {}  # vanished between the failed create and now, or not ours: treat as expired
    return data if isinstance(data, dict) else {}


def holds(storage: Storage, token: str) -> bool:
    """Whether the lease still names `token`: the fence a worker checks before committing a shard.

    Storage errors propagate (an outage fails the try, which is retried after its backoff); only a
    lease that is gone or names another run means this run's commits are fenced off.
    """
    if storage.stat(LEASE_KEY) is None:
        return False
    try:
        data = json.loads(storage.get(LEASE_KEY))
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("token") == token


class LeaseKeeper:
    """Renews a lease every ttl/4 on a thread while the job runs; `lost` says whether it was taken over.

    Storage errors while renewing (an outage) are retried at the next beat: the lease only ends up
    lost if it expires and another run takes it in the meantime.
    """

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost: LeaseLost | None = None
        self._renewed = time.monotonic()  # the last time the lease was known to be ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost is None:
            try:
                self.lease.release()
            except Exception as err:  # the lease then simply expires
                log.warning("could not release the lease (%s); it expires in %.0f s", err, self.lease.ttl)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease.ttl / 4):
            try:
                self.lease.renew()
                self._renewed = time.monotonic()
            except LeaseLost as err:
                self.lost = err
                log.error("%s", err)
                return
            except Exception as err:
                log.warning("could not renew the lease (%s); retrying", err)

    def check(self) -> None:
        """Raise LeaseLost once the lease was taken over, or once it went unrenewed for 3/4 of its ttl
        (an outage): from then on another run may take the output over at any moment."""
        if self.lost is not None:
            raise self.lost
        unrenewed = time.monotonic() - self._renewed
        if unrenewed > 0.75 * self.lease.ttl:
            raise LeaseLost(
                f"{self.lease.storage.child(LEASE_KEY)}: the lease could not be renewed for {unrenewed:.0f} s "
                f"(--lease-ttl {self.lease.ttl:g}); another run may take the output over, so this one stops"
            )
