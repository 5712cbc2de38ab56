"""`python -m jobs.benchmark`'s harness: sampling throughput, FLOP utilisation, and a side-by-side with diffusers.

Prints one JSON object per line: one per (implementation, batch size), plus a `compare` line with
the images/s ratio when `--compare diffusers` is given. Ours and the reference run alternately in
the same process on the same weights, dtype, sampler, steps and batch; medians are reported. Each
side is timed as one call (our `generate_batch`, diffusers' pipeline call) with its VAE decode timed
inside that same call, so the sampling and decoding parts of both sides add up to their totals.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from dit_worker.backends import pipeline_class
from dit_worker.backends.native.pipeline import DiTPipeline, load_pipeline
from dit_worker.backends.settings import SamplerName, SamplingSettings
from dit_worker.benchmarks.conditions import machine_conditions
from dit_worker.benchmarks.pipelines import ModelBenchmarkOptions, PipelineBenchmark, run_pipeline_benchmark
from dit_worker.benchmarks.scores import measure_scores, random_score_models, random_score_models_values
from dit_worker.checkpoints.convert import random_checkpoint_dir
from dit_worker.execution.tries import TaskQueue
from dit_worker.manifest.sources import DerivedManifest
from dit_worker.models.flops import dit_paper_gflops, transformer_flops, vae_decode_flops
from dit_worker.shard import WorkerSpec, shard_name, shard_tasks
from dit_worker.worker.shard_worker import shard_workers

# Dense tensor-core peaks from the vendor datasheets (TFLOP/s), used for MFU unless --peak-tflops.
PEAK_TFLOPS = {
    ("H100", "bfloat16"): 989.4,
    ("H100", "float16"): 989.4,
    ("H100", "float32"): 494.7,  # TF32
    ("H200", "bfloat16"): 989.4,
    ("H200", "float16"): 989.4,
    ("H200", "float32"): 494.7,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float16"): 312.0,
    ("A100", "float32"): 156.0,
}


class SamplingBenchmark(ModelBenchmarkOptions):
    """`jobs.benchmark --model M | --random NAME`: the DiT checkpoint to time and how (a diffusers one is handed on)."""

    model: str | None = Field(None, min_length=1)  # diffusers dir, original .pt (with vae), hub id or s3://
    random: str | None = Field(None, min_length=1)  # registry size with random weights, e.g. DiT-XL/2
    vae: str | None = None  # VAE for an original .pt checkpoint
    image_size: Literal[256, 512] = 256  # with random
    cfg_channels: Literal[3, 4] = 4
    guidance_interval: tuple[float, float] | None = None
    peak_tflops: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: datasheet value by GPU name
    e2e_out: str | None = Field(None, min_length=1)  # local folder or s3:// prefix for the job's shard loop
    e2e_shards: int = Field(4, ge=1)
    psnr_samples: int = Field(0, ge=0)
    # jobs.generate --score values to time next to generation (benchmarks/scores.py), or random
    # published-size models for each kind.
    score: tuple[str, ...] = ()
    score_random: bool = False
    clip_model: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> SamplingBenchmark:
        if (self.model is None) == (self.random is None):
            raise ValueError("give one of --model and --random")
        return self

    def pipeline_benchmark(self) -> PipelineBenchmark:
        """The options for `run_pipeline_benchmark` (a --model that runs through diffusers)."""
        shared = self.model_dump(include=set(ModelBenchmarkOptions.model_fields))
        return PipelineBenchmark(model=self.model, **shared)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    dtype_name = str(dtype).removeprefix("torch.")
    return next((v for (gpu, dt), v in PEAK_TFLOPS.items() if gpu in name and dt == dtype_name), None)


class Timer:
    """Wall time of a GPU/CPU region, synchronised at both ends; tracks the peak GPU memory of the
    regions timed since `reset` (ours and the reference alternate on one device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def reset(self) -> None:
        self.peak = 0

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        out = fn()
        sync(self.device)
        elapsed = time.perf_counter() - t0
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        return elapsed, out


def bench_classes(n: int, num_classes: int) -> list[int]:
    """Class ids of the n benchmark samples, spread over the classes; sample i has seed i."""
    return [(7 * i) % num_classes for i in range(n)]


@contextmanager
def timed_calls(obj: Any, name: str, device: torch.device) -> Iterator[list[float]]:
    """Time every call of `obj.name` (synchronised at both ends) while inside; the seconds are
    appended to the yielded list. Used to time each side's VAE decode inside its own pipeline call."""
    original = getattr(obj, name)
    seconds: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        sync(device)
        seconds.append(time.perf_counter() - t0)
        return out

    setattr(obj, name, timed)  # an instance attribute: shadows the method until deleted
    try:
        yield seconds
    finally:
        delattr(obj, name)


def measure_ours(pipe: DiTPipeline, settings: SamplingSettings, batch: int, timer: Timer) -> dict[str, float]:
    """One `generate_batch` call timed whole, its VAE decoder's forward timed inside it: measured
    exactly as `measure_reference` measures diffusers' pipeline call and its `vae.decode`."""
    timer.reset()
    sampler = pipe.sampler(settings)
    classes = bench_classes(batch, pipe.config.num_classes)
    seeds = list(range(batch))
    with timed_calls(pipe.vae, "forward", pipe.device) as decode:
        total, _ = timer(lambda: pipe.generate_batch(classes, seeds, sampler).cpu())
    return {"sample_s": total - sum(decode), "decode_s": sum(decode), "total_s": total, "peak_bytes": timer.peak}


def reference_pipeline(path: Path, sampler: SamplerName, device: torch.device, dtype: torch.dtype):
    from diffusers import DDIMScheduler, DDPMScheduler, DiTPipeline, DPMSolverMultistepScheduler

    ref = DiTPipeline.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=False).to(device)
    schedulers = {"ddim": DDIMScheduler, "dpm-solver": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}
    ref.scheduler = schedulers[sampler].from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    return ref


def measure_reference(ref: Any, settings: SamplingSettings, batch: int, timer: Timer) -> dict[str, float]:
    """diffusers' pipeline call timed whole, its `vae.decode` timed inside that same call; sampling
    is the rest (the loop plus its small pre- and post-processing), as for ours."""
    timer.reset()
    classes = bench_classes(batch, ref.transformer.config.num_embeds_ada_norm)
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(batch)]
    with timed_calls(ref.vae, "decode", ref.device) as decode:
        total, _ = timer(
            lambda: ref(
                class_labels=classes,
                guidance_scale=settings.cfg_scale,
                generator=gens,
                num_inference_steps=settings.steps,
                output_type="np",
            )
        )
    return {"sample_s": total - sum(decode), "decode_s": sum(decode), "total_s": total, "peak_bytes": timer.peak}


def measure_end_to_end(
    pipe: DiTPipeline, settings: SamplingSettings, batch: int, out: str, shards: int, timer: Timer
) -> dict[str, Any]:
    """The job's own shard loop (two shards in flight, IO pool, metadata last) on this pipeline,
    against the same samples generated without writing anything."""
    shard_size = 2 * batch
    manifest = DerivedManifest.of_classes(list(range(shards)), shard_size, global_seed=1)
    samples = manifest.rows(0, manifest.num_rows).load()
    sampler = pipe.sampler(settings)

    def pure() -> None:
        for lo in range(0, len(samples), batch):
            rows = samples[lo : lo + batch]
            pipe.generate_batch(rows.class_id.tolist(), rows.seed.tolist(), sampler).cpu()

    fmt = "png"
    spec = WorkerSpec(model="", vae=None, device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."),
                      sampling=settings, batch_size=batch, out=out, s3_endpoint=None, retry_mode="standard",
                      format=fmt)  # fmt: skip
    pool = shard_workers(spec, local=True, per_actor={"CPU": 1.0}, num_workers=1, model=pipe)
    pool.start()
    t_pure, _ = timer(pure)
    queue = TaskQueue(shard_tasks(manifest, range(shards), shard_size), max_tries=1, name=shard_name)
    try:
        t_job, _ = timer(lambda: list(pool.map(queue)))
    finally:
        pool.close()
    return {
        "impl": "dit_worker-job",
        "batch_size": batch,
        "samples": len(samples),
        "output": out,
        "format": fmt,
        "sampling_only_images_per_s": len(samples) / t_pure,
        "job_images_per_s": len(samples) / t_job,
        "job_over_sampling": t_pure / t_job,
    }


def measure_psnr(
    pipe: DiTPipeline, reference: DiTPipeline, settings: SamplingSettings, samples: int, batch: int
) -> dict[str, Any]:
    """Image PSNR (dB, peak 255) of `pipe` against `reference` on the same samples; None when equal."""
    sampler, ref_sampler = pipe.sampler(settings), reference.sampler(settings)
    classes, seeds = bench_classes(samples, pipe.config.num_classes), list(range(samples))
    mse, max_diff = [], 0
    for lo in range(0, samples, batch):
        c, s = classes[lo : lo + batch], seeds[lo : lo + batch]
        diff = pipe.generate_batch(c, s, sampler).cpu().double()
        diff -= reference.generate_batch(c, s, ref_sampler).cpu().double()
        mse.append((diff**2).flatten(1).mean(1))
        max_diff = max(max_diff, int(diff.abs().max()))
    per_sample = torch.cat(mse)
    return {
        "psnr": f"{str(pipe.dtype).removeprefix('torch.')} vs float32 eager",
        "samples": samples,
        "psnr_db": _psnr(float(per_sample.mean())),
        "min_sample_psnr_db": _psnr(float(per_sample.max())),
        "max_abs_diff": max_diff,
    }


def _psnr(mse: float) -> float | None:
    return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


def summarise(
    impl: str,
    runs: list[dict[str, float]],
    pipe: DiTPipeline,
    settings: SamplingSettings,
    batch: int,
    peak: float | None,
) -> dict[str, Any]:
    med = {k: statistics.median(r[k] for r in runs) for k in ("sample_s", "decode_s", "total_s")}
    rows = batch * (2 if settings.guided else 1)
    loop_flops = settings.steps * transformer_flops(pipe.config, rows)
    tflops = loop_flops / med["sample_s"] / 1e12
    return {
        "impl": impl,
        "batch_size": batch,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "sampler": settings.sampler,
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "images_per_s": batch / med["total_s"],
        "sampling_images_per_s": batch / med["sample_s"],
        "s_per_step": med["sample_s"] / settings.steps,
        "decode_s": med["decode_s"],
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_tflops": peak,
        "gflops_per_forward": transformer_flops(pipe.config, 1) / 1e9,
        "dit_paper_gflops": dit_paper_gflops(pipe.config),
        "peak_mem_gib": max(r["peak_bytes"] for r in runs) / 2**30 if pipe.device.type == "cuda" else None,
        "repeats": len(runs),
    }


def score_lines(
    config: SamplingBenchmark, pipe: DiTPipeline, settings: SamplingSettings, batch: int, generation_s: float, tmp: Path
) -> list[dict[str, Any]]:
    """Each --score's cost on one batch of this benchmark's images, scored against their class names."""
    values, clip = list(config.score), config.clip_model
    if config.score_random:
        if not (tmp / "scores").exists():
            (tmp / "scores").mkdir()
            random_score_models(tmp / "scores")
        values, clip = random_score_models_values(tmp / "scores")
    classes = bench_classes(batch, pipe.config.num_classes)
    images = pipe.generate_batch(classes, list(range(batch)), pipe.sampler(settings))
    texts = [pipe.names.name(c) for c in classes]
    return measure_scores(values, clip, images, texts, generation_s, config.repeats)


def run(config: SamplingBenchmark) -> list[dict[str, Any]]:
    if config.model and pipeline_class(config.model) != "DiTPipeline":  # PixArt, Stable Diffusion, DDPM, DDIM
        return run_pipeline_benchmark(config.pipeline_benchmark())
    settings = SamplingSettings(
        sampler=config.sampler or "ddim",
        steps=config.steps,
        cfg_scale=1.5 if config.cfg_scale is None else config.cfg_scale,
        cfg_channels=config.cfg_channels,
    )
    with tempfile.TemporaryDirectory(prefix="dit-bench-") as tmp:
        model = config.model
        if config.random:
            model = str(random_checkpoint_dir(config.random, Path(tmp) / "random", image_size=config.image_size))
        pipe = load_pipeline(model, config.vae, device=config.device, dtype=config.dtype)
        compile_ = pipe.device.type == "cuda" if config.compile is None else config.compile
        if compile_:
            pipe.compile()
        if config.guidance_interval:
            settings = settings.model_copy(update={"guidance_interval": config.guidance_interval})
        ref = reference_pipeline(Path(model), settings.sampler, pipe.device, pipe.dtype) if config.compare else None
        timer = Timer(pipe.device)
        peak = peak_tflops(pipe.device, pipe.dtype, config.peak_tflops)
        sizes = [pipe.max_batch_size(settings)] if config.batch_sizes == "auto" else list(config.batch_sizes)
        lines = []
        for batch in sizes:
            for _ in range(config.warmup):
                measure_ours(pipe, settings, batch, timer)
                if ref is not None:
                    measure_reference(ref, settings, batch, timer)
            ours, theirs = [], []
            for _ in range(config.repeats):  # alternate, so drift in clocks or load hits both alike
                ours.append(measure_ours(pipe, settings, batch, timer))
                if ref is not None:
                    theirs.append(measure_reference(ref, settings, batch, timer))
            vae_gflops = vae_decode_flops(pipe.vae_config, pipe.config.input_size) / 1e9  # ours: phase upsampling
            line = summarise("dit_worker", ours, pipe, settings, batch, peak) | {
                "compiled": compile_,
                "vae_gflops_per_image": vae_gflops,
            }
            lines.append(line)
            if ref is not None:
                ref_line = summarise("diffusers", theirs, pipe, settings, batch, peak) | {"compiled": False}
                lines.append(ref_line)
                lines.append(
                    {
                        "compare": "dit_worker/diffusers",
                        "batch_size": batch,
                        "ratio": line["images_per_s"] / ref_line["images_per_s"],
                        # Both parts are measured the same way on both sides (see measure_ours).
                        "sampling_ratio": line["sampling_images_per_s"] / ref_line["sampling_images_per_s"],
                        "decode_ratio": ref_line["decode_s"] / line["decode_s"],
                    }
                )
            for entry in lines[-3 if ref is not None else -1 :]:
                print(json.dumps(entry | machine_conditions(pipe.device)), flush=True)
            if config.score or config.score_random:
                for entry in score_lines(config, pipe, settings, batch, batch / line["images_per_s"], Path(tmp)):
                    lines.append(entry | {"steps": settings.steps, "sampler": settings.sampler})
                    print(json.dumps(lines[-1] | machine_conditions(pipe.device)), flush=True)
            if config.e2e_out:
                lines.append(measure_end_to_end(pipe, settings, batch, config.e2e_out, config.e2e_shards, timer))
                print(json.dumps(lines[-1] | machine_conditions(pipe.device)), flush=True)
        if config.psnr_samples:
            reference = load_pipeline(model, config.vae, device=pipe.device, dtype="float32")
            samples = config.psnr_samples
            line = measure_psnr(pipe, reference, settings, samples, min(samples, max(sizes)))
            lines.append(line | {"impl": "dit_worker", "compiled": compile_, "sampler": settings.sampler})
            print(json.dumps(lines[-1] | machine_conditions(pipe.device)), flush=True)
        return lines
