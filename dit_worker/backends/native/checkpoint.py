"""Loading every supported checkpoint format into our modules (docs/checkpoints.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dit_worker.checkpoints.diffusers_layout import (
    read_id2label,
    transformer_config,
    transformer_state,
    vae_config,
    vae_folder,
    vae_state,
)
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import is_torch_file, read_json
from dit_worker.checkpoints.original import ORIGINAL_SCHEDULER_CONFIG, load_original
from dit_worker.checkpoints.sources import resolve_source
from dit_worker.models.dit import DiT, DiTConfig
from dit_worker.models.vae import VAEDecoder, VAEDecoderConfig


@dataclass
class Checkpoint:
    """A DiT checkpoint read into CPU tensors: transformer and VAE configs and weights, the scheduler config and class
    names."""

    transformer: DiTConfig
    transformer_state: dict[str, torch.Tensor] = field(repr=False)
    vae: VAEDecoderConfig
    vae_state: dict[str, torch.Tensor] = field(repr=False)
    scheduler_config: dict[str, Any]  # original DiT files: ORIGINAL_SCHEDULER_CONFIG
    id2label: dict[int, str]
    source: str


def load_checkpoint(model: str | Path, vae: str | Path | None = None, *, weights: bool = True) -> Checkpoint:
    """Read a diffusers-layout directory or an original `.pt` (+ VAE directory) into CPU tensors.

    weights=False reads only the configs of a diffusers-layout directory (a job driver validating its
    inputs); both state dicts are then empty. An original `.pt` is always read whole: its
    architecture is inferred from the tensors.
    """
    root = resolve_source(str(model), "model")
    if root.is_file():
        if not is_torch_file(root):
            raise CheckpointError(
                f"{root}: not a checkpoint: expected an original DiT .pt (a torch.save file) or a diffusers "
                "directory with model_index.json and transformer/"
            )
        if vae is None:
            raise CheckpointError(
                f"{root}: an original DiT checkpoint needs a VAE; pass vae= (a diffusers AutoencoderKL "
                "directory or hub id such as stabilityai/sd-vae-ft-ema)"
            )
        vae_dir = vae_folder(resolve_source(str(vae), "vae"))
        vcfg = vae_config(vae_dir)
        config, state = load_original(root)
        scheduler: dict[str, Any] = dict(ORIGINAL_SCHEDULER_CONFIG)
        id2label: dict[int, str] = {}
    else:
        tdir = root / "transformer"
        if not tdir.is_dir():
            raise CheckpointError(
                f"{root}: not a diffusers DiT directory (no transformer/ folder) nor an original .pt file"
            )
        config = transformer_config(tdir)
        vae_dir = vae_folder(resolve_source(str(vae), "vae")) if vae is not None else root / "vae"
        vcfg = vae_config(vae_dir)
        index = root / "model_index.json"
        id2label = read_id2label(read_json(index), index) if index.is_file() else {}
        sched = root / "scheduler" / "scheduler_config.json"
        scheduler = read_json(sched) if sched.is_file() else {}
        config, state = transformer_state(tdir, config) if weights else (config, {})
    if vcfg.latent_channels != config.in_channels:
        raise CheckpointError(
            f"{vae_dir}: VAE latent_channels {vcfg.latent_channels} does not match the transformer's "
            f"in_channels {config.in_channels}; use the VAE the model was trained with (e.g. sd-vae-ft-ema)"
        )
    bad = [i for i in id2label if not 0 <= i < config.num_classes]
    if bad:
        raise CheckpointError(f"{root}: id2label has class ids {bad[:5]} outside 0..{config.num_classes - 1}")
    vstate = vae_state(vae_dir) if weights else {}
    return Checkpoint(config, state, vcfg, vstate, scheduler, id2label, str(model))


def materialize(module: nn.Module, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """Fill a meta-device module from `state`, refusing missing, unexpected or mis-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}")
    if problems:
        config = getattr(module, "config", None)
        raise CheckpointError(f"{type(module).__name__} weights do not fit {config!r}: {' | '.join(problems)}")
    module.to_empty(device=device)
    module.to(dtype)
    module.load_state_dict(state, strict=True)


def build_models(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> tuple[DiT, VAEDecoder]:
    with torch.device("meta"):
        dit = DiT(ckpt.transformer)
        vae = VAEDecoder(ckpt.vae)
    try:
        materialize(dit, ckpt.transformer_state, device, dtype)
        materialize(vae, ckpt.vae_state, device, dtype)
    except CheckpointError as err:
        raise CheckpointError(f"{ckpt.source}: {err}") from None
    dit.reset_buffers()
    return dit.eval().requires_grad_(False), vae.eval().requires_grad_(False)


__all__ = ["Checkpoint", "CheckpointError", "build_models", "load_checkpoint", "materialize"]
