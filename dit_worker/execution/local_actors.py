"""The pool's actors built in this process (`--local`, a single machine without Ray): the same
lifecycle as Ray actors (built in the background, probed for `ready()`, `max_concurrency` tasks at
once each), so the pool's dispatch, tries and backoff are the same code in both places."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from dit_worker.execution.actors import PlacementError, TaskError
from dit_worker.execution.tries import PermanentError


class LocalActors:
    """Instances of `actor_cls` in this process, each with its own task threads.

    `args` are passed as they are (no copy): a caller may hand in an already loaded model. Usage
    (through the pool)::

        pool = make_pool(ShardWorker, (spec,), local=True, per_actor={"CPU": 1}, num_workers=1)
    """

    def __init__(
        self, actor_cls: type, args: tuple[Any, ...], per_actor: dict[str, float], max_concurrency: int, hint: str
    ) -> None:
        self.actor_cls, self.args, self.per_actor, self.hint = actor_cls, args, per_actor, hint
        self.max_concurrency = max_concurrency
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="actor-start")  # one model loads at a time
        self._built: dict[int, Future[Any]] = {}
        self._threads: dict[int, ThreadPoolExecutor] = {}

    def room(self) -> int:
        """Actors this machine holds by its cores and GPUs."""
        have = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
        fits = [int(have.get(k, 0.0) // need) for k, need in self.per_actor.items() if need > 0]
        return min(fits) if fits else 1

    def place(self, needed: int) -> int:
        room = self.room()
        if room < needed:
            raise PlacementError(f"{needed} worker(s) needing {self.per_actor} do not fit this machine; {self.hint}")
        return room

    def spawn(self, index: int) -> None:
        self._built[index] = self._builder.submit(self.actor_cls, *self.args)
        if index not in self._threads:
            self._threads[index] = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"actor-{index}")

    def probe(self, index: int) -> Future[Any]:
        built = self._built[index]
        return self._builder.submit(lambda: built.result().ready())

    def submit(self, index: int, task: Any) -> Future[Any]:
        return self._threads[index].submit(self._built[index].result().run, task)

    def wait(self, handles: Sequence[Future[Any]], timeout: float) -> list[Future[Any]]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, handle: Future[Any]) -> Any:
        try:
            return handle.result()
        except Exception as err:
            raise TaskError(f"{type(err).__name__}: {err}", permanent=isinstance(err, PermanentError)) from None

    def close(self) -> None:
        for threads in self._threads.values():
            threads.shutdown(wait=True)
        for built in self._built.values():
            actor = built.result() if built.done() and built.exception() is None else None
            close = getattr(actor, "close", None)
            if close is not None:
                close()
        self._builder.shutdown(wait=True)
        self._threads, self._built = {}, {}
