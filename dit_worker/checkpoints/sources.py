"""Where a checkpoint lives: a local path, a Hugging Face hub id, or an s3:// prefix."""

from __future__ import annotations

import re
from pathlib import Path

from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.storage.node_cache import cached_prefix
from dit_worker.storage.objects import StorageError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# tokenizer/: the text-to-image pipelines' tokenizers (docs/backends.md).
CONFIG_PATTERNS = ["model_index.json", "config.json", "*/config.json", "scheduler/*.json", "tokenizer/*"]
WEIGHT_NAME = "diffusion_pytorch_model"
TEXT_ENCODER_WEIGHTS = ["text_encoder/model*.safetensors*"]  # transformers' name, in pipelines that have one


def resolve_source(spec: str, what: str = "model") -> Path:
    """A local path for `spec`; hub and s3 sources are fetched once per node into a local cache."""
    if spec.startswith("s3://"):
        return s3_snapshot(spec, what)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if HUB_ID.match(spec) and path.suffix != ".pt":
        return _hub_snapshot(spec, what)
    raise CheckpointError(f"{what} {spec!r}: no such file or directory (nor a hub id org/name or an s3:// prefix)")


def _hub_snapshot(repo_id: str, what: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        patterns = CONFIG_PATTERNS + _weight_patterns(repo_id) + TEXT_ENCODER_WEIGHTS
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub client raises its own, httpx's and OS errors alike: one line for all
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{what} {repo_id!r}: not a local path, and fetching it from the Hugging Face hub failed "
            f"({type(err).__name__}: {first}); check the network, or pass a local directory"
        ) from None


def _weight_patterns(repo_id: str) -> list[str]:
    """Only the weights loading reads: safetensors where a folder has them, else the .bin.

    Offline (or when listing fails) both are allowed, and the cache holds whichever was fetched.
    """
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id)
    except Exception:  # offline or unreachable: let snapshot_download use the cache or say why it cannot
        return [f"*{WEIGHT_NAME}*.safetensors*", f"*{WEIGHT_NAME}*.bin*"]
    folders = {f.rpartition("/")[0] for f in files if f.rpartition("/")[2].startswith(WEIGHT_NAME)}
    patterns = []
    for folder in sorted(folders):
        prefix = f"{folder}/" if folder else ""
        names = [f.rpartition("/")[2] for f in files if f.rpartition("/")[0] == folder]
        kind = "safetensors" if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names) else "bin"
        patterns.append(f"{prefix}{WEIGHT_NAME}.{kind}*")
    return patterns


def s3_snapshot(url: str, what: str = "model") -> Path:
    """An s3:// prefix copied into this node's cache once, through the one storage layer (endpoint:
    AWS_ENDPOINT_URL, as the job's --s3-endpoint sets it for its workers)."""
    try:
        return cached_prefix(url)
    except StorageError as err:
        raise CheckpointError(f"{what} {url!r}: {err}") from None
