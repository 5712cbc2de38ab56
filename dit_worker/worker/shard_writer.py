"""Storing a shard off the sampling thread, and committing it with its metadata part, written last."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pyarrow as pa
import torch

from dit_worker.labels import ClassNames
from dit_worker.manifest.samples import Samples
from dit_worker.output.encoding import PNG, ImageEncoding
from dit_worker.output.layout import OutputFormat, data_key, image_key, member_name, part_key, tar_key
from dit_worker.output.metadata import RowSettings, parquet_bytes, shard_table
from dit_worker.output.parquet_images import image_parquet_bytes
from dit_worker.output.webdataset import webdataset_tar
from dit_worker.storage.objects import Storage

T = TypeVar("T")


class IOPool:
    """Threads for image encoding and uploads. At most `max_queued` jobs wait: when storage falls
    behind, sampling slows down to its pace instead of piling images up in memory."""

    def __init__(self, threads: int, max_queued: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="shard-io")
        self._slots = threading.BoundedSemaphore(max_queued)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        self._slots.acquire()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class HostBatch:
    """A uint8 image batch on its way to host memory. On CUDA the copy is asynchronous (pinned
    memory + an event the IO threads wait on), so the sampling thread never blocks on it."""

    def __init__(self, images: torch.Tensor) -> None:
        self._ready: torch.cuda.Event | None = None
        if images.device.type == "cuda":
            self._host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(images, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = images

    def numpy(self) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.numpy()


class ShardWriter:
    """Collects one shard's batches; `commit` stores what is left and then the metadata part.

    Images are encoded (`encoding`: PNG, JPEG or WebP) and, for --format png, uploaded on the IO
    pool as each batch arrives. For --format webdataset and parquet the encoded images wait in
    memory for the shard's tar or data part, written by `store` before the metadata part.
    """

    def __init__(
        self,
        shard: int,
        samples: Samples,
        storage: Storage,
        pool: IOPool,
        *,
        fmt: OutputFormat,
        names: ClassNames | None,
        settings: RowSettings,
        image_size: int | tuple[int, int],
        negative_prompt: str | None = None,
        encoding: ImageEncoding = PNG,
    ) -> None:
        self.shard, self.samples, self.storage, self.pool, self.fmt = shard, samples, storage, pool, fmt
        self.names, self.settings, self.image_size = names, settings, image_size
        self.negative_prompt = negative_prompt  # the job's --negative-prompt, for rows without their own
        self.encoding = encoding
        self._stored: list[Future[tuple[str, int, bytes | None]]] = []
        self._table: pa.Table | None = None
        self.columns: dict[str, pa.Array] = {}  # extra metadata columns in sample order (--score clip)

    def add(self, rows: Samples, images: torch.Tensor) -> None:
        batch = HostBatch(images)
        for i, sample_id in enumerate(rows.sample_id.tolist()):
            self._stored.append(self.pool.submit(self._store, batch, i, sample_id))

    def _store(self, batch: HostBatch, index: int, sample_id: int) -> tuple[str, int, bytes | None]:
        data = self.encoding.encode(batch.numpy()[index])
        if self.fmt == "png":
            self.storage.put(image_key(self.shard, sample_id, self.encoding.extension), data)
            return hashlib.sha256(data).hexdigest(), len(data), None
        return hashlib.sha256(data).hexdigest(), len(data), data

    def store(self) -> list[str]:
        """Wait for every image (and write the tar or data part); their sha256, in sample order."""
        stored = [f.result() for f in self._stored]  # re-raises the first failed encode or upload
        samples, shard = self.samples, self.shard
        if len(stored) != len(samples):
            raise RuntimeError(f"shard {shard:05d}: {len(stored)} images stored for {len(samples)} samples")
        sha256 = [sha for sha, _, _ in stored]
        self._table = self._metadata(sha256, [size for _, size, _ in stored])
        if self.fmt == "png":
            return sha256
        images = [data for _, _, data in stored if data is not None]  # kept in memory for the shard's container
        ext = self.encoding.extension
        if self.fmt == "webdataset":
            self.storage.put(tar_key(shard), webdataset_tar(self._table, images, ext))
        else:
            members = [member_name(i, ext) for i in samples.sample_id.tolist()]
            self.storage.put(data_key(shard), image_parquet_bytes(self._table, images, members))
        return sha256

    def commit(self) -> None:
        """Write the metadata part, last of all the shard's objects. The driver then records the shard
        in the commit index (dit_worker.output.commit_index) if it still holds the output's lease;
        the worker itself makes no request beyond the shard's own objects."""
        if self._table is None:
            raise RuntimeError("store() first: the metadata part must follow every image")
        self.storage.put(part_key(self.shard), parquet_bytes(self._table))

    def _metadata(self, sha256: list[str], sizes: list[int]) -> pa.Table:
        samples, shard = self.samples, self.shard
        ids = samples.sample_id.tolist()
        ext = self.encoding.extension
        if self.fmt == "png":
            keys = [image_key(shard, i, ext) for i in ids]
        else:
            container = tar_key(shard) if self.fmt == "webdataset" else data_key(shard)
            keys = [f"{container}#{member_name(i, ext)}" for i in ids]
        classes = samples.class_id
        names = None if classes is None or self.names is None else [self.names.name(c) for c in classes.tolist()]
        ids, seeds = samples.sample_id, samples.seed
        table = shard_table(
            shard, ids, classes, seeds, names, keys, sha256, sizes, self.image_size, self.settings,
            prompt=None if samples.prompt is None else samples.prompt.to_arrow(),
            negative_prompt=self._negative_prompts(samples),
        )  # fmt: skip
        if samples.extra is not None:  # the manifest's own columns, typed as there
            for name in samples.extra.column_names:
                table = table.append_column(name, samples.extra.column(name).combine_chunks())
        for name, column in self.columns.items():
            table = table.append_column(name, column)
        return table

    def _negative_prompts(self, samples: Samples) -> pa.Array | None:
        """Each row's own negative prompt, else the job's; None (null) where there is none or no
        guidance uses it."""
        if samples.prompt is None or not (self.settings.cfg_scale or 0) > 1:
            return None
        if samples.negative_prompt is not None:
            return samples.negative_prompt.to_arrow()
        if self.negative_prompt is None:
            return None
        return pa.array([self.negative_prompt] * len(samples), pa.large_string())
