"""Our transformer, VAE decoder and full pipeline against diffusers running in this process.

Every comparison sits next to the same comparison with a deliberately wrong input (another class,
sampler, guidance scale or guided channel count, zeroed learned variance), which must miss by at
least 10x the tolerance. Tolerances are a few times the float noise measured on this CPU (noted at
each); latents are compared as well as pixels, since the VAE decoder forgives a lot.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import patch_to_original_numerics, random_transformer, save_diffusers_pipeline
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler
from reference_loop import float64_schedule_ddpm, reference_decode, reference_latents
from safetensors.torch import load_file, save_file

from dit_worker import load_pipeline
from dit_worker.backends.native.checkpoint import build_models, load_checkpoint
from dit_worker.backends.settings import SamplingSettings

# Measured relative L2 errors against diffusers (float32, this CPU): transformer 8.5e-8, VAE decoder
# 6.6e-7, full-pipeline latents 1.6e-7..2.7e-7 (ddim, dpm-solver), DDPM latents 3.3e-7.
MODEL_TOL = 5e-7
VAE_TOL = 2e-6
LATENT_TOL = 1e-6
PIXEL_TOL = 1  # levels: a float difference can flip a rounding
FLIPPED_PIXELS = 0.01  # the fraction of pixel values that may differ by that level


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(actual.double() - expected.double())
    return (diff / torch.linalg.vector_norm(expected.double())).item()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    err = rel_err(actual, expected)
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def assert_far(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """The sensitivity half of a comparison: a wrong input misses by at least 10x the tolerance."""
    err = rel_err(actual, expected)
    assert err > 10 * tol, f"{what}: relative difference {err:.3g} is not 10x the tolerance {tol}"


def max_pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


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
    assert_rel_close(actual, expected, MODEL_TOL)

    # Unpatched, diffusers' numerics differ measurably: the patch (and so this test) matters.
    unpatched = DiTPipeline.from_pretrained(tiny_ckpt).transformer
    with torch.no_grad():
        assert_far(unpatched(x, timestep=t, class_labels=y).sample, actual, MODEL_TOL, "diffusers' own numerics")
        assert_far(ours(x, t, torch.tensor([1, 208, 998, 5, 6, 4])), expected, MODEL_TOL, "other classes")
        assert_far(ours(x, t.flip(0), y), expected, MODEL_TOL, "other timesteps")


def test_per_block_embeddings_are_kept(tmp_path: Path) -> None:
    """A checkpoint fine-tuned in the diffusers layout has a different embedding in every block."""
    path = save_diffusers_pipeline(tmp_path / "finetuned", transformer=random_transformer(5, share_embedding=False))
    ours, _ = build_models(load_checkpoint(path), torch.device("cpu"), torch.float32)
    assert ours.config.per_block_conditioning and len(ours.conditioners) == ours.config.depth
    ref = reference_pipeline(path).transformer
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([10, 300, 600, 900]), torch.tensor([1, 2, 1000, 4])
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        assert_rel_close(ours(x, t, y), expected, MODEL_TOL)
        # Block 0's embedding in every block (what a shared-embedding loader would do) is far off.
        shared = build_models(load_checkpoint(path), torch.device("cpu"), torch.float32)[0]
        for cond in shared.conditioners[1:]:
            cond.load_state_dict(shared.conditioners[0].state_dict())
        assert_far(shared(x, t, y), expected, MODEL_TOL, "block 0's embedding everywhere")


def test_vae_decode_equals_diffusers(tiny_ckpt: Path) -> None:
    ref = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    _, ours = build_models(load_checkpoint(tiny_ckpt), torch.device("cpu"), torch.float32)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.decode(z / ref.config.scaling_factor).sample
        actual = ours(z)
        nudged = ours(z * 1.01)
    assert actual.shape == (3, 3, 16, 16)
    assert_rel_close(actual, expected, VAE_TOL)
    assert_far(nudged, expected, VAE_TOL, "latents 1% off (a wrong scaling factor)")


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
) -> tuple[np.ndarray, torch.Tensor]:
    """diffusers' DiTPipeline images, and the latents it decoded (caught at its `vae.decode`)."""
    pipe = reference_pipeline(path)
    if scheduler == "dpm-solver":  # the swap the diffusers DiT documentation shows
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    else:
        assert isinstance(pipe.scheduler, DDIMScheduler)
    decoded, decode = [], pipe.vae.decode

    def catching_decode(z: torch.Tensor, *args, **kwargs):
        decoded.append(z * pipe.vae.config.scaling_factor)  # the pipeline divides by it first
        return decode(z, *args, **kwargs)

    pipe.vae.decode = catching_decode
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(class_labels=classes, guidance_scale=scale, generator=gens, num_inference_steps=steps, output_type="np")
    (latents,) = decoded
    return (out.images * 255).round().astype(np.uint8), latents


OTHER_SAMPLER = {"ddim": "dpm-solver", "dpm-solver": "ddim"}


@pytest.mark.parametrize(("sampler", "steps", "scale"), [("ddim", 20, 4.0), ("dpm-solver", 15, 1.5), ("ddim", 10, 1.0)])
def test_full_images_equal_diffusers_pipeline(tiny_ckpt: Path, sampler: str, steps: int, scale: float) -> None:
    classes, seeds = [2, 879, 207, 0], [0, 1, 42, 2**62]
    expected, expected_latents = reference_images(tiny_ckpt, sampler, classes, seeds, steps, scale)
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    base = SamplingSettings(sampler=sampler, steps=steps, cfg_scale=scale, cfg_channels=4)

    def ours(settings: SamplingSettings, cls: list[int] = classes) -> tuple[np.ndarray, torch.Tensor]:
        latents = pipe.sample_latents(cls, seeds, pipe.sampler(settings))
        return pipe.decode(latents).numpy(), latents

    actual, latents = ours(base)
    assert actual.shape == expected.shape == (4, 16, 16, 3) and actual.dtype == np.uint8
    assert actual.std() > 20, "images must not be saturated for the comparison to mean anything"
    assert_rel_close(latents, expected_latents, LATENT_TOL)
    assert max_pixel_diff(actual, expected) <= PIXEL_TOL
    # Float noise flips a rounding now and then (measured: none here); another rounding mode half of them.
    assert (actual != expected).mean() < FLIPPED_PIXELS
    assert np.array_equal(pipe.generate(classes, seeds, **base.model_dump(exclude={"guidance_interval"})), actual)

    wrong = {
        "other sampler": ours(base.model_copy(update={"sampler": OTHER_SAMPLER[sampler]})),
        "other guidance scale": ours(base.model_copy(update={"cfg_scale": 1.0 if scale > 1 else 1.5})),
        "other classes": ours(base, [5, 6, 7, 8]),
    }
    if scale > 1:
        wrong["guidance on 3 channels"] = ours(base.model_copy(update={"cfg_channels": 3}))
    for what, (images, wrong_latents) in wrong.items():
        assert_far(wrong_latents, expected_latents, LATENT_TOL, what)
        assert max_pixel_diff(images, expected) >= 10 * PIXEL_TOL, what


class ZeroVariance(torch.nn.Module):
    """A transformer whose learned-variance channels read 0 (the midpoint of the learned range)."""

    def __init__(self, transformer) -> None:
        super().__init__()
        self.transformer, self.config = transformer, transformer.config

    def forward(self, *args, **kwargs):
        out = self.transformer(*args, **kwargs)
        out.sample[:, self.config.in_channels :] = 0
        return out


def test_ddpm_pipeline_matches_reference_loop(tiny_ckpt: Path) -> None:
    """The paper protocol end to end: DiT-style CFG on 3 channels + diffusers' learned-range DDPM,
    per-sample generators for the initial latent and every step's noise (docs/numerics.md, noise convention).

    With one generator per sample, diffusers draws each step's noise exactly as the noise convention
    does; it skips the draw at t = 0, where DiT masks the noise out anyway."""
    classes, seeds, steps, scale = [2, 207, 5], [3, 4, 5], 50, 1.5
    ref_pipe = reference_pipeline(tiny_ckpt)
    transformer, vae = ref_pipe.transformer, ref_pipe.vae

    def reference(model=transformer, scale: float = scale, channels: int = 3) -> torch.Tensor:
        return reference_latents(model, float64_schedule_ddpm(), classes, seeds, steps, scale, channels)

    expected_latents = reference()
    expected = reference_decode(vae, expected_latents)
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    settings_kwargs = dict(sampler="ddpm", steps=steps, cfg_scale=scale, cfg_channels=3)
    latents = pipe.sample_latents(classes, seeds, pipe.sampler(SamplingSettings(**settings_kwargs)))
    assert_rel_close(latents, expected_latents, LATENT_TOL)
    actual = pipe.generate(classes, seeds, **settings_kwargs)
    assert max_pixel_diff(actual, expected) <= PIXEL_TOL and (actual != expected).mean() < FLIPPED_PIXELS
    # The learned variance only matters in the last steps, where it is small: zeroing it moves the
    # latents by 5e-5 (50x the tolerance), guidance on 4 channels by 0.18, no guidance by 0.38.
    assert_far(latents, reference(ZeroVariance(transformer)), LATENT_TOL, "learned variance zeroed")
    assert_far(latents, reference(channels=4), LATENT_TOL, "guidance on 4 channels")
    assert_far(latents, reference(scale=1.0), LATENT_TOL, "no guidance")
    assert max_pixel_diff(actual, reference_decode(vae, reference(channels=4))) >= 10 * PIXEL_TOL


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
        expected = ref(x, timestep=t, class_labels=y).sample
        assert_rel_close(ours(x, t, y), expected, MODEL_TOL)
        assert_far(ours(x, t, torch.tensor([6, 1000])), expected, MODEL_TOL, "other class")
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
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert_rel_close(actual.float(), expected.float(), tol)
    # The same measure on a wrong input: rows shifted by one (what an off-by-one padding would do).
    with torch.no_grad():
        assert_far(up(x.roll(1, dims=2)).float(), expected.float(), tol, "input rows shifted by one")


def test_decoder_gradient_equals_diffusers(tiny_ckpt: Path) -> None:
    """The decoder writes SiLU and residual sums over fresh outputs (vae._silu, ResnetBlock): the
    caller's latents stay untouched and autograd still gives diffusers' gradient."""
    ref = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    _, vae = build_models(load_checkpoint(tiny_ckpt), torch.device("cpu"), torch.float32)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    kept = z.clone()
    with torch.inference_mode():
        vae(z)
    assert torch.equal(z, kept)

    def grad(decode, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.clone().requires_grad_(True)
        decode(latents).square().mean().backward()
        return latents.grad

    expected = grad(lambda x: ref.decode(x / ref.config.scaling_factor).sample, z)
    # Measured 1.0e-6 relative on this CPU.
    assert_rel_close(grad(vae, z), expected, 5e-6)
    assert_far(grad(vae, z * 1.01), expected, 5e-6, "latents 1% off")
