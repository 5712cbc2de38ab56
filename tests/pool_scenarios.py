"""Scenarios for the one pool, run the same way on both transports (tests/test_pool.py).

`python tests/pool_scenarios.py SCENARIO DIR` runs one on Ray (RAY_ADDRESS set) and prints its
outcome as JSON; the in-process transport calls `run` directly. As a script, the actor class below
lives in `__main__`, which Ray's pickling sends by value, so the cluster needs no copy of tests/.

Each try of a task appends `key time` to DIR/tries, so the test sees every try, on any transport.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dit_worker.execution.pool import make_pool
from dit_worker.execution.tries import Backoff, PermanentError, TaskFailed, TaskQueue

FLAKY = (1, 3)  # fail their first try
BACKOFF_S = 1.0  # the first retry waits 0.5..1.0 s (equal jitter)


class ScenarioActor:
    """Runs task keys: fails a flaky key's first try, raises PermanentError for `permanent`, fails
    every try of `broken`; its constructor fails while DIR/fail_starts holds a positive count."""

    def __init__(self, folder: str, permanent: tuple[int, ...], broken: tuple[int, ...]) -> None:
        self.folder, self.permanent, self.broken = Path(folder), permanent, broken
        starts = self.folder / "fail_starts"
        if starts.is_file() and (left := int(starts.read_text())) > 0:
            starts.write_text(str(left - 1))
            raise RuntimeError("constructor failed on purpose")

    def ready(self) -> str:
        return "scenario actor"

    def run(self, key: int) -> int:
        log = self.folder / "tries"
        earlier = log.read_text().split().count(str(key)) if log.is_file() else 0
        with log.open("a") as f:
            f.write(f"{key} {time.time()}\n")
        if key in self.permanent:
            raise PermanentError(f"task {key} cannot succeed")
        if key in self.broken or (key in FLAKY and earlier == 0):
            raise RuntimeError(f"task {key} failed")
        time.sleep(0.05)
        return key * 10


def run(scenario: str, folder: Path, local: bool) -> dict[str, Any]:
    """Six tasks through the pool; what came back, how often each task ran, and when."""
    permanent, broken, max_tries = {"permanent": ((2,), (), 3), "exhausted": ((), (0,), 3)}.get(scenario, ((), (), 3))
    if scenario == "start-failure":
        (folder / "fail_starts").write_text("1")
    pool = make_pool(ScenarioActor, (str(folder), permanent, broken), local=local, per_actor={"CPU": 1.0},
                     num_workers=1, tasks_per_actor=2, max_concurrency=2)  # fmt: skip
    queue = TaskQueue(
        ((k, k) for k in range(6)), max_tries, name=lambda k: f"task {k}", backoff=Backoff(BACKOFF_S, 1.0)
    )
    results: list[list[int]] = []
    error = None
    pool.start()
    try:
        results.extend([key, value] for key, value in pool.map(queue))
    except TaskFailed as err:
        error = str(err)
    finally:
        pool.close()
    tries = [line.split() for line in (folder / "tries").read_text().splitlines()]
    return {
        "results": results,
        "error": error,
        "retries": queue.retries,
        "tries": [[int(k), float(t)] for k, t in tries],
        "workers_ran": pool.stats.workers_ran,
    }


if __name__ == "__main__":
    import ray

    # python tests/pool_scenarios.py FOLDER NAME...: each scenario in FOLDER/NAME, one after another
    # through one Ray connection (making one costs seconds here); one JSON line of outcomes by name.
    ray.init(address="auto", logging_level="warning", log_to_driver=False)
    outcomes = {}
    for name in sys.argv[2:]:
        folder = Path(sys.argv[1]) / name
        folder.mkdir()
        outcomes[name] = run(name, folder, local=False)
    print(json.dumps(outcomes))
