"""DiT transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2022).

Module and parameter names follow facebookresearch/DiT `models.py` wherever the structure is the
same, so an original state dict maps onto this model with few renames. Two deliberate differences:
the timestep + label conditioning is computed once per forward and shared by all blocks, and the
adaLN SiLU is applied once to that shared vector instead of inside every block.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

# DiT paper Table 1: (depth, hidden size, heads) for each model size.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
DIT_PATCH_SIZES = (2, 4, 8)
# Original DiT: LayerNorm eps everywhere (diffusers uses 1e-5 in the block's second norm).
LAYER_NORM_EPS = 1e-6
TIMESTEP_FREQ_DIM = 256


class DiTConfig(BaseModel):
    """Architecture of one DiT; every field is recoverable from a checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int  # latent side length (32 for 256px images, 64 for 512px)
    patch_size: int
    in_channels: int = 4
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    # Checkpoints fine-tuned in the diffusers layout may hold a different embedding in every block.
    per_block_conditioning: bool = False

    @model_validator(mode="after")
    def _check(self) -> DiTConfig:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos positions)")
        return self

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


def dit_config(name: str, input_size: int = 32, **overrides: object) -> DiTConfig:
    """Config for a registry name such as "DiT-XL/2"."""
    try:
        size, patch = name.removeprefix("DiT-").split("/")
        depth, hidden, heads = DIT_SIZES[size]
        patch_size = int(patch)
        if patch_size not in DIT_PATCH_SIZES:
            raise KeyError(patch)
    except (KeyError, ValueError):
        known = ", ".join(model_names())
        raise ValueError(f"unknown DiT model {name!r}; known: {known}") from None
    fields: dict[str, object] = dict(
        input_size=input_size, patch_size=patch_size, hidden_size=hidden, depth=depth, num_heads=heads
    )
    fields.update(overrides)
    return DiTConfig(**fields)


def model_names() -> list[str]:
    return [f"DiT-{s}/{p}" for s in DIT_SIZES for p in DIT_PATCH_SIZES]


def registry_heads(depth: int, hidden_size: int) -> int | None:
    """Head count of the registry size with this depth and width; heads leave no trace in tensor shapes."""
    for d, h, heads in DIT_SIZES.values():
        if (d, h) == (depth, hidden_size):
            return heads
    return None


def timestep_frequencies(t: torch.Tensor, dim: int = TIMESTEP_FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features, [cos | sin], frequencies exp(-ln(max_period) * i / (dim/2)).

    Matches DiT's TimestepEmbedder.timestep_embedding; diffusers divides by dim/2 - 1 instead.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions [grid_size**2, embed_dim], computed in float64 as DiT does with numpy.

    The first half of the channels encodes the column index, the second half the row index, each as
    [sin | cos] with omega_d = 1 / 10000^(d / (D/4)) (DiT's get_2d_sincos_pos_embed, MAE lineage).
    """
    coords = np.arange(grid_size, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # DiT builds the grid with w first
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def axis(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([axis(cols), axis(rows)], axis=1)).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)


class PatchEmbed(nn.Module):
    """Patchify (Dosovitskiy et al. 2021): a stride-p convolution, latents [N, C, H, W] -> tokens [N, HW/p², D]."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep frequencies (DiT's `exp(-ln(10000)·i/128)`) through a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_FREQ_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings, with one extra row for the null class of classifier-free guidance (DiT: id 1000)."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        # The extra row is the null class used for classifier-free guidance.
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Conditioner(nn.Module):
    """The conditioning vector c = t_emb + y_emb, computed once per forward and shared by every block."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SiLU(t_emb + y_emb): the SiLU is the first op of every adaLN modulation in DiT."""
        return F.silu(self.t_embedder(t) + self.y_embedder(y))


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """The block's feed-forward: Linear, GELU (tanh approximation, as DiT), Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block (DiT paper section 3.2, Figure 3)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(hidden_size, mlp_hidden)
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=2)
        )
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens back to p x p x C_out patch values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The Diffusion Transformer (Peebles & Xie 2023): patch embedding, adaLN-Zero blocks, final layer.

    Sizes come from the registry (`dit_config("DiT-XL/2")`); weights from any supported checkpoint
    (dit_worker.backends.native.checkpoint). Usage::

        with torch.device("meta"):
            model = DiT(dit_config("DiT-S/2", input_size=32))
        out = model(latents, timesteps, class_ids)  # [N, C_out, H, W]: eps (+ variance channels)
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, d, config.patch_size)
        self.register_buffer("pos_embed", torch.empty(1, config.num_tokens, d), persistent=False)
        n_cond = config.depth if config.per_block_conditioning else 1
        self.conditioners = nn.ModuleList(Conditioner(config.num_classes, d) for _ in range(n_cond))
        self.blocks = nn.ModuleList(DiTBlock(d, config.num_heads, config.mlp_hidden) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        if not self.pos_embed.is_meta:
            self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the fixed positions, e.g. after materialising a meta-device model."""
        grid = self.config.input_size // self.config.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size, grid)[None])

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] latents, t: [N] timesteps, y: [N] class ids (num_classes = null) -> [N, C_out, H, W]."""
        h = self.x_embedder(x) + self.pos_embed
        conds = [cond(t, y) for cond in self.conditioners]
        for i, block in enumerate(self.blocks):
            h = block(h, conds[i if len(conds) > 1 else 0])
        # diffusers' final layer reads block 0's embedding; with one shared embedding this is DiT's c.
        h = self.final_layer(h, conds[0])
        return self.unpatchify(h)

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """[N, T, p*p*C] -> [N, C, H, W], token-major as in DiT's unpatchify."""
        p, c = self.config.patch_size, self.config.out_channels
        side = self.config.input_size // p
        h = h.reshape(h.shape[0], side, side, p, p, c)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(h.shape[0], c, side * p, side * p)
