"""The pool's bookkeeping, apart from its dispatch loop: which actors are starting, which are
alive, how many tasks each holds, and which task each pending handle belongs to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Assignment(Generic[T]):
    """A task handed to an actor: its key, the task itself (to rerun it) and the actor's index."""

    key: int
    task: T
    actor: int


class Members(Generic[T]):
    """Actors by index. An actor is *starting* while its ready probe is unanswered, then *alive*
    until it dies; only alive actors get tasks, at most `capacity` each.

    Handles are whatever the actors' transport answers with (a Ray ObjectRef, a local Future).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.starting: dict[Hashable, int] = {}  # ready probe -> actor
        self.alive: set[int] = set()
        self.load: dict[int, int] = {}
        self.in_flight: dict[Hashable, Assignment[T]] = {}
        self.results: Counter[int] = Counter()  # results returned, by actor
        self.start_failures: Counter[int] = Counter()
        self.last_start_error = ""

    def probe(self, actor: int, handle: Hashable) -> None:
        """`actor` is (re)starting; `handle` answers once it is ready."""
        self.alive.discard(actor)
        self.starting[handle] = actor

    def started(self, handle: Hashable) -> int:
        actor = self.starting.pop(handle)
        self.alive.add(actor)
        return actor

    def failed_to_start(self, handle: Hashable, error: str) -> int:
        self.last_start_error = error
        actor = self.starting.pop(handle)
        self.start_failures[actor] += 1
        return actor

    def free_slots(self) -> Iterator[int]:
        """Alive actors with room, least loaded first; each yield is one slot, to be assigned."""
        for actor in sorted(self.alive, key=lambda a: self.load.get(a, 0)):
            while actor in self.alive and self.load.get(actor, 0) < self.capacity:
                yield actor

    def assign(self, handle: Hashable, assignment: Assignment[T]) -> None:
        self.in_flight[handle] = assignment
        self.load[assignment.actor] = self.load.get(assignment.actor, 0) + 1

    def settle(self, handle: Hashable) -> Assignment[T]:
        """The task behind a finished handle, no longer counted against its actor."""
        assignment = self.in_flight.pop(handle)
        self.load[assignment.actor] -= 1
        return assignment

    def lost(self, actor: int, error: str) -> None:
        """An actor that cannot come back (its constructor failed): no more tasks for it."""
        self.alive.discard(actor)
        self.last_start_error = error

    def pending(self) -> list[Hashable]:
        return [*self.in_flight, *self.starting]

    @property
    def none_left(self) -> bool:
        return not self.alive and not self.starting
