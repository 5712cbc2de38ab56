"""python -m jobs.convert SRC.pt --vae VAE_DIR --out DIR: original DiT checkpoint -> diffusers layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dit_worker.checkpoints.convert import convert_original
from dit_worker.checkpoints.errors import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.convert", description=__doc__)
    parser.add_argument("src", help="original DiT checkpoint (.pt), local path or s3://")
    parser.add_argument(
        "--vae", required=True, help="AutoencoderKL directory or hub id (e.g. stabilityai/sd-vae-ft-ema)"
    )
    parser.add_argument("--out", required=True, type=Path, help="new directory for the diffusers layout")
    parser.add_argument("--labels", type=Path, help="optional JSON {class_id: name} stored as id2label")
    args = parser.parse_args(argv)
    try:
        labels = {int(k): str(v) for k, v in json.loads(args.labels.read_text()).items()} if args.labels else None
        out = convert_original(args.src, args.vae, args.out, id2label=labels)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
