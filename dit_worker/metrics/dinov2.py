"""DINOv2 ViT-L/14 image features for FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative
model evaluation metrics", the dgm-eval protocol; EDM2 reports it next to FID).

Preprocessing is dgm-eval's: each uint8 image resized to 224x224 with PIL's bicubic filter (what
torchvision's `Resize((224, 224), BICUBIC)` does to a PIL image), scaled to [0, 1] and normalised
with the ImageNet mean and std. The feature is the final-LayerNorm CLS token (`x_norm_clstoken` of
the torch hub model, `pooler_output` of transformers' `Dinov2Model`), 1024 values for ViT-L/14.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dit_worker.metrics.hf_models import HfModel, local_copy

DINOV2_SIZE = 224
DINOV2_RESAMPLE = Image.Resampling.BICUBIC
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DINOV2 = "facebook/dinov2-large"


def host_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N, H, W, 3] on the host, from numpy or a tensor on any device."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.uint8)


def dinov2_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 [N, 3, 224, 224]: dgm-eval's bicubic resize of the uint8 image, then ImageNet normalisation."""
    resized = np.stack(
        [
            np.asarray(Image.fromarray(image).resize((DINOV2_SIZE, DINOV2_SIZE), DINOV2_RESAMPLE))
            for image in host_images(images)
        ]
    )
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Dinov2Features:
    """transformers' `Dinov2Model`, loaded once; call it on uint8 images for their features.

    Usage::

        features = Dinov2Features(resolve_hf_model("facebook/dinov2-large", flag="--dinov2-model",
                                                   model_type="dinov2"), device="cuda")
        x = features(images)  # float32 [N, 1024]
    """

    def __init__(self, model: HfModel, device: torch.device | str, batch_size: int = 64) -> None:
        from transformers import Dinov2Model

        self.model_id, self.device, self.batch_size = model.id, torch.device(device), batch_size
        self.net = Dinov2Model.from_pretrained(local_copy(model), dtype=torch.float32).to(self.device).eval()

    @property
    def dim(self) -> int:
        return int(self.net.config.hidden_size)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        out = []
        for lo in range(0, images.shape[0], self.batch_size):
            pixels = dinov2_pixels(images[lo : lo + self.batch_size]).to(self.device)
            out.append(self.net(pixel_values=pixels).pooler_output.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
