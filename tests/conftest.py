from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import (
    ddim_scheduler,
    original_as_diffusers,
    random_original_state_dict,
    random_transformer,
    random_vae,
    save_diffusers_pipeline,
)
from reference_loop import check_model_matters

# The product pins nothing about threads; tests do, so float32 CPU results are reproducible run to run.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny DiT in the diffusers layout (shared embedding, learned sigma, 16x16 images),
    whose class and guidance move the images far more than any test tolerance (checked here)."""
    transformer, vae = random_transformer(), random_vae()
    check_model_matters(transformer, vae, ddim_scheduler(), classes=[2, 879, 207, 0], other_classes=[5, 6, 7, 8])
    return save_diffusers_pipeline(tmp_path_factory.mktemp("tiny") / "dit", transformer=transformer, vae=vae)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "vae"
    random_vae().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def original_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random DiT-S/8 on 16x16 latents with facebookresearch/DiT key names, saved as a bare state dict."""
    path = tmp_path_factory.mktemp("orig") / "DiT-S-8.pt"
    sd = random_original_state_dict(depth=12, hidden=384, patch=8, input_size=16, seed=3)
    # Checked through diffusers' transformer on the same weights, with the VAE of tiny_vae_dir.
    reference = original_as_diffusers(sd, depth=12, heads=6, patch=8, input_size=16)
    check_model_matters(reference, random_vae(), ddim_scheduler(), classes=[2, 879, 207, 0], other_classes=[5, 6, 7, 8])
    torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def reference_transformer():
    return random_transformer()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """One SeaweedFS S3 server for the session, with enforced credentials."""
    from servers import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test."""
    import uuid

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray head for the session (2 CPUs, no GPU), in a short temp dir of its own."""
    import shutil
    import tempfile

    from servers import ray_head

    # Ray's unix sockets live below the temp dir: keep its path short.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        with ray_head(temp_dir) as head:
            yield head
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pixart_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random PixArt-Σ pipeline in the diffusers layout (T5 encoder, trained sentencepiece tokenizer)."""
    from dit_worker.checkpoints.tiny_pipelines import save_pixart_sigma

    return save_pixart_sigma(tmp_path_factory.mktemp("pixart") / "pixart-sigma")


@pytest.fixture(scope="session")
def sd_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion pipeline (CLIP text model, trained BPE tokenizer)."""
    from dit_worker.checkpoints.tiny_pipelines import save_stable_diffusion

    return save_stable_diffusion(tmp_path_factory.mktemp("sd") / "stable-diffusion")


@pytest.fixture(scope="session")
def ddim_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random unconditional DDIM pipeline (UNet2DModel, 16x16 RGB)."""
    from dit_worker.checkpoints.tiny_pipelines import save_ddim

    return save_ddim(tmp_path_factory.mktemp("ddim") / "ddim")


@pytest.fixture(scope="session")
def flux_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FLUX.1-dev-like pipeline (CLIP + T5, guidance embedding; tests/family_pipelines.py)."""
    from dit_worker.checkpoints.tiny_pipelines import save_flux

    return save_flux(tmp_path_factory.mktemp("flux") / "flux")
