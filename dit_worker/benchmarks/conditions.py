"""The conditions a benchmark figure was measured under: the peer libraries' versions and the machine's
state. A CPU figure taken on shared cores means little without the load average next to it."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch

# The libraries a DiT figure is compared against or depends on; a missing one reports None.
PEERS = ("diffusers", "transformers", "torch")


def peer_versions(names: tuple[str, ...] = PEERS) -> dict[str, str | None]:
    """Each library's version: the imported module's __version__ (what this process really runs, a
    PYTHONPATH override included), else its distribution metadata; None when not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        versions[name] = str(version) if version is not None else None
    return versions


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor() or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_conditions(device: torch.device | str) -> dict[str, Any]:
    """Versions, cores, load average (1/5/15 min), CPU model and torch's thread count, plus the GPU's
    name on CUDA: one flat dict to merge into a benchmark's JSON line."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    conditions: dict[str, Any] = {
        "versions": peer_versions(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": usable,
        "loadavg_1_5_15": load,
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        conditions["gpu"] = torch.cuda.get_device_name(device)
    return conditions
