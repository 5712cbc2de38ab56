"""`python -m jobs.generate --local`: output layout, resume, refusals and bad inputs, on local folders
and SeaweedFS. The job's own entry point runs in-process (main) or as a subprocess; nothing is faked."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_storage import unwritable_folder

from dit_worker.driver.config import JobConfig
from dit_worker.output.verify import uncommit
from dit_worker.storage.objects import open_storage
from jobs.generate import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--dtype", "float32"]
METADATA_TYPES = {
    "sample_id": pa.int64(),
    "class_id": pa.int32(),
    "class_name": pa.string(),
    "seed": pa.int64(),
    "image_key": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "sha256": pa.string(),
    "sampler": pa.string(),
    "steps": pa.int32(),
    "cfg_scale": pa.float32(),
}


def generate(*args: object) -> int:
    return main([str(a) for a in args])


def forget(out: Path, shard: int) -> None:
    """Make `shard` pending again, as a driver that died before recording its commit leaves it."""
    uncommit(open_storage(str(out)), [shard])


def snapshot(out: Path) -> dict[str, str]:
    """key -> etag (size + mtime_ns) of every object under OUT but the lease, which each run renews."""
    return {o.key: o.etag for o in open_storage(str(out)).list("") if o.key != "_lease.json"}


def metadata(out: Path) -> pa.Table:
    return ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")


def test_local_run_writes_the_spec_layout(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "jobs.generate", "--local", "--model", str(tiny_ckpt),
        "--classes", "golden retriever,umbrella", "--per-class", "3", "--sampler", "ddim", "--steps", "2",
        "--shard-size", "4", "--batch-size", "3", "--out", str(out),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    outside = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "samples: 100%" in proc.stderr  # the progress bar, one line per redraw off a terminal

    job = json.loads((out / "job.json").read_text())
    assert job["fingerprint"]["steps"] == 2 and job["num_shards"] == 2
    table = metadata(out)
    assert {name: table.schema.field(name).type for name in METADATA_TYPES} == METADATA_TYPES
    assert table["sample_id"].to_pylist() == list(range(6))
    assert table["class_id"].to_pylist() == [207] * 3 + [879] * 3
    assert table["class_name"].to_pylist() == ["golden retriever"] * 3 + ["umbrella"] * 3
    assert table["seed"].to_pylist() == list(range(6))  # --seed 0: seed = sample_id
    expected_keys = [f"images/{i // 4:05d}/{i:08d}.png" for i in range(6)]
    assert table["image_key"].to_pylist() == expected_keys
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")) == expected_keys
    assert sorted(p.name for p in (out / "metadata").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    for row in table.to_pylist():
        data = (out / row["image_key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert Image.open(io.BytesIO(data)).size == (row["width"], row["height"]) == (16, 16)
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["samples"] == 6 and summary["shards"] == 2 and summary["retries"] == 0
    # Throughput is the samples over the job's own wall time, which lies inside the process's.
    assert 0 < summary["run_time_s"] <= summary["wall_time_s"] < outside
    assert summary["images_per_s"] == pytest.approx(6 / summary["wall_time_s"], rel=1e-3, abs=1e-3)
    assert summary["workers_ran"] == 1 and summary["images_per_s_per_worker"] == summary["images_per_s"]
    assert json.loads(proc.stdout) == summary


def test_resume_runs_only_the_pending_shards(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "1,2,3", "--per-class", "3", *FAST, "--shard-size", "2"]
    assert generate(*args, "--batch-size", "2", "--out", out) == 0
    first = snapshot(out)
    shard2 = {k: (out / k).read_bytes() for k in first if k.startswith("images/00002/")}
    # A shard whose worker died before its commit: images maybe written, not in the commit index.
    forget(out, 2)
    (out / "images" / "00002" / "00000004.png").unlink()

    assert generate(*args, "--batch-size", "1", "--out", out) == 0  # batch size may change on resume
    summary = json.loads((out / "_SUCCESS").read_text())
    assert (summary["shards_generated"], summary["shards_skipped"], summary["samples_generated"]) == (1, 4, 2)
    after = snapshot(out)
    untouched = {k: v for k, v in first.items() if "00002" not in k and k != "_SUCCESS" and not k.startswith("index/")}
    assert {k: after[k] for k in untouched} == untouched
    assert {k: (out / k).read_bytes() for k in shard2} == shard2
    assert metadata(out)["sample_id"].to_pylist() == list(range(9))

    # A driver that died after the last commit, before _SUCCESS: the rerun only writes the summary.
    (out / "_SUCCESS").unlink()
    before = snapshot(out)
    assert generate(*args, "--batch-size", "2", "--out", out) == 0
    assert json.loads((out / "_SUCCESS").read_text())["shards_generated"] == 0
    rewritten = ("_SUCCESS", "index/committed.bits")  # the summary, and the index's snapshot (same flags)
    assert {k: v for k, v in snapshot(out).items() if k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten
    }

    # A rerun on the complete set says it made nothing (not the earlier run's counts), writes nothing.
    complete = snapshot(out)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.generate", *map(str, args), "--batch-size", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rerun = json.loads(proc.stdout)
    assert (rerun["already_complete"], rerun["samples_generated"], rerun["shards_skipped"]) == (True, 0, 5)
    assert snapshot(out) == complete


def test_rerun_with_a_different_configuration_is_refused(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "1,2", "--per-class", "2", "--out", out]
    assert generate(*args, *FAST, "--shard-size", "2") == 0
    before = snapshot(out)
    capsys.readouterr()
    assert generate(*args, "--sampler", "ddim", "--steps", "3", "--dtype", "float32", "--shard-size", "3") == 2
    err = capsys.readouterr().err
    assert "different configuration" in err
    assert "steps: 2 there, 3 now" in err and "shard_size: 2 there, 3 now" in err
    assert generate(*args, *FAST, "--shard-size", "2", "--seed", "1") == 2
    assert "manifest_sha256" in capsys.readouterr().err
    assert snapshot(out) == before
    (out / "job.json").unlink()  # parts of an unknown job: refused too
    assert generate(*args, *FAST, "--shard-size", "2") == 2
    assert "holds metadata parts but no job.json" in capsys.readouterr().err


def test_webdataset_commits_one_tar_per_shard(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "207", "--per-class", "5", *FAST, "--shard-size", "3"]
    assert generate(*args, "--format", "webdataset", "--out", out) == 0
    assert not (out / "images").exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    table = metadata(out)
    for row in table.to_pylist():
        tar_key, member = row["image_key"].split("#")
        with tarfile.open(out / tar_key) as tar:
            png = tar.extractfile(member).read()
            meta = json.load(tar.extractfile(member.replace(".png", ".json")))
        assert hashlib.sha256(png).hexdigest() == row["sha256"]
        assert (meta["sample_id"], meta["class_id"], meta["seed"]) == (row["sample_id"], 207, row["seed"])
    with tarfile.open(out / "shards" / "00001.tar") as tar:
        assert tar.getnames() == ["00000003.png", "00000003.json", "00000004.png", "00000004.json"]

    png_out = tmp_path / "png"
    assert generate(*args, "--out", png_out) == 0  # same pixels either way
    assert table["sha256"].to_pylist() == metadata(png_out)["sha256"].to_pylist()


@pytest.mark.parametrize(("fmt", "expected"), [("png", 1000), ("webdataset", 4000), ("parquet", 4000)])
def test_shard_size_defaults_to_the_formats(fmt: str, expected: int) -> None:
    """A container format holds a shard in one object: bigger default shards, fewer objects per set."""
    base = {"model": "m", "out": "o", "per_class": 1, "format": fmt}
    assert JobConfig.model_validate(base).shard_size == expected
    assert JobConfig.model_validate(base | {"shard_size": 7}).shard_size == 7  # given: kept


def test_parquet_commits_one_data_part_per_shard_and_resumes(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "207", "--per-class", "5", *FAST, "--shard-size", "3"]
    assert generate(*args, "--format", "parquet", "--out", out) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != ".") == [
        "_SUCCESS",
        "_lease.json",
        "data/part-00000.parquet",
        "data/part-00001.parquet",
        "index/committed.bits",
        "job.json",
        "metadata/part-00000.parquet",
        "metadata/part-00001.parquet",
    ]  # fmt: skip (hidden: the lease's lock file)
    table = metadata(out)
    assert table["image_key"].to_pylist() == [f"data/part-{i // 3:05d}.parquet#{i:08d}.png" for i in range(5)]
    data = pq.ParquetFile(out / "data" / "part-00001.parquet")
    features = json.loads(data.schema_arrow.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["sample_id"] == {"dtype": "int64", "_type": "Value"}
    assert data.schema_arrow.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = data.read().to_pylist()
    assert [r["image"]["path"] for r in rows] == ["00000003.png", "00000004.png"]
    meta = {r["sample_id"]: r for r in table.to_pylist()}
    for row in rows:  # the metadata columns, plus the image whose sha256 the metadata part holds
        assert {k: row[k] for k in meta[row["sample_id"]]} == meta[row["sample_id"]]
        assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["sha256"]

    png_out = tmp_path / "png"
    assert generate(*args, "--out", png_out) == 0  # the same PNG bytes as --format png
    assert table["sha256"].to_pylist() == metadata(png_out)["sha256"].to_pylist()

    # A worker that died after writing shard 1's data part, before its metadata part: rerun rewrites it.
    kept = {k: v for k, v in snapshot(out).items() if "00000" in k}
    forget(out, 1)
    (out / "data" / "part-00001.parquet").write_bytes(b"half a parquet file")
    assert generate(*args, "--format", "parquet", "--out", out) == 0
    assert json.loads((out / "_SUCCESS").read_text())["shards_generated"] == 1
    assert {k: snapshot(out)[k] for k in kept} == kept
    assert pq.read_table(out / "data" / "part-00001.parquet")["sha256"].to_pylist() == table["sha256"].to_pylist()[3:]


def test_rows_per_row_group_keep_groups_near_100_mb() -> None:
    from dit_worker.output.parquet_images import ROW_GROUP_BYTES, rows_per_group

    assert rows_per_group([b"x" * 400_000] * 1000) == 250  # 512 px PNGs: 4 groups of 100 MB
    assert rows_per_group([b"x" * 30_000] * 1000) == 3333  # 256 px JPEGs: a 1000-sample shard is one group
    assert rows_per_group([b"x" * (2 * ROW_GROUP_BYTES)]) == 1


@pytest.mark.parametrize(("fmt", "image_format", "pil_format"), [
    ("png", "jpeg", "JPEG"), ("webdataset", "webp", "WEBP"), ("parquet", "jpeg", "JPEG"),
])  # fmt: skip
def test_lossy_image_formats(
    fmt: str, image_format: str, pil_format: str, tiny_ckpt: Path, tmp_path: Path, png_reference: dict[int, np.ndarray]
) -> None:
    """Keys and members carry the format's extension, sha256 covers the stored bytes, and the decoded
    image is the PNG run's image up to compression (luma within 4 levels; the other class is > 20 off)."""
    from dit_worker.output.reader import OutputSet

    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "1,2", "--per-class", "2", *FAST, "--shard-size", "3"]
    assert generate(*args, "--format", fmt, "--image-format", image_format, "--out", out) == 0
    ext = {"jpeg": "jpg", "webp": "webp"}[image_format]
    keys = metadata(out)["image_key"].to_pylist()
    assert all(k.endswith(f"{i:08d}.{ext}") for i, k in enumerate(keys))
    if fmt == "png":
        assert sorted(p.name for p in out.rglob(f"*.{ext}")) == [f"{i:08d}.{ext}" for i in range(4)]
    if fmt == "webdataset":
        with tarfile.open(out / "shards" / "00000.tar") as tar:
            assert tar.getnames()[:2] == [f"00000000.{ext}", "00000000.json"]
    assert json.loads((out / "job.json").read_text())["fingerprint"]["quality"] == 95
    output = OutputSet.open(str(out))  # checks every image against its sha256
    assert output.image_formats() == {image_format}
    for sample in output.iter_samples():
        luma = np.asarray(Image.fromarray(sample.image).convert("L"), np.int16)
        assert np.abs(luma - png_reference[sample.sample_id]).mean() < 4
        assert np.abs(luma - png_reference[(sample.sample_id + 2) % 4]).mean() > 20  # the other class
    if fmt == "png":
        assert Image.open(out / keys[0]).format == pil_format


@pytest.fixture(scope="module")
def png_reference(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    """Luma of the lossless run of test_lossy_image_formats' samples."""
    out = tmp_path_factory.mktemp("png-reference") / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "1,2", "--per-class", "2", *FAST, "--shard-size", "3"]
    assert generate(*args, "--out", out) == 0
    rows = metadata(out).to_pylist()
    return {r["sample_id"]: np.asarray(Image.open(out / r["image_key"]).convert("L"), np.int16) for r in rows}


def test_a_rerun_with_another_encoding_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["--local", "--model", tiny_ckpt, "--classes", "1", "--per-class", "1", *FAST, "--out", out]
    assert generate(*args, "--image-format", "webp") == 0
    before = snapshot(out)
    capsys.readouterr()
    assert generate(*args, "--image-format", "jpeg") == 2
    assert "image_format: 'webp' there, 'jpeg' now" in capsys.readouterr().err
    assert generate(*args, "--image-format", "webp", "--quality", "80") == 2
    assert "quality: 95 there, 80 now" in capsys.readouterr().err
    assert snapshot(out) == before
    assert generate(*args, "--image-format", "webp", "--quality", "95") == 0  # 95 is the default: same job


def test_webdataset_shard_whose_tar_cannot_be_written_is_not_committed(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The metadata part follows the shard's tar: a tar that fails to store leaves no part behind."""
    out = tmp_path / "out"
    (out / "shards" / "00001.tar").mkdir(parents=True)  # a folder where shard 1's tar must go
    args = ["--local", "--model", tiny_ckpt, "--classes", "207", "--per-class", "4", *FAST, "--shard-size", "2"]
    assert generate(*args, "--format", "webdataset", "--max-tries", "1", "--out", out) == 1
    assert "shard 00001 failed" in capsys.readouterr().err
    assert (out / "metadata" / "part-00000.parquet").is_file() and (out / "shards" / "00000.tar").is_file()
    assert not (out / "metadata" / "part-00001.parquet").exists()


def manifest_file(tmp_path: Path, rows: dict) -> Path:
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table(rows), path)
    return path


BAD_INPUTS = {
    "class id 1000": (["--classes", "1000", "--per-class", "1"], r"class ids must lie in 0..999, got [1000]"),
    "class id -1": (["--classes", "-1", "--per-class", "1"], r"class ids must lie in 0..999, got [-1]"),
    "unknown class name": (["--classes", "umbrela", "--per-class", "1"], "unknown class name 'umbrela'"),
    "manifest without seed": ({"class_id": [1, 2]}, "missing column 'seed'"),
    "duplicate sample_id": ({"class_id": [1, 2], "seed": [1, 2], "sample_id": [5, 5]}, "duplicate sample_id [5]"),
    "the same image twice": (
        {"sample_id": [3, 8], "class_id": [4, 4], "seed": [5, 5 + 2**32]},  # torch keeps the low 32 bits
        "sample_id 3 and sample_id 8 would be the same image",
    ),
    "misspelt column": ({"class_id": [1], "seed": [1], "sampleid": [0]}, "column 'sampleid' looks like 'sample_id'"),
    "manifest seed < 0": ({"class_id": [1], "seed": [-1]}, "seed must be [0, 2**63), got -1"),
    "manifest seed >= 2**63": (
        {"class_id": [1], "seed": pa.array([2**63], pa.uint64())},
        "seed must be [0, 2**63), got 9223372036854775808",
    ),
    "global seed < 0": (["--classes", "1", "--per-class", "1", "--seed", "-1"], "--seed: Input should be greater"),
    "steps 0": (["--classes", "1", "--per-class", "1", "--steps", "0"], "--steps: Input should be greater than or"),
    "negative cfg": (["--classes", "1", "--per-class", "1", "--cfg-scale", "-0.5"], "--cfg-scale: Input should be"),
    "shard size 0": (["--classes", "1", "--per-class", "1", "--shard-size", "0"], "--shard-size: Input should be"),
    "batch size 0": (
        ["--classes", "1", "--per-class", "1", "--batch-size", "0"],
        "--batch-size: must be a positive integer or 'auto'",
    ),
    "no samples": (["--classes", "1"], "say which samples to make"),
    "preset and steps": (["--preset", "fid50k", "--steps", "10"], "--preset fid50k fixes --steps"),
    "unknown format": (["--classes", "1", "--per-class", "1", "--format", "zip"], "--format: Input should be 'png',"),
    "unknown image format": (
        ["--classes", "1", "--per-class", "1", "--image-format", "gif"],
        "--image-format: Input should be 'png', 'jpeg' or 'webp' (got 'gif')",
    ),
    "quality for png": (
        ["--classes", "1", "--per-class", "1", "--quality", "90"],
        "--quality 90: --image-format png is lossless and takes no quality",
    ),
    "quality 0": (
        ["--classes", "1", "--per-class", "1", "--image-format", "jpeg", "--quality", "0"],
        "--quality: Input should be greater than or equal to 1 (got 0)",
    ),
    "fid50k in jpeg": (
        ["--preset", "fid50k", "--image-format", "jpeg"],
        "--image-format jpeg is lossy and --preset fid50k needs lossless images",
    ),
    "metrics in webp": (
        ["--classes", "1", "--per-class", "1", "--metrics", "--image-format", "webp"],
        "--image-format webp is lossy and --metrics needs lossless images",
    ),
    "io threads 0": (["--classes", "1", "--per-class", "1", "--io-threads", "0"], "--io-threads: Input should be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_is_written(
    case: str, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    given, message = BAD_INPUTS[case]
    args = given if isinstance(given, list) else ["--manifest", manifest_file(tmp_path, given)]
    out = tmp_path / "out"
    assert generate("--local", "--model", tiny_ckpt, "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_unwritable_folder_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = unwritable_folder(tmp_path)
    assert generate("--local", "--model", tiny_ckpt, "--classes", "1", "--per-class", "1", "--out", out) == 2
    assert "folder is not writable" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing bucket", "wrong credentials"])
def test_bad_s3_output_is_refused(
    case: str, tiny_ckpt: Path, s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = s3_server.env()
    if case == "wrong credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    missing = f"{s3_bucket}-missing"
    bucket = missing if case == "missing bucket" else s3_bucket
    # The Ray path: refused before the driver even connects to a cluster.
    args = ["--num-workers", "1", "--num-gpus-per-worker", "0", "--classes", "1", "--per-class", "1"]
    assert generate("--model", tiny_ckpt, "--out", f"s3://{bucket}/run", *args) == 2
    err = capsys.readouterr().err
    assert (f"bucket '{missing}' does not exist" if case == "missing bucket" else "access denied") in err
    # Nothing written where the job pointed: the missing bucket was not created, the real one is empty.
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert missing not in names and s3_bucket in names
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_images_depend_on_class_and_seed_only(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Sharding invariance in one process: other shard and batch sizes, same PNG bytes."""
    rows = {"sample_id": [10, 11, 12, 13, 14], "class_id": [5, 6, 5, 7, 8], "seed": [3, 1, 4, 1, 5]}
    manifest = manifest_file(tmp_path, rows)
    digests = []
    for shard_size, batch_size in [(5, 5), (2, 1), (3, 2)]:
        out = tmp_path / f"out-{shard_size}-{batch_size}"
        args = ["--shard-size", shard_size, "--batch-size", batch_size, "--out", out]
        assert generate("--local", "--model", tiny_ckpt, "--manifest", manifest, *FAST, *args) == 0
        table = metadata(out)
        assert table["sample_id"].to_pylist() == rows["sample_id"]
        digests.append([hashlib.sha256((out / k).read_bytes()).hexdigest() for k in table["image_key"].to_pylist()])
    assert digests[0] == digests[1] == digests[2]
    assert len(set(digests[0])) == 5 and np.unique(rows["class_id"]).size == 4


def test_a_shard_failing_every_try_fails_the_job_and_keeps_committed_shards(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    blocker = out / "images" / "00001" / "00000003.png"
    blocker.mkdir(parents=True)  # a folder where one of shard 1's images must go: every put fails
    args = ["--local", "--model", tiny_ckpt, "--classes", "1,2", "--per-class", "3", *FAST, "--shard-size", "2",
            "--max-tries", "3", "--retry-backoff", "0.1"]  # fmt: skip
    assert generate(*args, "--out", out) == 1
    err = capsys.readouterr().err
    assert "shard 00001 failed 3 time(s)" in err and "IsADirectoryError" in err, err
    parts = sorted(p.name for p in (out / "metadata").iterdir())
    assert "part-00000.parquet" in parts and "part-00001.parquet" not in parts
    assert not (out / "_SUCCESS").exists()

    kept = {k: v for k, v in snapshot(out).items() if k.startswith(("metadata/", "images/00000/"))}
    blocker.rmdir()
    assert generate(*args, "--out", out) == 0
    assert {k: snapshot(out)[k] for k in kept} == kept
    assert metadata(out)["sample_id"].to_pylist() == list(range(6))


def test_own_manifest_columns_reach_every_format_and_hf_datasets(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    """Three columns of the user's own ride along into each sample's metadata, typed as in the manifest;
    a misspelt known column is refused instead (exit 2, an earlier output untouched)."""
    import datasets

    rows = [{"sample_id": 40 - 3 * i, "class_id": 5 + i, "seed": 7 * i, "source_id": 1000 + i,
             "licence": ["cc0", "cc-by"][i % 2], "rating": 0.25 * i} for i in range(5)]  # fmt: skip
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = {r["sample_id"]: (r["source_id"], r["licence"], r["rating"]) for r in rows}
    args = ["--local", "--model", tiny_ckpt, "--manifest", manifest, *FAST, "--shard-size", 2]
    for fmt in ("png", "webdataset", "parquet"):
        out = tmp_path / fmt
        assert generate(*args, "--format", fmt, "--out", out) == 0
        table = metadata(out)
        types = (table.schema.field("source_id").type, table.schema.field("rating").type)
        assert types == (pa.int64(), pa.float64())
        got = {r["sample_id"]: (r["source_id"], r["licence"], r["rating"]) for r in table.to_pylist()}
        assert got == own, fmt
        if fmt == "webdataset":
            with tarfile.open(out / "shards" / "00000.tar") as tar:
                meta = json.load(tar.extractfile(f"{rows[0]['sample_id']:08d}.json"))
            assert (meta["source_id"], meta["licence"], meta["rating"]) == own[rows[0]["sample_id"]]
        if fmt == "parquet":
            data = ds.dataset(out / "data", format="parquet").to_table(columns=["sample_id", "licence"])
            assert dict(zip(*data.to_pydict().values(), strict=True)) == {k: v[1] for k, v in own.items()}
    hf = datasets.load_dataset("parquet", data_files=str(tmp_path / "png" / "metadata" / "*.parquet"), split="train")
    assert {r["sample_id"]: (r["source_id"], r["licence"], r["rating"]) for r in hf} == own

    before = snapshot(tmp_path / "png")
    misspelt = tmp_path / "bad.jsonl"
    misspelt.write_text("".join(json.dumps({**r, "sampel_id": 1}) + "\n" for r in rows))
    capsys.readouterr()
    assert generate(*args[:4], misspelt, *args[5:], "--out", tmp_path / "png") == 2
    err = capsys.readouterr().err.strip()
    assert "column 'sampel_id' looks like 'sample_id' misspelt" in err and "\n" not in err, err
    assert snapshot(tmp_path / "png") == before
    assert generate(*args[:4], misspelt, *args[5:], "--out", tmp_path / "new") == 2
    assert not (tmp_path / "new").exists()
