"""Each bad checkpoint or request gives one clear error naming the problem and what is accepted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import random_vae, save_diffusers_pipeline

from dit_worker import load_pipeline
from dit_worker.checkpoints.errors import CheckpointError


@pytest.fixture
def ckpt_copy(tmp_path: Path, tiny_ckpt: Path) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))


def test_missing_file() -> None:
    with pytest.raises(CheckpointError, match=r"'/nonexistent/DiT-XL-2-256x256.pt': no such file"):
        load_pipeline("/nonexistent/DiT-XL-2-256x256.pt", vae="/nonexistent/vae", device="cpu")


def test_missing_config_json(ckpt_copy: Path) -> None:
    (ckpt_copy / "transformer" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config.json: expected .*transformer/config.json"):
        load_pipeline(ckpt_copy, device="cpu")


def test_truncated_safetensors(ckpt_copy: Path) -> None:
    weights = ckpt_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"diffusion_pytorch_model.safetensors: not a readable safetensors file.*truncated"
    ):
        load_pipeline(ckpt_copy, device="cpu")


def test_wrong_tensor_shapes(ckpt_copy: Path) -> None:
    config_path = ckpt_copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["attention_head_dim"] = 32  # weights were saved with 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"ckpt: DiT weights do not fit .*wrong shapes: "
        r"x_embedder.proj.weight \[32, 4, 2, 2\] \(expected \[64, 4, 2, 2\]\)",
    ):
        load_pipeline(ckpt_copy, device="cpu")


class _Exploit:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (os.mkdir, ("/tmp/dit-worker-pwned",))


def test_pt_needing_unsafe_unpickling_is_refused(tmp_path: Path, original_pt: Path, tiny_vae_dir: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"ema": torch.load(original_pt, weights_only=True), "payload": _Exploit()}, path)
    shutil.rmtree("/tmp/dit-worker-pwned", ignore_errors=True)
    with pytest.raises(CheckpointError, match=r"evil.pt: refusing to load, the file needs arbitrary unpickling"):
        load_pipeline(path, vae=tiny_vae_dir, device="cpu")
    assert not Path("/tmp/dit-worker-pwned").exists()


def test_pt_without_vae_is_refused(original_pt: Path) -> None:
    with pytest.raises(CheckpointError, match="original DiT checkpoint needs a VAE"):
        load_pipeline(original_pt, device="cpu")


def test_vae_with_wrong_latent_channels(tmp_path: Path) -> None:
    path = save_diffusers_pipeline(tmp_path / "bad", vae=random_vae(latent_channels=8))
    with pytest.raises(CheckpointError, match=r"latent_channels 8 does not match the transformer's in_channels 4"):
        load_pipeline(path, device="cpu")


def test_not_a_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no transformer/ folder"):
        load_pipeline(tmp_path, device="cpu")


@pytest.mark.parametrize("bad", [1000, -1])
def test_class_id_out_of_range(tiny_ckpt: Path, bad: int) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu")
    with pytest.raises(ValueError, match=rf"class ids must lie in 0..999, got \[{bad}\]"):
        pipe.generate([1, bad], [0, 1], sampler="ddim", steps=2)


def test_unknown_class_name_suggests_close_matches(tiny_ckpt: Path) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu")
    assert pipe.class_ids(["white shark", "UMBRELLA", "otter"]) == [2, 879, 360]
    with pytest.raises(ValueError, match=r"unknown class name 'white shrk'; close matches: 'white shark'"):
        pipe.class_ids(["white shrk"])
    with pytest.raises(ValueError, match=r"'crane' is ambiguous: 134 \(crane\), 517 \(crane\)"):
        pipe.class_ids(["crane"])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"cfg_scale": -1.0}, "cfg_scale: Input should be greater than or equal to 0"),
        # euler is a diffusers-pipeline sampler (docs/backends.md), not one of DiT's native ones
        ({"sampler": "euler"}, "sampler 'euler' is not one of DiT's native samplers; choose one of ddpm, ddim, dpm-s"),
        ({"sampler": "heun"}, "sampler: Input should be 'ddpm', 'ddim', 'dpm-solver' or 'euler'"),
        ({"cfg_channels": 2}, "cfg_channels: Input should be 3 or 4"),
        ({"seeds": [-1]}, r"seeds must lie in \[0, 2\*\*63\)"),
        ({"seeds": [2**63]}, r"seeds must lie in \[0, 2\*\*63\)"),
        ({"seeds": [1, 2]}, "got 1 class ids but 2 seeds"),
    ],
)
def test_bad_generation_requests(tiny_ckpt: Path, kwargs: dict, fragment: str) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu")
    args = {"class_ids": [1], "seeds": [0], "sampler": "ddim", "steps": 2} | kwargs
    with pytest.raises(ValueError, match=fragment):
        pipe.generate(**args)


def test_bad_device_and_dtype(tiny_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="dtype 'float8' is not supported; use one of float32, bfloat16, float16"):
        load_pipeline(tiny_ckpt, device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="device 'tpu' is not"):
        load_pipeline(tiny_ckpt, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_pipeline(tiny_ckpt, device="cuda")
