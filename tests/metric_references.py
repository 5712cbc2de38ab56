"""Independent computations of the set metrics, for the parity tests: torchmetrics' CLIPScore,
transformers' Dinov2Model on torchvision-prepared images with a scipy Fréchet distance, and CMMD's
formula with scipy's pairwise distances in float64. Nothing here imports the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from PIL import Image
from scipy.spatial.distance import cdist

# dgm-eval's normalisation (timm's IMAGENET_DEFAULT_MEAN / STD), written out again here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def blocky(n: int, seed: int, size: tuple[int, int] = (32, 32), cells: int = 4) -> np.ndarray:
    """uint8 [n, H, W, 3] random colour fields of cells x cells blocks (what a random network tells apart)."""
    rng = np.random.default_rng(seed)
    h, w = size
    fields = rng.integers(0, 256, (n, cells, cells, 3), dtype=np.uint8)
    return fields.repeat(-(-h // cells), 1).repeat(-(-w // cells), 2)[:, :h, :w]


def torchmetrics_clip_scores(clip_dir: Path, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    class Tensors(CLIPModel):
        """transformers 5 returns model outputs from get_*_features; torchmetrics 1.9 divides them as
        tensors (the 4.x API), so hand it the projected embeddings those outputs hold."""

        def get_image_features(self, *args, **kwargs):
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    model, processor = Tensors.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    out = []
    for image, prompt in zip(images, prompts, strict=True):  # one image per update: its own max(100 cos, 0)
        metric.reset()
        metric.update(torch.from_numpy(image).permute(2, 0, 1), prompt)
        out.append(float(metric.compute()))
    return np.asarray(out)


def direct_dinov2_features(dinov2_dir: Path, images: np.ndarray) -> np.ndarray:
    """dgm-eval's recipe through torchvision (Resize((224, 224), BICUBIC) of the PIL image, ToTensor,
    Normalize), then transformers' Dinov2Model's final-LayerNorm CLS token."""
    from torchvision import transforms
    from transformers import Dinov2Model

    prepare = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    net = Dinov2Model.from_pretrained(dinov2_dir).eval()
    pixels = torch.stack([prepare(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        return net(pixel_values=pixels).last_hidden_state[:, 0].numpy()  # layernormed CLS token


def scipy_frechet(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))


def direct_cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    x = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    y = y.astype(np.float64) / np.linalg.norm(y.astype(np.float64), axis=1, keepdims=True)

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))

    kxx, kyy = k(x, x), k(y, y)
    n, m = len(x), len(y)
    off_xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    off_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return 1000 * (off_xx + off_yy - 2 * k(x, y).mean())
