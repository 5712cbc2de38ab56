"""The native backend: class-conditional DiT on our own transformer, samplers and VAE decoder.

Checkpoints whose model_index.json names `DiTPipeline` (or that have none), and original `.pt`
files. A thin wrapper: the worker calls `DiTPipeline.generate_batch` exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dit_worker.backends.base import Conditioning, GenerationRequest, RowColumns, Rows
from dit_worker.backends.native.checkpoint import load_checkpoint
from dit_worker.backends.native.pipeline import DiTPipeline, configure_sampler, load_pipeline
from dit_worker.backends.settings import SamplingSettings
from dit_worker.labels import ClassNames
from dit_worker.models.dit import DiTConfig

PIPELINE_CLASS = "DiTPipeline"


@dataclass(frozen=True)
class NativeModel:
    """A DiT checkpoint's configs and class names (no weights)."""

    config: DiTConfig
    scheduler_config: dict
    names: ClassNames
    side: int  # image side in pixels
    pipeline_class: str = PIPELINE_CLASS
    conditioning: Conditioning = "class"

    def resolve(self, request: GenerationRequest) -> SamplingSettings:
        """The sampling settings as given; a job driver has already refused the flags of other model kinds
        (dit_worker.driver.flags), so only the size is left to check: DiT makes its one size."""
        for flag, value in (("--height", request.height), ("--width", request.width)):
            if value is not None and value != self.side:
                raise ValueError(
                    f"{flag} {value}: {PIPELINE_CLASS} makes {self.side}x{self.side} images only (its transformer's "
                    f"{self.config.input_size} latents x the VAE's scale); drop it"
                )
        if extra := request.diffusers_options():
            raise ValueError(
                f"{', '.join(extra)}: options of diffusers pipelines; a DiT checkpoint ({PIPELINE_CLASS}) runs on the "
                "native path, which takes none of them; drop them"
            )
        if request.sampling.sampler == "euler":
            raise ValueError("sampler 'euler' is for diffusers pipelines; DiT runs ddpm, ddim or dpm-solver")
        configure_sampler(request.sampling, self.config, self.scheduler_config)
        return request.sampling

    def image_size(self, settings: object) -> int:
        return self.side

    def check_prompts(self, prompts: list[str], settings: object) -> list[tuple[int, str]]:
        return [(i, "a class-conditional model takes no prompt") for i in range(len(prompts))]


def inspect_native(model: str, vae: str | None) -> NativeModel:
    ckpt = load_checkpoint(model, vae, weights=False)
    return NativeModel(
        config=ckpt.transformer,
        scheduler_config=ckpt.scheduler_config,
        names=ClassNames(ckpt.id2label, ckpt.transformer.num_classes),
        side=ckpt.transformer.input_size * ckpt.vae.upscale,
    )


class NativeGenerator:
    """DiTPipeline behind the Generator interface; nothing is added to its sampling loop.

    Usage::

        gen = NativeGenerator(load_pipeline("facebook/DiT-XL-2-256"), SamplingSettings(sampler="ddim"))
        images = gen.generate(Rows(seeds=[0, 1], class_ids=[207, 360]))
    """

    def __init__(self, pipe: DiTPipeline, settings: SamplingSettings) -> None:
        self.pipe, self.settings = pipe, settings
        self.sampler = pipe.sampler(settings)
        self.device, self.dtype, self.names = pipe.device, pipe.dtype, pipe.names
        self.image_size = (pipe.image_size, pipe.image_size)
        self.columns = RowColumns(settings.sampler, settings.steps, settings.cfg_scale, settings.cfg_channels)

    @classmethod
    def load(cls, model: str, vae: str | None, device: str, dtype: str, settings: SamplingSettings) -> NativeGenerator:
        return cls(load_pipeline(model, vae, device=device, dtype=dtype), settings)

    def begin_shard(self, rows: Rows) -> None:
        pass

    def generate(self, rows: Rows) -> torch.Tensor:
        assert rows.class_ids is not None, "DiT rows carry class ids"
        return self.pipe.generate_batch(rows.class_ids, rows.seeds, self.sampler)

    def generate_steps(self, rows: Rows, steps: int) -> torch.Tensor:
        """`generate` with another step count (a one-step batch measures what a batch size needs)."""
        assert rows.class_ids is not None, "DiT rows carry class ids"
        sampler = self.pipe.sampler(self.settings.model_copy(update={"steps": steps}))
        return self.pipe.generate_batch(rows.class_ids, rows.seeds, sampler)

    def compile(self) -> None:
        self.pipe.compile()

    def max_batch_size(self) -> int:
        return self.pipe.max_batch_size(self.settings)
