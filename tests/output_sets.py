"""Hand-built output sets in the layout jobs.generate writes (docs/output.md), through dit_worker.storage.

For what the job cannot cheaply be asked to make: non-square or random-pixel images, sample ids
interleaved across shards, missing shards, a replaced image, 2,000-image sets for memory
measurements. This is test data in the on-disk format that jobs.generate writes, built here
independently of its writer: image objects, webdataset tars or Parquet data parts (the Hugging Face
`Image` layout), one metadata Parquet part per shard, `_SUCCESS` last. Sets made by jobs.generate
itself feed the FID tests; tests/test_export_npz.py checks that a jobs.generate set and its
hand-built copy have the same keys and export the same arrays, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dit_worker.storage.objects import Storage


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_parquet(table: pa.Table, images: list[bytes], names: list[str]) -> bytes:
    """`table` plus an `image` struct column {bytes, path}, described for Hugging Face `datasets`."""
    column = pa.StructArray.from_arrays([pa.array(images, pa.binary()), pa.array(names)], names=["bytes", "path"])
    features = {"image": {"_type": "Image"}}
    table = table.append_column("image", column).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2)
    return buf.getvalue()


def write_output_set(
    store: Storage,
    images: np.ndarray,
    class_ids: Sequence[int],
    *,
    shard_size: int,
    sample_ids: Sequence[int] | None = None,
    fmt: str = "png",
    complete: bool = True,
    shards: Sequence[int] | None = None,
    member_in_key: bool = True,
    image_format: str = "png",
    prompts: Sequence[str] | None = None,
) -> None:
    """Samples i go to shard i // shard_size; `shards` limits which shards get committed.

    fmt "webdataset" / "parquet": image_key is "<container key>#<member>" as jobs.generate writes,
    or the container key alone with `member_in_key=False` (the member is then found by the sample
    id). image_format "png" or "jpeg" (quality 90)."""
    encode, ext = (png_bytes, "png") if image_format == "png" else (jpeg_bytes, "jpg")
    n = images.shape[0]
    ids = list(range(n)) if sample_ids is None else list(sample_ids)
    store.put("job.json", json.dumps({"format": fmt, "shard_size": shard_size, "num_samples": n}).encode())
    num_shards = -(-n // shard_size)
    for shard in range(num_shards) if shards is None else shards:
        rows = range(shard * shard_size, min(n, (shard + 1) * shard_size))
        keys, hashes, stored, tar_buf = [], [], [], io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w") as tar:
            for i in rows:
                data = encode(images[i])
                hashes.append(hashlib.sha256(data).hexdigest())
                stored.append(data)
                member = f"{ids[i]:08d}.{ext}"
                if fmt == "png":
                    key = f"images/{shard:05d}/{member}"
                    store.put(key, data)
                elif fmt == "parquet":
                    key = f"data/part-{shard:05d}.parquet" + (f"#{member}" if member_in_key else "")
                else:  # image_key "<tar key>#<member name>", as jobs.generate writes it
                    key = f"shards/{shard:05d}.tar" + (f"#{member}" if member_in_key else "")
                    for name, payload in ((member, data), (f"{ids[i]:08d}.json", b"{}")):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                keys.append(key)
        if fmt == "webdataset":
            store.put(f"shards/{shard:05d}.tar", tar_buf.getvalue())
        h, w = images.shape[1:3]
        table = pa.table(
            {
                "sample_id": pa.array([ids[i] for i in rows], pa.int64()),
                "class_id": pa.array([class_ids[i] for i in rows], pa.int32()),
                "class_name": pa.array([f"class {class_ids[i]}" for i in rows], pa.string()),
                "seed": pa.array([1000 + ids[i] for i in rows], pa.int64()),
                "image_key": pa.array(keys, pa.string()),
                "width": pa.array([w] * len(rows), pa.int32()),
                "height": pa.array([h] * len(rows), pa.int32()),
                "sha256": pa.array(hashes, pa.string()),
                "sampler": pa.array(["ddim"] * len(rows), pa.string()),
                "steps": pa.array([5] * len(rows), pa.int32()),
                "cfg_scale": pa.array([1.0] * len(rows), pa.float32()),
            }
        )
        if prompts is not None:
            table = table.append_column("prompt", pa.array([prompts[i] for i in rows], pa.string()))
        if fmt == "parquet":
            names = [f"{ids[i]:08d}.{ext}" for i in rows]
            store.put(f"data/part-{shard:05d}.parquet", image_parquet(table, stored, names))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put(f"metadata/part-{shard:05d}.parquet", buf.getvalue())
    if complete:
        store.put("_SUCCESS", json.dumps({"num_samples": n, "num_shards": num_shards}).encode())


def add_columns(store: Storage, columns: dict[str, pa.Array]) -> None:
    """`columns` (pyarrow arrays indexed by sample id) appended to every committed metadata part, each row
    its sample's value: score columns as jobs.generate --score writes them (docs/output.md), on a hand-built set."""
    for info in list(store.list("metadata/")):
        table = pq.read_table(pa.BufferReader(store.get(info.key)))
        rows = pa.array(table.column("sample_id").to_numpy())
        for name, values in columns.items():
            table = table.append_column(pa.field(name, values.type), values.take(rows))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put(info.key, buf.getvalue())


def write_dedup(
    store: Storage,
    num_samples: int,
    shard_size: int,
    groups: Sequence[Sequence[int]],
    *,
    threshold: float = 0.95,
    within: str = "set",
) -> dict[str, object]:
    """OUT/dedup/ in the layout jobs.dedup documents: dedup.json and one part per source shard (sample i in
    shard i // shard_size), one row per sample. Each of `groups` lists its members in dup_rank order (the
    first kept, the others' nearest is the kept one, similarity 0.99 - 0.001 * rank); every other sample is
    alone. jobs.dedup is another branch's: its own output against this reader is tested where it lives.
    Returns what dedup.json holds."""
    row: dict[int, tuple[int, int, int, int | None, float | None]] = {}
    for members in groups:
        for rank, sample in enumerate(members):
            near, sim = (None, None) if rank == 0 else (members[0], 0.99 - 0.001 * rank)
            row[sample] = (min(members), len(members), rank, near, sim)
    record = {
        "threshold": threshold,
        "within": within,
        "samples": num_samples,
        "groups": len(groups),
        "duplicates": sum(len(m) - 1 for m in groups),
    }
    store.put("dedup/dedup.json", json.dumps(record).encode())
    for shard in range(-(-num_samples // shard_size)):
        ids = list(range(shard * shard_size, min(num_samples, (shard + 1) * shard_size)))
        got = [row.get(i, (i, 1, 0, None, None)) for i in ids]
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.int64()),
                "group": pa.array([g[0] for g in got], pa.int64()),
                "group_size": pa.array([g[1] for g in got], pa.int32()),
                "dup_rank": pa.array([g[2] for g in got], pa.int32()),
                "nearest": pa.array([g[3] for g in got], pa.int64()),
                "similarity": pa.array([g[4] for g in got], pa.float32()),
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put(f"dedup/part-{shard:05d}.parquet", buf.getvalue())
    return record
