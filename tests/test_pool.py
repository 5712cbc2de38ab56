"""The one pool, through both transports (in-process and Ray actors): every task's result exactly
once, failed tries retried after their backoff, permanent errors and exhausted tries named, actors
that fail to start replaced. The scenarios are in tests/pool_scenarios.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pool_scenarios import BACKOFF_S, FLAKY, run

ROOT = Path(__file__).resolve().parents[1]
ALL = {k: k * 10 for k in range(6)}
SCENARIOS = ("flaky", "permanent", "exhausted", "start-failure")


@pytest.fixture(params=["local", "ray"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def on_ray(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every scenario through Ray actors on the session's head, one after another in one driver process."""
    folder = tmp_path_factory.mktemp("pool-ray")
    env = os.environ | {
        "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }  # fmt: skip
    cmd = [sys.executable, str(ROOT / "tests" / "pool_scenarios.py"), str(folder), *SCENARIOS]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scenario(name: str, transport: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if transport == "local":
        return run(name, tmp_path, local=True)
    return request.getfixturevalue("on_ray")[name]


def tries_of(outcome: dict[str, Any]) -> dict[int, list[float]]:
    by_key: dict[int, list[float]] = {}
    for key, t in outcome["tries"]:
        by_key.setdefault(int(key), []).append(t)
    return by_key


def test_every_result_once_and_retries_wait_their_backoff(transport: str, tmp_path: Path, request) -> None:
    out = scenario("flaky", transport, tmp_path, request)
    keys = [k for k, _ in out["results"]]
    assert Counter(keys) == Counter(list(ALL)), "each task's result exactly once"
    assert dict(out["results"]) == ALL
    assert out["error"] is None and out["retries"] == len(FLAKY)
    tries = tries_of(out)
    for key in FLAKY:  # failed at once on its first try; the second waits 0.5..1.0 s of backoff
        assert len(tries[key]) == 2
        assert tries[key][1] - tries[key][0] >= 0.45 * BACKOFF_S, (key, tries[key])
    assert all(len(tries[k]) == 1 for k in ALL if k not in FLAKY)
    # Without the backoff, a retry follows its failure at once: the bound above would miss by far.
    unflaky = [tries[k][0] for k in sorted(ALL) if k not in FLAKY]
    assert unflaky[1] - unflaky[0] < 0.45 * BACKOFF_S


def test_a_permanent_error_is_not_retried(transport: str, tmp_path: Path, request) -> None:
    out = scenario("permanent", transport, tmp_path, request)
    assert out["error"] == "task 2 failed, not retried: PermanentError: task 2 cannot succeed"
    assert len(tries_of(out)[2]) == 1


def test_a_task_out_of_tries_names_itself(transport: str, tmp_path: Path, request) -> None:
    out = scenario("exhausted", transport, tmp_path, request)
    assert out["error"] == "task 0 failed 3 time(s), giving up; last error: RuntimeError: task 0 failed"
    assert len(tries_of(out)[0]) == 3


def test_an_actor_that_fails_to_start_is_replaced(transport: str, tmp_path: Path, request) -> None:
    out = scenario("start-failure", transport, tmp_path, request)
    assert dict(out["results"]) == ALL and out["workers_ran"] == 1
