"""The text-to-image contract's oracle: a diffusers pipeline called alone per row (the tiny pipelines
themselves are built by dit_worker.checkpoints.tiny_pipelines)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def reference_images(model: Path, rows: list[dict], settings: dict) -> list:
    """The contract's oracle: the diffusers pipeline class from model_index.json, loaded with
    from_pretrained, called once per row with that row's own CPU generator. float [H, W, 3] each."""
    import diffusers

    index = json.loads((model / "model_index.json").read_text())
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(model)
    if settings.get("sampler"):
        names = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm-solver": "DPMSolverMultistepScheduler",
                 "euler": "EulerDiscreteScheduler"}  # fmt: skip
        pipe.scheduler = getattr(diffusers, names[settings["sampler"]]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for row in rows:
        kwargs = {
            "generator": torch.Generator("cpu").manual_seed(row["seed"]),
            "num_inference_steps": settings["steps"],
            "output_type": "np",
        }
        if "eta" in settings:
            kwargs["eta"] = settings["eta"]
        if "prompt" in row:
            kwargs |= {"prompt": row["prompt"], "guidance_scale": settings["cfg_scale"]}
            kwargs |= {k: settings[k] for k in ("height", "width", "max_sequence_length") if k in settings}
            if row.get("negative_prompt") is not None:
                kwargs["negative_prompt"] = row["negative_prompt"]
        out.append(pipe(**kwargs).images[0])
    return out
