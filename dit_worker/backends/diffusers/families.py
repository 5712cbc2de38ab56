"""The diffusers pipeline families the job runs first-class, as a table of traits (docs/backends.md,
"Families"), and the generic family every other pipeline class falls back to.

A family says which component denoises, what a row carries, which text encoders it has (loaded apart
from the pipeline so that they can live elsewhere), how prompts are encoded outside the pipeline
(`encoding`, a key of the worker's encoder table), which tokenizers bound a prompt's length, what a
row without a negative prompt gets, and how its image size is derived. Traits are read off
diffusers' own pipeline code (the tests check each family against the pipeline called per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dit_worker.backends.base import Conditioning

# --sampler -> the diffusers scheduler made with `from_config` of the checkpoint's scheduler config.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
OWN_SCHEDULER_ONLY: tuple[str | None, ...] = (None,)  # flow-matching families: their own scheduler only

# What a row without a negative prompt is given: the empty prompt encoded ("text"); zeros, as SDXL
# does with force_zeros_for_empty_prompt ("zeros"); or no negative branch at all (FLUX: "none").
NegativeDefault = Literal["text", "zeros", "none"]


@dataclass(frozen=True)
class LengthCheck:
    """A tokenizer whose limit a prompt must fit: the pipeline's `max_sequence_length` (`sequence`) or
    the tokenizer's own `model_max_length` (`model_max`)."""

    tokenizer: str  # model_index.json component
    limit: Literal["sequence", "model_max"]


@dataclass(frozen=True)
class Family:
    """How one kind of diffusers pipeline is driven."""

    denoiser: Literal["transformer", "unet"]
    conditioning: Conditioning
    schedulers: tuple[str | None, ...] = (None, *SCHEDULERS)  # --sampler values its __call__ can drive
    encoders: tuple[str, ...] = ()  # text encoder components, in model_index.json order
    encoding: str | None = None  # the worker's prompt encoder; None: prompts go to __call__ as text
    length_checks: tuple[LengthCheck, ...] = ()  # the first whose tokenizer the directory has is used
    negative: NegativeDefault = "text"
    guidance: Literal["cfg", "embedded"] = "cfg"  # embedded: guidance_scale is an input of the model (FLUX)
    default_sample_size: int | None = None  # latents per side when the pipeline fixes it (FLUX: 128)
    vae_levels: str = "block_out_channels"  # the VAE config list whose length gives its scale factor
    size_factor: int | None = None  # latents per token side, when not the transformer's patch_size (FLUX: 2)
    binned_sample_sizes: tuple[int, ...] = ()  # transformer sample sizes with resolution bins (PixArt, Sana)
    sequence_limit: int | None = None  # the largest max_sequence_length its __call__ accepts (SD3, FLUX: 512)
    generic: bool = False  # not a first-class family: runs with prompts as text, after a batch check

    def patch_factor(self, denoiser: dict[str, Any]) -> int:
        if self.size_factor is not None:
            return self.size_factor
        if self.denoiser == "transformer":
            return int(denoiser.get("patch_size") or 1)
        return 2 ** (len(denoiser.get("down_block_types", ())) - 1)  # the UNet's downsampling


T5_SEQUENCE = (LengthCheck("tokenizer", "sequence"),)
FAMILIES: dict[str, Family] = {
    "PixArtSigmaPipeline": Family(
        "transformer", "text", encoders=("text_encoder",), encoding="pixart", length_checks=T5_SEQUENCE,
        binned_sample_sizes=(32, 64, 128, 256),
    ),
    "PixArtAlphaPipeline": Family(
        "transformer", "text", encoders=("text_encoder",), encoding="pixart", length_checks=T5_SEQUENCE,
        binned_sample_sizes=(32, 64, 128),
    ),
    "StableDiffusionPipeline": Family(
        "unet", "text", encoders=("text_encoder",), encoding="sd",
        length_checks=(LengthCheck("tokenizer", "model_max"),),
    ),
    # CLIP-L and CLIP-G cut at 77 tokens by design (they give the pooled vector); the T5 carries the
    # prompt and is checked against --max-sequence-length. Without a T5 the CLIP limit is the prompt's.
    "StableDiffusion3Pipeline": Family(
        "transformer", "text", OWN_SCHEDULER_ONLY, encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
        encoding="sd3", length_checks=(LengthCheck("tokenizer_3", "sequence"), LengthCheck("tokenizer", "model_max")),
        sequence_limit=512,
    ),
    "FluxPipeline": Family(
        "transformer", "text", OWN_SCHEDULER_ONLY, encoders=("text_encoder", "text_encoder_2"), encoding="flux",
        length_checks=(LengthCheck("tokenizer_2", "sequence"),), negative="none", guidance="embedded",
        default_sample_size=128, size_factor=2, sequence_limit=512,
    ),
    "SanaPipeline": Family(
        "transformer", "text", OWN_SCHEDULER_ONLY, encoders=("text_encoder",), encoding="sana",
        length_checks=T5_SEQUENCE, vae_levels="encoder_block_out_channels", binned_sample_sizes=(16, 32, 64, 128),
    ),
    "StableDiffusionXLPipeline": Family(
        "unet", "text", encoders=("text_encoder", "text_encoder_2"), encoding="sdxl",
        length_checks=(LengthCheck("tokenizer", "model_max"), LengthCheck("tokenizer_2", "model_max")),
        negative="zeros",
    ),
    # DDIMPipeline turns any scheduler into a DDIMScheduler and calls step(eta=...); DDPMPipeline
    # neither scales model inputs nor the initial noise, which Euler needs.
    "DDIMPipeline": Family("unet", "none", (None, "ddim")),
    "DDPMPipeline": Family("unet", "none", (None, "ddpm", "ddim", "dpm-solver")),
}  # fmt: skip


def generic_family(index: dict[str, Any], call_parameters: set[str]) -> Family:
    """Any other diffusers pipeline: its denoiser is whichever component it has, it is text-to-image
    when its __call__ takes a prompt, and it runs with its own scheduler and prompts as text."""
    denoiser: Literal["transformer", "unet"] = "transformer" if "transformer" in index else "unet"
    conditioning: Conditioning = "text" if "prompt" in call_parameters else "none"
    return Family(denoiser, conditioning, OWN_SCHEDULER_ONLY, generic=True)
