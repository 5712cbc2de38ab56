"""Our transformer, VAE decoder and full pipeline against diffusers running in this process."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import patch_to_original_numerics, random_transformer, save_diffusers_pipeline
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file, save_file

from dit_worker import load_pipeline
from dit_worker.checkpoints import build_models, load_checkpoint
from dit_worker.settings import SamplingSettings


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    err = (
        torch.linalg.vector_norm(actual.double() - expected.double()) / torch.linalg.vector_norm(expected.double())
    ).item()
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def reference_pipeline(path: Path) -> DiTPipeline:
    pipe = DiTPipeline.from_pretrained(path)
    patch_to_original_numerics(pipe.transformer)
    return pipe


def test_transformer_output_equals_patched_diffusers(tiny_ckpt: Path) -> None:
    ref = reference_pipeline(tiny_ckpt).transformer
    ours, _ = build_models(load_checkpoint(tiny_ckpt), torch.device("cpu"), torch.float32)
    assert not ours.config.per_block_conditioning  # the copies were equal: one shared embedding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500, 0, 17, 250, 999])
    y = torch.tensor([0, 207, 999, 1000, 1000, 3])  # 1000 is the null class
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        actual = ours(x, t, y)
    assert actual.shape == expected.shape == (6, 8, 8, 8)
    assert_rel_close(actual, expected, 1e-5)

    # Unpatched, diffusers' numerics differ measurably: the patch (and so this test) matters.
    unpatched = DiTPipeline.from_pretrained(tiny_ckpt).transformer
    with torch.no_grad():
        drift = unpatched(x, timestep=t, class_labels=y).sample
    err = (torch.linalg.vector_norm(drift - actual) / torch.linalg.vector_norm(actual)).item()
    assert err > 1e-4


def test_per_block_embeddings_are_kept(tmp_path: Path) -> None:
    """A checkpoint fine-tuned in the diffusers layout has a different embedding in every block."""
    path = save_diffusers_pipeline(tmp_path / "finetuned", transformer=random_transformer(5, share_embedding=False))
    ours, _ = build_models(load_checkpoint(path), torch.device("cpu"), torch.float32)
    assert ours.config.per_block_conditioning and len(ours.conditioners) == ours.config.depth
    ref = reference_pipeline(path).transformer
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([10, 300, 600, 900]), torch.tensor([1, 2, 1000, 4])
    with torch.no_grad():
        assert_rel_close(ours(x, t, y), ref(x, timestep=t, class_labels=y).sample, 1e-5)


def test_vae_decode_equals_diffusers(tiny_ckpt: Path) -> None:
    ref = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    _, ours = build_models(load_checkpoint(tiny_ckpt), torch.device("cpu"), torch.float32)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.decode(z / ref.config.scaling_factor).sample
        actual = ours(z)
    assert actual.shape == (3, 3, 16, 16)
    assert_rel_close(actual, expected, 1e-5)


def test_legacy_vae_attention_names_load(tmp_path: Path, tiny_ckpt: Path) -> None:
    """sd-vae-ft-ema as uploaded names the mid-block attention query/key/value/proj_attn."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    weights = load_file(tiny_ckpt / "vae" / "diffusion_pytorch_model.safetensors")
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, tensor in weights.items():
        for new, old in renames.items():
            if ".attentions.0." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = tensor
    assert any(".query." in k for k in renamed)
    save_file(renamed, legacy / "diffusion_pytorch_model.safetensors")
    (legacy / "config.json").write_text((tiny_ckpt / "vae" / "config.json").read_text())
    a = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    b = load_pipeline(tiny_ckpt, vae=legacy, device="cpu", dtype="float32")
    for (k, v), (k2, v2) in zip(a.vae.state_dict().items(), b.vae.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def reference_images(
    path: Path, scheduler: str, classes: list[int], seeds: list[int], steps: int, scale: float
) -> np.ndarray:
    pipe = reference_pipeline(path)
    if scheduler == "dpm-solver":  # the swap the diffusers DiT documentation shows
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    else:
        assert isinstance(pipe.scheduler, DDIMScheduler)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(class_labels=classes, guidance_scale=scale, generator=gens, num_inference_steps=steps, output_type="np")
    return (out.images * 255).round().astype(np.uint8)


@pytest.mark.parametrize(("sampler", "steps", "scale"), [("ddim", 20, 4.0), ("dpm-solver", 15, 1.5), ("ddim", 10, 1.0)])
def test_full_images_equal_diffusers_pipeline(tiny_ckpt: Path, sampler: str, steps: int, scale: float) -> None:
    classes, seeds = [2, 879, 207, 0], [0, 1, 42, 2**62]
    expected = reference_images(tiny_ckpt, sampler, classes, seeds, steps, scale)
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    actual = pipe.generate(classes, seeds, sampler=sampler, steps=steps, cfg_scale=scale, cfg_channels=4)
    assert actual.shape == expected.shape == (4, 16, 16, 3) and actual.dtype == np.uint8
    assert actual.std() > 20, "images must not be saturated for the comparison to mean anything"
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"


def test_ddpm_pipeline_matches_reference_loop(tiny_ckpt: Path) -> None:
    """The paper protocol end to end: DiT-style CFG on 3 channels + diffusers' learned-range DDPM,
    per-sample generators for the initial latent and every step's noise (docs/numerics.md, noise convention)."""
    from diffusers import DDPMScheduler

    classes, seeds, steps, scale = [2, 207, 5], [3, 4, 5], 50, 1.5
    ref_pipe = reference_pipeline(tiny_ckpt)
    transformer, vae = ref_pipe.transformer, ref_pipe.vae
    sched = DDPMScheduler(variance_type="learned_range", timestep_spacing="linspace", clip_sample=False)
    sched.set_timesteps(steps)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    x = randn_tensor((3, 4, 8, 8), generator=gens)
    y = torch.tensor(classes + [1000] * 3)
    with torch.no_grad():
        for t in sched.timesteps:
            out = transformer(torch.cat([x, x]), timestep=t.expand(6), class_labels=y).sample
            eps, rest = out[:, :3], out[:, 3:]
            cond, uncond = eps.chunk(2)
            guided = torch.cat([uncond + scale * (cond - uncond), rest[:3]], dim=1)
            # With one generator per sample, diffusers draws each step's noise exactly as the noise
            # convention of docs/numerics.md does; it skips the draw at t = 0, where DiT masks the noise out anyway.
            x = sched.step(guided, t, x, generator=gens).prev_sample
        expected_latents = x
        expected = vae.decode(x / vae.config.scaling_factor).sample
    expected = ((expected / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()

    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    settings_kwargs = dict(sampler="ddpm", steps=steps, cfg_scale=scale, cfg_channels=3)
    settings = SamplingSettings(**settings_kwargs)
    latents = pipe.sample_latents(classes, seeds, pipe.sampler(settings))
    assert_rel_close(latents, expected_latents, 1e-4)
    actual = pipe.generate(classes, seeds, **settings_kwargs)
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1


def test_converted_layout_loads_in_diffusers(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    """jobs.convert writes a directory diffusers itself loads, and it computes what we compute."""
    from jobs.convert import main

    out = tmp_path / "converted"
    assert main([str(original_pt), "--vae", str(tiny_vae_dir), "--out", str(out)]) == 0
    ref = reference_pipeline(out).transformer
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["norm_eps"] == 1e-6
    ours, _ = build_models(load_checkpoint(out), torch.device("cpu"), torch.float32)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([999, 3]), torch.tensor([5, 1000])
    with torch.no_grad():
        assert_rel_close(ours(x, t, y), ref(x, timestep=t, class_labels=y).sample, 1e-5)
    copy.deepcopy(ours)  # a plain nn.Module: picklable for Ray actors


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsample_equals_nearest_upsampling_then_conv(channels_last: bool, dtype: torch.dtype) -> None:
    from dit_worker.models.vae import Upsample

    torch.manual_seed(0)
    up = Upsample(16).to(dtype)
    x = torch.randn(2, 16, 5, 7, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = up.conv(torch.nn.functional.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(dtype))
        actual = up(x)
    assert actual.shape == (2, 16, 10, 14)
    assert_rel_close(actual.float(), expected.float(), 1e-6 if dtype == torch.float32 else 1e-2)
