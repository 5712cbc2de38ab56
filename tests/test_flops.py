"""The analytic FLOP counts against PyTorch's FlopCounterMode on the real modules (meta device)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_worker.models.dit import DiT, dit_config
from dit_worker.models.flops import dit_paper_gflops, transformer_flops, vae_decode_flops
from dit_worker.models.vae import VAEDecoder, VAEDecoderConfig


def counted(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize(("name", "size"), [("DiT-XL/2", 32), ("DiT-S/8", 64), ("DiT-B/4", 32)])
def test_transformer_flops_match_flop_counter(name: str, size: int) -> None:
    config = dit_config(name, input_size=size)
    with torch.device("meta"):
        model = DiT(config)
        x = torch.empty(3, 4, size, size)
        out = counted(model, x, torch.empty(1, dtype=torch.long), torch.empty(3, dtype=torch.long))
    assert transformer_flops(config, 3) == out


def test_paper_convention_for_dit_xl2() -> None:
    """DiT paper Table 4: DiT-XL/2 at 256 is 118.6 Gflops (multiply-adds)."""
    assert dit_paper_gflops(dit_config("DiT-XL/2")) == pytest.approx(118.6, abs=0.1)


def test_vae_flops_match_flop_counter() -> None:
    config = VAEDecoderConfig()
    with torch.device("meta"):
        out = counted(VAEDecoder(config), torch.empty(2, 4, 32, 32))
    assert vae_decode_flops(config, 32, 2) == out
