"""Stateless CPU tasks as Ray tasks (execution/tasks.py): anywhere on the cluster, or on the
driver's node when what they read exists only there."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dit_worker.execution.ordered import in_order
from dit_worker.execution.ray_actors import connect

T = TypeVar("T")
R = TypeVar("R")


class RayTasks:
    """Ray tasks, at most two per CPU they may use in flight. `here`: pinned to this node, with
    no CPU reserved (a head node started with --num-cpus 0 still runs them), as many at once as
    this node has cores; else one CPU each, wherever the cluster has one."""

    def __init__(self, here: bool, address: str | None = None) -> None:
        connect(address)
        self.here = here
        if here:
            self.workers = os.cpu_count() or 1
            strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self.options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": strategy}
        else:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.options = {"num_cpus": 1}

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Generator[R, None, None]:
        remote = ray.remote(max_retries=3)(fn).options(**self.options)
        return in_order(remote.remote, items, 2 * self.workers, _get, ray.cancel)

    def close(self) -> None:
        pass  # nothing kept between maps


def _get(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except RayTaskError as err:  # the task's own exception, as if it had run here
        raise err.as_instanceof_cause() from None
