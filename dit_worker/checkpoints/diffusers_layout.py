"""The diffusers layout (`facebook/DiT-XL-2-256`): model_index.json, transformer/, vae/, scheduler/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import describe_validation, load_weights_dir, read_json
from dit_worker.models.dit import DiTConfig
from dit_worker.models.vae import VAEDecoderConfig

TRANSFORMER_CLASSES = ("Transformer2DModel", "DiTTransformer2DModel")
GELU_TANH = ("gelu-approximate", "gelu-tanh")

# diffusers name -> ours, per block; q/k/v and the conditioning embedders are handled apart.
_BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_TOP_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation",
    "proj_out_2": "final_layer.linear",
}
_COND_RENAMES = {
    "norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")
# Older AutoencoderKL checkpoints (sd-vae-ft-*) name the mid-block attention projections differently.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def transformer_config(folder: Path) -> DiTConfig:
    raw = read_json(folder / "config.json")
    path = folder / "config.json"
    cls = raw.get("_class_name")
    if cls not in TRANSFORMER_CLASSES:
        raise CheckpointError(
            f"{path}: _class_name {cls!r} is not a DiT transformer; expected one of {TRANSFORMER_CLASSES}"
        )
    expect = {"norm_type": ("ada_norm_zero",), "activation_fn": GELU_TANH}
    for key, allowed in expect.items():
        if raw.get(key, allowed[0]) not in allowed:
            raise CheckpointError(f"{path}: {key} {raw.get(key)!r} is not supported; expected one of {allowed}")
    for key in ("cross_attention_dim", "num_vector_embeds"):
        if raw.get(key) is not None:
            raise CheckpointError(f"{path}: {key}={raw[key]!r} is not a class-conditional DiT; expected null")
    if raw.get("attention_bias", True) is not True or raw.get("norm_elementwise_affine", False) is not False:
        raise CheckpointError(f"{path}: DiT needs attention_bias=true and norm_elementwise_affine=false")
    missing = [k for k in ("patch_size", "num_embeds_ada_norm") if raw.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: {', '.join(missing)} must be set for a patched, class-conditional DiT")
    in_ch = raw.get("in_channels", 4)
    out_ch = raw.get("out_channels") or in_ch
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(
            f"{path}: out_channels {out_ch} must equal in_channels {in_ch} or twice it (learned sigma)"
        )
    try:
        return DiTConfig(
            input_size=raw.get("sample_size", 32),
            patch_size=raw["patch_size"],
            in_channels=in_ch,
            hidden_size=raw.get("num_attention_heads", 16) * raw.get("attention_head_dim", 72),
            depth=raw.get("num_layers", 28),
            num_heads=raw.get("num_attention_heads", 16),
            num_classes=raw["num_embeds_ada_norm"],
            learn_sigma=out_ch == 2 * in_ch,
        )
    except ValidationError as err:
        raise CheckpointError(f"{path}: {describe_validation(err)}") from None


def transformer_state(folder: Path, config: DiTConfig) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """Our state dict from diffusers weights, and the config updated for per-block conditioning."""
    state = load_weights_dir(folder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    cond: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        if key == "pos_embed.pos_embed":  # a buffer some versions saved; ours is recomputed
            continue
        m = _BLOCK_KEY.match(key)
        if m is None:
            module, _, kind = key.rpartition(".")
            if module in _TOP_RENAMES:
                out[f"{_TOP_RENAMES[module]}.{kind}"] = tensor
            else:
                unknown.append(key)
            continue
        i, module, kind = int(m[1]), m[2], m[3]
        if module in _BLOCK_RENAMES:
            out[f"blocks.{i}.{_BLOCK_RENAMES[module]}.{kind}"] = tensor
        elif module in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            qkv.setdefault((i, kind), {})[module[-1]] = tensor
        elif module in _COND_RENAMES:
            cond.setdefault(i, {})[f"{_COND_RENAMES[module]}.{kind}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{folder}: unexpected tensors for a DiT transformer: {', '.join(sorted(unknown)[:8])}")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{folder}: block {i} is missing attention {kind} tensors ({sorted(parts)})")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)

    # Converted checkpoints repeat the one trained embedding in every block: share it. Blocks that
    # differ (fine-tuned in this layout) keep their own, as the diffusers model would use them.
    per_block = _differ(cond)
    blocks = sorted(cond) if per_block else sorted(cond)[:1]
    for slot, i in enumerate(blocks):
        for name, tensor in cond[i].items():
            out[f"conditioners.{slot}.{name}"] = tensor
    if per_block:
        config = config.model_copy(update={"per_block_conditioning": True})
    return config, out


def _differ(cond: dict[int, dict[str, torch.Tensor]]) -> bool:
    if not cond:
        return False
    first = cond[min(cond)]
    return any(
        c.keys() != first.keys() or any(not torch.equal(t, first[k]) for k, t in c.items()) for c in cond.values()
    )


def vae_folder(path: Path) -> Path:
    """A bare AutoencoderKL folder, or a pipeline folder holding one in vae/."""
    return path / "vae" if (path / "vae" / "config.json").is_file() else path


def vae_config(folder: Path) -> VAEDecoderConfig:
    path = folder / "config.json"
    raw = read_json(path)
    if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise CheckpointError(f"{path}: _class_name {raw['_class_name']!r} is not supported; expected AutoencoderKL")
    up = raw.get("up_block_types", ["UpDecoderBlock2D"])
    if any(t != "UpDecoderBlock2D" for t in up):
        raise CheckpointError(f"{path}: up_block_types {up} not supported; expected only UpDecoderBlock2D")
    if raw.get("act_fn", "silu") != "silu":
        raise CheckpointError(f"{path}: act_fn {raw['act_fn']!r} not supported; expected 'silu'")
    if raw.get("shift_factor") is not None:
        raise CheckpointError(f"{path}: shift_factor {raw['shift_factor']} not supported; DiT's VAE has none")
    block_out = tuple(raw.get("block_out_channels", (64,)))
    if len(up) != len(block_out):
        raise CheckpointError(f"{path}: {len(up)} up blocks but {len(block_out)} block_out_channels")
    fields: dict[str, Any] = {
        "block_out_channels": block_out,
        "latent_channels": raw.get("latent_channels", 4),
        "out_channels": raw.get("out_channels", 3),
        "layers_per_block": raw.get("layers_per_block", 1),
        "norm_num_groups": raw.get("norm_num_groups", 32),
        "mid_block_add_attention": raw.get("mid_block_add_attention", True),
        "use_post_quant_conv": raw.get("use_post_quant_conv", True),
        "scaling_factor": raw.get("scaling_factor", 0.18215),
    }
    try:
        return VAEDecoderConfig(**fields)
    except ValidationError as err:
        raise CheckpointError(f"{path}: {describe_validation(err)}") from None


def vae_state(folder: Path) -> dict[str, torch.Tensor]:
    """Decoder-half tensors, legacy attention names and 1x1-conv projections normalised."""
    out = {}
    for key, tensor in load_weights_dir(folder).items():
        if not key.startswith(("decoder.", "post_quant_conv.")):
            continue  # the encoder half is never used
        parts = key.split(".")
        if "attentions" in parts and parts[-2] in _LEGACY_VAE_ATTENTION:
            parts[-2] = _LEGACY_VAE_ATTENTION[parts[-2]]
            key = ".".join(parts)
        if "attentions" in parts and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # original LDM checkpoints store these as 1x1 convolutions
        out[key] = tensor
    return out


def read_id2label(model_index: dict[str, Any], path: Path) -> dict[int, str]:
    raw = model_index.get("id2label") or {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{path}: id2label must map class ids to names") from None


def to_diffusers_names(state: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Inverse of `transformer_state`: split q/k/v and repeat a shared embedding into every block."""
    top = {ours: theirs for theirs, ours in _TOP_RENAMES.items()}
    block = {ours: theirs for theirs, ours in _BLOCK_RENAMES.items()}
    cond = {ours: theirs for theirs, ours in _COND_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        if module in top:
            out[f"{top[module]}.{kind}"] = tensor
        elif module.startswith("conditioners."):
            _, slot, name = module.split(".", 2)
            targets = [int(slot)] if config.per_block_conditioning else range(config.depth)
            for i in targets:  # separate copies: safetensors refuses aliased tensors
                out[f"transformer_blocks.{i}.{cond[name]}.{kind}"] = tensor.clone()
        elif module.endswith(".attn.qkv"):
            i = module.split(".")[1]
            for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"transformer_blocks.{i}.attn1.to_{name}.{kind}"] = part.contiguous()
        else:
            _, i, name = module.split(".", 2)
            out[f"transformer_blocks.{i}.{block[name]}.{kind}"] = tensor
    return out


def transformer_config_json(config: DiTConfig) -> dict[str, Any]:
    """config.json that diffusers' DiTTransformer2DModel loads, with DiT's own LayerNorm eps."""
    return {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "attention_bias": True,
        "sample_size": config.input_size,
        "patch_size": config.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": config.num_classes,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }


def vae_config_json(config: VAEDecoderConfig) -> dict[str, Any]:
    """AutoencoderKL config.json for a decoder config (the encoder half mirrors it)."""
    n = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.out_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_num_groups,
        "scaling_factor": config.scaling_factor,
        "mid_block_add_attention": config.mid_block_add_attention,
        "use_post_quant_conv": config.use_post_quant_conv,
    }
