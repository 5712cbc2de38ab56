"""Writing checkpoints in the diffusers layout (safetensors): conversion of original DiT files,
and random-weight checkpoints for benchmarks and the self-check."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dit_worker.checkpoints.diffusers_layout import (
    to_diffusers_names,
    transformer_config_json,
    vae_config,
    vae_config_json,
    vae_folder,
)
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import load_weights_dir, read_json
from dit_worker.checkpoints.original import ORIGINAL_SCHEDULER_CONFIG, load_original
from dit_worker.checkpoints.sources import resolve_source
from dit_worker.models.dit import DiT, DiTConfig, dit_config
from dit_worker.models.vae import VAEDecoder, VAEDecoderConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"


def convert_original(src: str, vae: str, out: Path, *, id2label: dict[int, str] | None = None) -> Path:
    """The written scheduler config is the one a `.pt` is loaded with (facebook/DiT-XL-2-256's), so
    every sampler reads the same settings from the converted directory as from the `.pt`
    (docs/checkpoints.md), and converted images equal the original's bit for bit."""
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: output directory is not empty; choose a new --out")
    pt = resolve_source(src, "model")
    if not pt.is_file():
        raise CheckpointError(f"{src}: expected an original DiT .pt file")
    vae_dir = vae_folder(resolve_source(vae, "vae"))
    vae_config(vae_dir)  # refuse an unusable VAE before writing anything
    config, state = load_original(pt)
    vae_files = (read_json(vae_dir / "config.json"), load_weights_dir(vae_dir))
    return write_diffusers_layout(out, config, state, *vae_files, id2label=id2label)


# The self-check's DiT: 32-px images (16x16 latents, patch 2: 64 tokens), head dim 32, a 2-level VAE decoder.
TINY_DIT = DiTConfig(input_size=16, patch_size=2, hidden_size=64, depth=2, num_heads=2)
TINY_VAE = VAEDecoderConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16)


def random_checkpoint_dir(name: str, out: Path, *, image_size: int = 256, seed: int = 0) -> Path:
    """A registry-size DiT (e.g. "DiT-XL/2") and a full SD VAE decoder with random weights.

    Weights are N(0, 0.02) so activations keep realistic magnitudes; only the VAE decoder half is
    written (diffusers initialises the unused encoder itself).
    """
    return random_dit_dir(dit_config(name, input_size=image_size // 8), VAEDecoderConfig(), out, seed=seed)


def tiny_checkpoint_dir(out: Path, *, seed: int = 0) -> Path:
    """TINY_DIT and TINY_VAE with random weights that steer: class and timestep shape every image
    (`random_dit_dir`'s `steer`), so a check that drops a setting on the way misses by far."""
    return random_dit_dir(TINY_DIT, TINY_VAE, out, seed=seed, steer=True)


def random_dit_dir(config: DiTConfig, vae: VAEDecoderConfig, out: Path, *, seed: int = 0, steer: bool = False) -> Path:
    """Random weights N(0, 0.02) (biases 0.01, GroupNorm gains about 1) in the diffusers layout.

    With `steer`, a small DiT's output depends on its class and timestep as a trained one does: at
    N(0, 0.02) everywhere it predicts eps ~ 0.1 whatever the class, sampling mostly rescales the initial
    noise and the VAE's first GroupNorm hides the scale. A unit-scale label table, adaLN gains of
    1.1/sqrt(hidden) and a final layer giving eps ~ 6 (learned variance ~ 1, inside the [-1, 1] that
    learned-range interpolation expects) make the conditioning count in every block; QKV gains of
    1.7/sqrt(hidden) give attention logits of O(1), so attention mixes tokens unevenly (at 0.02 its
    softmax is uniform, and a wrong attention scale would go unseen).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {**DiT(config).state_dict(), **{f"vae.{k}": v for k, v in VAEDecoder(vae).state_dict().items()}}
    state = {k: torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 1 else 0.01) for k, v in shapes.items()}
    for key, value in state.items():
        if key.endswith(("norm1.weight", "norm2.weight", "norm_out.weight", "group_norm.weight")):
            value.add_(1.0)  # GroupNorm gains around 1, as trained
    if steer:
        hidden = config.hidden_size
        for key, value in state.items():
            if key.endswith("y_embedder.embedding_table.weight"):
                value.normal_(0, 1.0, generator=g)
            elif key.endswith("adaLN_modulation.weight"):
                value.normal_(0, 1.1 / hidden**0.5, generator=g)
            elif key.endswith("attn.qkv.weight"):
                value.normal_(0, 1.7 / hidden**0.5, generator=g)  # attention logits O(1): softmax far from uniform
        # Row r of the final linear layer writes channel r % out_channels (patches are [p, p, C], channel
        # last); channels >= in_channels are the learned variance.
        final = state["final_layer.linear.weight"]
        channel = torch.arange(final.shape[0]) % config.out_channels
        row_std = torch.where(channel < config.in_channels, 5.7, 0.85) / hidden**0.5
        final.normal_(0, 1.0, generator=g).mul_(row_std[:, None])
    vae_state = {k.removeprefix("vae."): state.pop(k) for k in list(state) if k.startswith("vae.")}
    return write_diffusers_layout(out, config, state, vae_config_json(vae), vae_state)


def write_diffusers_layout(
    out: Path,
    config: DiTConfig,
    state: dict[str, torch.Tensor],
    vae_json: dict[str, Any],
    vae_weights: dict[str, torch.Tensor],
    *,
    id2label: dict[int, str] | None = None,
) -> Path:
    """Write atomically: a temporary sibling folder renamed into place once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".write-", dir=out.parent))
    mask = os.umask(0o022)  # mkdtemp makes a private 0700 folder; give the result the umask's mode
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)
    try:
        for sub in ("transformer", "vae", "scheduler"):
            (tmp / sub).mkdir()
        weights = {k: v.contiguous() for k, v in to_diffusers_names(state, config).items()}
        save_file(weights, str(tmp / "transformer" / WEIGHTS))
        _write_json(tmp / "transformer" / "config.json", transformer_config_json(config))
        save_file({k: v.contiguous() for k, v in vae_weights.items()}, str(tmp / "vae" / WEIGHTS))
        _write_json(tmp / "vae" / "config.json", vae_json)
        _write_json(tmp / "scheduler" / "scheduler_config.json", ORIGINAL_SCHEDULER_CONFIG)
        index: dict[str, Any] = {
            "_class_name": "DiTPipeline",
            "transformer": ["diffusers", "DiTTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }
        if id2label:
            index["id2label"] = {str(k): v for k, v in sorted(id2label.items())}
        _write_json(tmp / "model_index.json", index)
        if out.exists():
            out.rmdir()  # callers only pass an empty or missing folder
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
