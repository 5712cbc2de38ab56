"""The pool's bookkeeping, apart from its dispatch loop: which actors are starting, which are
alive, how many tasks each holds, and which task each pending result belongs to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ray import ObjectRef

T = TypeVar("T")


@dataclass(frozen=True)
class Assignment(Generic[T]):
    key: int
    task: T
    actor: int


class Members(Generic[T]):
    """Actors by index. An actor is *starting* while its `ready()` probe is unanswered, then *alive*
    until it dies; only alive actors get tasks, at most `capacity` each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.starting: dict[ObjectRef, int] = {}  # ready() probe -> actor
        self.alive: set[int] = set()
        self.load: dict[int, int] = {}
        self.in_flight: dict[ObjectRef, Assignment[T]] = {}
        self.results: Counter[int] = Counter()  # results returned, by actor
        self.start_failures: Counter[int] = Counter()
        self.last_start_error = ""

    def probe(self, actor: int, ref: ObjectRef) -> None:
        """`actor` is (re)starting; `ref` answers once it is ready."""
        self.alive.discard(actor)
        self.starting[ref] = actor

    def started(self, ref: ObjectRef) -> int:
        actor = self.starting.pop(ref)
        self.alive.add(actor)
        return actor

    def failed_to_start(self, ref: ObjectRef, error: str) -> int:
        self.last_start_error = error
        actor = self.starting.pop(ref)
        self.start_failures[actor] += 1
        return actor

    def free_slots(self) -> Iterator[int]:
        """Alive actors with room, least loaded first; each yield is one slot, to be assigned."""
        for actor in sorted(self.alive, key=lambda a: self.load.get(a, 0)):
            while actor in self.alive and self.load.get(actor, 0) < self.capacity:
                yield actor

    def assign(self, ref: ObjectRef, assignment: Assignment[T]) -> None:
        self.in_flight[ref] = assignment
        self.load[assignment.actor] = self.load.get(assignment.actor, 0) + 1

    def settle(self, ref: ObjectRef) -> Assignment[T]:
        """The task behind a finished result, no longer counted against its actor."""
        assignment = self.in_flight.pop(ref)
        self.load[assignment.actor] -= 1
        return assignment

    def lost(self, actor: int, error: str) -> None:
        """An actor whose constructor failed: Ray will not restart it."""
        self.alive.discard(actor)
        self.last_start_error = error

    def pending(self) -> list[ObjectRef]:
        return [*self.in_flight, *self.starting]

    @property
    def none_left(self) -> bool:
        return not self.alive and not self.starting
