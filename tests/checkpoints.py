"""Tiny random checkpoints in the real on-disk formats, built with the reference libraries."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A handful of real ImageNet labels (ids as in ImageNet-1k) so name lookups are exercised for real.
KNOWN_LABELS = {
    2: "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    134: "crane",
    207: "golden retriever",
    360: "otter",
    517: "crane",
    879: "umbrella",
}
TINY_DIT = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, sample_size=8, patch_size=2)
TINY_VAE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def id2label(num_classes: int = 1000) -> dict[int, str]:
    return {i: KNOWN_LABELS.get(i, f"synthetic class {i}") for i in range(num_classes)}


# Standard deviations that make the network, not the seed, shape the image. With DiT's N(0, 0.02)
# everywhere a tiny random DiT predicts eps ~ 0.1 whatever its class: sampling then mostly rescales
# the initial noise, the VAE decoder (GroupNorm first) ignores the scale, and a test would pass with
# guidance off or on the wrong channels. A unit-scale label table and strong adaLN make the
# conditioning steer every block; the final layer gives eps ~ 6 and learned-variance channels ~ 1,
# in the range [-1, 1] that learned-range interpolation expects. Scaled by 1/sqrt(hidden) so the
# DiT-S/8 `.pt` fixture and the 32-wide diffusers one get the same output magnitudes.
LABEL_STD = 1.0
ADALN_GAIN = 1.1  # std * sqrt(hidden)
EPS_GAIN = 5.7
VAR_GAIN = 0.85


def final_layer_row_std(out_channels: int, in_channels: int, patch: int, hidden: int) -> torch.Tensor:
    """Per-row std of the final linear layer; row r writes channel r % out_channels (DiT's unpatchify
    reads [p, p, C] patches, channel last), channels >= in_channels are the learned variance."""
    channel = torch.arange(patch * patch * out_channels) % out_channels
    return torch.where(channel < in_channels, EPS_GAIN, VAR_GAIN) / hidden**0.5


def random_transformer(seed: int = 0, *, share_embedding: bool = True, learn_sigma: bool = True, **overrides: object):
    """A tiny diffusers DiT whose output depends strongly on class and timestep (see LABEL_STD)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    kwargs = {**TINY_DIT, "in_channels": 4, "out_channels": 8 if learn_sigma else 4, **overrides}
    model = DiTTransformer2DModel(**kwargs)
    hidden = model.inner_dim
    row_std = final_layer_row_std(kwargs["out_channels"], 4, kwargs["patch_size"], hidden)
    with torch.no_grad():
        for name, p in model.named_parameters():  # fresh diffusers init zeroes nothing; keep activations O(1)
            p.normal_(0, 0.02 if p.ndim > 1 else 0.01)
            if name.endswith("class_embedder.embedding_table.weight"):
                p.normal_(0, LABEL_STD)
            elif name.endswith(("norm1.linear.weight", "proj_out_1.weight")):
                p.normal_(0, ADALN_GAIN / hidden**0.5)
            elif name == "proj_out_2.weight":
                p.normal_(0, 1.0).mul_(row_std[:, None])
        if share_embedding:  # converted checkpoints repeat the one trained embedding in every block
            first = model.transformer_blocks[0].norm1.emb
            for block in model.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(first.state_dict())
    return model.eval()


def random_vae(seed: int = 1, **overrides: object):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    kwargs = {
        **TINY_VAE,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",)
        * len(overrides.get("block_out_channels", TINY_VAE["block_out_channels"])),
        "up_block_types": ("UpDecoderBlock2D",)
        * len(overrides.get("block_out_channels", TINY_VAE["block_out_channels"])),
        **overrides,
    }
    return AutoencoderKL(**kwargs).eval()


def ddim_scheduler():
    from diffusers import DDIMScheduler

    # What diffusers' scripts/convert_dit_to_diffusers.py writes for the hub DiT checkpoints.
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False)


def save_diffusers_pipeline(path: Path, transformer=None, vae=None, *, labels: bool = True) -> Path:
    from diffusers import DiTPipeline

    pipe = DiTPipeline(
        transformer=transformer if transformer is not None else random_transformer(),
        vae=vae if vae is not None else random_vae(),
        scheduler=ddim_scheduler(),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    if labels:  # the hub's model_index.json carries id2label next to the component entries
        index = path / "model_index.json"
        data = json.loads(index.read_text())
        data["id2label"] = {str(k): v for k, v in id2label().items()}
        index.write_text(json.dumps(data, indent=2))
    return path


def random_original_state_dict(
    depth: int, hidden: int, patch: int, input_size: int, *, learn_sigma: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random state dict with the key names and shapes of facebookresearch/DiT `models.py`."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    g = torch.Generator().manual_seed(seed)
    out_ch = 8 if learn_sigma else 4
    shapes = {
        "x_embedder.proj.weight": (hidden, 4, patch, patch),
        "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (1001, hidden),
        "final_layer.linear.weight": (patch * patch * out_ch, hidden),
        "final_layer.linear.bias": (patch * patch * out_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for i in range(depth):
        shapes |= {
            f"blocks.{i}.attn.qkv.weight": (3 * hidden, hidden),
            f"blocks.{i}.attn.qkv.bias": (3 * hidden,),
            f"blocks.{i}.attn.proj.weight": (hidden, hidden),
            f"blocks.{i}.attn.proj.bias": (hidden,),
            f"blocks.{i}.mlp.fc1.weight": (4 * hidden, hidden),
            f"blocks.{i}.mlp.fc1.bias": (4 * hidden,),
            f"blocks.{i}.mlp.fc2.weight": (hidden, 4 * hidden),
            f"blocks.{i}.mlp.fc2.bias": (hidden,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * hidden, hidden),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * hidden,),
        }
    sd = {k: torch.randn(shape, generator=g) * (0.02 if len(shape) > 1 else 0.01) for k, shape in shapes.items()}
    # The same output magnitudes as random_transformer (see LABEL_STD).
    sd["y_embedder.embedding_table.weight"] *= LABEL_STD / 0.02
    for key in [k for k in sd if k.endswith("adaLN_modulation.1.weight")]:
        sd[key] *= ADALN_GAIN / hidden**0.5 / 0.02
    row_std = final_layer_row_std(out_ch, 4, patch, hidden)
    sd["final_layer.linear.weight"] *= (row_std / 0.02)[:, None]
    grid = input_size // patch
    sd["pos_embed"] = torch.as_tensor(get_2d_sincos_pos_embed(hidden, grid, base_size=grid), dtype=torch.float32)[None]
    return sd


def original_to_diffusers(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Key mapping of diffusers' scripts/convert_dit_to_diffusers.py, written out as the test oracle."""
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        out[b + "norm1.emb.timestep_embedder.linear_1.weight"] = sd["t_embedder.mlp.0.weight"]
        out[b + "norm1.emb.timestep_embedder.linear_1.bias"] = sd["t_embedder.mlp.0.bias"]
        out[b + "norm1.emb.timestep_embedder.linear_2.weight"] = sd["t_embedder.mlp.2.weight"]
        out[b + "norm1.emb.timestep_embedder.linear_2.bias"] = sd["t_embedder.mlp.2.bias"]
        out[b + "norm1.emb.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
        for kind in ("weight", "bias"):
            q, k, v = torch.chunk(sd[f"blocks.{i}.attn.qkv.{kind}"], 3, dim=0)
            out[f"{b}attn1.to_q.{kind}"], out[f"{b}attn1.to_k.{kind}"], out[f"{b}attn1.to_v.{kind}"] = q, k, v
            out[f"{b}attn1.to_out.0.{kind}"] = sd[f"blocks.{i}.attn.proj.{kind}"]
            out[f"{b}ff.net.0.proj.{kind}"] = sd[f"blocks.{i}.mlp.fc1.{kind}"]
            out[f"{b}ff.net.2.{kind}"] = sd[f"blocks.{i}.mlp.fc2.{kind}"]
            out[f"{b}norm1.linear.{kind}"] = sd[f"blocks.{i}.adaLN_modulation.1.{kind}"]
    return {k: v.clone() for k, v in out.items()}


def original_as_diffusers(sd: dict[str, torch.Tensor], depth: int, heads: int, patch: int, input_size: int):
    """An original state dict loaded into diffusers' DiTTransformer2DModel through `original_to_diffusers`."""
    from diffusers import DiTTransformer2DModel

    hidden = sd["x_embedder.proj.weight"].shape[0]
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=4,
        out_channels=sd["final_layer.linear.weight"].shape[0] // (patch * patch),
        num_layers=depth,
        sample_size=input_size,
        patch_size=patch,
    )
    model.load_state_dict(original_to_diffusers(sd, depth=depth), strict=True)
    return model.eval()


def patch_to_original_numerics(transformer) -> None:
    """Give the diffusers reference DiT's original numerics (docs/numerics.md), in place."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT: exp(-ln(1e4) * i / 128), not / 127
    for module in transformer.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
