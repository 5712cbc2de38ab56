"""Original facebookresearch/DiT checkpoints: loading, architecture inference, conversion round trip."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import ddim_scheduler, original_to_diffusers, random_original_state_dict, random_vae
from diffusers import DiTPipeline, DiTTransformer2DModel

from dit_worker import load_pipeline
from dit_worker.checkpoints import build_models, load_checkpoint


def models_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_original_loader_equals_diffusers_layout_loader(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    """Same random weights: as a DiT `.pt`, and converted the way diffusers' conversion script does."""
    sd = torch.load(original_pt, weights_only=True)
    reference = DiTTransformer2DModel(
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=4,
        out_channels=8,
        num_layers=12,
        sample_size=16,
        patch_size=8,
    )
    reference.load_state_dict(original_to_diffusers(sd, depth=12), strict=True)
    layout = tmp_path / "diffusers"
    DiTPipeline(transformer=reference, vae=random_vae(), scheduler=ddim_scheduler()).save_pretrained(layout)

    from_pt = load_checkpoint(original_pt, vae=tiny_vae_dir)
    from_layout = load_checkpoint(layout)
    assert from_pt.transformer == from_layout.transformer
    assert from_pt.transformer.num_heads == 6 and from_pt.transformer.input_size == 16
    assert from_pt.transformer.learn_sigma and from_pt.transformer.num_classes == 1000
    a, _ = build_models(from_pt, torch.device("cpu"), torch.float32)
    b, _ = build_models(from_layout, torch.device("cpu"), torch.float32)
    models_equal(a, b)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([5, 700]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(a(x, t, y), b(x, t, y))


def test_training_checkpoint_uses_ema_weights(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    """DiT's train.py saves {"model", "ema", "opt", "args"}; sampling uses "ema" as its sample.py does."""
    ema = torch.load(original_pt, weights_only=True)
    model = {k: v + 1 for k, v in ema.items()}
    path = tmp_path / "0400000.pt"
    args = argparse.Namespace(model="DiT-S/8", image_size=128, num_classes=1000)
    torch.save({"model": model, "ema": ema, "opt": {"state": {}}, "args": args}, path)
    a, _ = build_models(load_checkpoint(path, vae=tiny_vae_dir), torch.device("cpu"), torch.float32)
    b, _ = build_models(load_checkpoint(original_pt, vae=tiny_vae_dir), torch.device("cpu"), torch.float32)
    models_equal(a, b)


@pytest.mark.parametrize(("depth", "hidden", "heads", "patch", "size"), [(28, 1152, 16, 2, 32), (24, 1024, 16, 4, 64)])
def test_architecture_is_inferred_from_shapes(
    tmp_path: Path, depth: int, hidden: int, heads: int, patch: int, size: int
) -> None:
    """XL/2 at 256 and L/4 at 512, on the meta device: only shapes are read."""
    from dit_worker.checkpoints.original import infer_config

    with torch.device("meta"):
        sd = random_original_state_dict(depth, hidden, patch, size)
    config = infer_config(sd, tmp_path / "x.pt")
    assert (config.depth, config.hidden_size, config.num_heads, config.patch_size, config.input_size) == (
        depth,
        hidden,
        heads,
        patch,
        size,
    )


def test_conversion_round_trip_gives_identical_images(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    from jobs.convert import main

    out = tmp_path / "converted"
    assert main([str(original_pt), "--vae", str(tiny_vae_dir), "--out", str(out)]) == 0
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    original = load_pipeline(original_pt, vae=tiny_vae_dir, device="cpu", dtype="float32")
    converted = load_pipeline(out, device="cpu", dtype="float32")
    classes, seeds = [1, 2, 999], [7, 8, 9]
    for sampler, steps in (("ddpm", 20), ("ddim", 10), ("dpm-solver", 10)):
        a = original.generate(classes, seeds, sampler=sampler, steps=steps)
        b = converted.generate(classes, seeds, sampler=sampler, steps=steps)
        assert a.std() > 10
        assert np.array_equal(a, b), sampler
    # A second conversion into the same, now non-empty, folder is refused and changes nothing.
    before = sorted(p.name for p in out.rglob("*"))
    assert main([str(original_pt), "--vae", str(tiny_vae_dir), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("input_size", [32, 64])
@pytest.mark.parametrize("name", [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)])
def test_every_registry_size_round_trips_through_shape_inference(tmp_path: Path, name: str, input_size: int) -> None:
    """All 12 sizes at 256 and 512 px: an original state dict of each (meta tensors) is recognised."""
    from dit_worker.checkpoints.original import infer_config
    from dit_worker.models.dit import DiT, dit_config

    expected = dit_config(name, input_size=input_size)
    with torch.device("meta"):
        sd = random_original_state_dict(expected.depth, expected.hidden_size, expected.patch_size, input_size)
        DiT(expected)(torch.empty(2, 4, input_size, input_size), torch.empty(1), torch.empty(2, dtype=torch.long))
    assert infer_config(sd, tmp_path / "x.pt") == expected
