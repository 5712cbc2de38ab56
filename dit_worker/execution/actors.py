"""How the pool reaches its actors, wherever they run: the one interface that the Ray and the
in-process transports implement, and the two ways a handle can fail."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol, TypeVar

H = TypeVar("H", bound=Hashable)


class PlacementError(ValueError):
    """More actors asked for than the cluster (or this machine) can place."""


class ActorLost(Exception):
    """The actor holding a task died (killed, node lost). `restarting`: its transport brings it back
    (Ray restarts it), so it is probed again; otherwise its slot is given up."""

    def __init__(self, reason: str, *, restarting: bool) -> None:
        super().__init__(reason)
        self.reason, self.restarting = reason, restarting


class TaskError(Exception):
    """A task raised. `permanent`: a retry cannot help (the task raised a PermanentError)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason, self.permanent = reason, permanent


class Actors(Protocol[H]):
    """Actors of one class, each built with the same arguments, addressed by index.

    `probe` and `submit` return handles; `wait` returns the handles that finished; `outcome` is a
    finished handle's value, or raises ActorLost / TaskError (a probe raises them for a constructor
    that failed).
    """

    def place(self, needed: int) -> int:
        """How many actors fit now, once at least `needed` do; raises PlacementError otherwise."""
        ...

    def room(self) -> int:
        """How many actors fit now (checked again as nodes join)."""
        ...

    def spawn(self, index: int) -> None:
        """Start (or replace) the actor at `index`; it loads in the background."""
        ...

    def probe(self, index: int) -> H:
        """A handle that answers `ready()`'s description once the actor is built."""
        ...

    def submit(self, index: int, task: Any) -> H: ...

    def wait(self, handles: Sequence[H], timeout: float) -> list[H]:
        """Some finished handles (at least one, unless `timeout` seconds pass first)."""
        ...

    def outcome(self, handle: H) -> Any: ...

    def close(self) -> None: ...
