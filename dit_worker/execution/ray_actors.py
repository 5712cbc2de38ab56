"""The pool's actors as Ray actors, one per `per_actor` bundle of resources, anywhere on the cluster."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from dit_worker.execution.actors import ActorLost, TaskError
from dit_worker.execution.placement import place, room_for
from dit_worker.execution.tries import PermanentError

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> None:
    """Join the cluster: `address`, else RAY_ADDRESS (as under `ray job submit`), else a local one."""
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)


def cluster_gpus(address: str | None) -> float:
    """The cluster's GPUs, all nodes together."""
    connect(address)
    return float(ray.cluster_resources().get("GPU", 0.0))


class RayActors:
    """Ray actors of `actor_cls`; Ray restarts a dead one (its constructor runs again) wherever
    there is room, and never retries a task itself (`max_task_retries=0`): the pool does, counting.

    Usage (through the pool)::

        pool = make_pool(FeatureActor, (weights,), local=False, per_actor={"CPU": 1, "GPU": 1}, num_workers=4)
    """

    def __init__(
        self,
        actor_cls: type,
        args: tuple[Any, ...],
        per_actor: dict[str, float],
        max_concurrency: int,
        placement_timeout: float,
        placement_hint: str,
        env: dict[str, str],
        address: str | None = None,
    ) -> None:
        self.actor_cls, self.args, self.per_actor = actor_cls, args, per_actor
        self.max_concurrency, self.env, self.address = max_concurrency, env, address
        self.placement_timeout, self.placement_hint = placement_timeout, placement_hint
        self.handles: list[ray.actor.ActorHandle] = []
        self._remote: Any = None

    def place(self, needed: int) -> int:
        connect(self.address)
        room = place(self.per_actor, needed, self.placement_timeout, self.placement_hint)
        self._remote = ray.remote(self.actor_cls).options(
            num_cpus=self.per_actor.get("CPU", 0.0),
            num_gpus=self.per_actor.get("GPU", 0.0),
            # A dead actor (killed, node lost, spot reclaimed) is restarted wherever there is room;
            # its task is rerun by the pool, never by Ray, so each try is counted.
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=self.max_concurrency,
            runtime_env={"env_vars": self.env} if self.env else None,
        )
        log.info("each Ray worker takes %s", self.per_actor)
        return room

    def room(self) -> int:
        return room_for(self.per_actor).actors

    def spawn(self, index: int) -> None:
        handle = self._remote.remote(*self.args)
        if index < len(self.handles):
            self.handles[index] = handle
        else:
            self.handles.append(handle)

    def probe(self, index: int) -> ray.ObjectRef:
        return self.handles[index].ready.remote()

    def submit(self, index: int, task: Any) -> ray.ObjectRef:
        return self.handles[index].run.remote(task)

    def wait(self, handles: Sequence[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        finished, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        return finished

    def outcome(self, handle: ray.ObjectRef) -> Any:
        try:
            return ray.get(handle)
        except RayActorError as err:
            # A constructor that raised is not restarted by Ray: that slot is lost.
            raise ActorLost(reason(err), restarting=not getattr(err, "actor_init_failed", False)) from None
        except RayError as err:
            permanent = isinstance(err, RayTaskError) and isinstance(err.cause, PermanentError)
            raise TaskError(reason(err), permanent=permanent) from None

    def close(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
        self.handles = []


def reason(err: RayError) -> str:
    """The original exception of a failed task, or the gist of Ray's explanation of a dead actor."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # A dead actor's message ends with the cause (the constructor's exception, or the exit reason).
    return lines[-1] if isinstance(err, RayActorError) else lines[0]
