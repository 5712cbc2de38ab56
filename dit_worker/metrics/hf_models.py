"""transformers models the set metrics and row scores run (DINOv2, CLIP, image classifiers): a
local directory or a hub id, checked and identified by content before any weights load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dit_worker.checkpoints.identity import checkpoint_identity
from dit_worker.checkpoints.sources import HUB_ID, HubFetchFailed, hub_download
from dit_worker.metrics.errors import MetricsInputError

# What a transformers model directory needs to be loaded by `from_pretrained` (weights, config,
# CLIP's tokenizer and image processor); nothing else of a hub repo is fetched.
HUB_PATTERNS = ["*.json", "*.txt", "model.safetensors", "*.model"]


@dataclass(frozen=True)
class HfModel:
    """A resolved model directory; `id` (type and the sha256 of its weight files) keys cached features."""

    source: str  # as given: a directory or a hub id (re-resolved on Ray nodes that lack `path`)
    path: Path
    model_type: str
    sha256: str

    @property
    def id(self) -> str:
        return f"{self.model_type}:sha256:{self.sha256}"


def _hub_snapshot(spec: str, flag: str) -> Path:
    try:
        return hub_download(spec, HUB_PATTERNS)
    except HubFetchFailed as err:
        raise MetricsInputError(
            f"{flag} {spec}: not a local directory, and fetching it from the Hugging Face hub failed "
            f"({err}); pass a local directory saved with save_pretrained"
        ) from None


def resolve_hf_model(spec: str, *, flag: str, model_type: str | None) -> HfModel:
    """The directory of `spec` (fetched once for a hub id), refused unless its config.json is a
    `model_type` model (any type for None) with weights: one MetricsInputError naming `flag`, before
    any weights load."""
    path = Path(spec).expanduser()
    if not path.exists():
        if not HUB_ID.match(spec):
            raise MetricsInputError(f"{flag} {spec}: no such directory, nor a hub id (org/name)")
        path = _hub_snapshot(spec, flag)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise MetricsInputError(f"{flag} {spec}: not a transformers model directory (no config.json)")
    try:
        found = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise MetricsInputError(f"{flag} {spec}: unreadable config.json ({err})") from None
    if model_type is not None and found != model_type:
        raise MetricsInputError(f"{flag} {spec}: a {found!r} model; expected a {model_type!r} model")
    identity = checkpoint_identity(str(path))
    if not identity.files:
        raise MetricsInputError(f"{flag} {spec}: no weight files (model.safetensors) in {path}")
    return HfModel(spec, path, model_type or str(found), identity.sha256)


def local_copy(model: HfModel) -> Path:
    """The model's directory on this machine: a Ray node without the driver's path fetches the hub id."""
    if model.path.is_dir():
        return model.path
    if HUB_ID.match(model.source):
        return _hub_snapshot(model.source, "model")
    raise MetricsInputError(f"{model.source}: no such directory on this node; use a hub id or a shared path")
