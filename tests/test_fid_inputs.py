"""jobs.fid refuses bad inputs with a clear message, exit code 2, before any feature is computed.

Every run here names an Inception weights file that does not exist: an input error reported instead
of the missing-weights error proves the input was checked first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from output_sets import png_bytes, write_output_set

from dit_worker.storage.objects import open_storage
from jobs.fid import main as fid_main

MISSING_WEIGHTS = "/nonexistent/inception.pth"


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    write_output_set(open_storage(str(out)), rng.integers(0, 256, (16, 16, 16, 3), np.uint8), [0, 1] * 8, shard_size=8)
    return out


def image_folder(path: Path, n: int, side: int, labelled: bool = True) -> Path:
    rng = np.random.default_rng(side)
    for i in range(n):
        sub = path / str(i % 2) if labelled else path
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:03d}.png").write_bytes(png_bytes(rng.integers(0, 256, (side, side, 3), np.uint8)))
    return path


def adm_batch(path: Path, keys: tuple[str, ...] = ("mu", "sigma", "mu_s", "sigma_s", "arr_0"), side: int = 16) -> Path:
    arrays = {
        "mu": np.zeros(2048),
        "sigma": np.eye(2048),
        "mu_s": np.zeros(2023),
        "sigma_s": np.eye(2023),
        "arr_0": np.zeros((4, side, side, 3), np.uint8),
    }
    np.savez(path, **{k: arrays[k] for k in keys})
    return path


def run_fid(capsys: pytest.CaptureFixture, out: Path, ref: Path | str, *extra: str) -> str:
    rc = fid_main(["--out", str(out), "--ref", str(ref), "--inception-weights", MISSING_WEIGHTS, "--local", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not (out / "metrics.json").exists()
    return err


def test_reference_batch_without_mu_sigma(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    err = run_fid(capsys, small_set, adm_batch(tmp_path / "ref.npz", keys=("arr_0", "mu_s", "sigma_s")))
    assert "reference batch lacks mu, sigma (it has arr_0, mu_s, sigma_s)" in err
    assert "accepted: an ADM reference batch .npz with mu, sigma" in err and "folder / s3:// prefix" in err


def test_reference_batch_with_wrong_shapes(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(64), sigma=np.eye(64), mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    assert "mu has shape (64,), expected (2048,)" in run_fid(capsys, small_set, path)


def test_image_size_mismatch_with_a_folder(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    err = run_fid(capsys, small_set, image_folder(tmp_path / "real", 6, side=32))
    assert "image size mismatch" in err and "has 16x16 images" in err and "has 32x32" in err


def test_image_size_mismatch_with_a_reference_batch(
    tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture
) -> None:
    err = run_fid(capsys, small_set, adm_batch(tmp_path / "ref512.npz", side=24))
    assert "image size mismatch" in err and "16x16" in err and "24x24" in err


def test_incomplete_set_is_refused_unless_allowed(
    tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture
) -> None:
    (small_set / "_SUCCESS").unlink()
    ref = image_folder(tmp_path / "real", 6, side=16)
    err = run_fid(capsys, small_set, ref)
    assert "incomplete (no _SUCCESS): 2 shard(s) committed (16 samples" in err and "--allow-partial" in err
    # Allowed: the set check passes and the next check, the weights file, is what fails.
    err = run_fid(capsys, small_set, ref, "--allow-partial")
    assert f"--inception-weights {MISSING_WEIGHTS}: no such file" in err


def test_not_an_output_and_missing_reference(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    err = run_fid(capsys, tmp_path / "empty", small_set)
    assert "not a dit-worker output (no metadata/part-*.parquet and no _SUCCESS)" in err
    assert "--ref /nope.npz: no such file" in run_fid(capsys, small_set, Path("/nope.npz"))
    assert "no images (.png, .jpg, .jpeg, .webp) found" in run_fid(capsys, small_set, tmp_path / "empty")


def test_per_class_needs_reference_labels(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    ref = image_folder(tmp_path / "flat", 6, side=16, labelled=False)
    assert "--per-class needs class ids" in run_fid(capsys, small_set, ref, "--per-class")


class NotATensor:
    """Anything torch.load(weights_only=True) must refuse to unpickle."""


def test_inception_weights_are_checked_safely(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    ref = image_folder(tmp_path / "real", 6, side=16)
    pickled = tmp_path / "pickled.pth"
    torch.save({"fc.weight": NotATensor()}, pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, wrong)
    for path, message in ((pickled, "refusing to load"), (wrong, "not torch-fidelity Inception-v3 weights")):
        rc = fid_main(["--out", str(small_set), "--ref", str(ref), "--inception-weights", str(path), "--local"])
        assert rc == 2
        assert message in capsys.readouterr().err


def test_reference_folder_on_s3_reads_like_a_local_one(tmp_path: Path, s3_server, s3_bucket: str, monkeypatch) -> None:
    from dit_worker.metrics.reference import open_reference

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    local = image_folder(tmp_path / "real", 6, side=16)
    bucket = open_storage(f"s3://{s3_bucket}/real")
    for path in local.rglob("*.png"):
        bucket.put(path.relative_to(local).as_posix(), path.read_bytes())
    a, b = open_reference(str(local)), open_reference(f"s3://{s3_bucket}/real")
    assert (a.kind, a.image_size, a.num_images, a.has_labels) == (b.kind, b.image_size, b.num_images, b.has_labels)
    assert a.keys == b.keys and a.class_ids == b.class_ids == (0, 0, 0, 1, 1, 1)  # type: ignore[attr-defined]


def test_s3_reference_batch_and_weights_are_checked(
    tmp_path: Path, small_set: Path, s3_server, s3_bucket: str, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIT_WORKER_CACHE", str(tmp_path / "cache"))
    bucket = open_storage(f"s3://{s3_bucket}/refs")
    bucket.put("stats-only.npz", adm_batch(tmp_path / "a.npz", keys=("arr_0", "sigma")).read_bytes())
    err = run_fid(capsys, small_set, f"s3://{s3_bucket}/refs/stats-only.npz")
    assert "reference batch lacks mu, mu_s, sigma_s (it has arr_0, sigma)" in err
    assert list((tmp_path / "cache" / "references").glob("*/stats-only.npz"))  # copied once to the node cache
    ref = image_folder(tmp_path / "real", 6, side=16)
    missing = f"s3://{s3_bucket}/weights/inception.pth"
    assert fid_main(["--out", str(small_set), "--ref", str(ref), "--inception-weights", missing, "--local"]) == 2
    assert f"--inception-weights {missing}: no such object" in capsys.readouterr().err
