"""Original facebookresearch/DiT checkpoints: a bare state dict or a training dict with `model`/`ema`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import describe_validation, torch_load_weights
from dit_worker.models.dit import DiTConfig, dit_config, model_names, registry_heads, sincos_pos_embed_2d

# An original `.pt` carries no scheduler config: it gets the one facebook/DiT-XL-2-256 ships (the
# same weights converted by diffusers), so a `.pt` and its diffusers-layout form give identical
# images with every sampler (docs/checkpoints.md). Note clip_sample false, unlike DDIMScheduler's default.
ORIGINAL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "trained_betas": None,
}

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_RENAMES = (
    (re.compile(r"^t_embedder\."), "conditioners.0.t_embedder."),
    (re.compile(r"^y_embedder\."), "conditioners.0.y_embedder."),
    (re.compile(r"\.adaLN_modulation\.1\."), ".adaLN_modulation."),
)


def load_original(path: Path) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    obj = torch_load_weights(path)
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        obj = obj["ema"] if "ema" in obj else obj["model"]  # DiT samples from the EMA weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a DiT state dict (or a dict with 'ema'/'model'), got {type(obj).__name__}"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    config = infer_config(state, path, getattr(args, "model", None))
    return config, to_our_names(state, config, path)


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{path}: missing tensor {key!r}; not an original DiT checkpoint")
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], path: Path, model_name: Any = None) -> DiTConfig:
    """Architecture from tensor shapes; heads come from the training args or the size registry."""
    hidden, in_ch, patch, patch_w = _shape(state, "x_embedder.proj.weight", path)
    depth = len({int(m[1]) for k in state if (m := _BLOCK.match(k))})
    out_features, _ = _shape(state, "final_layer.linear.weight", path)
    _, tokens, _ = _shape(state, "pos_embed", path)
    mlp_hidden, _ = _shape(state, "blocks.0.mlp.fc1.weight", path)
    table, _ = _shape(state, "y_embedder.embedding_table.weight", path)
    side = round(tokens**0.5)
    out_ch, rem = divmod(out_features, patch * patch)
    if patch != patch_w or side * side != tokens or rem or out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(
            f"{path}: inconsistent shapes (patch {patch}x{patch_w}, {tokens} positions, final layer {out_features})"
        )
    heads = None
    if isinstance(model_name, str):
        try:
            heads = dit_config(model_name).num_heads
        except ValueError:
            heads = None
    heads = heads or registry_heads(depth, hidden)
    if heads is None:
        raise CheckpointError(
            f"{path}: depth {depth} and width {hidden} match no DiT size, so the head count is unknown; "
            f"known sizes: {', '.join(model_names())}"
        )
    try:
        return DiTConfig(
            input_size=side * patch,
            patch_size=patch,
            in_channels=in_ch,
            hidden_size=hidden,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp_hidden / hidden,
            # DiT's label table holds num_classes rows plus the null class when trained with CFG dropout.
            num_classes=table - 1,
            learn_sigma=out_ch == 2 * in_ch,
        )
    except ValidationError as err:
        raise CheckpointError(f"{path}: {describe_validation(err)}") from None


def to_our_names(state: dict[str, torch.Tensor], config: DiTConfig, path: Path) -> dict[str, torch.Tensor]:
    pos = state["pos_embed"].reshape(config.num_tokens, config.hidden_size).float()
    expected = sincos_pos_embed_2d(config.hidden_size, config.input_size // config.patch_size)
    if not torch.allclose(pos, expected, atol=1e-5):
        raise CheckpointError(f"{path}: pos_embed is not DiT's fixed 2-D sin-cos table; this model is not supported")
    out = {}
    for key, tensor in state.items():
        if key == "pos_embed":
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = tensor
    return out
