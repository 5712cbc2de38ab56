"""The set metrics beside FID, each against an independent computation on a tiny random model.

- CLIP score: equals torchmetrics' `CLIPScore` on the same tiny CLIP (saved here with
  save_pretrained, character-level tokenizer built here), image by image;
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
from hf_models import save_tiny_clip, save_tiny_dinov2
from metric_references import blocky, direct_cmmd, direct_dinov2_features, scipy_frechet, torchmetrics_clip_scores

from dit_worker.checkpoints.tiny_tokenizers import WORDS
from dit_worker.metrics.clip_score import ClipEmbedder, clip_scores
from dit_worker.metrics.cmmd import BLOCK, cmmd, subsample
from dit_worker.metrics.dinov2 import Dinov2Features
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.frechet import frechet_distance
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.metrics.statistics import FeatureMoments

# Measured on this CPU: per-image CLIP scores within 7.4e-6 of torchmetrics' with transformers 5.0, 1.6e-5
# with 5.25 (scores of 0..16; it normalises and multiplies in float32, whose spacing at 13 is 1e-6; we
# take float64 cosines).
CLIP_TOL = 5e-5
# Measured: FD-DINOv2 7e-8 relative from the direct computation (both float32 features, float64 statistics).
FD_TOL = 1e-5
# Measured: CMMD 2e-12 relative from the float64 formula (float64 both; blocks sum in another order).
CMMD_TOL = 1e-9


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
