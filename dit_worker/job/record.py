"""OUT/job.json: the resolved configuration, and the fingerprint of everything that determines the
output. A rerun on the same OUT resumes only when its fingerprint is the same."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from dit_worker.job.config import JobConfig
from dit_worker.job.manifest import Samples
from dit_worker.job.model_info import ModelInfo
from dit_worker.job.sharding import num_shards


class ConfigMismatch(ValueError):
    """OUT holds a job with a different fingerprint."""


def fingerprint(config: JobConfig, info: ModelInfo, samples: Samples) -> dict[str, Any]:
    """What makes the bytes under OUT: not the worker count, batch size or retries, which may change
    between a run and its resume without changing a single image."""
    return {
        "model": config.model,
        "vae": config.vae,
        # Every resolved setting changes the images: DiT's SamplingSettings, or a diffusers pipeline's
        # (pipeline class, scheduler, steps, guidance, size, sequence length, caption cleaning, ...).
        **info.settings.model_dump(mode="json"),
        "dtype": config.worker_dtype,
        "image_size": info.image_size,
        "num_samples": len(samples),
        "manifest_sha256": samples.sha256(),
        "shard_size": config.shard_size,
        "format": config.format,
    }


def job_record(config: JobConfig, info: ModelInfo, samples: Samples) -> dict[str, Any]:
    fp = fingerprint(config, info, samples)
    return {
        "fingerprint": fp,
        "fingerprint_sha256": hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest(),
        "num_shards": num_shards(len(samples), config.shard_size),
        "seeds": "from the manifest" if config.manifest else f"{config.seed} * 2**32 + sample_id",
        "config": config.model_dump(mode="json"),
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
