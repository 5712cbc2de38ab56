"""jobs.export_npz: the ADM evaluator's sample batch, streamed from local or S3 output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from output_sets import jpeg_bytes, write_output_set
from PIL import Image

from dit_worker.output.npz_stream import open_npz_array
from dit_worker.storage.objects import open_storage
from jobs.export_npz import main as export_main

ROOT = Path(__file__).resolve().parents[1]


def scrambled_set(n: int = 30, h: int = 8, w: int = 12) -> tuple[np.ndarray, list[int], list[int]]:
    """Non-square images (catches H/W swaps) whose sample ids interleave across shards."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    ids = (rng.permutation(n) * 3 + 5).tolist()
    return images, ids, [i % 11 for i in ids]


def check_npz(path: Path, images: np.ndarray, ids: list[int], classes: list[int]) -> None:
    order = np.argsort(ids)
    with np.load(path) as npz:
        assert npz["arr_0"].dtype == np.uint8
        assert npz["arr_0"].shape == images.shape
        np.testing.assert_array_equal(npz["arr_0"], images[order])  # bytes and order
        np.testing.assert_array_equal(npz["arr_1"], np.asarray(classes)[order])


@pytest.mark.parametrize(
    "fmt",
    ["png", "webdataset", "webdataset, image_key = tar key only", "parquet", "parquet, image_key = data part only"],
)
def test_export_npz_rows_are_the_images_in_sample_id_order(tmp_path: Path, fmt: str) -> None:
    images, ids, classes = scrambled_set()
    write_output_set(
        open_storage(str(tmp_path / "out")),
        images,
        classes,
        shard_size=7,
        sample_ids=ids,
        fmt=fmt.split(",")[0],
        member_in_key="only" not in fmt,
    )
    assert export_main(["--out", str(tmp_path / "out"), "--npz", str(tmp_path / "samples.npz")]) == 0
    check_npz(tmp_path / "samples.npz", images, ids, classes)
    # The ADM evaluator streams arr_0 with numpy.lib.format's header readers: ours must parse there too.
    with open_npz_array(tmp_path / "samples.npz", "arr_0") as arr:
        assert arr.shape == images.shape
        np.testing.assert_array_equal(arr.read(4), images[np.argsort(ids)[:4]])


@pytest.mark.parametrize("fmt", ["png", "parquet"])
def test_export_npz_from_s3(
    tmp_path: Path, s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    images, ids, classes = scrambled_set(n=12)
    write_output_set(open_storage(f"s3://{s3_bucket}/run"), images, classes, shard_size=5, sample_ids=ids, fmt=fmt)
    assert export_main(["--out", f"s3://{s3_bucket}/run", "--npz", str(tmp_path / "s3.npz")]) == 0
    check_npz(tmp_path / "s3.npz", images, ids, classes)


@pytest.mark.parametrize("fmt", ["png", "parquet"])
def test_export_npz_of_a_jpeg_set_holds_the_decoded_jpegs(tmp_path: Path, fmt: str) -> None:
    """Lossy sets export what a reader decodes from them (FID on them is not comparable: docs/output.md)."""
    images, ids, classes = scrambled_set(n=8)
    out = tmp_path / "out"
    store = open_storage(str(out))
    write_output_set(store, images, classes, shard_size=3, sample_ids=ids, fmt=fmt, image_format="jpeg")
    assert export_main(["--out", str(out), "--npz", str(tmp_path / "j.npz")]) == 0
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(jpeg_bytes(image)))) for image in images])
    check_npz(tmp_path / "j.npz", decoded, ids, classes)
    assert np.abs(decoded.astype(int) - images).mean() > 5  # random pixels: JPEG changes them, so the check can fail


def test_export_npz_refuses_an_incomplete_set_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, ids, classes = scrambled_set(n=25)
    out = tmp_path / "out"
    write_output_set(
        open_storage(str(out)), images, classes, shard_size=5, sample_ids=ids, complete=False, shards=[0, 2, 3]
    )
    assert export_main(["--out", str(out), "--npz", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "incomplete (no _SUCCESS): 3 shard(s) committed (15 samples" in err and "--allow-partial" in err
    assert not (tmp_path / "x.npz").exists()
    assert export_main(["--out", str(out), "--npz", str(tmp_path / "x.npz"), "--allow-partial"]) == 0
    keep = [i for s in (0, 2, 3) for i in range(5 * s, 5 * s + 5)]
    check_npz(tmp_path / "x.npz", images[keep], [ids[i] for i in keep], [classes[i] for i in keep])


def test_export_npz_refuses_a_corrupt_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, ids, classes = scrambled_set(n=6)
    store = open_storage(str(tmp_path / "out"))
    write_output_set(store, images, classes, shard_size=3, sample_ids=ids)
    key = f"images/00001/{ids[4]:08d}.png"
    store.put(key, store.get(f"images/00000/{ids[0]:08d}.png"))  # a valid PNG, but not the committed one
    assert export_main(["--out", str(tmp_path / "out"), "--npz", str(tmp_path / "x.npz")]) == 2
    assert f"{key}: sha256 differs from metadata part-00001" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob(".x.npz*"))


def peak_rss_of_export(out: str | Path, npz: Path, env: dict[str, str] | None = None) -> int:
    """Peak resident set (bytes) of a fresh `python -m jobs.export_npz` process.

    VmHWM, the high-water mark of the process's own address space, not getrusage's ru_maxrss: Linux
    carries ru_maxrss across fork+exec, so it would report the (large) pytest parent's size instead.
    """
    code = (
        "import sys\n"
        "from jobs.export_npz import main\n"
        f"rc = main(['--out', {str(out)!r}, '--npz', {str(npz)!r}])\n"
        "print('PEAK', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
        "sys.exit(rc)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | (env or {}),
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split("PEAK")[-1]) * 1024  # kB


@pytest.mark.parametrize(
    ("fmt", "storage", "sizes"),
    [("png", "local", (200, 2000)), ("webdataset", "local", (200, 1200)), ("webdataset", "S3", (200, 1200))],
)
def test_export_npz_peak_memory_does_not_grow_with_the_set(
    tmp_path: Path, fmt: str, storage: str, sizes: tuple[int, int], s3_server, s3_bucket: str
) -> None:
    """More images of 128x128 in shards of 100: peak RSS grows by a small fraction of the added pixels.
    A webdataset shard's tar is read whole, so both of its sizes span several shards. Measured on this
    machine: png local 6.9 MiB more for 84 MiB more pixels (2,000 vs 200); webdataset local 3.6 MiB,
    webdataset on S3 3.9 MiB, for 47 MiB more (1,200 vs 200)."""
    rng = np.random.default_rng(1)
    side, shard = 128, 100
    env = s3_server.env() if storage == "S3" else {}
    peaks = {}
    for n in sizes:
        out = f"s3://{s3_bucket}/out{n}" if storage == "S3" else str(tmp_path / f"out{n}")
        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            write_output_set(open_storage(out), images, [i % 1000 for i in range(n)], shard_size=shard, fmt=fmt)
        del images
        peaks[n] = peak_rss_of_export(out, tmp_path / f"s{n}.npz", env)
        with open_npz_array(tmp_path / f"s{n}.npz", "arr_0") as arr:
            assert arr.shape == (n, side, side, 3)
    small, large = sizes
    growth, data_growth = peaks[large] - peaks[small], (large - small) * side * side * 3
    print(f"{fmt}, {storage}: peak RSS {small} images {peaks[small] / 2**20:.1f} MiB, {large} images "
          f"{peaks[large] / 2**20:.1f} MiB; growth {growth / 2**20:.1f} MiB for {data_growth / 2**20:.1f} MiB "
          "more pixels")  # fmt: skip
    assert growth < 0.15 * data_growth


@pytest.mark.parametrize("fmt", ["png", "webdataset"])
def test_hand_built_sets_match_what_jobs_generate_writes(tiny_ckpt: Path, tmp_path: Path, fmt: str) -> None:
    """The layout output_sets.py builds is the one jobs.generate writes: the same keys, the same
    image keys in the metadata, and the same exported arrays from the same pixels."""
    from jobs.generate import main as generate_main

    made, built = tmp_path / "made", tmp_path / "built"
    args = ["--local", "--model", str(tiny_ckpt), "--classes", "207,879", "--per-class", "3", "--sampler", "ddim",
            "--steps", "2", "--device", "cpu", "--shard-size", "4", "--format", fmt, "--out", str(made)]  # fmt: skip
    assert generate_main(args) == 0
    assert export_main(["--out", str(made), "--npz", str(tmp_path / "made.npz")]) == 0
    with np.load(tmp_path / "made.npz") as npz:
        images, classes = npz["arr_0"], npz["arr_1"].tolist()
    write_output_set(open_storage(str(built)), images, classes, shard_size=4, fmt=fmt)
    assert export_main(["--out", str(built), "--npz", str(tmp_path / "built.npz")]) == 0
    check_npz(tmp_path / "built.npz", images, list(range(6)), classes)

    def keys(root: Path) -> list[str]:  # the set, not the writing run's lease (its lock file) and commit index
        files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name[0] != ".")
        return sorted(k for k in files if k != "_lease.json" and not k.startswith("index/"))

    assert keys(made) == keys(built)
    made_table = pq.read_table(made / "metadata" / "part-00001.parquet")
    built_table = pq.read_table(built / "metadata" / "part-00001.parquet")
    assert made_table["image_key"].to_pylist() == built_table["image_key"].to_pylist()
    assert set(built_table.column_names) <= set(made_table.column_names)
