"""What a job driver knows about a checkpoint without loading its weights onto any device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dit_worker.checkpoints import load_checkpoint
from dit_worker.checkpoints.identity import WeightsIdentity
from dit_worker.labels import ClassNames
from dit_worker.models.dit import DiTConfig
from dit_worker.pipeline import configure_sampler
from dit_worker.settings import SamplingSettings


@dataclass(frozen=True)
class ModelInfo:
    config: DiTConfig
    scheduler_config: dict[str, Any]
    names: ClassNames
    image_size: int
    weights: WeightsIdentity

    def check_settings(self, settings: SamplingSettings) -> None:
        """Raise ValueError for settings this checkpoint cannot honour, as a worker would."""
        configure_sampler(settings, self.config, self.scheduler_config)


def inspect_model(model: str, vae: str | None) -> ModelInfo:
    """Configs, class names and the weights' sha256 (no tensors loaded; an original .pt is read whole to
    infer its architecture); s3:// and hub sources land in this node's cache (fetched once)."""
    ckpt = load_checkpoint(model, vae, weights=False)
    return ModelInfo(
        config=ckpt.transformer,
        scheduler_config=ckpt.scheduler_config,
        names=ClassNames(ckpt.id2label, ckpt.transformer.num_classes),
        image_size=ckpt.transformer.input_size * ckpt.vae.upscale,
        weights=ckpt.identity(),
    )
