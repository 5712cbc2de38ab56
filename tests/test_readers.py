"""Generated sets opened with the libraries dataset builders read them with: Hugging Face `datasets`
(parquet and webdataset builders), Ray Data (`read_parquet`, `read_webdataset`, `read_images`), the
`webdataset` library and `pyarrow.dataset`, on a local folder and on SeaweedFS.

The sets are made by the real `jobs.generate --local` on the tiny checkpoint, one per (place, output
format), each with another image encoding so every format meets two encodings. Every reader must
return each sample exactly once, with the very bytes whose sha256 the metadata holds (or, for the
readers that only decode, the pixels of those bytes).

On S3 each library gets the endpoint and credentials its own way: pyarrow's `S3FileSystem` for
pyarrow and Ray Data; presigned URLs over HTTP for `datasets` and `webdataset`, which reach S3 only
through s3fs (not installable here: every aiobotocore release pins a botocore older than boto3's)
or shell pipes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from PIL import Image

from jobs.generate import main as generate

PLACES = ("local", "s3")
# (place, --format) -> --image-format
ENCODINGS = {
    ("local", "png"): "webp",
    ("local", "webdataset"): "jpeg",
    ("local", "parquet"): "png",
    ("s3", "png"): "png",
    ("s3", "webdataset"): "webp",
    ("s3", "parquet"): "jpeg",
}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
FAST = ["--classes", "1,2", "--per-class", "2", "--sampler", "ddim", "--steps", "1", "--shard-size", "3"]
BUCKET = "readers"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class GeneratedSet:
    place: str
    fmt: str
    extension: str
    root: str  # a local folder, or "bucket/prefix" for pyarrow's S3FileSystem
    fs: pafs.FileSystem
    sha256: dict[int, str]  # sample_id -> sha256 of the stored bytes, from the metadata parts
    keys: dict[int, str]  # sample_id -> image_key

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def files(self, prefix: str) -> list[str]:
        """Paths of the objects below `prefix`, for the filesystem's own readers."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="module")
def sets(tiny_ckpt: Path, s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], GeneratedSet]:
    s3_server.client().create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("sets")
    s3fs = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=s3_server.endpoint,
        region=s3_server.region,
    )
    out: dict[tuple[str, str], GeneratedSet] = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        for (place, fmt), encoding in ENCODINGS.items():
            where = f"s3://{BUCKET}/{fmt}" if place == "s3" else str(local / fmt)
            args = ["--local", "--model", tiny_ckpt, *FAST, "--format", fmt, "--image-format", encoding]
            assert generate([str(a) for a in [*args, "--out", where]]) == 0
            root, fs = (f"{BUCKET}/{fmt}", s3fs) if place == "s3" else (where, pafs.LocalFileSystem())
            # pyarrow.dataset on the metadata parts, the documented way to read them
            meta = pads.dataset(f"{root}/metadata", filesystem=fs, format="parquet").to_table().to_pylist()
            sha = {r["sample_id"]: r["sha256"] for r in meta}
            assert len(set(sha.values())) == len(sha) == 4  # distinct images: a swapped one cannot pass
            keys = {r["sample_id"]: r["image_key"] for r in meta}
            out[place, fmt] = GeneratedSet(place, fmt, EXTENSIONS[encoding], root, fs, sha, keys)
    return out


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bytes(s: GeneratedSet, got: dict[int, bytes]) -> None:
    """Every sample exactly once, each with the bytes its metadata row describes."""
    assert sorted(got) == sorted(s.sha256)
    assert {i: digest(b) for i, b in got.items()} == s.sha256
    first, second = sorted(got)[:2]
    assert digest(got[first]) != s.sha256[second]  # the comparison tells samples apart


def check_pixels(s: GeneratedSet, got: dict[int, np.ndarray], verified: dict[int, bytes]) -> None:
    """Decoded images equal the decoding of the verified stored bytes (and not another sample's)."""
    check_bytes(s, verified)
    assert sorted(got) == sorted(verified)
    for sample_id, pixels in got.items():
        expected = np.asarray(Image.open(io.BytesIO(verified[sample_id])).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(pixels), expected)
    first, second = sorted(got)[:2]
    assert not np.array_equal(got[first], got[second])


def sample_id_of(path: str) -> int:
    """`.../00000042.png` or `00000042` -> 42."""
    return int(path.rsplit("/", 1)[-1].split(".", 1)[0])


@pytest.fixture(scope="module")
def urls(s3_server):
    """HTTP URLs for objects of the S3 sets (presigned: the credentials travel in the query)."""
    client = s3_server.client()

    def presign(s: GeneratedSet, prefix: str) -> list[str]:
        keys = [p.removeprefix(f"{BUCKET}/") for p in s.files(prefix)]
        params = [{"Bucket": BUCKET, "Key": k} for k in keys]
        return [client.generate_presigned_url("get_object", Params=p, ExpiresIn=900) for p in params]

    return presign


def files_for(s: GeneratedSet, prefix: str, urls) -> list[str]:
    """What `datasets` / `webdataset` open: local paths, or presigned URLs for S3 objects."""
    return urls(s, prefix) if s.place == "s3" else s.files(prefix)


# --- pyarrow ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
def test_pyarrow_dataset_reads_parquet_images_and_image_objects(sets, place: str) -> None:
    pq_set = sets[place, "parquet"]
    table = pads.dataset(pq_set.path("data"), filesystem=pq_set.fs, format="parquet").to_table()
    assert table.schema.field("image").type.names == ["bytes", "path"]
    rows = table.to_pylist()
    assert {r["sample_id"]: r["image"]["path"] for r in rows} == {i: f"{i:08d}.{pq_set.extension}" for i in range(4)}
    check_bytes(pq_set, {r["sample_id"]: r["image"]["bytes"] for r in rows})

    png_set = sets[place, "png"]  # one object per image: the metadata's image_key names it
    got = {}
    for sample_id, key in png_set.keys.items():
        with png_set.fs.open_input_file(png_set.path(key)) as f:
            got[sample_id] = f.read()
    check_bytes(png_set, got)


# --- Hugging Face datasets -------------------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
def test_datasets_parquet_builder_returns_pil_images(sets, urls, place: str, tmp_path: Path) -> None:
    import datasets

    s = sets[place, "parquet"]
    data = datasets.load_dataset(
        "parquet", data_files=files_for(s, "data", urls), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert isinstance(data.features["image"], datasets.Image)  # from the schema's metadata, no argument
    decoded = {row["sample_id"]: row["image"] for row in data}
    assert all(isinstance(img, Image.Image) and img.size == (16, 16) for img in decoded.values())
    raw = data.cast_column("image", datasets.Image(decode=False))
    stored = {row["sample_id"]: row["image"]["bytes"] for row in raw}
    assert {row["sample_id"]: row["sha256"] for row in raw} == s.sha256  # metadata columns ride along
    check_pixels(s, {i: np.asarray(img.convert("RGB")) for i, img in decoded.items()}, stored)


@pytest.mark.parametrize("place", PLACES)
def test_datasets_webdataset_builder(sets, urls, place: str, tmp_path: Path) -> None:
    import datasets

    s = sets[place, "webdataset"]
    data = datasets.load_dataset(
        "webdataset", data_files=files_for(s, "shards", urls), split="train", cache_dir=str(tmp_path / "hf")
    )
    ext = s.extension
    assert isinstance(data.features[ext], datasets.Image)
    decoded = {row["json"]["sample_id"]: np.asarray(row[ext].convert("RGB")) for row in data}
    raw = data.cast_column(ext, datasets.Image(decode=False))
    stored = {int(row["__key__"]): row[ext]["bytes"] for row in raw}
    assert {int(row["__key__"]): row["json"]["sha256"] for row in raw} == s.sha256
    check_pixels(s, decoded, stored)


# --- the webdataset library ------------------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
def test_webdataset_library(sets, urls, place: str) -> None:
    import webdataset as wds

    s = sets[place, "webdataset"]
    shards = files_for(s, "shards", urls)
    assert len(shards) == 2
    got = {int(sample["__key__"]): sample[s.extension] for sample in wds.WebDataset(shards, shardshuffle=False)}
    check_bytes(s, got)
    pipeline = wds.WebDataset(shards, shardshuffle=False).decode("rgb8").to_tuple(s.extension, "json")
    decoded = {meta["sample_id"]: image for image, meta in pipeline}
    check_pixels(s, decoded, got)


# --- Ray Data --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_rows(sets, ray_cluster, s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every Ray Data read of the tests below, in one driver process on the session's Ray head."""
    reads = []
    for place in PLACES:
        pq_set, wds_set, png_set = (sets[place, fmt] for fmt in ("parquet", "webdataset", "png"))
        images = {"include_paths": True, "file_extensions": [png_set.extension]}
        for name, s, reader, prefix, kwargs in [
            ("parquet", pq_set, "read_parquet", "data", {}),
            ("webdataset", wds_set, "read_webdataset", "shards", {}),  # Ray's default decoders
            ("webdataset raw", wds_set, "read_webdataset", "shards", {"decoder": None}),
            ("images", png_set, "read_images", "images", images),
            ("binary", png_set, "read_binary_files", "images", images),
        ]:
            reads.append({"name": f"{name} {place}", "reader": reader, "paths": s.path(prefix), "s3": place == "s3",
                          "kwargs": kwargs})  # fmt: skip
    work = tmp_path_factory.mktemp("ray-readers")
    (work / "reads.json").write_text(json.dumps(reads))
    env = (
        os.environ
        | s3_server.env()
        | {
            "RAY_ADDRESS": ray_cluster.address,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the driver joins over 127.0.0.1, where the head listens
            "RAY_AUTH_MODE": "disabled",
        }
    )
    cmd = [sys.executable, str(HERE / "ray_readers.py"), str(work / "reads.json"), str(work / "rows.pickle")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(work / "rows.pickle", "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("place", PLACES)
def test_ray_read_parquet(sets, ray_rows, place: str) -> None:
    s = sets[place, "parquet"]
    rows = ray_rows[f"parquet {place}"]
    check_bytes(s, {r["sample_id"]: r["image"]["bytes"] for r in rows})
    assert {r["sample_id"]: r["sha256"] for r in rows} == s.sha256


@pytest.mark.parametrize("place", PLACES)
def test_ray_read_webdataset(sets, ray_rows, place: str) -> None:
    s = sets[place, "webdataset"]
    stored = {int(r["__key__"]): r[s.extension] for r in ray_rows[f"webdataset raw {place}"]}
    decoded = {r["json"]["sample_id"]: r[s.extension] for r in ray_rows[f"webdataset {place}"]}
    if s.extension == "webp":  # Ray's default decoders know .jpg and .png only: .webp stays bytes
        assert decoded == stored
        check_bytes(s, stored)
    else:
        check_pixels(s, decoded, stored)


@pytest.mark.parametrize("place", PLACES)
def test_ray_read_images(sets, ray_rows, place: str) -> None:
    s = sets[place, "png"]
    decoded = {sample_id_of(r["path"]): r["image"] for r in ray_rows[f"images {place}"]}
    stored = {sample_id_of(r["path"]): r["bytes"] for r in ray_rows[f"binary {place}"]}
    check_pixels(s, decoded, stored)
