"""What a job driver knows about a checkpoint without loading its weights onto any device: its
backend's spec (docs/backends.md), the settings resolved for it, and the weights' identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel

from dit_worker.backends import Conditioning, ModelSpec
from dit_worker.backends import inspect_model as inspect_backend
from dit_worker.backends.limits import check_limits, check_memory
from dit_worker.backends.settings import DTYPES
from dit_worker.checkpoints.identity import WeightsIdentity, checkpoint_identity
from dit_worker.driver.config import JobConfig
from dit_worker.driver.errors import JobError
from dit_worker.driver.flags import check_flags
from dit_worker.labels import ClassNames


@dataclass(frozen=True)
class ModelInfo:
    """What the driver knows of the model before any weights load: its spec, the resolved settings and the weights'
    identity."""

    spec: ModelSpec
    settings: BaseModel  # resolved: SamplingSettings (DiT) or DiffusersSettings; all of it is fingerprinted
    weights: WeightsIdentity  # sha256 of every weight file: the fingerprint knows the model by content

    @property
    def names(self) -> ClassNames | None:
        return self.spec.names

    @property
    def conditioning(self) -> Conditioning:
        return self.spec.conditioning

    @property
    def pipeline_class(self) -> str:
        return self.spec.pipeline_class

    @property
    def image_size(self) -> int | list[int]:
        return self.spec.image_size(self.settings)


def inspect_model(config: JobConfig) -> ModelInfo:
    """Configs and the weights' sha256 (no tensors on any device); s3:// and hub sources land in this
    node's cache (fetched once). Settings the checkpoint cannot honour are refused here, as a worker
    would refuse them. Flags for another kind of model are refused first (driver/flags.py); then sizes
    and sequence lengths the model cannot take, or (--local) whose one sample cannot fit the device
    (backends/limits.py)."""
    spec = inspect_backend(config.model, config.vae, config.revision, config.variant)
    check_flags(config, spec)
    try:
        settings = spec.resolve(config.request)
        check_limits(spec, settings)
        if config.local:  # the worker's device is this machine's (on Ray the driver cannot see the workers')
            check_memory(spec, settings, torch.device(config.worker_device), DTYPES[config.worker_dtype])
    except ValueError as err:
        raise JobError(f"settings for {spec.pipeline_class}: {err}") from None
    if getattr(settings, "generic", False) and config.text_encoder != "device":
        raise JobError(
            f"--text-encoder {config.text_encoder}: {spec.pipeline_class} runs through the generic path, which "
            "passes prompts to the pipeline as text; only --text-encoder device is possible"
        )
    # A --revision is read as the commit the settings resolved it to: the one the workers load.
    revision = getattr(settings, "revision", None)
    return ModelInfo(spec, settings, checkpoint_identity(config.model, config.vae, revision, config.variant))
