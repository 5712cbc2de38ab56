"""Reading checkpoint files safely, with one clear error per failure."""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from dit_worker.checkpoints.errors import CheckpointError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SHARD_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name}: expected {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def describe_validation(err: ValidationError) -> str:
    """One line per problem: `field: message (got value)`."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        parts.append(f"{where}: {e['msg']}{got}")
    return "; ".join(parts)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or corrupt, download it again"
        ) from None


def is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (protocol byte 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def torch_load_weights(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers, never arbitrary objects.

    argparse.Namespace is allowed because DiT's train.py stores its arguments in training
    checkpoints; it only carries attributes and runs no code when unpickled.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load, the file needs arbitrary unpickling ({_refused_global(err)}). Only tensors, "
            "plain containers and argparse.Namespace are accepted; re-save it with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        # A text file reaches the legacy pickle reader, which fails with e.g. KeyError: 101.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err!r}); it may be truncated") from None


def _refused_global(err: pickle.UnpicklingError) -> str:
    """What torch's weights_only unpickler refused (`GLOBAL builtins.open`), from its many-line, ANSI-styled
    message; else that message's first plain line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported (?:global|operand)[^.\n]*?(GLOBAL \S+|\d+)", text)
    if found:
        return f"it names {found.group(1).removeprefix('GLOBAL ')}, which weights_only loading refuses"
    detail = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return detail.group(1).strip() if detail else lines[0] if lines else type(err).__name__


def weight_files(folder: Path) -> list[Path]:
    """The files `load_weights_dir` reads for one component folder: sharded safetensors (with their
    index), a single safetensors, or a .bin, in that order of preference."""
    index = folder / SHARD_INDEX
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index}: weight_map is empty")
        return [index, *(folder / shard for shard in shards)]
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder}: no weights found; expected one of {', '.join(WEIGHT_NAMES)} or {SHARD_INDEX}")


def load_weights_dir(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of one diffusers component folder: single or sharded safetensors, or a .bin."""
    files = weight_files(folder)
    if files[0].name == SHARD_INDEX:
        state: dict[str, torch.Tensor] = {}
        for shard in files[1:]:
            state.update(load_safetensors(shard))
        return state
    path = files[0]
    if path.name.endswith(".safetensors"):
        return load_safetensors(path)
    state = torch_load_weights(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
