"""Inception-v3 features as the ADM evaluator takes them, from torch-fidelity's TF-faithful network.

torch-fidelity's `inception-v3-compat` reproduces the TensorFlow graph of the 2015 Inception
(`classify_image_graph_def.pb`) that TTUR, ADM and the DiT paper used, including TF1's bilinear
resize to 299x299 of uint8 input at any size. Per image we take:

- pool: `pool_3` (2048), the FID and precision/recall features;
- logits: pool_3 times the classifier weights without bias (`logits_unbiased`), for the Inception
  Score, as ADM's `_create_softmax_graph` does;
- spatial: `mixed_6/conv` (ADM's FID_SPATIAL_NAME), the ReLU output of the 1x1 branch of the
  third 17x17 block, which torch-fidelity names `Mixed_6d.branch1x1`; ADM keeps its first 7 of
  192 channels in TF's NHWC order and flattens them to 17·17·7 = 2023 values (sFID, Nash et al. 2021).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dit_worker.checkpoints.errors import CheckpointError
from dit_worker.checkpoints.files import torch_load_weights
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.node_cache import local_file

POOL_DIM = 2048
LOGITS_DIM = 1008
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
SPATIAL_MODULE = "Mixed_6d.branch1x1"
# The converted TF weights torch-fidelity downloads when no file is given.
DEFAULT_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
_REQUIRED_KEYS = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), f"{SPATIAL_MODULE}.conv.weight": (192, 768, 1, 1)}
_REQUIRED_KEYS["fc.weight"] = (LOGITS_DIM, POOL_DIM)


@dataclass(frozen=True)
class InceptionWeights:
    """A validated local weights file; `sha256` identifies it in cached and stored features."""

    path: Path
    sha256: str
    source: str

    @property
    def id(self) -> str:
        return f"inception-v3-compat:sha256:{self.sha256}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_default() -> Path:
    target = Path(torch.hub.get_dir()) / "checkpoints" / DEFAULT_WEIGHTS_URL.rsplit("/", 1)[1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(DEFAULT_WEIGHTS_URL, str(target), progress=False)
        except Exception as err:  # URLError, HTTPError, timeouts: all mean "no default weights here"
            raise MetricsInputError(
                f"could not download torch-fidelity's Inception-v3 weights from {DEFAULT_WEIGHTS_URL} ({err}); "
                f"download that file where the network allows and pass it with --inception-weights FILE"
            ) from None
    return target


def resolve_inception_weights(spec: str | None, *, s3_endpoint: str | None = None) -> InceptionWeights:
    """A local file, an s3:// object (copied to this node's cache) or None for torch-fidelity's default.

    The file is checked now, before any image is read: it must load with torch.load(weights_only=True)
    (torch-fidelity itself unpickles it without that guard) and hold Inception-v3 tensors.
    """
    if spec is None:
        path = _download_default()
    else:
        path, _ = local_file(spec, flag="--inception-weights", cache="inception", s3_endpoint=s3_endpoint)
    try:
        state = torch_load_weights(path)
    except CheckpointError as err:
        raise MetricsInputError(f"--inception-weights: {err}") from None
    if not isinstance(state, dict):
        raise MetricsInputError(f"--inception-weights {path}: expected a state dict, got {type(state).__name__}")
    for key, shape in _REQUIRED_KEYS.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else "missing"
            raise MetricsInputError(
                f"--inception-weights {path}: not torch-fidelity Inception-v3 weights ({key}: expected {shape}, "
                f"got {got}); use {DEFAULT_WEIGHTS_URL.rsplit('/', 1)[1]} or a state dict of its network"
            )
    return InceptionWeights(path=path, sha256=_sha256(path), source=spec or DEFAULT_WEIGHTS_URL)


@dataclass(frozen=True)
class FeatureBatch:
    """Inception-v3 features of a batch of images: pool (FID, precision/recall), logits (IS) and spatial (sFID)."""

    pool: np.ndarray  # [N, 2048] float32
    logits: np.ndarray  # [N, 1008] float32
    spatial: np.ndarray  # [N, 2023] float32


class InceptionFeatures:
    """Pool, logits and spatial features of uint8 RGB images [N, H, W, 3] of any size."""

    def __init__(self, weights_path: Path, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_path)
            )
        except RuntimeError as err:  # load_state_dict: missing / unexpected keys or wrong shapes
            raise MetricsInputError(f"{weights_path}: not Inception-v3 weights for torch-fidelity ({err})") from None
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.batch_size = batch_size
        self._spatial: torch.Tensor | None = None
        self.net.get_submodule(SPATIAL_MODULE).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        # NCHW -> NHWC, first 7 channels, flattened in TF's (h, w, c) order so the features line up
        # with the mu_s / sigma_s of ADM's reference batches.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1).float()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> FeatureBatch:
        """images: uint8 [N, H, W, 3], a numpy array or a tensor on any device (e.g. the generating GPU,
        which saves the generation job a copy to the host and back)."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        pools, logits, spatials = [], [], []
        for lo in range(0, images.shape[0], self.batch_size):
            batch = images[lo : lo + self.batch_size].to(self.device).permute(0, 3, 1, 2).contiguous()
            pool, logit = self.net(batch)
            assert self._spatial is not None
            pools.append(pool.cpu().numpy())
            logits.append(logit.cpu().numpy())
            spatials.append(self._spatial.cpu().numpy())
            self._spatial = None
        if not pools:
            return FeatureBatch(
                np.zeros((0, POOL_DIM), np.float32),
                np.zeros((0, LOGITS_DIM), np.float32),
                np.zeros((0, SPATIAL_DIM), np.float32),
            )
        return FeatureBatch(np.concatenate(pools), np.concatenate(logits), np.concatenate(spatials))
