"""Where a checkpoint lives: a local path, a Hugging Face hub id (at a revision), or an s3:// prefix."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.storage.node_cache import cached_prefix
from dit_worker.storage.objects import StorageError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# tokenizer*/: the text-to-image pipelines' tokenizers (tokenizer_2, tokenizer_3: SDXL, SD3, FLUX).
CONFIG_PATTERNS = ["model_index.json", "config.json", "*/config.json", "scheduler/*.json", "tokenizer*/*"]
# Weight file stems: diffusers' components and transformers' (text encoders).
WEIGHT_NAME = "diffusion_pytorch_model"
WEIGHT_STEMS = (WEIGHT_NAME, "model")
SourceKind = Literal["s3", "local", "hub", "missing"]


def source_kind(spec: str) -> SourceKind:
    """What `spec` names: an s3:// prefix, an existing local path, a hub id (org/name), or nothing."""
    if spec.startswith("s3://"):
        return "s3"
    path = Path(spec).expanduser()
    if path.exists():
        return "local"
    return "hub" if HUB_ID.match(spec) and path.suffix != ".pt" else "missing"


def resolve_source(spec: str, what: str = "model", revision: str | None = None, variant: str | None = None) -> Path:
    """A local path for `spec`; hub and s3 sources are fetched once per node into a local cache.

    `revision` (a branch, tag or commit of a hub repository) applies to hub ids only; `variant` picks
    which weight files a hub download fetches (e.g. fp16: `*.fp16.safetensors` where a folder has them).
    """
    kind = source_kind(spec)
    if revision is not None and kind != "hub":
        where = {"s3": "an s3:// prefix", "local": "a local path"}.get(kind, "not a hub id (org/name)")
        raise CheckpointError(
            f"--revision {revision}: a revision is a branch, tag or commit of a Hugging Face hub repository, and "
            f"{what} {spec!r} is {where}; drop --revision"
        )
    if kind == "s3":
        return s3_snapshot(spec, what)
    if kind == "local":
        return Path(spec).expanduser()
    if kind == "hub":
        return _hub_snapshot(spec, what, revision, variant)
    raise CheckpointError(f"{what} {spec!r}: no such file or directory (nor a hub id org/name or an s3:// prefix)")


class HubFetchFailed(Exception):
    """Fetching from the Hugging Face hub failed; the message is one line (the error's type and first line)."""


def hub_download(repo_id: str, patterns: list[str], revision: str | None = None) -> Path:
    """The files of `repo_id` matching `patterns`, fetched once into the hub cache (the one place
    the package calls the hub client: checkpoints here, metric models in metrics.hf_models)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # the hub client raises its own, httpx's and OS errors alike: one line for all
        first = (str(err).strip().splitlines() or [""])[0]
        raise HubFetchFailed(f"{type(err).__name__}: {first}") from None


def _hub_snapshot(repo_id: str, what: str, revision: str | None, variant: str | None) -> Path:
    at = f" at revision {revision!r}" if revision is not None else ""
    try:
        return hub_download(repo_id, CONFIG_PATTERNS + _listed_weight_patterns(repo_id, revision, variant), revision)
    except HubFetchFailed as err:
        check = "the network and the revision (a branch, tag or commit of the repository)" if at else "the network"
        raise CheckpointError(
            f"{what} {repo_id!r}{at}: not a local path, and fetching it from the Hugging Face hub failed "
            f"({err}); check {check}, or pass a local directory"
        ) from None


def _listed_weight_patterns(repo_id: str, revision: str | None, variant: str | None) -> list[str]:
    """The weight patterns of the repository's listing at `revision`. Offline (or when listing fails)
    every weight file is allowed, and the cache holds whichever were fetched."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # offline or unreachable: let snapshot_download use the cache or say why it cannot
        return [f"*{stem}*.safetensors*" for stem in WEIGHT_STEMS] + [f"*{WEIGHT_NAME}*.bin*"]
    return weight_patterns(files, variant)


def weight_patterns(files: list[str], variant: str | None = None) -> list[str]:
    """Only the weights loading reads, folder by folder of a repository's file list: the variant's files
    where a folder has them (else its plain ones, as diffusers falls back), safetensors where a folder
    has them, else .bin; single files, shards and shard indexes alike."""
    by_folder: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    patterns = []
    for folder, names in sorted(by_folder.items()):
        prefix = f"{folder}/" if folder else ""
        patterns += [prefix + p for p in _folder_patterns(names, variant)]
    return patterns


def _folder_patterns(names: list[str], variant: str | None) -> list[str]:
    for stem in WEIGHT_STEMS:
        for v in (variant, None) if variant else (None,):
            for kind in ("safetensors", "bin"):
                # name[.variant].kind, name[.variant]-00001-of-00002.kind, name.kind.index[.variant].json
                tag = f".{v}" if v else ""
                wanted = [f"{stem}{tag}.{kind}", f"{stem}{tag}-*.{kind}", f"{stem}.{kind}.index{tag}.json"]
                if any(fnmatch(n, w) for n in names for w in wanted):
                    return wanted
    return []


VARIANT_FILE = re.compile(
    rf"^(?:{'|'.join(WEIGHT_STEMS)})\.(?:([^.]+?)(?:-\d+-of-\d+)?\.(?:safetensors|bin)|(?:safetensors|bin)\.index\.([^.]+)\.json)$"
)


def weight_variant(name: str) -> str | None:
    """The variant a weight file belongs to (`model.fp16.safetensors`: fp16), None for plain weights."""
    found = VARIANT_FILE.match(name)
    return (found.group(1) or found.group(2)) if found else None


def s3_snapshot(url: str, what: str = "model") -> Path:
    """An s3:// prefix copied into this node's cache once, through the one storage layer (endpoint:
    AWS_ENDPOINT_URL, as the job's --s3-endpoint sets it for its workers)."""
    try:
        return cached_prefix(url)
    except StorageError as err:
        raise CheckpointError(f"{what} {url!r}: {err}") from None
