"""python -m jobs.benchmark: sampling throughput, FLOP utilisation, and a side-by-side with diffusers.

Prints one JSON object per line (dit_worker.benchmarks: `sampling` for DiT checkpoints,
`pipelines` for diffusers pipelines, `encoding` for --encode-only); each line names the versions
and the machine's conditions it was measured under.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import BaseModel, ValidationError

from dit_worker.benchmarks import encoding
from dit_worker.benchmarks.encoding import EncodingBenchmark
from dit_worker.benchmarks.sampling import SamplingBenchmark, run
from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.driver.config import describe_config_error

COMMA_LISTS = ("batch_sizes", "encode_sizes", "encodings", "encode_threads")  # flags that take A,B,...


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark", description=__doc__)
    src = p.add_mutually_exclusive_group()  # one of them is required unless --encode-only
    src.add_argument("--model", help="checkpoint: diffusers dir, original .pt (with --vae), hub id or s3://")
    src.add_argument("--random", metavar="NAME", help="registry size with random weights, e.g. DiT-XL/2")
    p.add_argument("--vae", help="VAE for an original .pt checkpoint")
    p.add_argument("--image-size", type=int, default=256, choices=(256, 512), help="with --random")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "dpm-solver", "euler"),
                   help="default: ddim for DiT, a diffusers pipeline's own scheduler")  # fmt: skip
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, help="default: 1.5 for DiT, a diffusers pipeline's own")
    p.add_argument("--cfg-channels", type=int, default=4, choices=(3, 4))
    p.add_argument("--batch-sizes", default="32", help="comma-separated sizes, or 'auto'")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile + CUDA graphs (default: on for CUDA, off for CPU)")  # fmt: skip
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compare", choices=("diffusers",))
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: datasheet value by GPU name)")
    p.add_argument(
        "--e2e-out",
        help="also run the job's shard loop (PNG encoding + uploads on its IO pool) into this local folder or "
        "s3:// prefix, and report its images/s next to pure sampling",
    )
    p.add_argument("--e2e-shards", type=int, default=4, help="shards of 2 batches each for --e2e-out")
    p.add_argument(
        "--psnr-samples",
        type=int,
        default=0,
        metavar="N",
        help="also make N samples with an eager float32 pipeline on the same weights and report the image "
        "PSNR of the benchmarked path (dtype, compile) against it",
    )
    p.add_argument("--score", action="append", help="repeatable: a jobs.generate --score value to time next to "
                   "generation (one JSON line each; DiT checkpoints)")  # fmt: skip
    p.add_argument("--score-random", action="store_true", default=None,
                   help="time clip, aesthetic and a classifier on random published-size models")  # fmt: skip
    p.add_argument("--clip-model", help="the CLIP of --score clip and aesthetic (as jobs.generate)")
    add_arguments(p)
    add_pipeline_args(p)
    args = p.parse_args(argv)
    if not args.encode_only and not (args.model or args.random):
        p.error("one of the arguments --model --random is required (or --encode-only)")
    return args


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--encode-only (no model: image encoding)")
    g.add_argument("--encode-only", action="store_true", help="measure image encoding only (no model needed)")
    g.add_argument("--encode-sizes", default="256,512", help="comma-separated image sides (default 256,512)")
    g.add_argument(
        "--encodings", default="png,jpeg:95,webp:95", help="FORMAT[:QUALITY],... (default png,jpeg:95,webp:95)"
    )
    g.add_argument("--encode-images", type=int, default=32, help="images per size (default 32)")
    g.add_argument("--encode-threads", default="1,2", help="thread counts to measure (default 1,2)")
    g.add_argument("--encode-repeats", type=int, default=5, help="passes over the images; the best is reported")
    g.add_argument("--encode-source", help="folder of real images (png/jpg/webp, resized to each size), not synthetic")


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("diffusers pipelines (PixArt, Stable Diffusion, DDPM, DDIM)")
    group.add_argument("--height", type=int, help="image height (default: the model's)")
    group.add_argument("--width", type=int, help="image width (default: the model's)")
    group.add_argument("--max-sequence-length", type=int, help="PixArt: T5 tokens per prompt")
    group.add_argument("--text-encoder", default="device", choices=("device", "cpu", "shard-first"))


def benchmark_config(args: argparse.Namespace) -> EncodingBenchmark | SamplingBenchmark:
    """The parsed flags as the harness's configuration, validated here once: `--encode-only`'s, else the model
    benchmark's (the other harness's flags are not used, as before)."""
    if args.encode_only:
        return EncodingBenchmark.model_validate(config_fields(args, EncodingBenchmark))
    return SamplingBenchmark.model_validate(config_fields(args, SamplingBenchmark))


def config_fields(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags `model` has, comma-separated ones as lists; absent ones (None) keep the model's defaults."""
    fields: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name in model.model_fields and value is not None:
            fields[name] = value.split(",") if name in COMMA_LISTS and value != "auto" else value
            fields[name] = tuple(value) if name == "score" else fields[name]
    return fields


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = benchmark_config(args)
    except ValidationError as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return 2
    try:
        encoding.run(config) if isinstance(config, EncodingBenchmark) else run(config)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
