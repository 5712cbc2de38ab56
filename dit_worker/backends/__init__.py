"""Backends chosen by the checkpoint (docs/backends.md): `model_index.json`'s `_class_name` picks one.

`DiTPipeline` (and an original `.pt`, or a directory without model_index.json) runs on the native
fast path; the diffusers pipeline families in `SUPPORTED` run through diffusers itself, first-class;
any other diffusers pipeline class runs through the generic path (prompts as text, after a batch
check). A class diffusers does not have is refused, naming the supported ones.

    spec = inspect_model("PixArt-Sigma-XL-2-1024-MS", None)  # driver: configs only
    settings = spec.resolve(GenerationRequest(...))
    gen = load_generator("PixArt-Sigma-XL-2-1024-MS", None, "cuda", "bfloat16", settings)  # worker
"""

from __future__ import annotations

from pydantic import BaseModel

from dit_worker.backends.base import (
    Conditioning,
    GenerationRequest,
    Generator,
    ModelSpec,
    RowColumns,
    Rows,
    TextEncoderPlacement,
)
from dit_worker.backends.diffusers.families import FAMILIES
from dit_worker.backends.diffusers.resolve import DiffusersSettings, inspect_diffusers, is_pipeline_class
from dit_worker.backends.diffusers.run import DiffusersGenerator
from dit_worker.backends.native.backend import PIPELINE_CLASS, NativeGenerator, inspect_native
from dit_worker.backends.settings import SamplingSettings
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import read_json
from dit_worker.checkpoints.sources import resolve_source

SUPPORTED = (PIPELINE_CLASS, *FAMILIES)


def pipeline_class(model: str) -> str:
    """The `_class_name` of the model's model_index.json; DiTPipeline for an original .pt or a
    directory without one (the DiT layout needs none)."""
    root = resolve_source(model, "model")
    index = root / "model_index.json"
    if root.is_file() or not index.is_file():
        return PIPELINE_CLASS
    name = read_json(index).get("_class_name")
    if name not in SUPPORTED and not (isinstance(name, str) and is_pipeline_class(name)):
        raise CheckpointError(
            f"{index}: pipeline class {name!r} is not a diffusers pipeline; supported: {', '.join(SUPPORTED)}, "
            "and any other diffusers pipeline class through the generic path (docs/backends.md)"
        )
    return str(name)


def inspect_model(model: str, vae: str | None) -> ModelSpec:
    """The model's spec from its configs (s3:// and hub sources land in this node's cache). `vae`
    replaces a DiT checkpoint's VAE; a diffusers pipeline has its own (a job refuses --vae for it)."""
    name = pipeline_class(model)
    if name == PIPELINE_CLASS:
        return inspect_native(model, vae)
    root = resolve_source(model, "model")
    return inspect_diffusers(root, read_json(root / "model_index.json"))


def load_generator(
    model: str,
    vae: str | None,
    device: str,
    dtype: str,
    settings: BaseModel,
    text_encoder: TextEncoderPlacement = "device",
) -> Generator:
    """The worker's model for resolved `settings` (SamplingSettings: native; DiffusersSettings)."""
    if isinstance(settings, SamplingSettings):
        return NativeGenerator.load(model, vae, device, dtype, settings)
    assert isinstance(settings, DiffusersSettings)
    return DiffusersGenerator.load(model, settings, device=device, dtype=dtype, text_encoder=text_encoder)


__all__ = [
    "SUPPORTED",
    "Conditioning",
    "DiffusersSettings",
    "GenerationRequest",
    "Generator",
    "ModelSpec",
    "NativeGenerator",
    "RowColumns",
    "Rows",
    "TextEncoderPlacement",
    "inspect_model",
    "load_generator",
    "pipeline_class",
]
