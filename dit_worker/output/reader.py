"""Reading a generated set in the layout of docs/output.md, from a local folder or an S3 prefix.

OUT/metadata/part-<shard:05d>.parquet commits a shard (one row per sample: sample_id, class_id,
image_key relative to OUT, width, height, sha256 of the stored bytes, ...); OUT/_SUCCESS marks the
set complete. Images (PNG, JPEG or WebP) are objects of their own (`--format png`), members of
`shards/<shard:05d>.tar` (`--format webdataset`) or rows of `data/part-<shard:05d>.parquet`
(`--format parquet`, image_key `<data key>#<member name>`). Readers stream: at most a bounded window
of decoded images, plus one container's bytes (tar or data part), is held at a time, never the whole set;
and the set's metadata is read part by part: what is kept of it is O(shards) (`SetSummary`), never a
per-sample table of the whole set.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dit_worker.distinct import DistinctKeys, partitions_for, split_keys
from dit_worker.output.commit_index import committed_shards
from dit_worker.output.encoding import FORMAT_OF_SUFFIX, ImageFormat, format_of_key
from dit_worker.output.layout import SUCCESS_KEY, part_key
from dit_worker.output.parquet_images import IMAGE_COLUMN
from dit_worker.storage.objects import Storage, open_storage

REQUIRED_COLUMNS = ("sample_id", "image_key", "width", "height", "sha256")
# class_id / class_name are optional: text-to-image and unconditional sets hold nulls (or no column).
IMAGE_SUFFIXES = tuple(FORMAT_OF_SUFFIX)  # .png, .jpg, .jpeg, .webp
CONTAINER_SUFFIXES = (".tar", ".parquet")
MERGE_SHARDS = 64  # shards with overlapping id ranges merged into sample_id order; beyond: shard by shard
READ_WINDOW = 32  # images fetched and decoded concurrently (S3 latency, not bandwidth, bounds a serial reader)
PARTS_AHEAD = 8  # metadata parts read concurrently by `OutputSet.iter_shards`


class OutputSetError(ValueError):
    """A generated set that cannot be read as asked; the message names the set and what to do."""


@dataclass(frozen=True)
class Shard:
    """One committed shard's metadata, rows sorted by sample_id."""

    index: int
    sample_ids: np.ndarray  # int64
    class_ids: np.ndarray  # int32, -1 for samples without a class (text-to-image, unconditional)
    image_keys: tuple[str, ...]
    sha256: tuple[str, ...]
    heights: np.ndarray
    widths: np.ndarray
    class_names: tuple[str, ...] | None
    image_bytes: np.ndarray | None = None  # int64 sizes of the stored images (sets made before it: None)
    prompts: tuple[str | None, ...] | None = None  # text-to-image sets; None where no row has a prompt

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def prompt_of(self) -> dict[int, str] | None:
        """sample id -> prompt, for the rows that have one (None for a set without prompts)."""
        if self.prompts is None:
            return None
        return {int(i): p for i, p in zip(self.sample_ids.tolist(), self.prompts, strict=True) if p}


@dataclass(frozen=True)
class Sample:
    """One stored sample read back: its id, class id (-1 for none) and decoded RGB image."""

    sample_id: int
    class_id: int  # -1: no class
    image: np.ndarray  # uint8 [H, W, 3]


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 RGB [H, W, 3]; grey or RGBA inputs are converted as torch-fidelity's folder reader does."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise OutputSetError(f"{where}: not a readable image ({err})") from None


def prefetch(fn: Callable, items: Iterable, window: int = READ_WINDOW) -> Iterator:
    """`map(fn, items)` in order, with at most `window` calls in flight (threads: I/O and zlib release the GIL)."""
    pool = ThreadPoolExecutor(max_workers=window)
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        for fut in pending:
            yield fut.result()
    finally:
        # Never join here: a generator left unfinished (a reader stopped at a bad image) is closed by
        # the garbage collector in whichever thread it runs, possibly one starting up inside
        # threading's own lock, where joining threads deadlocks (seen in jobs.verify --full).
        pool.shutdown(wait=False, cancel_futures=True)


def split_container_key(image_key: str) -> tuple[str, str] | None:
    """`shards/00003.tar#00000042.png` or `data/part-00003.parquet#00000042.png` (or `/`, `:`
    separators, or the container alone) -> (container key, member); None for an image object."""
    for suffix in CONTAINER_SUFFIXES:
        at = image_key.find(suffix)
        end = at + len(suffix)
        if at >= 0 and (end == len(image_key) or image_key[end] in "#/:"):
            return image_key[:end], image_key[end:].lstrip("#/:")
    return None


class _ParquetMembers:
    """The images of one --format parquet data part, by their `path` or by sample id."""

    def __init__(self, data: bytes, where: str) -> None:
        self.where = where
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["sample_id", IMAGE_COLUMN])
        except (pa.ArrowException, OSError, KeyError) as err:
            raise OutputSetError(f"{where}: not a readable image Parquet file ({err})") from None
        images = table.column(IMAGE_COLUMN).combine_chunks()
        self.bytes = images.field("bytes")  # sliced per lookup: no second copy of the shard's images
        self.rows = {path: i for i, path in enumerate(images.field("path").to_pylist())}
        self.by_id = {sample_id: i for i, sample_id in enumerate(table.column("sample_id").to_pylist())}

    def get(self, member: str, sample_id: int) -> bytes:
        row = self.rows[member] if member in self.rows else self.by_id.get(sample_id)
        data = None if row is None else self.bytes[row].as_py()
        if data is None:
            raise OutputSetError(f"{self.where}: no image row for sample {sample_id}")
        return data


class _TarMembers:
    """The image members of one webdataset tar, found by exact name or by the sample id in their name."""

    def __init__(self, data: bytes, where: str) -> None:
        self.where = where
        self.files: dict[str, bytes] = {}
        self.by_id: dict[int, str] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    f = tar.extractfile(member)
                    assert f is not None
                    self.files[member.name] = f.read()
                    base = member.name.rsplit("/", 1)[-1]
                    stem, _, suffix = base.partition(".")
                    if f".{suffix.lower()}" in IMAGE_SUFFIXES and stem.isdigit():
                        self.by_id[int(stem)] = member.name
        except tarfile.TarError as err:
            raise OutputSetError(f"{where}: not a readable tar ({err})") from None

    def get(self, member: str, sample_id: int) -> bytes:
        name = member if member in self.files else self.by_id.get(sample_id)
        if name is None:
            raise OutputSetError(f"{self.where}: no image member for sample {sample_id}")
        return self.files[name]


@dataclass(frozen=True)
class SetSummary:
    """What the checks before any heavy work need, from one pass over the committed metadata parts.

    O(shards), never O(samples): four int64 numbers per shard (32 bytes; 32 MB for a million shards)
    plus a few set-wide facts. Nothing per sample is kept.
    """

    indices: np.ndarray  # int64 [shards]: the committed shard indices, ascending
    counts: np.ndarray  # int64 [shards]: rows of each shard
    first_ids: np.ndarray  # int64 [shards]: smallest sample_id of each shard (0 for an empty part)
    last_ids: np.ndarray  # int64 [shards]: largest sample_id of each shard (-1 for an empty part)
    sizes: frozenset[tuple[int, int]]  # (height, width) of the samples, from the metadata
    formats: frozenset[ImageFormat]  # from the extensions of the image keys
    labelled: bool  # every sample has a class id
    prompted: bool  # every sample has a prompt (and there is at least one shard)
    repeated: tuple[int, ...]  # sample ids found twice within one shard (the first few)

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def runs(self) -> Iterator[np.ndarray]:
        """Positions (into `indices`) of shards whose sample_id ranges overlap, one group at a time, in
        sample_id order. jobs.generate writes contiguous id ranges, so each group is one shard; only
        hand-built sets with ids interleaved across shards give larger groups."""
        filled = np.flatnonzero(self.counts > 0)
        order = filled[np.argsort(self.first_ids[filled], kind="stable")]
        if not order.size:
            return
        reach = np.maximum.accumulate(self.last_ids[order])
        starts = np.flatnonzero(np.concatenate([[True], self.first_ids[order][1:] > reach[:-1]]))
        for lo, hi in zip(starts, [*starts[1:], order.size], strict=True):
            yield order[lo:hi]


class OutputSet:
    """A generated set read back through its committed metadata parts (local folder or s3://).

    Usage::

        output = OutputSet.open("s3://bucket/fid50k")
        output.require_complete(allow_partial=False)  # OutputSetError unless _SUCCESS is there
        for sample in output.iter_samples():  # in sample_id order; sha256 checked on read
            sample.sample_id, sample.class_id, sample.image  # image: uint8 [H, W, 3]

    Memory is flat in the number of samples: `open` holds the committed shard indices only;
    `summary()` (behind `num_samples`, `image_size`, `labelled`, ... ) reads every metadata part once
    and keeps O(shards) numbers; `iter_shards` and `iter_samples` read one part (one group of
    overlapping shards, for hand-built sets) at a time. Only `shards`, which loads every part's
    metadata at once, is O(samples): it is for small sets and the report, not for export or metrics.
    """

    def __init__(
        self, storage: Storage, shards: Sequence[Shard] = (), complete: bool = False, *, indices: Iterable[int] = ()
    ) -> None:
        """`shards`: metadata already read (kept, never read again); `indices`: further committed
        shards, read from storage when needed."""
        self.storage = storage
        self.url = storage.url
        self.complete = complete
        self._given = {s.index: s for s in shards}
        self.indices = np.unique(np.fromiter((*self._given, *indices), np.int64))
        self._summary: SetSummary | None = None
        self._all: list[Shard] | None = None

    @classmethod
    def open(cls, url: str, *, s3_endpoint: str | None = None) -> OutputSet:
        """The committed shards (the commit index, else a listing) and whether `_SUCCESS` is there;
        no metadata part is read yet."""
        storage = open_storage(url, s3_endpoint=s3_endpoint)
        parts = committed_shards(storage)
        complete = storage.exists(SUCCESS_KEY)
        if not parts and not complete:
            raise OutputSetError(
                f"{storage.url}: not a dit-worker output (no metadata/part-*.parquet and no _SUCCESS); "
                "pass the --out folder or s3:// prefix of a jobs.generate run"
            )
        return cls(storage, complete=complete, indices=parts)

    @staticmethod
    def read_part(storage: Storage, index: int) -> Shard:
        return OutputSet.shard_of(index, OutputSet.read_part_table(storage, index), storage.child(part_key(index)))

    @staticmethod
    def read_part_table(storage: Storage, index: int) -> pa.Table:
        """Shard `index`'s metadata part with every column, rows as stored."""
        key = part_key(index)
        try:
            return pq.read_table(pa.BufferReader(storage.get(key)))
        except (pa.ArrowException, OSError) as err:
            raise OutputSetError(f"{storage.child(key)}: not a readable Parquet file ({err})") from None

    @staticmethod
    def shard_of(index: int, table: pa.Table, where: str) -> Shard:
        """A metadata part's table as a Shard: its rows sorted by sample_id (stable)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise OutputSetError(
                f"{where}: missing metadata column(s) {', '.join(missing)}; a dit-worker set (docs/output.md) has "
                f"{', '.join(REQUIRED_COLUMNS)}"
            )
        optional = ("class_name", "image_bytes", "prompt")
        cols = {c: table.column(c).to_pylist() for c in table.column_names if c in (*REQUIRED_COLUMNS, *optional)}
        ids = np.asarray(cols["sample_id"], np.int64)
        classes = (
            table.column("class_id").fill_null(-1).to_numpy().astype(np.int32)
            if "class_id" in table.column_names
            else np.full(ids.shape, -1, np.int32)
        )
        for column in ("class_name", "prompt"):
            if column in cols and all(value is None for value in cols[column]):
                del cols[column]
        order = np.argsort(ids, kind="stable")

        def pick(name: str) -> list:
            return [cols[name][i] for i in order]

        return Shard(
            index=index,
            sample_ids=ids[order],
            class_ids=classes[order],
            image_keys=tuple(pick("image_key")),
            sha256=tuple(pick("sha256")),
            heights=np.asarray(cols["height"], np.int64)[order],
            widths=np.asarray(cols["width"], np.int64)[order],
            class_names=tuple(pick("class_name")) if "class_name" in cols else None,
            image_bytes=np.asarray(pick("image_bytes"), np.int64) if "image_bytes" in cols else None,
            prompts=tuple(pick("prompt")) if "prompt" in cols else None,
        )

    # --- the committed shards, one at a time ------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return int(self.indices.size)

    def shard(self, index: int) -> Shard:
        """One committed shard's metadata (read from storage unless it was given)."""
        given = self._given.get(int(index))
        return given if given is not None else self.read_part(self.storage, int(index))

    def iter_shards(self, indices: Iterable[int] | None = None) -> Iterator[Shard]:
        """Shards `indices` (default: all committed, ascending), a few parts read ahead, each dropped
        once the caller moves on."""
        return prefetch(self.shard, self.indices if indices is None else indices, PARTS_AHEAD)

    @property
    def shards(self) -> list[Shard]:
        """Every committed shard's metadata at once: O(samples) memory (a few hundred bytes per sample).

        For small sets and the report; exports and metrics stream with `iter_shards` / `iter_samples`."""
        if self._all is None:
            self._all = list(self.iter_shards())
        return self._all

    def summary(self) -> SetSummary:
        """Read once (every metadata part, a few at a time), then kept: O(shards)."""
        if self._summary is None:
            n = self.num_shards
            counts, first, last = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64)
            sizes: set[tuple[int, int]] = set()
            formats: set[ImageFormat] = set()
            labelled, prompted, repeated = True, n > 0, []
            for k, s in enumerate(self.iter_shards()):
                counts[k] = len(s)
                if len(s):
                    first[k], last[k] = s.sample_ids[0], s.sample_ids[-1]
                repeated.extend(s.sample_ids[1:][s.sample_ids[1:] == s.sample_ids[:-1]][:5].tolist())
                sizes.update(zip(s.heights.tolist(), s.widths.tolist(), strict=True))
                formats.update(f for key in s.image_keys if (f := format_of_key(key)) is not None)
                labelled = labelled and bool((s.class_ids >= 0).all())
                prompted = prompted and s.prompts is not None and all(s.prompts)
            self._summary = SetSummary(
                self.indices, counts, first, last, frozenset(sizes), frozenset(formats), labelled, prompted,
                tuple(repeated),
            )  # fmt: skip
        return self._summary

    # --- checks made before any heavy work -------------------------------------------------------

    def require_complete(self, allow_partial: bool) -> None:
        if self.complete:
            return
        if not allow_partial:
            raise OutputSetError(
                f"{self.url}: the set is incomplete (no _SUCCESS): {self.num_shards} shard(s) committed "
                f"({self.num_samples} samples in metadata/part-*.parquet). Rerun the same jobs.generate command to "
                "finish it, or pass --allow-partial to use the committed shards only"
            )
        if not self.num_shards:
            raise OutputSetError(f"{self.url}: no committed shard (no metadata/part-*.parquet); nothing to read")

    @property
    def labelled(self) -> bool:
        """Every sample has a class id (a class-conditional set)."""
        return self.summary().labelled

    @property
    def prompted(self) -> bool:
        """Every sample has a prompt (a text-to-image set)."""
        return self.summary().prompted

    @property
    def num_samples(self) -> int:
        return self.summary().num_samples

    def image_size(self) -> tuple[int, int]:
        """(height, width) shared by every sample, from the metadata."""
        sizes = set(self.summary().sizes)
        if len(sizes) != 1:
            listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:5]) or "none"
            raise OutputSetError(f"{self.url}: expected one image size across the set, found {listed}")
        return sizes.pop()

    def image_formats(self) -> set[ImageFormat]:
        """The formats the images are stored in, from the extensions of their keys."""
        return set(self.summary().formats)

    def class_names(self) -> dict[int, str]:
        """class id -> the name the metadata gives it (one more pass over the parts; O(classes))."""
        names: dict[int, str] = {}
        for shard in self.iter_shards():
            if shard.class_names is not None:
                names.update(zip(shard.class_ids.tolist(), shard.class_names, strict=True))
        return names

    def check_unique_ids(self) -> None:
        """No sample id committed twice: within each shard from the summary, across shards only where
        their id ranges overlap (never, for what jobs.generate writes): such a group's ids go through
        a distinct-keys check (dit_worker.distinct), so memory stays O(shards) whatever its size."""
        summary = self.summary()
        dup = list(summary.repeated)
        for run in summary.runs():
            if run.size > 1:
                check = DistinctKeys(partitions_for(int(summary.counts[run].sum())), 1, named=False)
                for i in summary.indices[run]:
                    check.add(*split_keys(self.shard(i).sample_ids[:, None], None, check.partitions))
                if (repeat := check.first_repeat()) is not None:
                    dup.append(repeat[0][0])
        if dup:
            raise OutputSetError(f"{self.url}: sample ids committed more than once: {sorted(dup)[:5]}")

    # --- streaming reads -------------------------------------------------------------------------

    def iter_samples(self, shards: Sequence[Shard] | None = None) -> Iterator[Sample]:
        """Samples of `shards` (default: every committed shard) in ascending sample_id order.

        Consecutive samples of one shard are read as one run: a webdataset tar or a parquet data part
        is fetched once per run. Every committed shard: one shard (one group of shards whose id ranges
        overlap) at a time, the next one's metadata read ahead; jobs.generate's shards hold contiguous
        id ranges when its manifest is in sample_id order (always for --classes, --prompts and
        --num-samples), so each is one run. When more than MERGE_SHARDS shards overlap (a manifest
        out of sample_id order), the set is read shard by shard in manifest order instead.
        """
        if shards is not None:
            yield from self._read_runs(list(shards))
            return
        summary = self.summary()
        runs = list(summary.runs())  # O(shards)
        if max((run.size for run in runs), default=0) > MERGE_SHARDS:
            # A set made from a manifest out of sample_id order: its shards' id ranges overlap (one
            # group may be the whole set), so it is read in manifest order, shard by shard, each
            # shard in sample_id order, rather than merged in memory.
            runs = [np.array([k]) for k in np.argsort(summary.indices, kind="stable")]
        groups = prefetch(lambda run: [self.shard(i) for i in summary.indices[run]], iter(runs), 2)
        for group in groups:
            if len(group) == 1:
                yield from self._read_run(group[0], list(range(len(group[0]))))
            else:
                yield from self._read_runs(group)

    def _read_runs(self, shards: list[Shard]) -> Iterator[Sample]:
        rows = sorted(
            ((int(sid), si, ri) for si, shard in enumerate(shards) for ri, sid in enumerate(shard.sample_ids)),
        )
        for si, run in groupby(rows, key=lambda r: r[1]):
            yield from self._read_run(shards[si], [ri for _, _, ri in run])

    def _read_run(self, shard: Shard, rows: list[int]) -> Iterator[Sample]:
        load = self._loader(shard, rows)

        def decode(ri: int) -> Sample:
            data = load(ri)
            where = self.storage.child(shard.image_keys[ri])
            image = decode_image(data, where)
            expected = (int(shard.heights[ri]), int(shard.widths[ri]), 3)
            if image.shape != expected:
                raise OutputSetError(f"{where}: image is {image.shape}, metadata says {expected}")
            return Sample(int(shard.sample_ids[ri]), int(shard.class_ids[ri]), image)

        yield from prefetch(decode, rows)  # decoded in the read-ahead threads too

    def image_bytes(self, shard: Shard, rows: list[int]) -> Iterator[bytes]:
        """The stored (encoded) bytes of `shard`'s rows `rows`, in that order, each checked against its
        metadata sha256; a webdataset tar or parquet data part is fetched once for all of them."""
        yield from prefetch(self._loader(shard, rows), rows)

    def _loader(self, shard: Shard, rows: list[int]) -> Callable[[int], bytes]:
        """A row's sha256-checked bytes; the containers `rows` need are fetched here, once."""
        containers: dict[str, _TarMembers | _ParquetMembers] = {}

        def load(ri: int) -> bytes:
            key, sample_id = shard.image_keys[ri], int(shard.sample_ids[ri])
            split = split_container_key(key)
            if split is None:
                where, data = self.storage.child(key), self.storage.get(key)
            else:
                container, member = split
                where = f"{self.storage.child(container)}[{member or sample_id}]"
                data = containers[container].get(member, sample_id)
            if hashlib.sha256(data).hexdigest() != shard.sha256[ri]:
                raise OutputSetError(
                    f"{where}: sha256 differs from metadata part-{shard.index:05d}; the image is corrupt"
                )
            return data

        for key in dict.fromkeys(s[0] for r in rows if (s := split_container_key(shard.image_keys[r]))):
            kind = _ParquetMembers if key.endswith(".parquet") else _TarMembers
            containers[key] = kind(self.storage.get(key), self.storage.child(key))
        return load


def batched(samples: Iterable[Sample], size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sample_ids, class_ids, images [n, H, W, 3]) batches of at most `size` samples."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(batch: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray([s.sample_id for s in batch], np.int64)
    classes = np.asarray([s.class_id for s in batch], np.int32)
    return ids, classes, np.stack([s.image for s in batch])
