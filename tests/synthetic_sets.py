"""Large synthetic output sets made cheaply with the project's own writer functions (metadata
`shard_table` + `parquet_bytes`, `image_parquet_bytes`, the layout's keys, `ImageEncoding`): tiny
random images in --format parquet, without sampling anything. For the report's size and load-time
check on 10,000 images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from dit_worker.backends.settings import SamplingSettings
from dit_worker.output.encoding import ImageEncoding
from dit_worker.output.layout import JOB_KEY, SUCCESS_KEY, data_key, member_name, part_key
from dit_worker.output.metadata import parquet_bytes, shard_table
from dit_worker.output.parquet_images import image_parquet_bytes
from dit_worker.storage.objects import Storage

CLASSIFIER_LABELS = ("cat", "dog", "bird")  # the synthetic classifier column `kind`'s labels, in id order


def write_synthetic_set(
    store: Storage, n: int, *, shard_size: int, side: int = 16, num_classes: int = 100, seed: int = 0
) -> None:
    """`n` random `side`-pixel images of `num_classes` classes (sample i is class i % num_classes),
    with the score columns `jobs.generate --score clip --score aesthetic --score classifier:kind=MODEL` writes
    (clip_score, aesthetic, kind: a struct of CLASSIFIER_LABELS' probabilities, kind_label), committed shard by
    shard."""
    rng = np.random.default_rng(seed)
    encoding = ImageEncoding()
    settings = SamplingSettings(sampler="ddim", steps=10, cfg_scale=1.5)
    store.put(JOB_KEY, json.dumps({"fingerprint": {"synthetic": True}, "fingerprint_sha256": "0" * 64}).encode())
    for shard in range(-(-n // shard_size)):
        ids = np.arange(shard * shard_size, min(n, (shard + 1) * shard_size), dtype=np.int64)
        cells = rng.integers(0, 256, (len(ids), 4, 4, 3), dtype=np.uint8)
        images = [encoding.encode(c.repeat(side // 4, 0).repeat(side // 4, 1)) for c in cells]
        members = [member_name(int(i), encoding.extension) for i in ids]
        classes = (ids % num_classes).astype(np.int32)
        table = shard_table(
            shard, ids, classes, ids, [f"class {c}" for c in classes.tolist()],
            [f"{data_key(shard)}#{m}" for m in members],
            [hashlib.sha256(d).hexdigest() for d in images], [len(d) for d in images], side, settings,
        )  # fmt: skip
        table = table.append_column("clip_score", pa.array(rng.uniform(5, 35, len(ids)).astype(np.float32)))
        table = table.append_column("aesthetic", pa.array(rng.normal(5, 1, len(ids)).astype(np.float32)))
        probabilities = rng.dirichlet(np.ones(len(CLASSIFIER_LABELS)), len(ids)).astype(np.float32)
        fields = [pa.array(probabilities[:, j]) for j in range(len(CLASSIFIER_LABELS))]
        table = table.append_column("kind", pa.StructArray.from_arrays(fields, names=list(CLASSIFIER_LABELS)))
        top = [CLASSIFIER_LABELS[j] for j in probabilities.argmax(axis=1).tolist()]
        table = table.append_column("kind_label", pa.array(top, pa.string()))
        store.put(data_key(shard), image_parquet_bytes(table, images, members))
        store.put(part_key(shard), parquet_bytes(table))
    store.put(SUCCESS_KEY, json.dumps({"num_samples": n}).encode())
