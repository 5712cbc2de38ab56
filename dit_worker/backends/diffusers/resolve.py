"""The diffusers backend, driver side: which pipeline classes run, and a pipeline directory's
configs and tokenizer resolved into the settings its workers run with (docs/backends.md).

The contract every family keeps: each image equals `Pipeline(prompt=..., negative_prompt=...,
generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
guidance_scale=cfg_scale, height=..., width=..., output_type="np")` called for that row alone, as
`round(x * 255)` in uint8, to within 1/255 (the worker side is `run.DiffusersGenerator`).

diffusers and transformers are imported by this package only, so the native DiT path never loads them.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dit_worker.backends.base import Conditioning, GenerationRequest, OffloadMode
from dit_worker.backends.diffusers.families import (
    FAMILIES,
    SCHEDULERS,
    Family,
    LengthCheck,
    NegativeDefault,
    generic_family,
)
from dit_worker.backends.settings import DTypeName, SamplerName
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import read_json
from dit_worker.checkpoints.identity import file_sha256, hub_revision
from dit_worker.checkpoints.sources import resolve_source, weight_variant
from dit_worker.labels import ClassNames

log = logging.getLogger(__name__)

# __call__ keywords the job itself sets, or that have their own flag: --pipeline-arg refuses them.
JOB_KEYWORDS = {
    "prompt": "the manifest's prompt", "prompt_2": "the manifest's prompt", "prompt_3": "the manifest's prompt",
    "negative_prompt": "--negative-prompt", "negative_prompt_2": "--negative-prompt",
    "negative_prompt_3": "--negative-prompt", "generator": "the row's seed", "num_inference_steps": "--steps",
    "guidance_scale": "--cfg-scale", "height": "--height", "width": "--width", "output_type": "the job",
    "return_dict": "the job", "eta": "--eta", "max_sequence_length": "--max-sequence-length",
    "clean_caption": "--clean-caption", "batch_size": "the job", "num_images_per_prompt": "the job",
    "latents": "the row's seed", "prompt_embeds": "the job", "negative_prompt_embeds": "the job",
    "pooled_prompt_embeds": "the job", "negative_pooled_prompt_embeds": "the job",
    "prompt_attention_mask": "the job", "negative_prompt_attention_mask": "the job",
    "callback_on_step_end": "the job", "callback_on_step_end_tensor_inputs": "the job", "callback": "the job",
    "callback_steps": "the job", "cross_attention_kwargs": "--lora", "joint_attention_kwargs": "--lora",
    "attention_kwargs": "--lora",
}  # fmt: skip


class LoraAdapter(BaseModel):
    """A LoRA adapter as the job loads it: known to the fingerprint by its bytes and scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(exclude=True)  # path or hub id: where it is read from, not what it is
    sha256: str  # of its weight file(s), in name order
    scale: float


class DiffusersSettings(BaseModel):
    """Resolved settings of a diffusers-backend job: everything that shapes its images, so the
    whole object enters the job's fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str  # model_index.json `_class_name`
    generic: bool = False  # not a first-class family: prompts go to __call__ as text, after a batch check
    sampler: SamplerName | None  # None: the checkpoint's own scheduler
    scheduler: str  # the scheduler class that runs
    steps: int
    cfg_scale: float | None  # None: unconditional, no guidance (FLUX: the guidance embedding's value)
    eta: float
    height: int
    width: int
    max_sequence_length: int | None  # PixArt, SD3, FLUX, Sana: tokens of the sequence encoder (T5, Gemma)
    clean_caption: bool | None  # PixArt, Sana: caption cleaning (needs beautifulsoup4 and ftfy)
    resolution_binning: bool | None  # PixArt, Sana: diffusers' default (on), or --pipeline-arg
    negative_prompt: str | None  # for every row without a negative_prompt of its own
    empty_negative: NegativeDefault | None = None  # what a row without a negative prompt gets
    complex_human_instruction: tuple[str, ...] | None = None  # Sana: prefixed to prompts (not to negatives)
    pipeline_args: dict[str, Any] = {}  # --pipeline-arg, as __call__ receives them
    loras: tuple[LoraAdapter, ...] = ()
    variant: str | None = None
    revision: str | None = None  # --revision: the hub commit it resolved to, which every worker loads
    component_dtypes: dict[str, DTypeName] = {}  # --component-dtype, over the job's --dtype
    # --offload: where weights wait between uses, not what is computed (the same kernels on the same
    # device, weights copied bit for bit): out of the fingerprint, like --text-encoder (docs/backends.md).
    offload: OffloadMode | None = Field(None, exclude=True)


def diffusers_module() -> Any:
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # one bar per component load and per call otherwise
    return diffusers


def call_parameters(pipeline: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of the pipeline class's `__call__` (no **kwargs catch-all)."""
    params = inspect.signature(getattr(diffusers_module(), pipeline).__call__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _call_defaults(pipeline: str) -> dict[str, Any]:
    """The keyword defaults of the pipeline's `__call__`: its own steps, guidance, sequence length."""
    params = call_parameters(pipeline)
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


@dataclass(frozen=True)
class DiffusersModel:
    """A diffusers pipeline directory as the driver sees it: configs and tokenizers, no weights."""

    root: Path
    pipeline_class: str
    index: dict[str, Any]
    denoiser_config: dict[str, Any]
    vae_config: dict[str, Any] | None
    scheduler_config: dict[str, Any]
    names: ClassNames | None = None
    _tokenizers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def family(self) -> Family:
        if self.pipeline_class in FAMILIES:
            return FAMILIES[self.pipeline_class]
        return generic_family(self.index, set(call_parameters(self.pipeline_class)))

    @property
    def conditioning(self) -> Conditioning:
        return self.family.conditioning

    @cached_property
    def call_defaults(self) -> dict[str, Any]:
        return _call_defaults(self.pipeline_class)

    def vae_scale(self) -> int:
        """Pixels per latent: 2 ** (VAE levels - 1), as diffusers' pipelines compute vae_scale_factor."""
        if self.vae_config is None:
            return 1
        return 2 ** (len(self.vae_config.get(self.family.vae_levels, (64,))) - 1)

    def native_size(self) -> tuple[int, int]:
        size = self.family.default_sample_size or self.denoiser_config.get("sample_size", 64)
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
            allowed = ", ".join(s for s in family.schedulers if s) or "only its own"
            raise ValueError(f"--sampler {sampler}: {name} can run {allowed} (omit --sampler for its own scheduler)")
        scheduler = self._check_scheduler(sampler)
        if sampling.eta and "eta" not in defaults:
            raise ValueError(f"--eta: {name} takes no eta")
        text = family.conditioning == "text"
        guidance = text and "guidance_scale" in defaults
        if family.guidance == "embedded" and not self.denoiser_config.get("guidance_embeds", False):
            guidance = False  # FLUX schnell: no guidance embedding, the value would be ignored
        if guidance:
            cfg = sampling.cfg_scale if "cfg_scale" in given else float(defaults["guidance_scale"])
        elif "cfg_scale" in given:
            why = "is unconditional" if not text else "takes no guidance (no guidance embedding)"
            raise ValueError(f"--cfg-scale: {name} {why}; drop it")
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
        negative = self._negative_default()
        if request.negative_prompt is not None:
            if negative == "none":
                raise ValueError(f"--negative-prompt: {name} has no negative prompt (guidance is distilled); drop it")
            if not (cfg is not None and cfg > 1):
                raise ValueError(
                    "--negative-prompt has no effect without guidance; raise --cfg-scale above 1 or drop it"
                )
        args = self._pipeline_args(request.pipeline_args)
        instruction = None
        if family.encoding == "sana":  # prefixed to every prompt by its encoder, which runs outside __call__
            value = args.pop("complex_human_instruction", defaults.get("complex_human_instruction"))
            instruction = tuple(value) if value else None
        binning = args.get("use_resolution_binning", defaults.get("use_resolution_binning"))
        if binning and family.binned_sample_sizes:
            size = self.denoiser_config.get("sample_size")
            if size not in family.binned_sample_sizes:
                raise ValueError(
                    f"{self.root}: transformer sample_size {size} has no resolution bins in {name} (it knows "
                    f"{family.binned_sample_sizes}); pass --pipeline-arg use_resolution_binning=false"
                )
        return DiffusersSettings(
            pipeline=name,
            generic=family.generic,
            sampler=sampler,
            scheduler=scheduler,
            steps=sampling.steps if "steps" in given else int(defaults["num_inference_steps"]),
            cfg_scale=cfg,
            eta=sampling.eta,
            height=height,
            width=width,
            max_sequence_length=length,
            clean_caption=clean,
            resolution_binning=binning,
            negative_prompt=request.negative_prompt,
            empty_negative=negative if text else None,
            complex_human_instruction=instruction,
            pipeline_args=args,
            loras=self._loras(request.loras),
            variant=self._variant(request.variant),
            revision=self._revision(request.revision),
            component_dtypes=self._component_dtypes(request.component_dtypes),
            offload=self._offload(request.offload),
        )

    def _negative_default(self) -> NegativeDefault:
        negative = self.family.negative
        if negative == "zeros" and not self.index.get("force_zeros_for_empty_prompt", True):
            return "text"  # SDXL checkpoints saved with force_zeros_for_empty_prompt false encode ""
        return negative

    def _pipeline_args(self, given: dict[str, Any]) -> dict[str, Any]:
        """--pipeline-arg keys checked against the pipeline's __call__ signature."""
        params = call_parameters(self.pipeline_class)
        for key in given:
            if key in JOB_KEYWORDS:
                raise ValueError(f"--pipeline-arg {key}: set by {JOB_KEYWORDS[key]}, not by --pipeline-arg")
            if key not in params:
                accepted = sorted(k for k in params if k not in JOB_KEYWORDS)
                raise ValueError(
                    f"--pipeline-arg {key}: {self.pipeline_class}.__call__ takes no {key!r}; it accepts "
                    f"{', '.join(accepted) or 'nothing else'}"
                )
        return dict(given)

    def _loras(self, loras: tuple[tuple[str, float], ...]) -> tuple[LoraAdapter, ...]:
        if not loras:
            return ()
        from diffusers.loaders.lora_base import LoraBaseMixin  # only pipelines with this mixin load adapters

        if not issubclass(getattr(diffusers_module(), self.pipeline_class), LoraBaseMixin):
            raise ValueError(f"--lora: {self.pipeline_class} cannot load LoRA adapters (no load_lora_weights)")
        adapters = []
        for source, scale in loras:
            path = resolve_source(source, "--lora")
            files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
            if not files:
                raise ValueError(f"--lora {source}: no .safetensors file in it")
            digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
            adapters.append(LoraAdapter(source=str(path), sha256=digest, scale=scale))
        return tuple(adapters)

    def _variant(self, variant: str | None) -> str | None:
        """--variant: at least one component must have the variant's weight files (diffusers loads those
        and falls back to the plain files of components without them)."""
        if variant is None:
            return None
        found = {v for p in self.root.glob("*/*") if (v := weight_variant(p.name))}
        if variant not in found:
            has = f"its variants: {', '.join(sorted(found))}" if found else "it has no weight variants"
            raise ValueError(
                f"--variant {variant}: {self.root} has no {variant} weights (no component folder holds "
                f"*.{variant}.safetensors or *.{variant}.bin); {has}; drop --variant or name one of them"
            )
        return variant

    def _revision(self, revision: str | None) -> str | None:
        """--revision: the commit the hub id resolved to (its snapshot folder's name)."""
        if revision is None:
            return None
        commit = hub_revision(self.root)
        if commit is None:  # resolve_source reads revisions of hub ids only
            raise ValueError(f"--revision {revision}: {self.root} is not a hub snapshot")
        ref = self.root.parent.parent / "refs" / revision  # huggingface_hub records what a branch or tag resolved to
        if revision != commit and not (ref.is_file() and ref.read_text().strip() == commit):
            raise ValueError(
                f"--revision {revision}: the model was read at commit {commit}, not at {revision} (inspect_model "
                "takes the same revision)"
            )
        return commit

    def _offload(self, offload: OffloadMode | None) -> OffloadMode | None:
        cls = getattr(diffusers_module(), self.pipeline_class)
        if offload == "model" and getattr(cls, "model_cpu_offload_seq", None) is None:
            raise ValueError(
                f"--offload model: {self.pipeline_class} names no model_cpu_offload_seq, so diffusers cannot offload "
                "it model by model; use --offload sequential"
            )
        return offload

    def _component_dtypes(self, given: dict[str, str]) -> dict[str, DTypeName]:
        components = sorted(k for k, v in self.index.items() if isinstance(v, list) and v[0] is not None)
        for name in given:
            if name not in components:
                raise ValueError(f"--component-dtype {name}: {self.pipeline_class} has no such component; it has "
                                 f"{', '.join(components)}")  # fmt: skip
        return dict(given)  # type: ignore[arg-type]  # names checked by JobConfig

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

    def tokenizer(self, component: str = "tokenizer") -> Any:
        if component not in self._tokenizers:
            import transformers

            library, cls_name = self.index.get(component) or (None, None)
            cls = getattr(transformers, cls_name or "", None)
            if library != "transformers" or cls is None:
                raise CheckpointError(
                    f"{self.root}/model_index.json: {component} {cls_name!r} is not a transformers class"
                )
            try:
                self._tokenizers[component] = cls.from_pretrained(self.root / component)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{self.root}/{component}: cannot load {cls_name} ({err})") from None
        return self._tokenizers[component]

    def _length_check(self) -> LengthCheck | None:
        """The first of the family's length checks whose tokenizer the directory has (SD3 without T5:
        CLIP's limit), or None (the generic path: its pipeline's own tokenizer rules apply)."""
        has = [c for c in self.family.length_checks if (self.index.get(c.tokenizer) or [None])[0] is not None]
        return has[0] if has else None

    def check_prompts(self, prompts: list[str], settings: DiffusersSettings) -> list[tuple[int, str]]:
        """Prompts the pipeline would change without saying so: truncated past its token limit, or
        cleaned away to nothing. Counted as the pipeline counts them: after its caption cleaning
        (and Sana's instruction prefix), with the special tokens."""
        if self.conditioning != "text":
            return [(i, f"{self.pipeline_class} is unconditional and takes no prompt") for i in range(len(prompts))]
        texts = self.preprocess(prompts, settings)
        problems = [(i, "is empty after the pipeline's caption cleaning") for i, t in enumerate(texts) if not t.strip()]
        empty = {i for i, _ in problems}
        check = self._length_check()
        if check is None:
            return problems
        tokenizer = self.tokenizer(check.tokenizer)
        if check.limit == "sequence" and settings.max_sequence_length:
            limit, what = settings.max_sequence_length, "--max-sequence-length"
        else:
            limit, what = tokenizer.model_max_length, f"{check.tokenizer}'s model_max_length"
        counted, budget = texts, limit
        if settings.complex_human_instruction and check.limit == "sequence":
            # Sana tokenizes instruction + prompt to (instruction tokens + length - 2) and keeps the tail.
            head = "\n".join(settings.complex_human_instruction)
            counted = [head + t for t in texts]
            budget = len(tokenizer.encode(head)) + limit - 2
        lengths = [len(ids) for ids in tokenizer(counted, add_special_tokens=True)["input_ids"]]
        for i, n in enumerate(lengths):
            if i not in empty and n > budget:
                problems.append((i, f"is {n - budget + limit} tokens, over {what} {limit}; the pipeline would cut it"))
        return sorted(problems)

    def preprocess(self, prompts: list[str], settings: DiffusersSettings) -> list[str]:
        """The text the tokenizer sees: PixArt's and Sana's own `_text_preprocessing` (lower-case and
        strip, or their caption cleaning), called on an instance without components, as the worker's
        pipeline calls it."""
        if self.family.encoding not in ("pixart", "sana"):
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


def is_pipeline_class(name: str) -> bool:
    """A diffusers pipeline class (any: first-class families and the generic path alike)."""
    cls = getattr(diffusers_module(), name, None) if name.endswith("Pipeline") else None
    return isinstance(cls, type) and issubclass(cls, diffusers_module().DiffusionPipeline)


def inspect_diffusers(root: Path, index: dict[str, Any]) -> DiffusersModel:
    """Read the configs of a diffusers pipeline directory; no weights, no device."""
    name = index["_class_name"]
    model = DiffusersModel(root=root, pipeline_class=name, index=index, denoiser_config={}, vae_config=None,
                           scheduler_config={})  # fmt: skip
    family = model.family
    missing = [c for c in (family.denoiser, "scheduler") if not (root / c).is_dir()]
    if family.conditioning == "text" and not family.generic:
        missing += [c for c in ("vae", *family.encoders[:1], "tokenizer") if not (root / c).is_dir()]
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
