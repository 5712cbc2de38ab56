"""Mass-producing class-conditional images with Diffusion Transformers."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dit_worker.backends.native.pipeline import DiTPipeline, load_pipeline
    from dit_worker.backends.settings import SamplingSettings

__all__ = ["DiTPipeline", "SamplingSettings", "load_pipeline"]

# Resolved on first use (PEP 562): a process that imports only a CPU-side part of the package (a
# manifest scan task, a dedup task, the report) starts without loading torch, which costs seconds.
_LAZY = {
    "DiTPipeline": "dit_worker.backends.native.pipeline",
    "load_pipeline": "dit_worker.backends.native.pipeline",
    "SamplingSettings": "dit_worker.backends.settings",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dit_worker' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
