"""jobs.fid end to end on a set made by jobs.generate from the tiny DiT, with random Inception weights.

Parity: FID, Inception Score and precision/recall equal torch-fidelity's own `calculate_metrics` on
the same PNGs with the same weights file; FID, sFID and per-class FID equal scipy.linalg.sqrtm-based
Fréchet distances of features from torch-fidelity's network run here layer by layer (np.mean and
np.cov statistics); an ADM-format reference batch gives the same numbers as the folder it was made
from; the same set as webdataset and on S3, stored per-shard statistics and Ray actors all reproduce
the local result. Each comparison sits next to the same one on a wrong input.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import scipy.linalg
import torch
from checkpoints import id2label
from inception_weights import random_inception_weights
from output_sets import png_bytes
from PIL import Image

from dit_worker import load_pipeline
from dit_worker.metrics.inception import InceptionFeatures, resolve_inception_weights
from dit_worker.metrics.shard_statistics import FeatureAccumulator, ShardStatistics, shard_digest
from dit_worker.output.reader import OutputSet
from dit_worker.storage.objects import open_storage
from jobs.fid import main as fid_main
from jobs.generate import main as generate_main

N, SHARD = 20, 8
CLASSES = [c for c in range(4) for _ in range(N // 4)]  # --classes 0,1,2,3 --per-class 5: class by class
ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("fid", "sfid", "inception_score_mean", "inception_score_std", "precision", "recall")
GENERATE = ["--local", "--classes", "0,1,2,3", "--per-class", str(N // 4), "--sampler", "ddim", "--steps", "5",
            "--cfg-scale", "1.0", "--device", "cpu", "--dtype", "float32", "--shard-size", str(SHARD),
            "--batch-size", "4"]  # fmt: skip
# The claimed precision (README, Metrics): FID equal to scipy.linalg.sqrtm-based FID to 1e-6.
# Measured (this CPU): against torch-fidelity's calculate_metrics 2.9e-7 relative (it returns its
# FID rounded to float32), against scipy on features from its network run here in one batch 4e-10;
# precision/recall 1e-8 (torch-fidelity's float32 mean). Inception Score: equal to the last bit on
# an earlier CPU, 8.3e-8 relative on this one (2-core x86 CI machine, torch 2.14.1, torch-fidelity
# 0.4.0). Both compute the score with the same float64 formula, so the difference is in the float32
# logits (torch-fidelity feeds the 20 images as one batch, we feed each shard's 8); held to the
# claimed precision, like FID.
FID_TOL = 1e-6
IS_TOL = 1e-6
# One shard's features from the generator's batches vs from jobs.fid's: measured equal (0); the
# tolerance allows float32 rounding of other batch compositions.
FEATURE_TOL = 1e-6
# The same set's metrics along another path (Ray actors, features stored by jobs.generate --metrics):
# measured up to 3e-7 (Ray) and 4.2e-6 (the Inception Score's std, from the generator's batches of 2).
PATH_TOL = 1e-5


def scipy_frechet_of_samples(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance of the np.mean / np.cov Gaussians of two small sample sets, with
    scipy.linalg.sqrtm: the non-zero eigenvalues of S1 S2 are those of the n1 x n1 matrix M M^T,
    M = Xc Yc^T / sqrt((n1 - 1)(n2 - 1)), so sqrtm runs on that instead of a D x D product."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    m = xc @ yc.T / np.sqrt((len(x) - 1) * (len(y) - 1))
    diff = x.mean(0) - y.mean(0)
    traces = np.trace(np.cov(x, rowvar=False)) + np.trace(np.cov(y, rowvar=False))
    return float(diff @ diff + traces - 2 * np.trace(scipy.linalg.sqrtm(m @ m.T).real))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fid")


@pytest.fixture(scope="module", autouse=True)
def feature_cache(workdir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIT_WORKER_CACHE", str(workdir / "cache"))
        yield workdir / "cache"


@pytest.fixture(scope="module")
def pipe(tiny_ckpt: Path):
    return load_pipeline(tiny_ckpt, device="cpu")


def generate_set(tiny_ckpt: Path, out: str, *extra: str) -> None:
    assert generate_main([*GENERATE, "--model", str(tiny_ckpt), "--out", out, *extra]) == 0


@pytest.fixture(scope="module")
def out(workdir: Path, tiny_ckpt: Path) -> Path:
    """The set as `jobs.generate --local` makes it: PNGs, 3 shards."""
    generate_set(tiny_ckpt, str(workdir / "out"))
    return workdir / "out"


def metadata(out: Path):
    return ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")


@pytest.fixture(scope="module")
def generated(out: Path) -> np.ndarray:
    """The set's images in sample order, decoded from its PNGs."""
    table = metadata(out)
    assert table["class_id"].to_pylist() == CLASSES
    keys = table["image_key"].to_pylist()
    return np.stack([np.asarray(Image.open(io.BytesIO((out / key).read_bytes()))) for key in keys])


@pytest.fixture(scope="module")
def real(pipe) -> np.ndarray:
    """Stand-in "real" images: half blocky random colour fields, half tiny-DiT images of classes 2
    and 3 with other seeds, so the sets overlap in part and neither precision nor recall is 0 or 1."""
    blocks = np.random.default_rng(1).integers(0, 256, (N // 2, 4, 4, 3), dtype=np.uint8)
    others = pipe.generate(CLASSES[N // 2 :], list(range(100, 100 + N // 2)), sampler="ddim", steps=5, cfg_scale=1.0)
    return np.concatenate([blocks.repeat(4, axis=1).repeat(4, axis=2), others])


@pytest.fixture(scope="module")
def weights(workdir: Path, generated: np.ndarray, real: np.ndarray) -> Path:
    return random_inception_weights(workdir / "inception.pth", np.concatenate([generated[:6], real[:2]]))


@pytest.fixture(scope="module")
def ref_dir(workdir: Path, real: np.ndarray) -> Path:
    for i, image in enumerate(real):  # one sub-folder per class id: labels for per-class FID
        (workdir / "real" / str(CLASSES[i])).mkdir(parents=True, exist_ok=True)
        (workdir / "real" / str(CLASSES[i]) / f"{i:03d}.png").write_bytes(png_bytes(image))
    return workdir / "real"


def run_fid(out: str | Path, ref: str | Path, weights: Path, *extra: str) -> dict:
    assert fid_main(["--out", str(out), "--ref", str(ref), "--inception-weights", str(weights), *extra]) == 0
    return json.loads(open_storage(str(out)).get("metrics.json"))


@pytest.fixture(scope="module")
def local_metrics(out: Path, ref_dir: Path, weights: Path) -> dict:
    return run_fid(out, ref_dir, weights, "--local", "--per-class")


def copy_set(src: Path, dst: Path) -> Path:
    """The set as jobs.generate leaves it (no features/, no metrics)."""
    for name in ("job.json", "_SUCCESS", "metadata", "images"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def manual_features(weights: Path, generated: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """pool_3 and mixed_6/conv[..., :7] from torch-fidelity's network, run here layer by layer."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    out = {}
    for name, images in (("generated", generated), ("real", real)):
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
            x = (interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False) - 128) / 128
            for layer in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1"):
                x = getattr(net, layer)(x)
            for layer in ("Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b"):
                x = getattr(net, layer)(x)
            x = net.Mixed_6c(x)
            # TF graph "mixed_6" is torch-fidelity's Mixed_6d; its first "conv" the 1x1 branch (ReLU output).
            # ADM keeps [..., :7] of the NHWC tensor and flattens it.
            out[f"{name}_spatial"] = net.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)
            for layer in ("Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
                x = getattr(net, layer)(x)
            out[f"{name}_pool"] = x.flatten(1)
    return {k: v.numpy() for k, v in out.items()}


def test_metrics_equal_torch_fidelity(
    local_metrics: dict, out: Path, ref_dir: Path, weights: Path, manual_features: dict
) -> None:
    from torch_fidelity import calculate_metrics

    expected = calculate_metrics(
        input1=str(out / "images"),
        input2=str(ref_dir),
        isc=True,
        fid=True,
        prc=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        samples_find_deep=True,
        cuda=False,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
    )
    # The random network must give features that differ from image to image, or nothing is compared.
    assert manual_features["generated_pool"].std(0).mean() > 1e-3
    assert local_metrics["inception_score_mean"] > 1.05 and local_metrics["inception_score_std"] > 0.01
    assert local_metrics["fid"] > 0.5
    assert 0.0 < local_metrics["precision"] < 1.0 and 0.0 < local_metrics["recall"] < 1.0
    f = manual_features
    scipy_fid = scipy_frechet_of_samples(f["generated_pool"], f["real_pool"])
    print("ours", {k: local_metrics[k] for k in COMPARED}, "torch-fidelity", expected, "scipy FID", scipy_fid)
    assert local_metrics["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=FID_TOL)
    assert local_metrics["fid"] == pytest.approx(scipy_fid, rel=FID_TOL)
    assert local_metrics["inception_score_mean"] == pytest.approx(expected["inception_score_mean"], rel=IS_TOL)
    assert local_metrics["inception_score_std"] == pytest.approx(expected["inception_score_std"], rel=IS_TOL)
    assert local_metrics["precision"] == pytest.approx(expected["precision"], abs=1e-6)
    assert local_metrics["recall"] == pytest.approx(expected["recall"], abs=1e-6)
    assert local_metrics["num_samples"] == N and local_metrics["complete"] is True
    # The same comparison on a wrong input: one generated image short moves FID by >= 10x the tolerance.
    short = scipy_frechet_of_samples(f["generated_pool"][1:], f["real_pool"])
    assert abs(short / local_metrics["fid"] - 1) > 10 * FID_TOL


def test_sfid_and_adm_reference_batch(
    local_metrics: dict, out: Path, real: np.ndarray, weights: Path, manual_features: dict, workdir: Path
) -> None:
    f = manual_features
    # sFID against the folder: the Fréchet distance of the layer-by-layer spatial features.
    expected_sfid = scipy_frechet_of_samples(f["generated_spatial"], f["real_spatial"])
    assert local_metrics["sfid"] == pytest.approx(expected_sfid, rel=FID_TOL)
    short = scipy_frechet_of_samples(f["generated_spatial"][1:], f["real_spatial"])
    assert abs(short / local_metrics["sfid"] - 1) > 10 * FID_TOL
    # An ADM reference batch made from the same images: statistics as np.mean / np.cov in float64.
    pool, spatial = f["real_pool"].astype(np.float64), f["real_spatial"].astype(np.float64)
    batch = workdir / "VIRTUAL_test16_labeled.npz"
    np.savez(
        batch,
        arr_0=real,
        arr_1=np.asarray(CLASSES),
        mu=pool.mean(0),
        sigma=np.cov(pool, rowvar=False),
        mu_s=spatial.mean(0),
        sigma_s=np.cov(spatial, rowvar=False),
    )
    adm = run_fid(out, batch, weights, "--local", "--per-class")
    assert adm["reference"]["kind"] == "adm-npz"
    # Its mu/sigma come from the one-batch features: FID and sFID move by their float noise.
    for key in COMPARED:
        assert adm[key] == pytest.approx(local_metrics[key], rel=FID_TOL, abs=1e-6), key


def test_per_class_fid(local_metrics: dict, out: Path, manual_features: dict) -> None:
    rows = json.loads((out / local_metrics["per_class_fid"]).read_text())
    assert [r["class_id"] for r in rows] and sorted(r["class_id"] for r in rows) == [0, 1, 2, 3]
    assert [r["fid"] for r in rows] == sorted((r["fid"] for r in rows), reverse=True)  # worst first
    labels = np.asarray(CLASSES)
    for row in rows:
        c = row["class_id"]
        assert row["num_samples"] == row["num_reference"] == N // 4
        assert row["class_name"] == id2label()[c].split(",")[0]  # the checkpoint's name, as jobs.generate stored it
        mine, theirs = manual_features["generated_pool"][labels == c], manual_features["real_pool"][labels == c]
        assert row["fid"] == pytest.approx(scipy_frechet_of_samples(mine, theirs), rel=FID_TOL)
        # Against another class's reference images the same distance is far off.
        other = manual_features["real_pool"][labels == (c + 1) % 4]
        assert abs(scipy_frechet_of_samples(mine, other) / row["fid"] - 1) > 10 * FID_TOL


def test_a_set_larger_than_the_subsample(
    local_metrics: dict, out: Path, ref_dir: Path, weights: Path, manual_features: dict, workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With the subsample cut from 50,000 to 12 samples per side, FID and sFID still come from all 20
    samples (float64 sums), while the Inception Score and precision/recall are those of the 12 samples
    of smallest splitmix64(sample_id) on each side (docs/cli.md, jobs.fid)."""
    from dit_worker.metrics import evaluation
    from dit_worker.metrics.inception_score import inception_score
    from dit_worker.metrics.precision_recall import precision_recall
    from dit_worker.metrics.subsample import subsample_rows

    monkeypatch.setattr(evaluation, "SUBSAMPLE_SIZE", 12)
    monkeypatch.setenv("DIT_WORKER_CACHE", str(workdir / "subsample-cache"))  # the reference cut to 12 too
    copy = copy_set(out, workdir / "subsampled")
    shutil.copytree(out / "features", copy / "features")  # the same per-shard parts: no feature recomputed
    got = run_fid(copy, ref_dir, weights, "--local")
    assert got["num_samples"] == N and got["subsample_num_samples"] == [12, 12]
    for key in ("fid", "sfid"):
        assert got[key] == local_metrics[key], key  # the same sums, added in the same order
    f = manual_features
    fc = torch.load(weights, weights_only=True)["fc.weight"].double().numpy()  # logits: pool @ fc.weight^T
    rows = subsample_rows(np.arange(N), 12)  # generated ids and the reference's image numbers are both 0..N-1
    is_mean, is_std = inception_score(f["generated_pool"][rows].astype(np.float64) @ fc.T)
    precision, recall = precision_recall(f["real_pool"][rows], f["generated_pool"][rows])
    print("subsample rows", rows.tolist(), {k: got[k] for k in COMPARED}, "expected", is_mean, precision, recall)
    assert got["inception_score_mean"] == pytest.approx(is_mean, rel=IS_TOL)
    # The std over splits is a difference of nearly equal scores: its float32-logit noise scales with the
    # score, not with the std (measured 6e-8 absolute on a std of 0.03, here in float64 logits).
    assert got["inception_score_std"] == pytest.approx(is_std, abs=IS_TOL * is_mean)
    assert got["precision"] == pytest.approx(precision, abs=1e-6)
    assert got["recall"] == pytest.approx(recall, abs=1e-6)
    # The same comparison for another rule (the first 12 samples) misses by far more than the tolerance.
    other, _ = inception_score(f["generated_pool"][:12].astype(np.float64) @ fc.T)
    assert abs(other / got["inception_score_mean"] - 1) > 10 * IS_TOL


def test_stored_shard_statistics_are_the_seam(
    local_metrics: dict, out: Path, weights: Path, generated: np.ndarray
) -> None:
    # What the generation job's actor would do for shard 1, batch by batch as images come out.
    resolved = resolve_inception_weights(str(weights))
    acc = FeatureAccumulator(InceptionFeatures(resolved.path, "cpu"), resolved.id)
    for lo in range(SHARD, 2 * SHARD, 3):
        hi = min(lo + 3, 2 * SHARD)
        batch = generated[lo:hi] if lo % 2 else torch.from_numpy(generated[lo:hi])  # numpy, or a generator's tensor
        acc.add(batch, range(lo, hi), CLASSES[lo:hi])
    mine = acc.finish()
    stored = ShardStatistics.from_bytes((out / "features" / "part-00001.npz").read_bytes())  # written by jobs.fid
    assert stored.weights_id == mine.weights_id
    shard = OutputSet.open(str(out)).shards[1]
    assert stored.source_digest == shard_digest(shard.sha256)
    np.testing.assert_array_equal(stored.sample_ids, mine.sample_ids)
    np.testing.assert_array_equal(stored.class_ids, mine.class_ids)
    # Other batch compositions, so float32 rounding of the features only.
    pairs = {
        "pool": (stored.pool, mine.pool),
        "pool outer": (stored.pool_moments.outer, mine.pool_moments.outer),
        "spatial total": (stored.spatial_moments.total, mine.spatial_moments.total),
    }
    for what, (a, b) in pairs.items():
        err = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b)
        assert err < FEATURE_TOL, (what, err)
    # The same comparison against shard 0's features misses by far more.
    other = ShardStatistics.from_bytes((out / "features" / "part-00000.npz").read_bytes())
    assert np.linalg.norm(other.pool - mine.pool) / np.linalg.norm(mine.pool) > 10 * FEATURE_TOL


def test_ray_actors_match_local(
    local_metrics: dict, out: Path, ref_dir: Path, weights: Path, workdir: Path, ray_cluster
) -> None:
    """The real CLI as a user runs it on a cluster: RAY_ADDRESS set, no --local, features on actors."""
    copy = copy_set(out, workdir / "ray-out")
    cache = workdir / "ray-cache"  # a fresh cache: the reference features are computed on the actors too
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the driver on the loopback address the head is bound to.
    env = os.environ | {
        "RAY_ADDRESS": ray_cluster.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "DIT_WORKER_CACHE": str(cache),
    }
    cmd = [sys.executable, "-m", "jobs.fid", "--out", str(copy), "--ref", str(ref_dir), "--inception-weights",
           str(weights), "--num-workers", "1"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Ray: 1 feature actor(s)" in run.stderr
    got = json.loads((copy / "metrics.json").read_text())
    assert sorted(p.name for p in (copy / "features").iterdir()) == [f"part-{i:05d}.npz" for i in range(3)]
    assert list((cache / "fid-reference").glob("*.npz"))
    for key in COMPARED:
        assert got[key] == pytest.approx(local_metrics[key], rel=PATH_TOL, abs=1e-7), key


def test_ray_feature_pool_refuses_what_the_cluster_cannot_place(
    out: Path, ref_dir: Path, weights: Path, workdir: Path, ray_cluster
) -> None:
    """jobs.fid runs on the job's actor pool: too many actors for the 2-CPU head fail at once, exit 2,
    before any feature is computed, instead of waiting forever for room."""
    copy = copy_set(out, workdir / "ray-oversized")
    env = os.environ | {
        "RAY_ADDRESS": ray_cluster.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "DIT_WORKER_CACHE": str(workdir / "ray-oversized-cache"),
    }
    cmd = [sys.executable, "-m", "jobs.fid", "--out", str(copy), "--ref", str(ref_dir), "--inception-weights",
           str(weights), "--num-workers", "5", "--recompute-features"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --num-workers 5 cannot be placed") and "room for 2" in last, last
    assert not (copy / "metrics.json").exists()


def test_s3_set_evaluates_from_stored_statistics(
    local_metrics: dict, out: Path, ref_dir: Path, weights: Path, s3_server, s3_bucket: str, monkeypatch
) -> None:
    """A set on S3 whose images are gone but whose per-shard statistics are stored evaluates, identically."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = open_storage(f"s3://{s3_bucket}/run")
    for path in out.rglob("*"):
        if path.is_file() and path.relative_to(out).parts[0] in ("features", "metadata", "_SUCCESS", "job.json"):
            store.put(path.relative_to(out).as_posix(), path.read_bytes())
    assert not any(store.list("images/"))
    got = run_fid(f"s3://{s3_bucket}/run", ref_dir, weights, "--local")
    assert json.loads(store.get("metrics.json")) == got
    for key in COMPARED:
        assert got[key] == local_metrics[key], key


def test_parquet_set_gives_the_png_sets_metrics_and_a_jpeg_set_is_flagged(
    local_metrics: dict, ref_dir: Path, weights: Path, workdir: Path, tiny_ckpt: Path, caplog
) -> None:
    """--format parquet holds the same PNGs in another container: the same numbers. A JPEG set is
    evaluated, with a warning and `image_formats` in metrics.json, and its numbers move."""
    pq_out = workdir / "parquet-out"
    generate_set(tiny_ckpt, str(pq_out), "--format", "parquet")
    got = run_fid(pq_out, ref_dir, weights, "--local")
    assert got["image_formats"] == local_metrics["image_formats"] == ["png"]
    for key in COMPARED:
        assert got[key] == local_metrics[key], key

    jpeg_out = workdir / "jpeg-out"
    generate_set(tiny_ckpt, str(jpeg_out), "--format", "parquet", "--image-format", "jpeg")
    with caplog.at_level(logging.WARNING, logger="dit_worker.metrics.evaluation"):
        lossy = run_fid(jpeg_out, ref_dir, weights, "--local")
    assert lossy["image_formats"] == ["jpeg"]
    assert "stores jpeg images: compression artefacts shift FID" in caplog.text
    assert abs(lossy["fid"] - local_metrics["fid"]) > 1e3 * 1e-6 * local_metrics["fid"]  # far beyond the tolerance


@pytest.mark.parametrize("where", ["webdataset, local", "png, S3", "webdataset, S3"])
def test_the_same_set_as_webdataset_and_on_s3_scores_the_same(
    where: str, local_metrics: dict, out: Path, ref_dir: Path, weights: Path, tiny_ckpt: Path, workdir: Path,
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """jobs.generate's other formats and storage: the same PNG bytes, so the same features and metrics."""
    fmt, storage = where.split(", ")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    dest = f"s3://{s3_bucket}/set" if storage == "S3" else str(workdir / f"set-{fmt}")
    generate_set(tiny_ckpt, dest, "--format", fmt)
    assert [s.sha256 for s in OutputSet.open(dest).shards] == [s.sha256 for s in OutputSet.open(str(out)).shards]
    got = run_fid(dest, ref_dir, weights, "--local")
    assert got["num_samples"] == N
    for key in COMPARED:
        assert got[key] == local_metrics[key], key


def test_generation_with_metrics_stores_features_that_jobs_fid_reuses(
    tiny_ckpt: Path, workdir: Path, weights: Path, ref_dir: Path
) -> None:
    """`jobs.generate --metrics`: features computed on the worker from each generated batch, stored
    per shard before its metadata part; jobs.fid merges them and gets what it gets from the images."""
    from jobs.generate import main as generate_main

    out = workdir / "generated-with-metrics"
    args = ["--local", "--model", tiny_ckpt, "--classes", "0,1,2,3", "--per-class", "3", "--sampler", "ddim",
            "--steps", "3", "--cfg-scale", "1.0", "--device", "cpu", "--dtype", "float32", "--shard-size", "5",
            "--batch-size", "2", "--metrics", "--inception-weights", weights, "--out", out]  # fmt: skip
    assert generate_main([str(a) for a in args]) == 0
    parts = sorted((out / "features").iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}.npz" for i in range(3)]  # 12 samples, shards of 5
    output = OutputSet.open(str(out))
    for part, shard in zip(parts, output.shards, strict=True):
        stats = ShardStatistics.from_bytes(part.read_bytes())
        assert stats.source_digest == shard_digest(shard.sha256)
        assert stats.sample_ids.tolist() == list(range(5 * shard.index, min(5 * shard.index + 5, 12)))
    stored = {p.name: p.stat().st_mtime_ns for p in parts}

    reused = run_fid(out, ref_dir, weights, "--local")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == stored  # merged, not redone
    recomputed = run_fid(copy_set(out, workdir / "generated-no-features"), ref_dir, weights, "--local")
    assert reused["num_samples"] == recomputed["num_samples"] == 12
    for key in COMPARED:
        assert reused[key] == pytest.approx(recomputed[key], rel=PATH_TOL, abs=1e-7), key


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metrics", "--inception-weights", "/nonexistent/pt_inception.pth"], "--inception-weights"),
        (["--inception-weights", "/nonexistent/pt_inception.pth"], "--inception-weights is for --metrics"),
    ],
)
def test_generation_metrics_flags_are_checked_before_anything_is_written(
    tiny_ckpt: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.generate import main as generate_main

    out = tmp_path / "out"
    args = ["--local", "--model", str(tiny_ckpt), "--classes", "1", "--per-class", "1", "--out", str(out), *flags]
    assert generate_main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
