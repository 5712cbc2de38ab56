"""`jobs.fid --set-metrics`: FD-DINOv2, CMMD and the mean CLIP score of a text-to-image set through
the one feature pool, against independent computations on the same images and tiny random models;
stored embedding parts are reused; bad flags are refused in one line before any model loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hf_models import save_tiny_clip, save_tiny_dinov2
from inception_weights import random_inception_weights
from metric_references import blocky, direct_cmmd, direct_dinov2_features, scipy_frechet, torchmetrics_clip_scores
from output_sets import png_bytes, write_output_set
from test_set_metrics import CLIP_TOL, CMMD_TOL, FD_TOL

from dit_worker.checkpoints.tiny_tokenizers import WORDS
from dit_worker.storage.objects import open_storage
from jobs.fid import main as fid_main

N, REF = 24, 20
SET = blocky(N, seed=11)
REFERENCE = blocky(REF, seed=12, cells=2) // 2 + 60  # another distribution: every metric far from 0
# CMMD from float32 embeddings made in other batches or threads: their rounding only.
CMMD_FLOAT32_TOL = 1e-5
PROMPTS = [f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]} by the sea" for i in range(N)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fid-set-metrics")


@pytest.fixture(scope="module", autouse=True)
def feature_cache(workdir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIT_WORKER_CACHE", str(workdir / "cache"))
        yield


@pytest.fixture(scope="module")
def models(workdir: Path) -> dict[str, Path]:
    return {
        "clip": save_tiny_clip(workdir / "clip", SET[:8], PROMPTS[:8]),
        "dinov2": save_tiny_dinov2(workdir / "dinov2"),
        "inception": random_inception_weights(workdir / "inception.pth", np.concatenate([SET[:4], REFERENCE[:4]])),
    }


@pytest.fixture(scope="module")
def t2i_set(workdir: Path) -> Path:
    out = workdir / "set"
    write_output_set(open_storage(str(out)), SET, [-1] * N, shard_size=8, prompts=PROMPTS)
    return out


@pytest.fixture(scope="module")
def ref_dir(workdir: Path) -> Path:
    (workdir / "ref").mkdir()
    for i, image in enumerate(REFERENCE):
        (workdir / "ref" / f"{i:03d}.png").write_bytes(png_bytes(image))
    return workdir / "ref"


def fid_args(out: Path, ref: Path, models: dict[str, Path], *extra: str) -> list[str]:
    return ["--out", str(out), "--ref", str(ref), "--local", "--inception-weights", str(models["inception"]),
            "--dinov2-model", str(models["dinov2"]), "--clip-model", str(models["clip"]), "--batch-size", "7",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def metrics(t2i_set: Path, ref_dir: Path, models: dict[str, Path]) -> dict:
    assert fid_main(fid_args(t2i_set, ref_dir, models, "--set-metrics", "all")) == 0
    return json.loads((t2i_set / "metrics.json").read_text())


def direct_clip_embeddings(clip_dir: Path, images: np.ndarray) -> np.ndarray:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        pixels = processor(images=[torch.from_numpy(i).permute(2, 0, 1) for i in images], return_tensors="pt")
        return model.get_image_features(**pixels).pooler_output.numpy()


def test_set_metrics_equal_direct_computations(metrics: dict, models: dict[str, Path]) -> None:
    fd = scipy_frechet(
        direct_dinov2_features(models["dinov2"], SET), direct_dinov2_features(models["dinov2"], REFERENCE)
    )
    x, y = direct_clip_embeddings(models["clip"], SET), direct_clip_embeddings(models["clip"], REFERENCE)
    scores = torchmetrics_clip_scores(models["clip"], SET, PROMPTS)
    print({k: metrics[k] for k in ("fid", "fd_dinov2", "cmmd", "clip_score")}, "direct", fd, direct_cmmd(x, y))
    assert metrics["fd_dinov2"] == pytest.approx(fd, rel=FD_TOL)
    # CMMD on embeddings from another batch composition: float32 rounding of the embeddings only.
    assert metrics["cmmd"] == pytest.approx(direct_cmmd(x, y), rel=CMMD_FLOAT32_TOL)
    assert metrics["clip_score"] == pytest.approx(scores.mean(), abs=CLIP_TOL)
    assert metrics["clip_score_count"] == N and metrics["cmmd_num_samples"] == [N, REF]
    assert metrics["fd_dinov2"] > 0.1 and metrics["cmmd"] > 0.1 and metrics["clip_score"] > 1
    # Against a perturbed set (its best-scored image inverted) each metric misses by far more than its tolerance.
    other = SET.copy()
    other[int(np.argmax(scores))] = 255 - other[int(np.argmax(scores))]
    fd_other = scipy_frechet(
        direct_dinov2_features(models["dinov2"], other), direct_dinov2_features(models["dinov2"], REFERENCE)
    )
    assert abs(fd_other / metrics["fd_dinov2"] - 1) > 100 * FD_TOL
    cmmd_other = direct_cmmd(direct_clip_embeddings(models["clip"], other), y)
    assert abs(cmmd_other / metrics["cmmd"] - 1) > 100 * CMMD_FLOAT32_TOL
    assert abs(torchmetrics_clip_scores(models["clip"], other, PROMPTS).mean() - metrics["clip_score"]) > 10 * CLIP_TOL
    assert metrics["command"].startswith("python -m jobs.fid --out ")
    assert CMMD_TOL  # the float64 tolerance of test_set_metrics: here embeddings come from other batches


def test_stored_parts_are_reused(metrics: dict, t2i_set: Path, ref_dir: Path, models: dict[str, Path]) -> None:
    parts = sorted(p.name for p in (t2i_set / "features").iterdir())
    assert parts == [f"{k}part-{i:05d}.npz" for k in ("clip-", "dinov2-", "") for i in range(3)]
    stamps = {p.name: p.stat().st_mtime_ns for p in (t2i_set / "features").iterdir()}
    assert fid_main(fid_args(t2i_set, ref_dir, models, "--set-metrics", "fd_dinov2,cmmd,clip_score")) == 0
    again = json.loads((t2i_set / "metrics.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in (t2i_set / "features").iterdir()} == stamps
    for key in ("fid", "fd_dinov2", "cmmd", "clip_score"):
        assert again[key] == metrics[key], key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set-metrics", "fd_dinov3"], "fd_dinov3"),
        (["--set-metrics", "fd_dinov2", "--dinov2-model", "/nonexistent/dinov2"], "--dinov2-model /nonexistent"),
        (["--set-metrics", "cmmd", "--clip-model", "INCEPTION"], "not a transformers model directory"),
        (["--set-metrics", "cmmd", "--clip-model", "DINOV2"], "a 'dinov2' model; expected a 'clip' model"),
    ],
)
def test_bad_set_metric_flags_exit_2_in_one_line(
    t2i_set: Path, ref_dir: Path, models: dict[str, Path], extra: list[str], message: str, capsys
) -> None:
    # The last --clip-model / --dinov2-model wins: a file, or the other kind of model, where a CLIP belongs.
    named = {"INCEPTION": str(models["inception"]), "DINOV2": str(models["dinov2"])}
    assert fid_main([*fid_args(t2i_set, ref_dir, models), *(named.get(a, a) for a in extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_clip_score_is_refused_for_a_class_set(workdir: Path, ref_dir: Path, models: dict[str, Path], capsys) -> None:
    out = workdir / "class-set"
    write_output_set(open_storage(str(out)), SET, [i % 4 for i in range(N)], shard_size=8)
    assert fid_main(fid_args(out, ref_dir, models, "--set-metrics", "clip_score")) == 2
    err = capsys.readouterr().err
    assert "clip_score" in err and "without" in err and not (out / "features").exists()


def test_ray_actors_match_local(
    metrics: dict, t2i_set: Path, ref_dir: Path, models: dict[str, Path], workdir: Path, ray_cluster
) -> None:
    """The same metrics from FeatureActors on Ray (the CLI as on a cluster: RAY_ADDRESS, no --local),
    with fresh per-shard parts and reference cache."""
    copy = workdir / "ray-set"
    shutil.copytree(t2i_set, copy, ignore=shutil.ignore_patterns("features", "metrics.json", "report"))
    env = os.environ | {
        "RAY_ADDRESS": ray_cluster.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "DIT_WORKER_CACHE": str(workdir / "ray-cache"),
    }
    args = [a for a in fid_args(copy, ref_dir, models, "--set-metrics", "all", "--num-workers", "1") if a != "--local"]
    run = subprocess.run(
        [sys.executable, "-m", "jobs.fid", *args],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((copy / "metrics.json").read_text())
    assert len(list((copy / "features").glob("clip-part-*.npz"))) == 3
    # Same batches, but an actor runs torch on its one CPU: float32 sums in another order moved CMMD by
    # 1.1e-7 relative once (CI). The tolerances of the direct comparison, which a perturbed set misses by far.
    assert got["fd_dinov2"] == pytest.approx(metrics["fd_dinov2"], rel=FD_TOL)
    assert got["cmmd"] == pytest.approx(metrics["cmmd"], rel=CMMD_FLOAT32_TOL)
    assert got["clip_score"] == pytest.approx(metrics["clip_score"], abs=CLIP_TOL)
