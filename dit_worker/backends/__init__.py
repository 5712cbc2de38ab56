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

from pathlib import Path

from pydantic import BaseModel

from dit_worker.backends.base import (
    Conditioning,
    GenerationRequest,
    Generator,
    ModelSpec,
    OffloadMode,
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


def pipeline_class(model: str, revision: str | None = None, variant: str | None = None) -> str:
    """The `_class_name` of the model's model_index.json; DiTPipeline for an original .pt or a
    directory without one (the DiT layout needs none)."""
    return _class_name(resolve_source(model, "model", revision=revision, variant=variant))


def _class_name(root: Path) -> str:
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


def inspect_model(model: str, vae: str | None, revision: str | None = None, variant: str | None = None) -> ModelSpec:
    """The model's spec from its configs (s3:// and hub sources land in this node's cache; a hub id is
    read once, at `revision`: a branch that moves meanwhile cannot mix two commits). `vae` replaces
    a DiT checkpoint's VAE; a diffusers pipeline has its own (a job refuses --vae for it)."""
    root = resolve_source(model, "model", revision=revision, variant=variant)
    name = _class_name(root)
    if name == PIPELINE_CLASS:
        if revision is not None:  # the native workers read a hub id's main revision (docs/backends.md)
            raise CheckpointError(
                f"--revision {revision}: {model} is a DiT checkpoint ({PIPELINE_CLASS}), whose native path loads a "
                "hub id's main revision only; download that revision into a directory and pass it as --model"
            )
        return inspect_native(model, vae)
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
    "OffloadMode",
    "RowColumns",
    "Rows",
    "TextEncoderPlacement",
    "inspect_model",
    "load_generator",
    "pipeline_class",
]
