"""The diffusers backend, driver side: which pipeline classes run, and a pipeline directory's
configs and tokenizer resolved into the settings its workers run with (docs/backends.md).

The contract every family keeps: each image equals `Pipeline(prompt=..., negative_prompt=...,
generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
guidance_scale=cfg_scale, height=..., width=..., output_type="np")` called for that row alone, as
`round(x * 255)` in uint8, to within 1/255 (the worker side is `run.DiffusersGenerator`).

diffusers and transformers are imported by this package only, so the native DiT path never loads them.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from dit_worker.backends.base import Conditioning, GenerationRequest
from dit_worker.backends.labels import ClassNames
from dit_worker.backends.settings import SamplerName
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import read_json

log = logging.getLogger(__name__)

# --sampler -> the diffusers scheduler made with `from_config` of the checkpoint's scheduler config.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
# PixArt's resolution binning has aspect-ratio tables for these transformer sample sizes only
# (diffusers' PixArt pipelines raise "Invalid sample size" for any other).
PIXART_BINNED_SIZES = {"PixArtAlphaPipeline": (32, 64, 128), "PixArtSigmaPipeline": (32, 64, 128, 256)}


class DiffusersSettings(BaseModel):
    """Resolved settings of a diffusers-backend job: everything that shapes its images, so the
    whole object enters the job's fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str  # model_index.json `_class_name`
    sampler: SamplerName | None  # None: the checkpoint's own scheduler
    scheduler: str  # the scheduler class that runs
    steps: int
    cfg_scale: float | None  # None: unconditional, no guidance
    eta: float
    height: int
    width: int
    max_sequence_length: int | None  # PixArt: T5 tokens
    clean_caption: bool | None  # PixArt: its caption cleaning (needs beautifulsoup4 and ftfy)
    resolution_binning: bool | None  # PixArt: diffusers' default (on), fixed
    negative_prompt: str | None  # for every row without a negative_prompt of its own


@dataclass(frozen=True)
class _Family:
    """How one kind of diffusers pipeline is driven."""

    denoiser: Literal["transformer", "unet"]
    conditioning: Conditioning
    schedulers: tuple[str | None, ...] = (None, *SCHEDULERS)  # --sampler values its __call__ can drive

    def patch_factor(self, denoiser: dict[str, Any]) -> int:
        if self.denoiser == "transformer":
            return int(denoiser.get("patch_size") or 1)
        return 2 ** (len(denoiser.get("down_block_types", ())) - 1)  # the UNet's downsampling


FAMILIES: dict[str, _Family] = {
    "PixArtSigmaPipeline": _Family("transformer", "text"),
    "PixArtAlphaPipeline": _Family("transformer", "text"),
    "StableDiffusionPipeline": _Family("unet", "text"),
    # DDIMPipeline turns any scheduler into a DDIMScheduler and calls step(eta=...); DDPMPipeline
    # neither scales model inputs nor the initial noise, which Euler needs.
    "DDIMPipeline": _Family("unet", "none", (None, "ddim")),
    "DDPMPipeline": _Family("unet", "none", (None, "ddpm", "ddim", "dpm-solver")),
}


def diffusers_module() -> Any:
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # one bar per component load and per call otherwise
    return diffusers


def _call_defaults(pipeline: str) -> dict[str, Any]:
    """The keyword defaults of the pipeline's `__call__`: its own steps, guidance, sequence length."""
    params = inspect.signature(getattr(diffusers_module(), pipeline).__call__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


@dataclass(frozen=True)
class DiffusersModel:
    """A diffusers pipeline directory as the driver sees it: configs and tokenizer, no weights."""

    root: Path
    pipeline_class: str
    index: dict[str, Any]
    denoiser_config: dict[str, Any]
    vae_config: dict[str, Any] | None
    scheduler_config: dict[str, Any]
    names: ClassNames | None = None
    _tokenizers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def family(self) -> _Family:
        return FAMILIES[self.pipeline_class]

    @property
    def conditioning(self) -> Conditioning:
        return self.family.conditioning

    @cached_property
    def call_defaults(self) -> dict[str, Any]:
        return _call_defaults(self.pipeline_class)

    def vae_scale(self) -> int:
        """Pixels per latent: 2 ** (VAE levels - 1), as diffusers' pipelines compute vae_scale_factor."""
        return 1 if self.vae_config is None else 2 ** (len(self.vae_config.get("block_out_channels", (64,))) - 1)

    def native_size(self) -> tuple[int, int]:
        size = self.denoiser_config.get("sample_size", 64)
        h, w = (size, size) if isinstance(size, int) else size
        return int(h) * self.vae_scale(), int(w) * self.vae_scale()

    def resolve(self, request: GenerationRequest) -> DiffusersSettings:
        given, sampling, defaults = request.given(), request.sampling, self.call_defaults
        name, family = self.pipeline_class, self.family
        for dit_only in ("cfg_channels", "guidance_interval"):
            if dit_only in given:
                flag = "--" + dit_only.replace("_", "-")
                raise ValueError(f"{flag} applies to DiT checkpoints (DiTPipeline) only; {name} does not take it")
        sampler = sampling.sampler if "sampler" in given else None
        if sampler not in family.schedulers:
            allowed = ", ".join(s for s in family.schedulers if s) or "none"
            raise ValueError(f"--sampler {sampler}: {name} can run {allowed} (or omit --sampler for its own scheduler)")
        scheduler = self._check_scheduler(sampler)
        if sampling.eta and "eta" not in defaults:
            raise ValueError(f"--eta: {name} takes no eta")
        text = family.conditioning == "text"
        if text:
            cfg = sampling.cfg_scale if "cfg_scale" in given else float(defaults["guidance_scale"])
        elif "cfg_scale" in given:
            raise ValueError(f"--cfg-scale: {name} is unconditional and takes no guidance; drop it")
        else:
            cfg = None
        height, width = self._size(request)
        if not text:
            for flag in ("max_sequence_length", "clean_caption", "negative_prompt"):
                if getattr(request, flag) is not None:
                    raise ValueError(f"--{flag.replace('_', '-')}: {name} is unconditional and takes no prompt")
        length = self._optional_call_setting(request, "max_sequence_length")
        clean = self._optional_call_setting(request, "clean_caption")
        if clean:
            require_caption_cleaning()
        if request.negative_prompt is not None and not (cfg is not None and cfg > 1):
            raise ValueError("--negative-prompt has no effect without guidance; raise --cfg-scale above 1 or drop it")
        if name in PIXART_BINNED_SIZES and self.denoiser_config.get("sample_size") not in PIXART_BINNED_SIZES[name]:
            raise ValueError(
                f"{self.root}: transformer sample_size {self.denoiser_config.get('sample_size')} has no resolution "
                f"bins in {name} (it knows {PIXART_BINNED_SIZES[name]})"
            )
        return DiffusersSettings(
            pipeline=name,
            sampler=sampler,
            scheduler=scheduler,
            steps=sampling.steps if "steps" in given else int(defaults["num_inference_steps"]),
            cfg_scale=cfg,
            eta=sampling.eta,
            height=height,
            width=width,
            max_sequence_length=length,
            clean_caption=clean,
            resolution_binning=defaults.get("use_resolution_binning"),
            negative_prompt=request.negative_prompt,
        )

    def _optional_call_setting(self, request: GenerationRequest, name: str) -> Any:
        """A setting only some pipelines' __call__ take: its default there, refused elsewhere."""
        value = getattr(request, name)
        if name not in self.call_defaults:
            if value is not None:
                raise ValueError(f"--{name.replace('_', '-')}: {self.pipeline_class} does not take it; drop it")
            return None
        return self.call_defaults[name] if value is None else value

    def _check_scheduler(self, sampler: str | None) -> str:
        diffusers = diffusers_module()
        own = self.scheduler_config.get("_class_name", "")
        # DDIMPipeline converts whatever it is given to a DDIMScheduler (diffusers' pipeline_ddim).
        cls_name = (
            SCHEDULERS[sampler] if sampler else ("DDIMScheduler" if self.pipeline_class == "DDIMPipeline" else own)
        )
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise ValueError(f"{self.root}/scheduler: scheduler class {cls_name!r} is not a diffusers scheduler")
        try:
            cls.from_config(self.scheduler_config)
        except (TypeError, ValueError, NotImplementedError) as err:
            raise ValueError(f"{self.root}/scheduler: {cls_name}.from_config refuses its config ({err})") from None
        return cls_name

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        native = self.native_size()
        height = request.height if request.height is not None else native[0]
        width = request.width if request.width is not None else native[1]
        if self.conditioning == "none":
            if (height, width) != native:
                raise ValueError(
                    f"--height/--width: {self.pipeline_class} makes {native[0]}x{native[1]} images only (its UNet's "
                    f"sample_size), got {height}x{width}"
                )
            return height, width
        scale = self.vae_scale()
        factor = scale * self.family.patch_factor(self.denoiser_config)
        for flag, value in (("--height", height), ("--width", width)):
            if value % factor:
                raise ValueError(
                    f"{flag} {value} is not a multiple of {factor} (the VAE's {scale}x times the "
                    f"{self.family.denoiser}'s {factor // scale}x); use e.g. {max(factor, value // factor * factor)}"
                )
        return height, width

    def image_size(self, settings: DiffusersSettings) -> list[int]:
        return [settings.height, settings.width]  # a list, as job.json reads it back

    def tokenizer(self) -> Any:
        if "tokenizer" not in self._tokenizers:
            import transformers

            library, cls_name = self.index.get("tokenizer") or (None, None)
            cls = getattr(transformers, cls_name or "", None)
            if library != "transformers" or cls is None:
                raise CheckpointError(
                    f"{self.root}/model_index.json: tokenizer {cls_name!r} is not a transformers class"
                )
            try:
                self._tokenizers["tokenizer"] = cls.from_pretrained(self.root / "tokenizer")
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{self.root}/tokenizer: cannot load {cls_name} ({err})") from None
        return self._tokenizers["tokenizer"]

    def check_prompts(self, prompts: list[str], settings: DiffusersSettings) -> list[tuple[int, str]]:
        """Prompts the pipeline would change without saying so: truncated past its token limit, or
        cleaned away to nothing. Counted as the pipeline counts them: after its caption cleaning,
        with the special tokens."""
        if self.conditioning != "text":
            return [(i, f"{self.pipeline_class} is unconditional and takes no prompt") for i in range(len(prompts))]
        texts = self.preprocess(prompts, settings)
        tokenizer = self.tokenizer()
        limit = settings.max_sequence_length or tokenizer.model_max_length
        what = "--max-sequence-length" if settings.max_sequence_length else "the tokenizer's model_max_length"
        problems = []
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for i, (text, n) in enumerate(zip(texts, lengths, strict=True)):
            if not text.strip():
                problems.append((i, "is empty after the pipeline's caption cleaning"))
            elif n > limit:
                problems.append((i, f"is {n} tokens, over {what} {limit}; the pipeline would cut it"))
        return problems

    def preprocess(self, prompts: list[str], settings: DiffusersSettings) -> list[str]:
        """The text the tokenizer sees: PixArt's own `_text_preprocessing` (lower-case and strip, or its
        caption cleaning), called on an instance without components, as the worker's pipeline calls it."""
        if not self.pipeline_class.startswith("PixArt"):
            return prompts
        cls = getattr(diffusers_module(), self.pipeline_class)
        bare = object.__new__(cls)  # the method reads class attributes only
        return cls._text_preprocessing(bare, list(prompts), clean_caption=bool(settings.clean_caption))


def require_caption_cleaning() -> None:
    from diffusers.utils import is_bs4_available, is_ftfy_available

    # diffusers' PixArt silently skips the cleaning without these, which changes the images.
    missing = [name for name, ok in (("beautifulsoup4", is_bs4_available()), ("ftfy", is_ftfy_available())) if not ok]
    if missing:
        raise ValueError(
            f"caption cleaning (on by default, as in diffusers) needs {' and '.join(missing)}: pip install them, or "
            "pass --no-clean-caption (which changes the images)"
        )


def inspect_diffusers(root: Path, index: dict[str, Any]) -> DiffusersModel:
    """Read the configs of a supported diffusers pipeline directory; no weights, no device."""
    name = index["_class_name"]
    family = FAMILIES[name]
    missing = [c for c in (family.denoiser, "scheduler") if not (root / c).is_dir()]
    if family.conditioning == "text":
        missing += [c for c in ("vae", "text_encoder", "tokenizer") if not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"{root}: a {name} directory needs {', '.join(missing)}/ (as save_pretrained writes)")
    vae = root / "vae" / "config.json"
    return DiffusersModel(
        root=root,
        pipeline_class=name,
        index=index,
        denoiser_config=read_json(root / family.denoiser / "config.json"),
        vae_config=read_json(vae) if vae.is_file() else None,
        scheduler_config=read_json(root / "scheduler" / "scheduler_config.json"),
    )
