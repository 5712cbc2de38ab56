"""Random Inception-v3 weights in torch-fidelity's file format (real weights cannot be downloaded here).

The network is torch-fidelity's own `FeatureExtractorInceptionV3`, built without weights, given
He-initialised convolutions and identity batch norms, and saved with torch.save(state_dict()) as
its `feature_extractor_weights_path` loader expects. Random weights give pool features with little
spread across images and near-uniform logits (an Inception Score of 1.000...), which would make any
comparison meaningless, so the classifier is calibrated on a few images: its rows are random
directions in the span of the centred pool features, scaled so the logits differ by a few units
from image to image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def _skeleton(tmp: Path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        # torch-fidelity's constructor always loads a weights file: give it an empty one, accept no keys.
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False)

    empty = tmp / "empty.pt"
    torch.save({}, empty)
    return Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def random_inception_weights(path: Path, calibration: np.ndarray, seed: int = 0, logit_spread: float = 8.0) -> Path:
    """Write random weights to `path`; `calibration` is uint8 [N, H, W, 3] (N >= 2)."""
    net = _skeleton(path.parent)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        pool = net(torch.from_numpy(calibration).permute(0, 3, 1, 2).contiguous())[0].double()
        mean = pool.mean(0)
        # Rows: random combinations of the centred calibration features, i.e. directions along which
        # images differ, made orthogonal to the mean feature: the component all images share would
        # otherwise add the same large offsets to every image's logits and fix one winning class.
        weight = torch.randn((1008, pool.shape[0]), generator=g, dtype=torch.float64) @ (pool - mean)
        weight -= torch.outer(weight @ mean, mean) / (mean @ mean)
        spread = (pool @ weight.T).std(0).mean()
        net.fc.weight.copy_((weight * (logit_spread / spread)).float())
        net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=g) * 0.1)
    torch.save(net.state_dict(), path)
    return path
