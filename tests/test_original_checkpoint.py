"""Original facebookresearch/DiT checkpoints: loading, architecture inference, conversion round trip."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import ddim_scheduler, original_as_diffusers, random_original_state_dict, random_vae
from diffusers import DiTPipeline

from dit_worker import load_pipeline
from dit_worker.backends.native.checkpoint import build_models, load_checkpoint


def models_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_original_loader_equals_diffusers_layout_loader(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    """Same random weights: as a DiT `.pt`, and converted the way diffusers' conversion script does."""
    reference = original_as_diffusers(torch.load(original_pt, weights_only=True), 12, 6, 8, 16)
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


# facebook/DiT-XL-2-256's scheduler/scheduler_config.json as the hub ships it (written by diffusers
# 0.12's conversion script): no timestep_spacing key, so each scheduler uses its own default. Kept
# as the file's text, independent of the product's copy it must equal.
HUB_SCHEDULER_JSON = """{
  "_class_name": "DDIMScheduler", "_diffusers_version": "0.12.0.dev0", "beta_end": 0.02,
  "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": false, "num_train_timesteps": 1000,
  "prediction_type": "epsilon", "set_alpha_to_one": true, "steps_offset": 0, "trained_betas": null
}"""
HUB_SCHEDULER_CONFIG = json.loads(HUB_SCHEDULER_JSON)


@pytest.fixture(scope="module")
def three_forms(tmp_path_factory: pytest.TempPathFactory, original_pt: Path, tiny_vae_dir: Path):
    """The same weights as an original `.pt`, as its jobs.convert output and as a hub-style layout
    (diffusers' own save_pretrained, the hub's scheduler config)."""
    from jobs.convert import main

    root = tmp_path_factory.mktemp("forms")
    converted = root / "converted"
    assert main([str(original_pt), "--vae", str(tiny_vae_dir), "--out", str(converted)]) == 0
    hub = root / "hub"
    transformer = original_as_diffusers(torch.load(original_pt, weights_only=True), 12, 6, 8, 16)
    DiTPipeline(transformer=transformer, vae=random_vae(), scheduler=ddim_scheduler()).save_pretrained(hub)
    (hub / "scheduler" / "scheduler_config.json").write_text(HUB_SCHEDULER_JSON)
    return original_pt, converted, hub


# The wrong scheduler config each sampler must notice: DDIMScheduler's own defaults (clip_sample true,
# what a `.pt` used to get), a modern save_pretrained's explicit "leading" spacing (dpm-solver then
# spaces its steps otherwise), another beta schedule (the one thing ddpm reads).
WRONG_CONFIG = {
    "ddim": {"clip_sample": True},
    "dpm-solver": {"timestep_spacing": "leading"},
    "ddpm": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


@pytest.fixture(scope="module")
def three_pipes(three_forms, tiny_vae_dir: Path):
    pt, converted, hub = three_forms
    return (
        load_pipeline(pt, vae=tiny_vae_dir, device="cpu", dtype="float32"),
        load_pipeline(converted, device="cpu", dtype="float32"),
        load_pipeline(hub, device="cpu", dtype="float32"),
    )


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 20), ("ddim", 10), ("dpm-solver", 10)])
def test_pt_conversion_and_hub_layout_give_identical_images(three_forms, three_pipes, sampler: str, steps: int):
    _, converted, _ = three_forms
    written = json.loads((converted / "scheduler" / "scheduler_config.json").read_text())
    assert written == {k: v for k, v in HUB_SCHEDULER_CONFIG.items() if k != "_diffusers_version"}
    classes, seeds = [1, 2, 999], [7, 8, 9]
    kw = dict(sampler=sampler, steps=steps, cfg_scale=4.0, cfg_channels=4)
    images = [p.generate(classes, seeds, **kw) for p in three_pipes]
    assert images[0].std() > 20
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])  # bit for bit
    # The same comparison against a wrongly configured schedule misses by far more than 0 levels.
    hub = three_pipes[2]
    right, hub.scheduler_config = hub.scheduler_config, {**HUB_SCHEDULER_CONFIG, **WRONG_CONFIG[sampler]}
    try:
        diff = np.abs(hub.generate(classes, seeds, **kw).astype(int) - images[0].astype(int))
    finally:
        hub.scheduler_config = right
    assert diff.max() >= 10 and diff.mean() >= 1.0, (sampler, diff.max(), diff.mean())


def test_a_second_conversion_into_the_same_folder_is_refused(three_forms, original_pt: Path, tiny_vae_dir: Path):
    from jobs.convert import main

    _, out, _ = three_forms
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
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
