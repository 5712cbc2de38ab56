"""Where a checkpoint lives: a local path, a Hugging Face hub id, or an s3:// prefix."""

from __future__ import annotations

import re
from pathlib import Path

from dit_worker.checkpoints.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONFIG_PATTERNS = ["model_index.json", "config.json", "*/config.json", "scheduler/*.json"]
WEIGHT_NAME = "diffusion_pytorch_model"


def resolve_source(spec: str, what: str = "model") -> Path:
    """A local path for `spec`; hub and s3 sources are fetched once per node into a local cache."""
    if spec.startswith("s3://"):
        from dit_worker.storage import cache_s3_prefix

        return cache_s3_prefix(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if HUB_ID.match(spec) and path.suffix != ".pt":
        return _hub_snapshot(spec, what)
    raise CheckpointError(f"{what} {spec!r}: no such file or directory (nor a hub id org/name or an s3:// prefix)")


def _hub_snapshot(repo_id: str, what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CONFIG_PATTERNS + _weight_patterns(repo_id)))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{what} {repo_id!r}: not a local path, and fetching it from the Hugging Face hub failed ({err})"
        ) from None


def _weight_patterns(repo_id: str) -> list[str]:
    """Only the weights loading reads: safetensors where a folder has them, else the .bin.

    Offline (or when listing fails) both are allowed, and the cache holds whichever was fetched.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        files = HfApi().list_repo_files(repo_id)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError):
        return [f"*{WEIGHT_NAME}*.safetensors*", f"*{WEIGHT_NAME}*.bin*"]
    folders = {f.rpartition("/")[0] for f in files if f.rpartition("/")[2].startswith(WEIGHT_NAME)}
    patterns = []
    for folder in sorted(folders):
        prefix = f"{folder}/" if folder else ""
        names = [f.rpartition("/")[2] for f in files if f.rpartition("/")[0] == folder]
        kind = "safetensors" if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names) else "bin"
        patterns.append(f"{prefix}{WEIGHT_NAME}.{kind}*")
    return patterns
