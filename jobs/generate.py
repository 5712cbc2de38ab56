"""python -m jobs.generate: make a set of samples of a DiT, text-to-image or unconditional diffusion model, on a
Ray cluster or --local.

Under `ray job submit` the driver joins the cluster from RAY_ADDRESS. Rerunning the same command on
the same --out resumes: committed shards are skipped. See README.md, "The generation job".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from pydantic import ValidationError

from dit_worker.driver.config import JobConfig, describe_config_error
from dit_worker.driver.errors import JobFailed
from dit_worker.storage.objects import StorageError

SAMPLING_FLAGS = ("sampler", "steps", "cfg_scale", "cfg_channels", "eta", "guidance_interval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.generate", description=__doc__.split("\n")[0])
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        help="diffusers pipeline directory (DiT, PixArt-α/Σ, Stable Diffusion, DDPM, DDIM), original DiT .pt, hub id "
        "or s3:// prefix",
    )
    model.add_argument("--vae", help="AutoencoderKL directory or hub id (required with an original .pt)")
    model.add_argument("--revision", help="branch, tag or commit of a hub id --model (diffusers pipelines only)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="local folder or s3://bucket/prefix")
    out.add_argument(
        "--format", help="png (default: a file per image), webdataset (a tar per shard) or parquet (a file per shard)"
    )
    out.add_argument("--image-format", help="png (default, lossless), jpeg or webp: how each image is encoded")
    out.add_argument("--quality", type=int, help="jpeg / webp quality, 1..100 (default 95)")
    out.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS)")
    out.add_argument("--s3-retry-mode", help="botocore retry mode: standard (default) or adaptive")
    out.add_argument(
        "--lease-ttl",
        type=float,
        help="seconds after which the output lease of a dead run may be taken over (default 120)",
    )
    out.add_argument(
        "--verify",
        action="store_true",
        default=None,
        help="on resume, also check every committed image's sha256 (default: existence and size only)",
    )
    samples = p.add_argument_group("samples")
    samples.add_argument("--classes", help="comma-separated class ids or names (default: every class)")
    samples.add_argument("--per-class", type=int, help="samples per chosen class")
    samples.add_argument("--prompts", help="text-to-image: a UTF-8 file with one prompt per line")
    samples.add_argument("--per-prompt", type=int, help="samples per prompt of --prompts")
    samples.add_argument("--num-samples", type=int, help="unconditional models: how many samples")
    samples.add_argument(
        "--manifest",
        help="Parquet, CSV or JSONL: seed[, sample_id] and class_id (or class_name), or prompt[, negative_prompt]",
    )
    samples.add_argument(
        "--seed", type=int, help="global seed: per-sample seed = (sample_id + seed * 2654435761) mod 2**32 (default 0)"
    )
    samples.add_argument("--preset", help="fid50k: 50 per class x all classes, ddpm, 250 steps, cfg 1.5 on 3 channels")
    sampling = p.add_argument_group("sampling (docs/numerics.md)")
    sampling.add_argument(
        "--sampler",
        help="ddpm (DiT default), ddim, dpm-solver, euler (diffusers pipelines; omitted: their own scheduler)",
    )
    sampling.add_argument("--steps", type=int, help="sampling steps (default: DiT 250, else the pipeline's own)")
    sampling.add_argument(
        "--cfg-scale",
        type=float,
        help="classifier-free guidance scale; <= 1 is off (default: DiT 1.5, else the pipeline's)",
    )
    sampling.add_argument("--cfg-channels", type=int, help="3 (DiT, default) or 4 (diffusers) guided latent channels")
    sampling.add_argument("--eta", type=float, help="DDIM eta (default 0)")
    sampling.add_argument(
        "--guidance-interval",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        help="guide only at model timesteps LO..HI; CHANGES the sampling protocol (off: paper/diffusers)",
    )
    text = p.add_argument_group("text-to-image (docs/backends.md)")
    text.add_argument("--negative-prompt", help="negative prompt for every row without its own")
    text.add_argument("--height", type=int, help="image height (default: the model's)")
    text.add_argument("--width", type=int, help="image width (default: the model's)")
    text.add_argument(
        "--max-sequence-length",
        type=int,
        help="PixArt, SD3, FLUX, Sana: tokens of the T5 / Gemma encoder (default: the pipeline's)",
    )
    text.add_argument(
        "--clean-caption",
        action=argparse.BooleanOptionalAction,
        help="PixArt's caption cleaning (default: on, as in diffusers; needs beautifulsoup4 and ftfy)",
    )
    text.add_argument(
        "--pipeline-arg",
        action="append",
        help="KEY=VALUE for the diffusers pipeline's __call__ (VALUE as JSON, else text); repeatable",
    )
    text.add_argument("--lora", action="append", help="LoRA adapter PATH_OR_HUB_ID[:SCALE] (default 1); repeatable")
    text.add_argument("--variant", help="weights variant to load (e.g. fp16: *.fp16.safetensors)")
    text.add_argument(
        "--component-dtype", action="append", help="COMPONENT=DTYPE over --dtype, e.g. text_encoder_3=bfloat16"
    )
    text.add_argument(
        "--offload",
        help="model or sequential: diffusers' CPU offload of the pipeline's weights on GPU workers (less GPU memory, "
        "same images)",
    )
    text.add_argument(
        "--text-encoder",
        help="device (default), cpu, or shard-first (encode a shard's prompts, free the encoder, then sample)",
    )
    run = p.add_argument_group("execution")
    run.add_argument("--batch-size", type=batch_size, help="samples per forward batch, or auto (default 32)")
    run.add_argument(
        "--shard-size",
        type=int,
        help="samples per shard, the unit of commit and retry (default 1000 for png, 4000 for webdataset and parquet)",
    )
    run.add_argument("--num-workers", type=int, help="Ray actors (default: one per GPU in the cluster)")
    run.add_argument("--num-gpus-per-worker", type=float, help="GPUs per actor (default 1; 0 for CPU-only clusters)")
    run.add_argument("--device", help="cpu or cuda (--local also cuda:N); default: cuda when the worker has a GPU")
    run.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)")
    run.add_argument("--local", action="store_true", default=None, help="run in this process, without Ray")
    run.add_argument("--max-tries", type=int, help="tries per shard before the job fails (default 5)")
    run.add_argument(
        "--retry-backoff", type=float, help="seconds before a shard's 2nd try, doubling each try, jittered (default 15)"
    )
    run.add_argument("--retry-backoff-max", type=float, help="longest wait between two tries of a shard (default 240)")
    run.add_argument(
        "--min-workers",
        type=int,
        help="start once this many workers fit, adding more as nodes join (default: --num-workers, or 1 per GPU)",
    )
    run.add_argument("--io-threads", type=int, help="image encoding and upload threads per worker (default 4)")
    metrics = p.add_argument_group("metrics")
    metrics.add_argument(
        "--metrics",
        action="store_true",
        default=None,
        help="compute Inception features of every shard on its worker (OUT/features/), for jobs.fid",
    )
    metrics.add_argument(
        "--inception-weights", help="torch-fidelity Inception-v3 weights: local file on every node or s3://"
    )
    metrics.add_argument(
        "--score",
        action="append",
        help="repeatable: clip[=MODEL] (CLIP score against the prompt, or a class model's class name: column "
        "clip_score), aesthetic[=WEIGHTS] (LAION aesthetic predictor: column aesthetic), classifier:NAME=MODEL "
        "(an image classifier: columns NAME, each label's probability, and NAME_label); README, 'Per-image scores'",
    )
    metrics.add_argument(
        "--clip-model",
        help="directory or hub id: the CLIP of --score clip and aesthetic (default: clip=MODEL, else with aesthetic "
        "the predictor's openai/clip-vit-large-patch14, else openai/clip-vit-large-patch14-336)",
    )
    metrics.add_argument(
        "--score-embeddings",
        action="store_true",
        default=None,
        help="with --score clip: also the CLIP image embedding, as the fixed-size list column clip_embedding",
    )
    run.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model, with CUDA graphs on GPU (default: on for CUDA workers)",
    )
    run.add_argument(
        "--placement-timeout", type=float, help="seconds to wait for an autoscaler to fit --num-workers (default 0)"
    )
    return p


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def batch_size(text: str) -> int | str:
    """An int, or "auto"; anything else is left for the configuration to refuse with a clear message."""
    return text if text == "auto" else int(text) if text.lstrip("-").isdigit() else text


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user passed (absent ones keep the model's defaults, so presets can see them)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    sampling = {k: given.pop(k) for k in SAMPLING_FLAGS if k in given}
    if sampling:
        given["sampling"] = sampling
    for repeated in ("pipeline_arg", "lora", "component_dtype", "score"):
        if repeated in given:
            given[repeated] = tuple(given[repeated])
    if "classes" in given:
        given["classes"] = tuple(given["classes"].split(","))
    return given


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = JobConfig.model_validate(config_fields(args))
    except ValidationError as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return 2
    if config.s3_endpoint:  # s3:// model sources read the endpoint from the environment
        os.environ["AWS_ENDPOINT_URL"] = config.s3_endpoint

    from dit_worker.driver.run import run_job

    # `ray job stop` and schedulers send SIGTERM: unwind like Ctrl-C, so the output's lease is
    # released (a rerun may start at once) instead of blocking reruns until it expires.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_job(config)
    except (ValueError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except JobFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: stopped; committed shards are kept, rerun the same command to finish", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
