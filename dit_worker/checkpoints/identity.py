"""What a checkpoint *is*, as opposed to where it lives: the sha256 of every weight file it loads,
and for hub ids the resolved revision. A job's fingerprint holds this, so new weights at the same
path are noticed and the same weights under another path (a trailing slash, a moved folder) are not.

Hashing a multi-GB file takes seconds; each node caches a file's hash keyed by (path, size, mtime),
so it is computed once per file version per node.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dit_worker.checkpoints.sources import resolve_source
from dit_worker.storage.node_cache import cache_root

CHUNK = 16 << 20


@dataclass(frozen=True)
class WeightsIdentity:
    """A model known by content: the sha256 of each of its weight files, and the hub revision it came from."""

    files: dict[str, str]  # file name (relative to its checkpoint folder) -> sha256
    revision: str | None  # the hub commit a hub id resolved to

    @property
    def sha256(self) -> str:
        """One hash over all files: equal exactly when every file is equal."""
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cached = cache_root() / "sha256" / key
    if cached.is_file():
        return cached.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # best effort: a read-only or full cache only costs hashing again next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
        tmp.write_text(digest + "\n")
        tmp.replace(cached)
    except OSError:
        pass
    return digest


def hub_revision(path: Path) -> str | None:
    """huggingface_hub caches a snapshot as .../snapshots/<commit>/...: that commit, or None."""
    parts = path.resolve().parts if path.exists() else path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots":
            return parts[i + 1]
    return None


def weights_identity(files: Sequence[tuple[str, Path]], revision: str | None) -> WeightsIdentity:
    """`files`: (name, path) pairs; names say which component a file belongs to (`vae/...`)."""
    return WeightsIdentity({name: file_sha256(path) for name, path in files}, revision)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def checkpoint_identity(
    model: str, vae: str | None = None, revision: str | None = None, variant: str | None = None
) -> WeightsIdentity:
    """Every weight file of a checkpoint: an original `.pt` itself, or each weight file below a
    diffusers directory (all components: transformer or UNet, VAE, text encoders), plus those of a
    separate `--vae`. A hub id is read at `revision` (pass the commit the settings resolved, so that
    the identity and the workers read the same snapshot)."""
    root = resolve_source(model, "model", revision=revision, variant=variant)
    files = _weight_files(root, "")
    if vae is not None:
        files += _weight_files(resolve_source(vae, "vae"), "--vae/")
    return weights_identity(files, hub_revision(root))


def _weight_files(root: Path, prefix: str) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(prefix + root.name, root)]
    found = (p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return sorted((prefix + p.relative_to(root).as_posix(), p) for p in found)
