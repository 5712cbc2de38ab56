"""The DiT pipeline: transformer + sampler + VAE decoder, per SPEC section 3."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from dit_worker.checkpoints import Checkpoint, build_models, load_checkpoint
from dit_worker.checkpoints.files import describe_validation
from dit_worker.labels import ClassNames
from dit_worker.models.dit import DiTConfig
from dit_worker.models.vae import to_uint8
from dit_worker.sampling import Sampler, make_sampler
from dit_worker.sampling.guidance import guided_eps
from dit_worker.sampling.noise import SampleNoise
from dit_worker.settings import SamplingSettings, resolve_device, resolve_dtype


def load_pipeline(
    model: str | Path,
    vae: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> DiTPipeline:
    """Load any supported checkpoint (SPEC section 1).

    device None picks cuda when present; dtype None is bfloat16 on GPU and float32 on CPU.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return DiTPipeline(load_checkpoint(model, vae), dev, dt)


class DiTPipeline:
    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.config = checkpoint.transformer
        self.vae_config = checkpoint.vae
        self.scheduler_config = checkpoint.scheduler_config
        self.names = ClassNames(checkpoint.id2label, self.config.num_classes)
        self.transformer, self.vae = build_models(checkpoint, device, dtype)

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.names.labels)

    @property
    def image_size(self) -> int:
        return self.config.input_size * self.vae_config.upscale

    def class_ids(self, names: Sequence[str]) -> list[int]:
        return self.names.ids(names)

    def plan(self, settings: SamplingSettings) -> Sampler:
        """The sampler for these settings; raises ValueError for settings this checkpoint cannot honour."""
        return plan_sampler(settings, self.config, self.scheduler_config)

    def generate(
        self,
        class_ids: Sequence[int],
        seeds: Sequence[int],
        sampler: str = "ddpm",
        steps: int = 250,
        cfg_scale: float = 1.5,
        cfg_channels: int = 3,
        *,
        eta: float = 0.0,
        batch_size: int = 32,
    ) -> np.ndarray:
        """uint8 images [N, H, W, 3]; sample i is a function of (class_ids[i], seeds[i]) only."""
        settings = _settings(sampler=sampler, steps=steps, cfg_scale=cfg_scale, cfg_channels=cfg_channels, eta=eta)
        class_ids, seeds = list(class_ids), list(seeds)
        self.check_samples(class_ids, seeds)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan = self.plan(settings)
        out = np.empty((len(seeds), self.image_size, self.image_size, 3), dtype=np.uint8)
        for lo in range(0, len(seeds), batch_size):
            hi = lo + batch_size
            out[lo:hi] = self.generate_batch(class_ids[lo:hi], seeds[lo:hi], settings, plan).cpu().numpy()
        return out

    def check_samples(self, class_ids: Sequence[int], seeds: Sequence[int]) -> None:
        if len(class_ids) != len(seeds):
            raise ValueError(f"got {len(class_ids)} class ids but {len(seeds)} seeds; pass one seed per sample")
        self.names.check_ids(class_ids)
        SampleNoise(seeds, (0, 0, 0))  # validates the seed range without drawing

    def generate_batch(
        self, class_ids: Sequence[int], seeds: Sequence[int], settings: SamplingSettings, plan: Sampler
    ) -> torch.Tensor:
        """One batch, already validated: uint8 [N, H, W, 3] on the pipeline's device."""
        return self.decode(self.sample_latents(class_ids, seeds, settings, plan))

    @torch.inference_mode()
    def sample_latents(
        self, class_ids: Sequence[int], seeds: Sequence[int], settings: SamplingSettings, plan: Sampler
    ) -> torch.Tensor:
        cfg = self.config
        c, side = cfg.in_channels, cfg.input_size
        noise = SampleNoise(seeds, (c, side, side), pin_memory=self.device.type == "cuda")
        x = noise.draw().to(self.device, non_blocking=True)
        y = torch.tensor(list(class_ids), dtype=torch.long, device=self.device)
        if settings.guided:
            y = torch.cat([y, torch.full_like(y, self.transformer.null_class)])
        timesteps = torch.tensor(plan.timesteps, dtype=torch.long, device=self.device)
        state = None
        for i in range(len(plan)):
            x_in = torch.cat([x, x]) if settings.guided else x
            out = self.transformer(x_in.to(self.dtype), timesteps[i : i + 1], y).float()
            if settings.guided:
                eps, var = guided_eps(out, c, settings.cfg_scale, settings.cfg_channels)
            else:
                eps, var = out[:, :c], out[:, c:]
            z = noise.draw().to(self.device, non_blocking=True) if plan.stochastic else None
            x, state = plan.step(i, x, eps, var, z, state)
        return x

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.vae(latents.to(self.dtype)))


def plan_sampler(settings: SamplingSettings, config: DiTConfig, scheduler_config: dict[str, Any]) -> Sampler:
    """The sampler for these settings on a model with `config`, without its weights (a job driver
    validates with this before any worker loads the model); raises ValueError when not honourable."""
    if settings.guided and settings.cfg_channels > config.in_channels:
        raise ValueError(
            f"cfg_channels {settings.cfg_channels} exceeds the model's {config.in_channels} latent channels"
        )
    try:
        return make_sampler(
            settings.sampler, settings.steps, scheduler_config, learned_sigma=config.learn_sigma, eta=settings.eta
        )
    except ValidationError as err:
        raise ValueError(f"scheduler config not supported by {settings.sampler}: {describe_validation(err)}") from None


def _settings(**fields: Any) -> SamplingSettings:
    try:
        return SamplingSettings(**fields)
    except ValidationError as err:
        raise ValueError(describe_validation(err)) from None
