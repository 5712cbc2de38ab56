"""One writer per output: a lease object under OUT (`OUT/_lease.json`), taken atomically before
anything is written and renewed by the driver while the job runs.

Taken with an exclusive create (local: a hard link that refuses an existing name; S3: `PutObject`
with `If-None-Match: *`); renewed and released with compare-and-swap on its ETag (local: under a
lock file; S3: `If-Match`), so of two drivers racing for an expired lease exactly one wins. A lease
whose holder stopped renewing expires `ttl` seconds after its last renewal and may then be taken
over. Commits are fenced: a worker writes a shard's metadata part only while the lease still holds
its driver's token, so the workers of a driver that lost its lease cannot commit.

A stopped run (`ray job stop`, a scheduler's SIGTERM) releases its lease first, before anything else
unwinds: Ray sends SIGKILL `RAY_JOB_STOP_WAIT_TIME_S` (3 s by default) after SIGTERM, and a lease
left behind would refuse the next run for its whole ttl. The release is one compare-and-swap through
a client that gives up within `RELEASE_BOUND_S`; it clears the token, which fences the workers still
running, and whatever was still in flight (a commit not yet recorded in the index) is made again by
the next run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dit_worker.execution.tries import PermanentError
from dit_worker.output.layout import LEASE_KEY
from dit_worker.storage.objects import NoSpace, Storage, StorageError

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
# A stopped run's release: each request gets this long to connect and as long to answer, tried once, and
# no new try starts after RELEASE_BOUND_S; measured 1.0-1.1 s through a proxy that holds every write 1 s,
# inside Ray's 3 s stop grace (tests/test_job_ray.py).
RELEASE_TIMEOUT_S = 1.5
RELEASE_BOUND_S = 2.0


class LeaseHeld(ValueError):
    """Another run holds the output's lease: refused before anything is written (exit 2)."""


class LeaseLost(PermanentError):
    """This run's lease was taken over (it expired while we could not renew it): retrying cannot help."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class Lease:
    """A lease this run holds on an output: its token, holder and ttl, and the ETag that its next renewal must match
    (compare-and-swap). `quick` is the same storage through requests that give up fast (the release's)."""

    storage: Storage
    token: str
    holder: str
    ttl: float
    etag: str
    quick: Storage | None = None
    released: bool = False
    # Guards `etag` and `released` (never held during a request): a renewal that read the ETag before the
    # release cannot resurrect the lease after it, and one that won the race is undone by the release's retry.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _body(self, expires_at: float, token: str | None) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "holder": self.holder,
                "token": token,
                "renewed_at": _iso(now),
                "expires_at": _iso(expires_at),
                "expires_at_s": expires_at,
                "ttl_s": self.ttl,
            },
            indent=2,
        ).encode()

    def renew(self) -> None:
        """Push the expiry `ttl` seconds ahead; LeaseLost if another run took the lease over."""
        with self._lock:
            if self.released:
                return
            etag = self.etag
        new = self.storage.replace(LEASE_KEY, self._body(time.time() + self.ttl, self.token), etag)
        if new is None:
            if self.released:  # the release won the compare-and-swap
                return
            raise LeaseLost(f"{self.storage.child(LEASE_KEY)}: the lease was taken over by another run")
        with self._lock:
            self.etag = new

    def release(self, bound_s: float = RELEASE_BOUND_S) -> None:
        """Mark the lease expired and clear its token (fencing this run's workers), so the next run takes
        it at once; nothing if another run took it over. Tries for at most `bound_s` seconds, then raises
        StorageError (the lease then simply expires)."""
        with self._lock:
            self.released = True
            etag = self.etag
        storage = self.quick or self.storage
        body, deadline = self._body(0.0, None), time.monotonic() + bound_s
        while True:
            try:
                new = storage.replace(LEASE_KEY, body, etag)
                if new is not None:
                    self.etag = new
                    return
                # The ETag moved: a renewal landed first (retry on its ETag) or another run took over.
                info = storage.stat(LEASE_KEY)
                if info is None or _read(storage).get("token") != self.token:
                    return
                etag = info.etag
            except NoSpace:  # a full disk cannot take the released lease's bytes: remove it, if still ours
                info = storage.stat(LEASE_KEY)
                if info is not None and info.etag == etag:
                    storage.delete(LEASE_KEY)
                return
            except StorageError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise StorageError(f"{storage.child(LEASE_KEY)}: the lease kept changing for {bound_s:g} s")


def new_token() -> str:
    return uuid.uuid4().hex


def acquire(storage: Storage, ttl: float = DEFAULT_TTL_S, token: str | None = None) -> Lease:
    """Take the output's lease, or raise LeaseHeld naming the holder and when its lease expires."""
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    lease = Lease(storage, token or new_token(), holder, ttl, "", storage.bounded(RELEASE_TIMEOUT_S))
    body = lease._body(time.time() + ttl, lease.token)
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
    lost if it expires and another run takes it in the meantime. `stop()` (a stop signal) releases the
    lease at once, without waiting for a renewal in flight.
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
        if self.lease.released:
            return  # stopped: a renewal still in flight is not waited for (it cannot undo the release)
        self._thread.join()
        if self.lost is None:
            self._release()

    def stop(self) -> float:
        """Release the lease now, whatever else is in flight; the seconds it took."""
        t0 = time.monotonic()
        self._stop.set()
        if self.lost is None and not self.lease.released:
            self._release()
        return time.monotonic() - t0

    def _release(self) -> None:
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
        """Raise LeaseLost once the lease was taken over or released (the run is stopping), or once it
        went unrenewed for 3/4 of its ttl (an outage): from then on another run may take the output
        over at any moment."""
        if self.lost is not None:
            raise self.lost
        if self.lease.released:
            raise LeaseLost(f"{self.lease.storage.child(LEASE_KEY)}: released, this run is stopping")
        unrenewed = time.monotonic() - self._renewed
        if unrenewed > 0.75 * self.lease.ttl:
            raise LeaseLost(
                f"{self.lease.storage.child(LEASE_KEY)}: the lease could not be renewed for {unrenewed:.0f} s "
                f"(--lease-ttl {self.lease.ttl:g}); another run may take the output over, so this one stops"
            )


@contextmanager
def released_on_sigterm(keeper: LeaseKeeper) -> Iterator[None]:
    """While the block runs, SIGTERM first releases the lease (within RELEASE_BOUND_S), then does what the
    signal did before (jobs.generate: unwind like Ctrl-C). Only the main thread can install a handler,
    and an ignored SIGTERM stays ignored: there the block runs as it is."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous in (None, signal.SIG_IGN):  # not the main thread, a handler outside Python, or ignored
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        seconds = keeper.stop()
        if keeper.lost is None:
            log.warning("lease released %.2f s after SIGTERM; stopping", seconds)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: end the process as the signal would have without us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
