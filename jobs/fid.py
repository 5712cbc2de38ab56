"""python -m jobs.fid --out OUT --ref REF: FID, sFID, Inception Score and precision/recall of a set.

REF is an ADM reference batch .npz (VIRTUAL_imagenet256_labeled.npz for the DiT paper's FID-50K)
or a folder / s3:// prefix of reference images. Inception features are computed shard by shard on
Ray actors when a cluster is reachable (RAY_ADDRESS or --ray), else in this process; results go to
OUT/metrics.json and the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from pydantic import ValidationError

from dit_worker.checkpoints.files import describe_validation
from dit_worker.execution.placement import PlacementError
from dit_worker.execution.tries import TaskFailed
from dit_worker.metrics.clip_score import DEFAULT_CLIP
from dit_worker.metrics.cmmd import CMMD_MAX_SAMPLES
from dit_worker.metrics.config import FidSettings
from dit_worker.metrics.dinov2 import DEFAULT_DINOV2
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.evaluation import evaluate
from dit_worker.metrics.set_metrics import SET_METRICS
from dit_worker.output.reader import OutputSetError
from dit_worker.storage.objects import StorageError


def parse_settings(argv: list[str] | None) -> FidSettings:
    p = argparse.ArgumentParser(prog="python -m jobs.fid", description=__doc__)
    p.add_argument("--out", required=True, help="generated set: local folder or s3://bucket/prefix")
    p.add_argument("--ref", required=True, help="ADM reference batch .npz, or folder / s3:// prefix of images")
    p.add_argument(
        "--inception-weights",
        help="torch-fidelity Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth), local or s3://; "
        "default: downloaded by torch-fidelity's URL",
    )
    p.add_argument("--allow-partial", action="store_true", help="evaluate the committed shards of an unfinished set")
    p.add_argument(
        "--per-class", action="store_true", help="also write OUT/metrics_per_class.json (FID per class, worst first)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="compute features in this process (no Ray)")
    where.add_argument("--ray", action="store_true", help="compute features on Ray actors (RAY_ADDRESS or auto)")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else auto)")
    p.add_argument("--num-workers", type=int, help="Ray feature actors (default: one per GPU, 1 without GPUs)")
    p.add_argument("--num-gpus-per-worker", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--device", help="local mode: cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--batch-size", type=int, default=64, help="Inception batch size (default 64, as ADM)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument(
        "--recompute-features", action="store_true", help="ignore OUT/features/part-*.npz stored by earlier runs"
    )
    extra = p.add_argument_group("set metrics beside FID (README, Metrics)")
    extra.add_argument(
        "--set-metrics",
        default="",
        help="comma-separated: fd_dinov2 (FD of DINOv2 ViT-L/14 features), cmmd (CLIP MMD), clip_score (mean "
        "image-prompt CLIP score, text-to-image sets), or all",
    )
    extra.add_argument("--dinov2-model", default=DEFAULT_DINOV2, help=f"directory or hub id (default {DEFAULT_DINOV2})")
    extra.add_argument("--clip-model", default=DEFAULT_CLIP, help=f"directory or hub id (default {DEFAULT_CLIP})")
    extra.add_argument(
        "--cmmd-samples", type=int, default=CMMD_MAX_SAMPLES, help="CMMD's fixed subsample per side (default 10000)"
    )
    a = p.parse_args(argv)
    chosen = [m for m in a.set_metrics.split(",") if m]
    chosen = list(SET_METRICS) if chosen == ["all"] else chosen
    use_ray = a.ray or (not a.local and bool(os.environ.get("RAY_ADDRESS") or a.ray_address))
    return FidSettings(
        out=a.out,
        ref=a.ref,
        inception_weights=a.inception_weights,
        allow_partial=a.allow_partial,
        per_class=a.per_class,
        mode="ray" if use_ray else "local",
        ray_address=a.ray_address,
        num_workers=a.num_workers,
        num_gpus_per_worker=a.num_gpus_per_worker,
        device=a.device,
        batch_size=a.batch_size,
        s3_endpoint=a.s3_endpoint,
        recompute_features=a.recompute_features,
        set_metrics=tuple(chosen),
        dinov2_model=a.dinov2_model,
        clip_model=a.clip_model,
        cmmd_samples=a.cmmd_samples,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(argv)
        evaluate(settings, shlex.join(["python", "-m", "jobs.fid", *(sys.argv[1:] if argv is None else argv)]))
    except ValidationError as err:
        print(f"error: {describe_validation(err)}", file=sys.stderr)
        return 2
    except (MetricsInputError, OutputSetError, StorageError, PlacementError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TaskFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
