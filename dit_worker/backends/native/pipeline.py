"""The DiT pipeline: transformer + sampler + VAE decoder (docs/python-api.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from dit_worker.backends.base import NonFiniteLatents
from dit_worker.backends.native.checkpoint import Checkpoint, build_models, load_checkpoint
from dit_worker.backends.settings import SamplingSettings, resolve_device, resolve_dtype
from dit_worker.checkpoints.files import describe_validation
from dit_worker.labels import ClassNames
from dit_worker.models.dit import DiTConfig
from dit_worker.models.vae import to_uint8
from dit_worker.sampling import Sampler, make_sampler
from dit_worker.sampling.guidance import guided_eps
from dit_worker.sampling.noise import SampleNoise


def load_pipeline(
    model: str | Path,
    vae: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> DiTPipeline:
    """Load any supported checkpoint (docs/checkpoints.md).

    device None picks cuda when present; dtype None is bfloat16 on GPU and float32 on CPU.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return DiTPipeline(load_checkpoint(model, vae), dev, dt)


@dataclass(frozen=True)
class ConfiguredSampler:
    """A sampler and the settings it was made from, so the two cannot be mismatched."""

    settings: SamplingSettings
    sampler: Sampler


class DiTPipeline:
    """Class-conditional DiT: our transformer, sampler and VAE decoder on one device.

    Every image is a function of its (class id, seed) and the sampling settings only, whatever the
    batch it is made in. Example::

        >>> from dit_worker import load_pipeline
        >>> pipe = load_pipeline("facebook/DiT-XL-2-256", device="cuda", dtype="bfloat16")
        >>> ids = pipe.class_ids(["white shark", "umbrella"])  # [2, 879]
        >>> images = pipe.generate(ids, seeds=[0, 1], sampler="ddpm", steps=250, cfg_scale=1.5)
        >>> images.shape, images.dtype  # ((2, 256, 256, 3), dtype('uint8'))

    The job drives the same pipeline batch by batch: `sampler(settings)` once, then
    `generate_batch(class_ids, seeds, sampler)`; `compile()` turns on torch.compile (+ CUDA graphs).
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.config = checkpoint.transformer
        self.vae_config = checkpoint.vae
        self.scheduler_config = checkpoint.scheduler_config
        self.names = ClassNames(checkpoint.id2label, self.config.num_classes)
        self.transformer, self.vae = build_models(checkpoint, device, dtype)
        # NHWC is the native convolution layout of cuDNN and oneDNN: no per-layer reorders.
        self.vae.to(memory_format=torch.channels_last)
        self._forward: Callable[..., torch.Tensor] = self.transformer

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.names.labels)

    @property
    def image_size(self) -> int:
        return self.config.input_size * self.vae_config.upscale

    def class_ids(self, names: Sequence[str]) -> list[int]:
        return self.names.ids(names)

    def sampler(self, settings: SamplingSettings) -> ConfiguredSampler:
        """The sampler for these settings; raises ValueError for settings this checkpoint cannot honour."""
        return configure_sampler(settings, self.config, self.scheduler_config)

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
        guidance_interval: tuple[int, int] | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """uint8 images [N, H, W, 3]; sample i is a function of (class_ids[i], seeds[i]) only.

        The settings are those of `SamplingSettings` (README, "Numerics"); `guidance_interval`
        changes the sampling protocol (README, "Speed").
        """
        settings = _settings(
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg_scale,
            cfg_channels=cfg_channels,
            eta=eta,
            guidance_interval=guidance_interval,
        )
        class_ids, seeds = list(class_ids), list(seeds)
        self.check_samples(class_ids, seeds)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        configured = self.sampler(settings)
        out = np.empty((len(seeds), self.image_size, self.image_size, 3), dtype=np.uint8)
        for lo in range(0, len(seeds), batch_size):
            hi = lo + batch_size
            out[lo:hi] = self.generate_batch(class_ids[lo:hi], seeds[lo:hi], configured).cpu().numpy()
        return out

    def check_samples(self, class_ids: Sequence[int], seeds: Sequence[int]) -> None:
        if len(class_ids) != len(seeds):
            raise ValueError(f"got {len(class_ids)} class ids but {len(seeds)} seeds; pass one seed per sample")
        self.names.check_ids(class_ids)
        SampleNoise(seeds, (0, 0, 0))  # validates the seed range without drawing

    def generate_batch(
        self, class_ids: Sequence[int], seeds: Sequence[int], configured: ConfiguredSampler
    ) -> torch.Tensor:
        """One batch, already validated: uint8 [N, H, W, 3] on the pipeline's device.

        Raises NonFiniteLatents naming the rows whose latents hold NaN or inf: decoded, they would
        become plausible-looking black or saturated images.
        """
        latents = self.sample_latents(class_ids, seeds, configured)
        bad = ~torch.isfinite(latents).flatten(1).all(dim=1)
        if bad.any():  # one host sync per batch
            raise NonFiniteLatents(torch.nonzero(bad).flatten().tolist())
        return self.decode(latents)

    @torch.inference_mode()
    def sample_latents(
        self, class_ids: Sequence[int], seeds: Sequence[int], configured: ConfiguredSampler
    ) -> torch.Tensor:
        """Float32 latents of one validated batch; all sampler arithmetic stays on the device.

        A float64 pipeline (not offered by load_pipeline) keeps everything in float64: the tests use
        it to show that float32 differences are rounding only."""
        settings, sampler = configured.settings, configured.sampler
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        cfg = self.config
        c, side = cfg.in_channels, cfg.input_size
        noise = SampleNoise(seeds, (c, side, side), pin_memory=self.device.type == "cuda")
        # Pinned host memory + non_blocking: the copy overlaps the queued GPU work, and the CPU draws
        # the next step's noise while the GPU is still computing this one.
        x = noise.draw().to(self.device, acc, non_blocking=True)
        y = torch.tensor(list(class_ids), dtype=torch.long, device=self.device)
        y_cfg = torch.cat([y, torch.full_like(y, self.transformer.null_class)])
        timesteps = torch.tensor(sampler.timesteps, dtype=torch.long, device=self.device)
        state = None
        for i, t in enumerate(sampler.timesteps):
            t_in = timesteps[i : i + 1]  # one shared timestep; broadcast inside the model
            if settings.guided_at(t):
                # Conditional and unconditional halves in one batch: one forward per step.
                out = self._forward(torch.cat([x, x]).to(self.dtype), t_in, y_cfg).to(acc)
                eps, var = guided_eps(out, c, settings.cfg_scale, settings.cfg_channels)
            else:
                out = self._forward(x.to(self.dtype), t_in, y).to(acc)
                eps, var = out[:, :c], out[:, c:]
            z = noise.draw().to(self.device, acc, non_blocking=True) if sampler.stochastic else None
            x, state = sampler.step(i, x, eps, var, z, state)
        return x

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """uint8 [N, H, W, 3]; decoded in chunks so VAE activations stay bounded for large batches."""
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        parts = [to_uint8(self.vae(part.to(self.dtype).contiguous(memory_format=fmt))) for part in latents.split(chunk)]
        return torch.cat(parts)

    def compile(self) -> None:
        """torch.compile the transformer; on CUDA also capture CUDA graphs ("reduce-overhead"), which
        removes the per-step kernel-launch overhead. One graph per distinct batch shape."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._forward = torch.compile(self.transformer, mode=mode, fullgraph=True, dynamic=False)

    def max_batch_size(self, settings: SamplingSettings, limit: int = 1024) -> int:
        """Largest batch (multiple of 8) whose sampling step and decode fit in free GPU memory.

        Peak memory grows linearly with the batch: it is measured at two small batches and
        extrapolated to 90% of the device's free memory. On CPU a fixed 8 is returned.
        """
        if self.device.type != "cuda":
            return 8
        one_step = settings.model_copy(update={"steps": 1})
        peaks = []
        for b in (4, 8):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            latents = self.sample_latents(list(range(b)), list(range(b)), self.sampler(one_step))
            self.decode(latents)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
        per_sample = max((peaks[1] - peaks[0]) / 4, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int((0.9 * free - (peaks[0] - 4 * per_sample)) // per_sample)
        return max(8, min(limit, fits // 8 * 8))


def configure_sampler(
    settings: SamplingSettings, config: DiTConfig, scheduler_config: dict[str, Any]
) -> ConfiguredSampler:
    """The sampler for these settings on a model with `config`, without its weights (a job driver
    validates with this before any worker loads the model); raises ValueError when not honourable."""
    if settings.guided and settings.cfg_channels > config.in_channels:
        raise ValueError(
            f"cfg_channels {settings.cfg_channels} exceeds the model's {config.in_channels} latent channels"
        )
    try:
        sampler = make_sampler(
            settings.sampler, settings.steps, scheduler_config, learned_sigma=config.learn_sigma, eta=settings.eta
        )
    except ValidationError as err:
        raise ValueError(f"scheduler config not supported by {settings.sampler}: {describe_validation(err)}") from None
    return ConfiguredSampler(settings, sampler)


def _settings(**fields: Any) -> SamplingSettings:
    try:
        return SamplingSettings(**fields)
    except ValidationError as err:
        raise ValueError(describe_validation(err)) from None
