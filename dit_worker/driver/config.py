"""A generation job's configuration (docs/cli.md): one pydantic model, validated once at the edge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dit_worker.backends import GenerationRequest, OffloadMode, TextEncoderPlacement
from dit_worker.backends.settings import DTYPES, DTypeName, SamplingSettings, resolve_device, resolve_dtype
from dit_worker.checkpoints.sources import source_kind
from dit_worker.manifest.samples import MAX_GLOBAL_SEED
from dit_worker.metrics.row_scores import clip_model, parse_scores
from dit_worker.output.encoding import LOSSY_FORMATS, ImageEncoding, ImageFormat
from dit_worker.output.layout import DEFAULT_SHARD_SIZE, OutputFormat
from dit_worker.storage.objects import RetryMode

# What each preset fixes; the flags it fixes cannot be passed next to it.
PRESETS: dict[str, dict[str, Any]] = {
    "fid50k": {
        "per_class": 50,
        "sampling": {"sampler": "ddpm", "steps": 250, "cfg_scale": 1.5, "cfg_channels": 3},
    },
}


class JobConfig(BaseModel):
    """A generation job's whole configuration, validated once at the edge (docs/cli.md); each field
    is one `jobs.generate` flag.

    Usage::

        config = JobConfig(model="facebook/DiT-XL-2-256", classes=("golden retriever",), per_class=4,
                           out="s3://bucket/run", sampling={"sampler": "ddim", "steps": 50})
        summary = run_job(config)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    vae: str | None = None
    out: str = Field(min_length=1)
    s3_endpoint: str | None = None
    s3_retry_mode: RetryMode = "standard"

    classes: tuple[str, ...] | None = None  # ids or names; None is every class of the model
    per_class: int | None = Field(None, ge=1)
    manifest: str | None = Field(None, min_length=1)  # a file, a folder or an s3:// prefix of files
    seed: int = Field(0, ge=0, lt=MAX_GLOBAL_SEED)
    preset: Literal["fid50k"] | None = None
    sampling: SamplingSettings = SamplingSettings()
    # Text-to-image and unconditional models (docs/backends.md).
    prompts: Path | None = None  # one UTF-8 prompt per line
    per_prompt: int | None = Field(None, ge=1)
    num_samples: int | None = Field(None, ge=1)  # unconditional models
    negative_prompt: str | None = Field(None, min_length=1)  # every row without its own
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    max_sequence_length: int | None = Field(None, ge=1)
    clean_caption: bool | None = None  # PixArt's caption cleaning; None: diffusers' default (on)
    text_encoder: TextEncoderPlacement = "device"
    # diffusers pipelines (docs/backends.md, "Options"), as given on the command line.
    pipeline_arg: tuple[str, ...] = ()  # KEY=VALUE, the value JSON where it parses as JSON, else text
    lora: tuple[str, ...] = ()  # PATH_OR_HUB_ID[:SCALE]
    variant: str | None = Field(None, min_length=1)
    component_dtype: tuple[str, ...] = ()  # COMPONENT=DTYPE
    revision: str | None = Field(None, min_length=1)  # --model's hub branch, tag or commit
    offload: OffloadMode | None = None  # diffusers' CPU offload on GPU workers; not in the fingerprint

    batch_size: int | Literal["auto"] = 32  # auto: the largest that fits, measured by each worker
    shard_size: int = Field(1000, ge=1)  # default per --format: DEFAULT_SHARD_SIZE
    num_workers: int | None = Field(None, ge=1)  # None: one per GPU in the cluster
    num_gpus_per_worker: float = Field(1.0, ge=0, allow_inf_nan=False)
    min_workers: int | None = Field(None, ge=1)  # start once this many fit, grow as nodes join (default: all)
    device: str | None = None
    dtype: DTypeName | None = None
    local: bool = False
    format: OutputFormat = "png"
    image_format: ImageFormat = "png"
    quality: int | None = Field(None, ge=1, le=100)  # jpeg / webp only; None: DEFAULT_QUALITY
    io_threads: int = Field(4, ge=1)  # per worker: image encoding and uploads (README, "Image formats")
    max_tries: int = Field(5, ge=1)
    # Between tries of a shard: exponential with jitter, 15 s doubling to 240 s. With 5 tries a shard
    # rides out about 4 minutes of storage outage (on top of botocore's own retries).
    retry_backoff: float = Field(15.0, ge=0, allow_inf_nan=False)
    retry_backoff_max: float = Field(240.0, ge=0, allow_inf_nan=False)
    placement_timeout: float = Field(0.0, ge=0, allow_inf_nan=False)  # seconds to wait for an autoscaler
    lease_ttl: float = Field(120.0, gt=0, allow_inf_nan=False)  # a dead driver's lease expires after this
    verify: bool = False  # resume checks committed images' sha256 too, not just existence and size
    compile: bool | None = None  # torch.compile + CUDA graphs; None: on for CUDA workers
    metrics: bool = False  # Inception features per shard, stored for jobs.fid
    inception_weights: str | None = None
    # --score, repeatable: clip[=MODEL], aesthetic[=WEIGHTS], classifier:NAME=MODEL (metrics/row_scores.py).
    score: tuple[str, ...] = ()
    score_embeddings: bool = False  # and the CLIP image embedding column
    clip_model: str | None = Field(None, min_length=1)  # the CLIP of --score clip and aesthetic

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be a positive integer or 'auto'")

    @field_validator("score", mode="before")
    @classmethod
    def _scores(cls, value: Any) -> Any:
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else value  # one score, as the flag was before it repeated

    @field_validator("manifest", mode="before")
    @classmethod
    def _manifest_path(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value  # a path, or an s3:// prefix as text

    @model_validator(mode="before")
    @classmethod
    def _default_shard_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("shard_size") is None:
            data = {k: v for k, v in data.items() if k != "shard_size"}
            data["shard_size"] = DEFAULT_SHARD_SIZE.get(data.get("format") or "png", DEFAULT_SHARD_SIZE["png"])
        return data

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") not in PRESETS:
            return data
        fixed = PRESETS[data["preset"]]
        sources = ("classes", "per_class", "manifest", "prompts", "per_prompt", "num_samples")
        given = [flag(k) for k in sources if data.get(k) is not None]
        given += [flag(k) for k in (data.get("sampling") or {}) if k in fixed["sampling"]]
        if given:
            raise ValueError(f"--preset {data['preset']} fixes {', '.join(given)}; drop them or drop --preset")
        sampling = {**(data.get("sampling") or {}), **fixed["sampling"]}
        return {**data, "per_class": fixed["per_class"], "sampling": sampling}

    @field_validator("pipeline_arg", "component_dtype")
    @classmethod
    def _key_values(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep or not key.isidentifier():
                raise ValueError(f"{item!r} is not KEY=VALUE with KEY a keyword name")
        return value

    @field_validator("component_dtype")
    @classmethod
    def _dtypes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item.partition("=")[2] not in DTYPES:
                raise ValueError(f"{item!r}: the dtype must be one of {', '.join(DTYPES)}")
        return value

    @field_validator("lora")
    @classmethod
    def _loras(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            lora_source(item)
        return value

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        if self.lora and self.text_encoder == "shard-first":
            raise ValueError(
                "--lora with --text-encoder shard-first: shard-first reads the encoders again without the adapter; "
                "use --text-encoder device or cpu"
            )
        if self.manifest is not None and (self.per_class is not None or self.classes is not None):
            raise ValueError("--manifest lists the samples itself; drop --classes and --per-class")
        if self.inception_weights is not None and not self.metrics:
            raise ValueError("--inception-weights is for --metrics; add --metrics or drop it")
        # The form of each --score value and distinct columns; files and models are checked on the driver.
        clip_model(parse_scores(self.score), self.clip_model)
        if self.score_embeddings and "clip" not in {r.kind for r in parse_scores(self.score)}:
            raise ValueError("--score-embeddings stores the embeddings of --score clip; add --score clip or drop it")
        self._check_encoding()
        if (self.prompts is None) != (self.per_prompt is None):
            raise ValueError("--prompts FILE and --per-prompt N go together; pass both")
        sources = [f for f in ("per_class", "prompts", "num_samples", "manifest") if getattr(self, f) is not None]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(flag(f) for f in sources)} each list the samples; pass one of them")
        if not sources:
            raise ValueError(
                "say which samples to make: --per-class N (with --classes), --prompts FILE --per-prompt N, "
                "--num-samples N, --manifest FILE or --preset"
            )
        if self.local:
            if self.num_workers is not None or self.min_workers is not None:
                raise ValueError("--num-workers and --min-workers apply to Ray runs; drop them with --local")
            resolve_device(self.device)
        else:
            if self.device not in (None, "cpu", "cuda"):
                raise ValueError(f"--device {self.device!r}: on Ray use cpu or cuda (Ray assigns each worker its GPU)")
            if self.device == "cuda" and self.num_gpus_per_worker == 0:
                raise ValueError("--device cuda needs --num-gpus-per-worker > 0")
            if self.num_workers is None and self.num_gpus_per_worker == 0:
                raise ValueError("--num-gpus-per-worker 0 needs an explicit --num-workers")
            if self.min_workers is not None and self.num_workers is not None and self.min_workers > self.num_workers:
                raise ValueError(f"--min-workers {self.min_workers} exceeds --num-workers {self.num_workers}")
        self._check_hub_and_offload()
        return self

    def _check_hub_and_offload(self) -> None:
        kind = source_kind(self.model)
        if self.revision is not None and kind != "hub":
            what = {"s3": "an s3:// prefix", "local": "a local path"}.get(kind, "not a hub id (org/name)")
            raise ValueError(
                f"--revision {self.revision}: a revision is a branch, tag or commit of a Hugging Face hub repository, "
                f"and --model {self.model} is {what}; drop --revision"
            )
        if self.offload is not None:
            if not self.worker_device.startswith("cuda"):
                raise ValueError(
                    f"--offload {self.offload}: offloading keeps weights in host memory and moves them to the GPU as "
                    f"they are used, and the workers run on {self.worker_device}; use --device cuda with --offload "
                    "model or sequential, or drop --offload"
                )
            if self.compile:
                raise ValueError(
                    f"--offload {self.offload} with --compile: the offload hooks move weights inside the forward "
                    "pass, which compiled graphs do not follow; pass --no-compile or drop --offload"
                )

    def _check_encoding(self) -> None:
        if self.quality is not None and self.image_format not in LOSSY_FORMATS:
            raise ValueError(
                f"--quality {self.quality}: --image-format {self.image_format} is lossless and takes no quality; "
                f"drop --quality or use --image-format {' or '.join(LOSSY_FORMATS)}"
            )
        if self.image_format in LOSSY_FORMATS:
            # FID is computed on the decoded images and compression artefacts shift it (Parmar et al.,
            # "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", 2022): evaluation sets stay PNG.
            users = [f"--preset {self.preset}"] if self.preset else []
            users += ["--metrics"] if self.metrics else []
            if users:
                raise ValueError(
                    f"--image-format {self.image_format} is lossy and {' and '.join(users)} "
                    f"need{'s' if len(users) == 1 else ''} lossless images (compression shifts FID); "
                    "use --image-format png"
                )

    @property
    def encoding(self) -> ImageEncoding:
        """How every image is stored; lossy formats get DEFAULT_QUALITY unless --quality says otherwise."""
        return ImageEncoding.of(self.image_format, self.quality)

    @property
    def request(self) -> GenerationRequest:
        """The settings asked for, for the model's backend to resolve (docs/backends.md)."""
        return GenerationRequest(
            sampling=self.sampling,
            height=self.height,
            width=self.width,
            max_sequence_length=self.max_sequence_length,
            clean_caption=self.clean_caption,
            negative_prompt=self.negative_prompt,
            pipeline_args={k: v for k, _, v in (parse_pipeline_arg(a) for a in self.pipeline_arg)},
            loras=tuple(lora_source(item) for item in self.lora),
            variant=self.variant,
            component_dtypes=dict(item.split("=", 1) for item in self.component_dtype),
            revision=self.revision,
            offload=self.offload,
        )

    @property
    def worker_device(self) -> str:
        """The device every worker samples on."""
        if self.local:
            return str(resolve_device(self.device))
        return self.device or ("cuda" if self.num_gpus_per_worker > 0 else "cpu")

    @property
    def worker_compile(self) -> bool:
        if self.compile is None:  # --offload: off by default (its hooks and compiled graphs do not mix)
            return self.worker_device.startswith("cuda") and self.offload is None
        return self.compile

    @property
    def worker_dtype(self) -> DTypeName:
        """The resolved dtype name: bfloat16 on GPU and float32 on CPU unless --dtype says otherwise."""
        resolved = resolve_dtype(self.dtype, torch.device(self.worker_device))
        return next(name for name, dtype in DTYPES.items() if dtype == resolved)


def parse_pipeline_arg(item: str) -> tuple[str, str, Any]:
    """KEY=VALUE: the value as JSON (true, 2.5, [1, 2], "text") where it parses, else the text itself."""
    key, sep, text = item.partition("=")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return key, sep, value


def lora_source(item: str) -> tuple[str, float]:
    """PATH_OR_HUB_ID[:SCALE] -> (source, scale); the scale defaults to 1."""
    source, sep, scale = item.rpartition(":")
    if not sep or "/" in scale or scale.startswith("//"):
        return item, 1.0
    try:
        value = float(scale)
    except ValueError:
        raise ValueError(f"{item!r}: the scale after ':' must be a number (PATH_OR_HUB_ID[:SCALE])") from None
    if not source or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{item!r}: give PATH_OR_HUB_ID[:SCALE] with a finite scale")
    return source, value


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_config_error(err: ValidationError) -> str:
    """One line per problem, each naming the command-line flag and the rejected value."""
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"] or e["loc"][-1] == "sampling":  # a whole-model check names its flags itself
            parts.append(msg)
            continue
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        field = next(str(part) for part in reversed(e["loc"]) if isinstance(part, str))  # not a list item's index
        parts.append(f"{flag(field)}: {msg}{got}")
    return "; ".join(parts)
