"""The set metrics beside FID, each against an independent computation on a tiny random model.

- CLIP score: equals torchmetrics' `CLIPScore` on the same tiny CLIP (saved here with
  save_pretrained, tokenizer trained here), image by image;
- FD-DINOv2: equals the Fréchet distance (np.mean / np.cov, scipy.linalg.sqrtm) of features from
  transformers' `Dinov2Model` run directly on images prepared by torchvision's dgm-eval recipe;
- CMMD: equals its formula evaluated directly in float64 with scipy's pairwise distances.

Next to each parity assertion the same comparison on a perturbed input misses by far more than the
tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hf_models import save_tiny_clip, save_tiny_dinov2
from PIL import Image
from pipelines import WORDS
from scipy.spatial.distance import cdist

from dit_worker.metrics.clip_score import ClipEmbedder, clip_scores
from dit_worker.metrics.cmmd import BLOCK, cmmd, subsample
from dit_worker.metrics.dinov2 import IMAGENET_MEAN, IMAGENET_STD, Dinov2Features
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.frechet import frechet_distance
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.metrics.statistics import FeatureMoments

# Measured on this CPU: per-image CLIP scores within 7.4e-6 of torchmetrics' (scores of 0..16; it
# normalises and multiplies in float32, whose spacing at 13 is 1e-6; we take float64 cosines).
CLIP_TOL = 1e-5
# Measured: FD-DINOv2 7e-8 relative from the direct computation (both float32 features, float64 statistics).
FD_TOL = 1e-5
# Measured: CMMD 2e-12 relative from the float64 formula (float64 both; blocks sum in another order).
CMMD_TOL = 1e-9


def blocky(n: int, seed: int, size: tuple[int, int] = (32, 32), cells: int = 4) -> np.ndarray:
    """uint8 [n, H, W, 3] random colour fields of cells x cells blocks (what a random network tells apart)."""
    rng = np.random.default_rng(seed)
    h, w = size
    fields = rng.integers(0, 256, (n, cells, cells, 3), dtype=np.uint8)
    return fields.repeat(-(-h // cells), 1).repeat(-(-w // cells), 2)[:, :h, :w]


CLIP_IMAGES = blocky(8, seed=1, size=(40, 48))  # not square: the processor's resize and centre crop both act
PROMPTS = [f"{WORDS[3 * i % len(WORDS)]} {WORDS[(5 * i + 2) % len(WORDS)]} at night" for i in range(8)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", CLIP_IMAGES, PROMPTS)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2")


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> ClipEmbedder:
    return ClipEmbedder(resolve_hf_model(str(clip_dir), flag="--clip-model", model_type="clip"), "cpu")


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


def test_clip_score_equals_torchmetrics(clip: ClipEmbedder, clip_dir: Path) -> None:
    images, prompts = CLIP_IMAGES, PROMPTS
    ours = clip_scores(clip.images(images), clip.texts(prompts))
    expected = torchmetrics_clip_scores(clip_dir, images, prompts)
    print("ours", ours, "torchmetrics", expected)
    # Both regimes are exercised: positive cosines scored, a negative one clamped to 0.
    assert (ours == 0).any() and (ours > 1).sum() >= 2
    np.testing.assert_allclose(ours, expected, rtol=0, atol=CLIP_TOL)
    # Sensitivity: each image against another image's prompt moves its score far beyond the tolerance.
    other = clip_scores(clip.images(images), clip.texts(prompts[1:] + prompts[:1]))
    positive = (ours > 0) | (other > 0)
    assert (np.abs(other - ours)[positive] > 100 * CLIP_TOL).all()


def test_clip_image_embeddings_do_not_depend_on_the_batch(clip: ClipEmbedder) -> None:
    images = blocky(5, seed=2)
    whole = clip.images(images)
    one_by_one = np.concatenate([clip.images(images[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-5)


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


def test_fd_dinov2_equals_direct_computation(dinov2_dir: Path) -> None:
    model = resolve_hf_model(str(dinov2_dir), flag="--dinov2-model", model_type="dinov2")
    features = Dinov2Features(model, "cpu", batch_size=16)
    # 40 samples per side of 32-dimensional features: full-rank covariances, as scipy's sqrtm needs.
    a, b = blocky(40, seed=3, size=(16, 16)), blocky(40, seed=4, size=(16, 16), cells=2)
    fa, fb = features(a), features(b)
    assert fa.std(0).mean() > 1e-2  # the random network tells the images apart
    ours = frechet_distance(FeatureMoments.of(fa).gaussian(), FeatureMoments.of(fb).gaussian())
    da, db = direct_dinov2_features(dinov2_dir, a), direct_dinov2_features(dinov2_dir, b)
    expected = scipy_frechet(da, db)
    print("FD-DINOv2 ours", ours, "direct", expected, "rel", abs(ours / expected - 1))
    assert ours == pytest.approx(expected, rel=FD_TOL)
    # One image of the second set replaced by another: far beyond the tolerance.
    perturbed = db.copy()
    perturbed[0] = direct_dinov2_features(dinov2_dir, blocky(1, seed=99, size=(16, 16)))[0]
    assert abs(scipy_frechet(da, perturbed) / ours - 1) > 100 * FD_TOL


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


def test_cmmd_equals_float64_formula(clip: ClipEmbedder) -> None:
    # The second set darker: a distribution the random CLIP tells apart from the first.
    x, y = clip.images(blocky(30, seed=5)), clip.images(blocky(25, seed=6, cells=2) // 3)
    ours, expected = cmmd(x, y), direct_cmmd(x, y)
    print("CMMD ours", ours, "direct", expected)
    assert expected > 0.1
    assert ours == pytest.approx(expected, rel=CMMD_TOL)
    assert cmmd(y, x) == pytest.approx(ours, rel=CMMD_TOL)  # symmetric
    # One embedding of y replaced by another image's: far beyond the tolerance.
    perturbed = y.copy()
    perturbed[0] = clip.images(blocky(1, seed=98))[0]
    assert abs(direct_cmmd(x, perturbed) / ours - 1) > 100 * CMMD_TOL


def test_cmmd_in_blocks_and_its_subsample() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((BLOCK + 300, 8))
    y = rng.standard_normal((200, 8)) + 0.3
    assert cmmd(x, y) == pytest.approx(direct_cmmd(x, y), rel=CMMD_TOL)
    picked = subsample(np.arange(50), max_samples=20)
    assert len(picked) == 20 and (np.diff(picked) > 0).all()
    np.testing.assert_array_equal(picked, subsample(np.arange(50), max_samples=20))  # fixed
    np.testing.assert_array_equal(subsample(np.arange(10), max_samples=20), np.arange(10))


@pytest.mark.parametrize(
    ("spec", "model_type", "message"),
    [
        ("/nonexistent/dinov2", "dinov2", "no such directory"),
        ("not a hub id", "dinov2", "no such directory, nor a hub id"),
    ],
)
def test_bad_model_flags_are_one_line(spec: str, model_type: str, message: str) -> None:
    with pytest.raises(MetricsInputError, match=message):
        resolve_hf_model(spec, flag="--dinov2-model", model_type=model_type)


def test_a_clip_directory_is_not_a_dinov2_model(clip_dir: Path) -> None:
    with pytest.raises(MetricsInputError, match="a 'clip' model; expected a 'dinov2' model"):
        resolve_hf_model(str(clip_dir), flag="--dinov2-model", model_type="dinov2")
