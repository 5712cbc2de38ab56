"""Write an original DiT checkpoint (+ VAE) as a diffusers-layout directory in safetensors."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from dit_worker.checkpoints.diffusers_layout import to_diffusers_names, transformer_config_json, vae_config
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import load_weights_dir, read_json
from dit_worker.checkpoints.original import load_original
from dit_worker.checkpoints.sources import resolve_source
from dit_worker.sampling.schedule import ScheduleConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"


def convert_original(src: str, vae: str, out: Path, *, id2label: dict[int, str] | None = None) -> Path:
    """The written scheduler config holds only DiT's training schedule, so every sampler reads the
    same settings from the converted directory as from the `.pt` (SPEC section 2), and converted
    images equal the original's bit for bit."""
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: output directory is not empty; choose a new --out")
    pt = resolve_source(src, "model")
    if not pt.is_file():
        raise CheckpointError(f"{src}: expected an original DiT .pt file")
    vae_dir = resolve_source(vae, "vae")
    vae_dir = vae_dir / "vae" if (vae_dir / "vae" / "config.json").is_file() else vae_dir
    vae_config(vae_dir)  # refuse an unusable VAE before writing anything
    config, state = load_original(pt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        (tmp / "transformer").mkdir()
        (tmp / "vae").mkdir()
        (tmp / "scheduler").mkdir()
        weights = {k: v.contiguous() for k, v in to_diffusers_names(state, config).items()}
        save_file(weights, str(tmp / "transformer" / WEIGHTS))
        _write_json(tmp / "transformer" / "config.json", transformer_config_json(config))
        save_file({k: v.contiguous() for k, v in load_weights_dir(vae_dir).items()}, str(tmp / "vae" / WEIGHTS))
        _write_json(tmp / "vae" / "config.json", read_json(vae_dir / "config.json"))
        schedule = ScheduleConfig().model_dump(
            include={"num_train_timesteps", "beta_start", "beta_end", "beta_schedule"}
        )
        _write_json(tmp / "scheduler" / "scheduler_config.json", {"_class_name": "DDIMScheduler", **schedule})
        index = {
            "_class_name": "DiTPipeline",
            "transformer": ["diffusers", "DiTTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }
        if id2label:
            index["id2label"] = {str(k): v for k, v in sorted(id2label.items())}
        _write_json(tmp / "model_index.json", index)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
