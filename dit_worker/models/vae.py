"""Decoder half of the Stable Diffusion AutoencoderKL (the `sd-vae-ft-ema` / `sd-vae-ft-mse` VAEs DiT uses).

Parameter names follow the diffusers `AutoencoderKL` layout (`post_quant_conv`, `decoder.*`) so its
safetensors load without renames, except the legacy attention names handled by the loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

# Every GroupNorm in the SD VAE decoder uses this eps (diffusers `resnet_eps=1e-6`).
GROUP_NORM_EPS = 1e-6


class VAEDecoderConfig(BaseModel):
    """The decoder half of diffusers' `AutoencoderKL` config (sd-vae-ft-ema's values by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215

    @model_validator(mode="after")
    def _check(self) -> VAEDecoderConfig:
        if not self.block_out_channels:
            raise ValueError("block_out_channels must not be empty")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups {self.norm_num_groups}")
        if self.scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be positive, got {self.scaling_factor}")
        return self

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU written over a GroupNorm's fresh output (GroupNorm's backward reads its input, not its
    output): on CPU the decoder's time goes to writing large new tensors as much as to computing them."""
    return F.silu(x, inplace=True)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 convolution twice, plus the (1x1-projected) input: the SD VAE's resnet block."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x)))
        h = self.conv2(_silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        # skip + h as diffusers adds (addition commutes: the same bits), written into conv2's fresh
        # output, which no backward pass reads: one large tensor fewer to allocate and page in.
        return h.add_(skip)


class SpatialSelfAttention(nn.Module):
    """Single-head attention over all pixels (the VAE mid block), residual included."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = _norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.group_norm(x).flatten(2).transpose(1, 2)
        q, k, v = (proj(seq).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


def upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3] kernel of a convolution after nearest 2x upsampling -> the equivalent
    [C_in, C_out, 4, 4] kernel of a stride-2 transposed convolution (padding 1) on the low-resolution
    input.

    Upsampling repeats every input row, so output row 2i of the 3x3 convolution reads input rows
    (i-1, i, i) with taps (k0, k1, k2) and row 2i+1 reads (i, i, i+1): taps landing on the same input
    row add up, giving (k0, k1+k2) for even rows and (k0+k1, k2) for odd ones. A stride-2 transposed
    convolution with padding 1 sends input row i to output rows 2i-1..2i+2 through taps 3..0, which
    is exactly that with the per-axis kernel (k2, k1+k2, k0+k1, k0). 16 instead of 36 multiply-adds
    per input pixel and channel pair; the 4x larger upsampled tensor is never materialised, and the
    output is written interleaved in one pass.
    """

    def fold(k: torch.Tensor, dim: int) -> torch.Tensor:
        k0, k1, k2 = k.unbind(dim)
        return torch.stack([k2, k1 + k2, k0 + k1, k0], dim)

    return fold(fold(weight, 2), 3).transpose(0, 1)


class Upsample(nn.Module):
    """Nearest 2x upsampling + 3x3 convolution, computed as one stride-2 transposed convolution
    (`upsample_kernel`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = upsample_kernel(self.conv.weight)
        if x.is_contiguous(memory_format=torch.channels_last):  # keep the kernel in the input's layout
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)


class MidBlock(nn.Module):
    """Two resnet blocks around one spatial self-attention: the decoder's lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class UpBlock(nn.Module):
    """Resnet blocks at one resolution, then (except at the top) a nearest-2x upsample and 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    """conv_in, the mid block, the up blocks, GroupNorm, SiLU, conv_out: latents to pixels in [-1, 1]."""

    def __init__(self, config: VAEDecoderConfig) -> None:
        super().__init__()
        channels = list(reversed(config.block_out_channels))
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                channels[max(i - 1, 0)],
                channels[i],
                config.layers_per_block + 1,
                groups,
                upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = _norm(config.block_out_channels[0], groups)
        self.conv_out = nn.Conv2d(config.block_out_channels[0], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(_silu(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    """The VAE decoder that turns DiT latents into images (the decoder of diffusers' `AutoencoderKL`).

    Usage::

        vae = VAEDecoder(VAEDecoderConfig())  # weights: dit_worker.backends.native.checkpoint
        pixels = vae(latents)  # the sampler's latents (scaling factor applied inside) -> [N, 3, 8H, 8W], about [-1, 1]
    """

    def __init__(self, config: VAEDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.post_quant_conv = (
            nn.Conv2d(config.latent_channels, config.latent_channels, 1) if config.use_post_quant_conv else None
        )
        self.decoder = Decoder(config)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (before 1/scaling_factor) -> images in [-1, 1] (unclamped)."""
        z = latents / self.config.scaling_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]: round(clamp((x + 1) * 127.5, 0, 255)) (docs/numerics.md)."""
    return ((images.float() + 1) * 127.5).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
