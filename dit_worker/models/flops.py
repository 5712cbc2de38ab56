"""Analytic FLOP counts (2 FLOPs per multiply-add), for throughput and model-FLOP-utilisation figures.

The DiT paper's "Gflops" column counts multiply-adds: DiT-XL/2 at 256 is 118.6 "Gflops" there and
about 237 GFLOPs here. `dit_paper_gflops` gives the paper's convention for comparison.
"""

from __future__ import annotations

from dit_worker.models.dit import TIMESTEP_FREQ_DIM, DiTConfig
from dit_worker.models.vae import VAEDecoderConfig


def transformer_flops(config: DiTConfig, batch: int = 1) -> int:
    """Matmul/conv/attention FLOPs of one transformer forward over `batch` samples (norms and
    pointwise ops are under 0.5% and left out, as in the paper's count)."""
    t, d, p = config.num_tokens, config.hidden_size, config.patch_size
    per_sample = t * (p * p * config.in_channels) * d  # patch embedding
    per_block = 3 * t * d * d + 2 * t * t * d + t * d * d + 2 * t * d * config.mlp_hidden + 6 * d * d
    per_sample += config.depth * per_block
    per_sample += 2 * d * d + t * d * (p * p * config.out_channels)  # final adaLN + projection
    # All samples of a step share one timestep: its MLP runs once per forward; labels are lookups.
    shared = TIMESTEP_FREQ_DIM * d + d * d
    return 2 * (batch * per_sample + shared)


def dit_paper_gflops(config: DiTConfig) -> float:
    """Per-image forward cost in the DiT paper's convention (multiply-adds, in units of 1e9)."""
    return transformer_flops(config, 1) / 2e9


def vae_decode_flops(config: VAEDecoderConfig, latent_size: int, batch: int = 1) -> int:
    """Convolution and attention FLOPs of the decoder for `batch` latents of side `latent_size`."""
    chans = list(reversed(config.block_out_channels))
    side = latent_size

    def conv(cin: int, cout: int, k: int, s: int) -> int:
        return s * s * cin * cout * k * k

    def resnet(cin: int, cout: int, s: int) -> int:
        return conv(cin, cout, 3, s) + conv(cout, cout, 3, s) + (conv(cin, cout, 1, s) if cin != cout else 0)

    macs = conv(config.latent_channels, config.latent_channels, 1, side) if config.use_post_quant_conv else 0
    macs += conv(config.latent_channels, chans[0], 3, side)
    macs += 2 * resnet(chans[0], chans[0], side)
    if config.mid_block_add_attention:
        n = side * side
        macs += 4 * n * chans[0] * chans[0] + 2 * n * n * chans[0]
    for i, cout in enumerate(chans):
        cin = chans[max(i - 1, 0)]
        for j in range(config.layers_per_block + 1):
            macs += resnet(cin if j == 0 else cout, cout, side)
        if i < len(chans) - 1:  # a 4x4 stride-2 transposed kernel over every input pixel (vae.Upsample)
            macs += conv(cout, cout, 4, side)
            side *= 2
    macs += conv(config.block_out_channels[0], config.out_channels, 3, side)
    return 2 * batch * macs
