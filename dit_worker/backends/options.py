"""The optional settings a model honours beyond what its kind takes (docs/cli.md, "Flags and model
kinds"): read from its configs and its pipeline's `__call__`, without weights. A job driver refuses
every flag for an option its model does not have, from one table (`dit_worker.driver.flags`)."""

from __future__ import annotations

from typing import Literal

from dit_worker.backends.base import ModelSpec
from dit_worker.backends.diffusers.resolve import DiffusersModel, diffusers_module
from dit_worker.backends.native.backend import NativeModel

Option = Literal["guidance", "eta", "negative_prompt", "max_sequence_length", "clean_caption", "lora"]
# What each option is, as a refusal names it ("for text-to-image models whose pipeline takes ...").
OPTION_TEXT: dict[Option, str] = {
    "guidance": "a guidance scale",
    "eta": "eta (DDIM)",
    "negative_prompt": "a negative prompt",
    "max_sequence_length": "a sequence length (PixArt, SD3, FLUX, Sana)",
    "clean_caption": "caption cleaning (PixArt, Sana)",
    "lora": "LoRA adapters",
}
NATIVE_OPTIONS: frozenset[Option] = frozenset({"guidance", "eta"})  # DiT: guidance, and eta with --sampler ddim


def model_options(spec: ModelSpec) -> frozenset[Option]:
    """The options `spec`'s model takes: DiT takes guidance and eta; a diffusers pipeline what its
    family and its `__call__` take."""
    if isinstance(spec, NativeModel):
        return NATIVE_OPTIONS
    assert isinstance(spec, DiffusersModel), type(spec)
    family, defaults = spec.family, spec.call_defaults
    text = family.conditioning == "text"
    found: set[Option] = set()
    guidance = text and "guidance_scale" in defaults
    if family.guidance == "embedded" and not spec.denoiser_config.get("guidance_embeds", False):
        guidance = False  # FLUX schnell: no guidance embedding, a value would be ignored
    if guidance:
        found.add("guidance")
    if "eta" in defaults:
        found.add("eta")
    if text and (family.negative != "none" if not family.generic else "negative_prompt" in defaults):
        found.add("negative_prompt")
    found.update(o for o in ("max_sequence_length", "clean_caption") if text and o in defaults)
    from diffusers.loaders.lora_base import LoraBaseMixin  # only pipelines with this mixin load adapters

    if issubclass(getattr(diffusers_module(), spec.pipeline_class), LoraBaseMixin):
        found.add("lora")
    return frozenset(found)
