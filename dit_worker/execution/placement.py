"""Can the cluster hold the actors? Checked before a job writes anything, instead of a pool that
waits forever for room that will not come."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import ray

from dit_worker.execution.actors import PlacementError

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often an autoscaler's progress is checked


@dataclass(frozen=True)
class Room:
    """How many actors of one shape the alive nodes hold, by their total resources, node by node."""

    actors: int
    nodes: int
    totals: dict[str, float]


def room_for(per_actor: dict[str, float]) -> Room:
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    fits = sum(
        min(math.floor(res.get(k, 0.0) / need + 1e-9) for k, need in per_actor.items() if need > 0) for res in nodes
    )
    totals = {k: sum(res.get(k, 0.0) for res in nodes) for k in per_actor}
    return Room(fits, len(nodes), totals)


def place(per_actor: dict[str, float], needed: int, timeout: float, hint: str) -> int:
    """How many actors the cluster holds now, once it holds at least `needed`.

    Raises PlacementError when it cannot, after asking the autoscaler for room and waiting up to
    `timeout` seconds when that is > 0. `hint` says what the user can change.
    """
    room = room_for(per_actor)
    if room.actors == 0 and timeout <= 0:
        raise PlacementError(
            f"the cluster has no room for a worker needing {per_actor} ({room.nodes} node(s), "
            f"{room.totals} in total); {hint}"
        )
    if room.actors >= needed:
        return room.actors
    if timeout > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[per_actor] * needed)
        log.info(
            "%d of %d workers fit now; asked the autoscaler for room, waiting %.0f s", room.actors, needed, timeout
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and room.actors < needed:
            time.sleep(POLL_S)
            room = room_for(per_actor)
        if room.actors >= needed:
            return room.actors
    raise PlacementError(
        f"--num-workers {needed} cannot be placed: each worker needs {per_actor} and the cluster's "
        f"{room.nodes} node(s) ({room.totals} in total) have room for {room.actors}. {hint}"
    )
