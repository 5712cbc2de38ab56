"""Classifier-free guidance (Ho & Salimans 2022) in DiT's two flavours."""

from __future__ import annotations

import torch


def guided_eps(
    out: torch.Tensor, latent_channels: int, scale: float, cfg_channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [2N, C_out, H, W] (conditional | unconditional) model output into guided eps and variance.

    Only the first `cfg_channels` latent channels are guided: the released DiT code guides 3 of the 4
    (`forward_with_cfg`), which is what reproduces FID 2.27; diffusers guides all 4. The remaining eps
    channels and the learned-variance channels are the conditional half's, as in both references.
    """
    n = out.shape[0] // 2
    cond, uncond = out[:n], out[n:]
    g = cfg_channels
    mixed = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])
    eps = torch.cat([mixed, cond[:, g:latent_channels]], dim=1) if g < latent_channels else mixed
    return eps, cond[:, latent_channels:]
