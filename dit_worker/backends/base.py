"""What the job needs from a model, whatever runs it (docs/backends.md).

Two sides: on the driver a `ModelSpec`, read from the checkpoint's configs without its weights,
which resolves the requested settings and checks every row's conditioning before anything is
written; on each worker a `Generator`, the loaded model, which turns a batch of rows into images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from dit_worker.backends.settings import SamplingSettings
from dit_worker.labels import ClassNames
from dit_worker.rows import Conditioning, Rows

# Where a text encoder lives on a worker (docs/backends.md, "Memory"): on the worker's device for the
# whole run; on the CPU, its outputs copied to the device; or loaded for each shard, all of the
# shard's prompts encoded at once, and freed before the denoiser runs.
TextEncoderPlacement = Literal["device", "cpu", "shard-first"]
# diffusers' CPU offload of a pipeline's components (docs/backends.md, "Options"): whole models moved to
# the GPU as each runs (enable_model_cpu_offload), or submodule by submodule (enable_sequential_cpu_offload).
OffloadMode = Literal["model", "sequential"]


class NonFiniteLatents(ValueError):
    """Sampling produced NaN or infinite latents (bad weights or settings): no image is made of them."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"non-finite latents in batch rows {rows[:10]}")
        self.rows = rows


class GenerationRequest(BaseModel):
    """The settings a job asks for, before a backend resolves them for its model.

    Fields left None mean "the model's own default"; `sampling.model_fields_set` tells which of the
    sampling flags were given (a diffusers pipeline's defaults are its own, not DiT's).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampling: SamplingSettings = SamplingSettings()
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    max_sequence_length: int | None = Field(None, ge=1)
    clean_caption: bool | None = None
    negative_prompt: str | None = None
    # diffusers pipelines (docs/backends.md, "Options"): extra __call__ keywords (JSON values), LoRA
    # adapters as (path or hub id, scale), weight variant and hub revision, dtypes per component, CPU offload.
    pipeline_args: dict[str, Any] = {}
    loras: tuple[tuple[str, float], ...] = ()
    variant: str | None = None
    revision: str | None = None
    component_dtypes: dict[str, str] = {}
    offload: OffloadMode | None = None

    def diffusers_options(self) -> list[str]:
        """The diffusers-only options given, as flags (a DiT checkpoint refuses them)."""
        given = {
            "--pipeline-arg": self.pipeline_args,
            "--lora": self.loras,
            "--variant": self.variant,
            "--revision": self.revision,
            "--component-dtype": self.component_dtypes,
            "--offload": self.offload,
        }
        return [flag for flag, value in given.items() if value]

    def given(self) -> set[str]:
        """The sampling fields set explicitly (command-line flags), by name."""
        return set(self.sampling.model_fields_set)


@dataclass(frozen=True)
class RowColumns:
    """The per-sample metadata columns that come from the settings (docs/output.md)."""

    sampler: str
    steps: int
    cfg_scale: float | None  # None: the model takes no guidance
    cfg_channels: int | None  # DiT only


class ModelSpec(Protocol):
    """A checkpoint as the driver sees it: configs only, no weights on any device."""

    pipeline_class: str  # model_index.json `_class_name`, "DiTPipeline" for an original .pt
    conditioning: Conditioning
    names: ClassNames | None  # class-conditional models only

    def resolve(self, request: GenerationRequest) -> BaseModel:
        """The settings a worker runs with (frozen, JSON-serialisable: they enter the fingerprint);
        raises ValueError naming the setting and what this model accepts."""
        ...

    def image_size(self, settings: BaseModel) -> int | list[int]:
        """What the fingerprint records: DiT's side length, or [height, width] (JSON's list)."""
        ...

    def check_prompts(self, prompts: list[str], settings: BaseModel) -> list[tuple[int, str]]:
        """(index into `prompts`, problem) for each prompt the model cannot take as it is."""
        ...


class Generator(Protocol):
    """A model loaded on one worker. `generate` is a pure function of each row and the settings:
    row i's image does not depend on the other rows of the batch (docs/numerics.md)."""

    device: torch.device
    dtype: torch.dtype
    names: ClassNames | None
    image_size: tuple[int, int]  # (height, width) of every image
    columns: RowColumns

    def begin_shard(self, rows: Rows) -> None:
        """Called with all of a shard's rows before its first batch (shard-first text encoding)."""
        ...

    def generate(self, rows: Rows) -> torch.Tensor:
        """uint8 [N, H, W, 3], row i the image of rows[i]."""
        ...

    def generate_steps(self, rows: Rows, steps: int) -> torch.Tensor:
        """`generate` with `steps` sampling steps: a one-step batch peaks where the whole run does (a
        worker that ran out of memory measures with it which batch size fits)."""
        ...

    def compile(self) -> None: ...

    def max_batch_size(self) -> int: ...
