"""The LAION "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-predictor): a
score of roughly 1..10 from an MLP on the L2-normalised CLIP ViT-L/14 image embedding.

Its published checkpoint (`sac+logos+ava1-l14-linearMSE.pth`, also on the hub as
trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth, TRL's DDPO reward) is a torch state dict of an
`nn.Sequential` named `layers`: Linear 768→1024, Dropout, Linear 1024→128, Dropout, Linear 128→64,
Dropout, Linear 64→16, Linear 16→1, with no activations (the repo's ReLUs are commented out), so the
Linears sit at indices 0, 2, 4, 6 and 7. The widths are read from the state dict, so a smaller MLP
in the same layout (the tests') loads the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dit_worker.checkpoints.sources import HubFetchFailed, hub_download
from dit_worker.metrics.errors import MetricsInputError

DEFAULT_AESTHETIC = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
# The predictor's own CLIP (simple_inference.py: clip.load("ViT-L/14"), 224 px): the MLP was fitted
# on its embeddings, so this is the job's CLIP whenever aesthetic is scored and no clip=MODEL is given.
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
LINEAR_INDICES = (0, 2, 4, 6, 7)  # the Linears of `layers`; 1, 3, 5 are Dropouts (no weights)
KEYS = tuple(f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias"))
HUB_FILE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+/[\w.+/-]+$")  # org/repo/path/in/repo.pth


@dataclass(frozen=True)
class AestheticWeights:
    """A resolved, checked state dict file; `id` (the sha256 of its bytes) enters the fingerprint."""

    source: str  # as given: a local file or org/repo/file (re-fetched on Ray nodes that lack `path`)
    path: Path
    sha256: str
    input_dim: int  # the CLIP embedding width it takes

    @property
    def id(self) -> str:
        return f"aesthetic:sha256:{self.sha256}"


def _fetch(spec: str, flag: str) -> Path:
    repo, name = "/".join(spec.split("/")[:2]), "/".join(spec.split("/")[2:])
    try:
        return hub_download(repo, [name]) / name
    except HubFetchFailed as err:
        raise MetricsInputError(
            f"{flag} aesthetic={spec}: not a local file, and fetching it from the Hugging Face hub failed ({err}); "
            "pass a local .pth file"
        ) from None


def _state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    try:  # weights_only: a state dict of tensors, never arbitrary pickled objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike: one line for all
        raise MetricsInputError(f"{label}: not a torch state dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or sorted(state) != sorted(KEYS):
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise MetricsInputError(
            f"{label}: not the improved aesthetic predictor's state dict (expected keys {KEYS[0]} ... "
            f"{KEYS[-1]}, found {keys})"
        )
    return state


def resolve_aesthetic_weights(spec: str | None, *, flag: str) -> AestheticWeights:
    """The weights file of `spec` (DEFAULT_AESTHETIC when None), fetched once for a hub file and checked
    to be the predictor's layout: one MetricsInputError naming `flag`, before any model loads."""
    spec = spec or DEFAULT_AESTHETIC
    path = Path(spec).expanduser()
    if not path.exists():
        if not HUB_FILE.match(spec):
            raise MetricsInputError(f"{flag} aesthetic={spec}: no such file, nor a hub file (org/repo/file.pth)")
        path = _fetch(spec, flag)
    if not path.is_file():
        raise MetricsInputError(f"{flag} aesthetic={spec}: not a file")
    state = _state_dict(path, f"{flag} aesthetic={spec}")
    widths = [state[f"layers.{i}.weight"].shape for i in LINEAR_INDICES]
    chained = all(a[0] == b[1] for a, b in itertools.pairwise(widths)) and widths[-1][0] == 1
    if not chained:
        raise MetricsInputError(f"{flag} aesthetic={spec}: its layers do not chain to one output ({widths})")
    return AestheticWeights(spec, path, hashlib.sha256(path.read_bytes()).hexdigest(), int(widths[0][1]))


class AestheticMlp(nn.Module):
    """The predictor's MLP, in its published module layout (`layers`), widths from the state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        shapes = [state[f"layers.{i}.weight"].shape for i in LINEAR_INDICES]
        linear = [nn.Linear(int(s[1]), int(s[0])) for s in shapes]
        # Dropout 0.2, 0.2, 0.1 after the first three (identity in eval), as published.
        self.layers = nn.Sequential(
            linear[0], nn.Dropout(0.2), linear[1], nn.Dropout(0.2), linear[2], nn.Dropout(0.1), linear[3], linear[4]
        )
        self.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticScorer:
    """The MLP, loaded once; `scores` maps CLIP image embeddings (not normalised) to float32 scores."""

    def __init__(self, weights: AestheticWeights, device: torch.device | str) -> None:
        path = weights.path if weights.path.is_file() else _fetch(weights.source, "--score")
        self.device = torch.device(device)
        self.net = AestheticMlp(_state_dict(path, weights.source)).to(self.device).eval()

    @torch.no_grad()
    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(image_embeddings, np.float32)).to(self.device)
        # simple_inference.py's `normalized`: L2 over the last axis, a zero row left as it is.
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        x = x / torch.where(norm == 0, torch.ones_like(norm), norm)
        return self.net(x)[:, 0].float().cpu().numpy()
