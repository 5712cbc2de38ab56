"""OUT/job.json: the resolved configuration, and the fingerprint of everything that determines the
output. A rerun on the same OUT resumes only when its fingerprint is the same."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dit_worker.driver.config import JobConfig
from dit_worker.driver.model_info import ModelInfo
from dit_worker.manifest.checks import BLOCK_ROWS
from dit_worker.manifest.samples import SEED_SHIFT
from dit_worker.manifest.sources import Manifest
from dit_worker.metrics.row_scores import score_record
from dit_worker.shard import num_shards


class ConfigMismatch(ValueError):
    """OUT holds a job with a different fingerprint."""


def fingerprint(config: JobConfig, info: ModelInfo, manifest: Manifest) -> dict[str, Any]:
    """What makes the bytes under OUT: not the worker count, batch size or retries, which may change
    between a run and its resume without changing a single image.

    The model is known by its content (the sha256 of its weight files), not by its path: new weights
    at the same path are refused, the same weights under another spelling of the path resume.
    """
    return {
        "weights_sha256": info.weights.sha256,
        # Every resolved setting changes the images: DiT's SamplingSettings, or a diffusers pipeline's
        # (pipeline class, scheduler, steps, guidance, size, sequence length, caption cleaning, ...).
        **info.settings.model_dump(mode="json"),
        "dtype": config.worker_dtype,
        "device": config.worker_device.split(":")[0],  # cpu and cuda kernels round differently
        "compile": config.worker_compile,  # the compiled path differs from eager by up to 1 level
        "image_size": info.image_size,
        "num_samples": manifest.num_rows,
        # The rows, in manifest order (a shard is a range of them). Outputs made before the hash
        # tree lack "manifest_hash", so resuming one is refused naming it.
        "manifest_hash": f"sha256 tree of {BLOCK_ROWS}-row blocks",
        "manifest_sha256": manifest.identity,
        "shard_size": config.shard_size,
        "format": config.format,
        "image_format": config.image_format,
        "quality": config.encoding.quality,  # None for png; the resolved default for jpeg / webp
        # --score: the metadata gains columns; None (unscored) equals what older job.json files lack.
        "score": score_record(config.score, config.score_embeddings, config.clip_model),
    }


def job_record(config: JobConfig, info: ModelInfo, manifest: Manifest) -> dict[str, Any]:
    fp = fingerprint(config, info, manifest)
    return {
        "fingerprint": fp,
        "fingerprint_sha256": hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest(),
        "num_shards": num_shards(manifest.num_rows, config.shard_size),
        "manifest": manifest.describe(),
        "seeds": "from the manifest" if config.manifest else f"(sample_id + {config.seed} * {SEED_SHIFT}) mod 2**32",
        "config": config.model_dump(mode="json"),
        "model_path": normalised_source(config.model),
        "vae_path": normalised_source(config.vae) if config.vae else None,
        "weights": {"files": info.weights.files, "revision": info.weights.revision},
        "device": config.worker_device,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def check_resumable(stored: dict[str, Any], record: dict[str, Any], where: str) -> None:
    """Raise ConfigMismatch naming each differing field unless `stored` has the same fingerprint."""
    old, new = stored.get("fingerprint", {}), record["fingerprint"]
    diffs = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in new if old.get(k) != new[k]]
    if diffs:
        raise ConfigMismatch(
            f"{where} belongs to a job with a different configuration ({'; '.join(diffs)}). Rerun with the "
            "same settings to resume it (--num-workers and --batch-size may change), or pick another --out"
        )


def normalised_source(spec: str) -> str:
    """A local path made absolute (no trailing slash, `~` expanded); s3:// and hub ids as given."""
    if spec.startswith("s3://"):
        return spec.rstrip("/")
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec
