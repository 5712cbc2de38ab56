"""What every check shares: the device, its defaults, a work folder, and the tiny models built once."""

from __future__ import annotations

import contextlib
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from dit_worker.checkpoints.convert import tiny_checkpoint_dir
from dit_worker.driver.config import JobConfig
from dit_worker.driver.run import run_job
from dit_worker.selfcheck.config import SelfCheckConfig


class Context:
    """The machine under check: `device` with its default dtype (bfloat16 on GPU, float32 on CPU) and
    compile setting (on for CUDA), as a job there would run; models are written below `work`."""

    def __init__(self, config: SelfCheckConfig, work: Path) -> None:
        self.config = config
        self.device = config.torch_device
        self.work = work
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.compile = self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @cached_property
    def dit(self) -> Path:
        """The tiny random DiT (diffusers layout, 32-px images), written once."""
        return tiny_checkpoint_dir(self.work / "models" / "dit")

    def run_job(self, name: str, config: JobConfig) -> dict:
        """`run_job` in this process; its progress and log lines go to `jobs/NAME.log`, not to the table."""
        logs = self.work / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("w") as log, contextlib.redirect_stderr(log):
            return run_job(config)


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Image PSNR in dB (peak 255) of two uint8 stacks; None when they are identical."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest per-pixel difference in uint8 levels."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
