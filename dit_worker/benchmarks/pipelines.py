"""jobs.benchmark for checkpoints that run through diffusers (docs/backends.md): PixArt-α/Σ, Stable
Diffusion, DDPM, DDIM. The worker's own generator is timed, text encoding and decoding included,
one JSON line per batch size: images/s, seconds per denoising step, peak memory.

Seconds per step are the slope between a call with `--steps` steps and one with a single step
(t_N - t_1) / (N - 1), so prompt encoding and VAE decoding, which do not grow with the step count,
are left out of it as the DiT benchmark leaves them out.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dit_worker.backends import GenerationRequest, Rows, TextEncoderPlacement, inspect_model, load_generator
from dit_worker.backends.diffusers.run import DiffusersGenerator
from dit_worker.backends.settings import DTYPES, DTypeName, SamplerName, SamplingSettings, resolve_device, resolve_dtype
from dit_worker.benchmarks.conditions import machine_conditions

PROMPTS = (
    "a photo of a red fox in the snow",
    "a watercolor painting of a lighthouse at dawn",
    "a bowl of ramen on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon",
)


class ModelBenchmarkOptions(BaseModel):
    """The timing, sampling and diffusers-pipeline options both model benchmarks (this one and `sampling`) take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: SamplerName | None = None  # None: ddim for DiT, a diffusers pipeline's own scheduler
    steps: int = Field(50, ge=1)
    cfg_scale: float | None = Field(None, ge=0.0, allow_inf_nan=False)  # None: 1.5 for DiT, a pipeline's own
    batch_sizes: tuple[int, ...] | Literal["auto"] = (32,)  # auto: the largest batch that fits
    device: str | None = None  # None: cuda if present
    dtype: DTypeName | None = None  # None: bfloat16 on GPU, float32 on CPU
    compile: bool | None = None  # torch.compile + CUDA graphs; None: on for CUDA, off for CPU
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)
    compare: Literal["diffusers"] | None = None
    # diffusers pipelines (PixArt, Stable Diffusion, DDPM, DDIM) only.
    height: int | None = Field(None, ge=8)  # None: the model's
    width: int | None = Field(None, ge=8)
    max_sequence_length: int | None = Field(None, ge=1)  # PixArt: T5 tokens per prompt
    text_encoder: TextEncoderPlacement = "device"

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _batch_sizes(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if not isinstance(value, (list, tuple)) or not value or not all(_positive_int(v) for v in value):
            raise ValueError("must be comma-separated positive integers or 'auto'")
        return tuple(int(v) for v in value)


class PipelineBenchmark(ModelBenchmarkOptions):
    """`jobs.benchmark --model M` for a checkpoint that runs through diffusers: the model and how to time it."""

    model: str = Field(min_length=1)  # diffusers pipeline directory, hub id or s3:// prefix


def _positive_int(value: Any) -> bool:
    """An int >= 1, or its decimal text (the CLI's comma-separated items)."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def run_pipeline_benchmark(config: PipelineBenchmark) -> list[dict[str, Any]]:
    import json

    spec = inspect_model(config.model, None)
    fields: dict[str, Any] = {"steps": config.steps}
    if config.sampler is not None:
        fields["sampler"] = config.sampler
    if config.cfg_scale is not None and spec.conditioning == "text":
        fields["cfg_scale"] = config.cfg_scale
    request = GenerationRequest(
        sampling=SamplingSettings(**fields),
        height=config.height,
        width=config.width,
        max_sequence_length=config.max_sequence_length,
    )
    settings = spec.resolve(request)
    device = resolve_device(config.device)
    dtype = next(k for k, v in DTYPES.items() if v == resolve_dtype(config.dtype, device))
    gen = load_generator(config.model, None, str(device), dtype, settings, config.text_encoder)
    assert isinstance(gen, DiffusersGenerator)
    compile_ = device.type == "cuda" if config.compile is None else config.compile
    if compile_:
        gen.compile()
    sizes = [gen.max_batch_size()] if config.batch_sizes == "auto" else list(config.batch_sizes)
    lines = []
    for batch in sizes:
        rows = Rows(
            seeds=list(range(batch)),
            prompts=[PROMPTS[i % len(PROMPTS)] for i in range(batch)] if spec.conditioning == "text" else None,
        )
        for _ in range(config.warmup):
            _timed(gen, rows, settings.steps)
        full, one, peaks, resident = [], [], [], []
        for _ in range(config.repeats):
            t, peak, rss = _timed(gen, rows, settings.steps)
            full.append(t)
            peaks.append(peak)
            resident.append(rss or 0)
            one.append(_timed(gen, rows, 1)[0] if settings.steps > 1 else 0.0)
        total = statistics.median(full)
        per_step = (total - statistics.median(one)) / (settings.steps - 1) if settings.steps > 1 else total
        per_step = per_step if per_step > 0 else None  # the slope drowned in timing noise: not resolved
        if config.compare == "diffusers":
            _compare_with_pipeline(gen, rows, settings, total, config)
        line = {
            "impl": "diffusers",
            "pipeline": settings.pipeline,
            "batch_size": batch,
            "dtype": dtype,
            "device": str(device),
            "sampler": settings.sampler or settings.scheduler,
            "steps": settings.steps,
            "cfg_scale": settings.cfg_scale,
            "height": settings.height,
            "width": settings.width,
            "text_encoder": config.text_encoder,
            "images_per_s": batch / total,
            "s_per_step": per_step,
            "peak_mem_gib": max(peaks) / 2**30 if device.type == "cuda" else None,
            # CPU: the process's high-water mark so far (every option and batch before this line included).
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_while_denoising_mib": max(resident) / 2**20 if any(resident) else None,
            "compiled": compile_,
            "repeats": config.repeats,
        }
        lines.append(line)
        print(json.dumps(line | machine_conditions(device)), flush=True)
    return lines


def _compare_with_pipeline(
    gen: DiffusersGenerator, rows: Rows, settings: Any, ours_s: float, config: PipelineBenchmark
) -> None:
    """The same batch through the plain diffusers pipeline (prompts as text, one call), loaded on its
    own in the worker's dtype: a line with its images/s and ours over it (`ratio`)."""
    import json

    import diffusers

    pipe = getattr(diffusers, settings.pipeline).from_pretrained(gen.root, torch_dtype=gen.job_dtype).to(gen.device)
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {"num_inference_steps": settings.steps, "output_type": "np", **settings.pipeline_args}
    if rows.prompts is not None:
        kwargs |= {"prompt": list(rows.prompts), "height": settings.height, "width": settings.width}
        if settings.cfg_scale is not None:
            kwargs["guidance_scale"] = settings.cfg_scale
        if settings.max_sequence_length is not None:
            kwargs["max_sequence_length"] = settings.max_sequence_length
    else:
        kwargs["batch_size"] = len(rows)
    times = []
    for i in range(config.warmup + config.repeats):
        kwargs["generator"] = [torch.Generator("cpu").manual_seed(seed) for seed in rows.seeds]
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(**kwargs)
        if i >= config.warmup:
            times.append(time.perf_counter() - t0)
    ref = statistics.median(times)
    line = {"impl": "diffusers-pipeline-alone", "pipeline": settings.pipeline, "batch_size": len(rows),
            "images_per_s": len(rows) / ref, "ratio": ref / ours_s, "repeats": config.repeats}  # fmt: skip
    print(json.dumps(line), flush=True)


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _timed(gen: DiffusersGenerator, rows: Rows, steps: int) -> tuple[float, int, int | None]:
    """Seconds for one shard's worth of work on `rows` (shard-first encoding included), the peak GPU
    memory it allocated, and the process's resident memory as the denoising starts (what the text
    encoder placement changes on a CPU worker)."""
    cuda = gen.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(gen.device)
        torch.cuda.reset_peak_memory_stats(gen.device)
    t0 = time.perf_counter()
    gen.begin_shard(rows)
    resident = resident_bytes()
    gen.generate_steps(rows, steps)
    if cuda:
        torch.cuda.synchronize(gen.device)
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated(gen.device) if cuda else 0, resident
