"""The house's floors: every import in dit_worker/ and jobs/ (function-local ones included) runs
down, never up or sideways into another package of the same floor, so there are no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The data's way through a job, top to bottom (README, "The code").
FLOORS = {
    "jobs": 9,
    "dit_worker": 8,  # the package's public API (dit_worker/__init__.py)
    "dit_worker.selfcheck": 8,  # proves a machine: drives the job, the benchmarks and the backends
    "dit_worker.curation": 7,  # reads a finished set and writes a new one on the pool
    "dit_worker.driver": 7,
    "dit_worker.benchmarks": 7,  # harnesses that drive the pool and the workers as the job does
    "dit_worker.worker": 6,
    "dit_worker.shard": 5,
    "dit_worker.report": 5,  # reads a finished set and its metrics
    "dit_worker.manifest": 4,
    "dit_worker.metrics": 4,
    "dit_worker.backends": 3,
    "dit_worker.output": 2,
    "dit_worker.checkpoints": 2,
    "dit_worker.storage": 1,
    "dit_worker.execution": 1,
    "dit_worker.distinct": 1,  # distinct keys in bounded memory (manifest checks, output sets)
    "dit_worker.rows": 0,  # what a sample is (conditioning, a batch of rows, the seed range): no torch
    "dit_worker.labels": 0,  # class names by id and ids by name
    "dit_worker.models": 1,
    "dit_worker.sampling": 1,
}


def room(module: str) -> str:
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in FLOORS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, m) for line, m in found if m.split(".")[0] in ("dit_worker", "jobs")]


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def check(path: Path, module: str) -> list[str]:
    """The imports of `path` (the module `module`) that run up or sideways."""
    bad, me = [], room(module)
    for line, target in imports(path):
        other = room(target)
        if other != me and FLOORS[other] >= FLOORS[me]:
            bad.append(f"{module}:{line}: floor {FLOORS[me]} imports {target} (floor {FLOORS[other]})")
    return bad


def test_imports_run_down() -> None:
    files = sorted([*ROOT.glob("dit_worker/**/*.py"), *ROOT.glob("jobs/*.py")])
    assert len(files) > 80
    assert [v for path in files for v in check(path, module_of(path))] == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The same walk over a worker-side module that imports the driver, hidden in a function, objects."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from dit_worker.driver.run import run_job\n")
    assert check(probe, "dit_worker.worker.probe") == [
        "dit_worker.worker.probe:2: floor 6 imports dit_worker.driver.run (floor 7)"
    ]
    probe.write_text("from dit_worker.metrics.frechet import frechet_distance\n")  # sideways, same floor
    assert check(probe, "dit_worker.manifest.probe") == [
        "dit_worker.manifest.probe:1: floor 4 imports dit_worker.metrics.frechet (floor 4)"
    ]


def modules_loaded_by(module: str) -> set[str]:
    """The top-level packages a fresh process holds after importing `module` (as a spawned task does)."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_a_manifest_scan_task_starts_without_torch() -> None:
    """A scan's task processes import only the manifest side (seconds of torch and diffusers saved in
    each); the same question of the worker side, which does need torch, answers the other way."""
    assert not {"torch", "diffusers", "transformers"} & modules_loaded_by("dit_worker.manifest.scan")
    assert "torch" in modules_loaded_by("dit_worker.worker.shard_worker")
