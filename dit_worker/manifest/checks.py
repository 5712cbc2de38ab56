"""The checks a manifest scan runs over its rows as they stream past, each in bounded memory:
the manifest's identity as a hash tree, values that must be distinct (sample ids; seeds modulo
2**32), and prompts through the pipeline's own text checks, each distinct prompt once per chunk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dit_worker.manifest.samples import SEED_SPACE, Samples
from dit_worker.manifest.text_column import TextColumn

BLOCK_ROWS = 1 << 16  # rows per leaf of the identity's hash tree
IN_MEMORY_ROWS = 1 << 19  # a distinct-keys check holds this many (key, id) rows (12 MB) before spilling to disk
PARTITIONS = 256  # spilled pairs, split by value: one partition is sorted in memory at a time

TextCheck = Callable[[list[str]], list[tuple[int, str]]]  # texts -> [(index, reason)] for the bad ones


class TreeHash:
    """The identity of a sequence of rows: sha256 over the digests of blocks of BLOCK_ROWS rows,
    each block's digest over one running digest per column. The same rows give the same identity
    however they are split into files, chunks or formats; 32 bytes are kept per block (0.5 MB at
    a billion rows), and blocks can be hashed where the rows are read."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rows = 0
        self.leaves: list[bytes] = []
        self._block: dict[str, hashlib._Hash] = {}

    def add(self, samples: Samples) -> None:
        done = 0
        while done < len(samples):
            take = min(len(samples) - done, BLOCK_ROWS - self.rows % BLOCK_ROWS)
            self._feed(samples[done : done + take])
            done += take
            self.rows += take
            if self.rows % BLOCK_ROWS == 0:
                self._close_block()

    def _feed(self, part: Samples) -> None:
        columns: list[tuple[str, bytes]] = [
            ("sample_id", np.ascontiguousarray(part.sample_id, "<i8").tobytes()),
            ("seed", np.ascontiguousarray(part.seed, "<i8").tobytes()),
        ]
        if part.class_id is not None:
            columns.append(("class_id", np.ascontiguousarray(part.class_id, "<i4").tobytes()))
        for name, text in (("prompt", part.prompt), ("negative_prompt", part.negative_prompt)):
            if text is not None:
                columns += _text_parts(name, text)
        for name in [] if part.extra is None else part.extra.column_names:  # your own columns, as text
            typed = part.extra.column(name)
            columns += _text_parts(f"extra.{name}:{typed.type}", TextColumn.from_arrow(typed.cast(pa.large_string())))
        for name, data in columns:
            self._block.setdefault(name, hashlib.sha256(name.encode())).update(data)

    def _close_block(self) -> None:
        leaf = hashlib.sha256()
        for name in sorted(self._block):
            leaf.update(self._block[name].digest())
        self.leaves.append(leaf.digest())
        self._block = {}

    def hexdigest(self) -> str:
        if self._block:
            self._close_block()
        root = hashlib.sha256(f"rows/{self.kind}/{self.rows}".encode())
        for leaf in self.leaves:
            root.update(leaf)
        return root.hexdigest()


def _text_parts(name: str, text: TextColumn) -> list[tuple[str, bytes]]:
    lengths = np.diff(text.offsets).astype("<i8")
    valid = np.ones(len(text), bool) if text.valid is None else text.valid
    return [
        (f"{name}.lengths", lengths.tobytes()),
        (f"{name}.bytes", text.data.tobytes()),
        (f"{name}.valid", valid.astype(np.uint8).tobytes()),
    ]


class DistinctCheck:
    """Finds keys that occur twice among all rows, in bounded memory. A key is one or two int64
    columns; (key, sample id) rows are held up to IN_MEMORY_ROWS, then spilled to PARTITIONS files
    split by key, and each partition is sorted on its own at the end (24 bytes of local disk per
    row beyond that). A stream of keys that only ever increases (sample ids written in order) is
    distinct without either."""

    def __init__(self) -> None:
        self.increasing = True
        self.last: tuple[int, int] | None = None
        self.held: list[np.ndarray] = []
        self.held_rows = 0
        self.spill: Path | None = None
        self.files: list = []

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """keys: int64 [n] or [n, 2]; ids: the rows' sample ids, to name a repeat."""
        if not keys.size:
            return
        keys = keys.reshape(len(ids), -1).astype(np.int64)
        rows = np.concatenate([keys, np.zeros((len(ids), 2 - keys.shape[1]), np.int64), ids[:, None]], axis=1)
        if self.increasing:
            a, b = rows[:, 0], rows[:, 1]
            later = (a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] > b[:-1]))
            first = (int(rows[0, 0]), int(rows[0, 1]))
            self.increasing = bool(np.all(later)) and (self.last is None or first > self.last)
        self.last = (int(rows[-1, 0]), int(rows[-1, 1]))
        self.held.append(rows)
        self.held_rows += len(rows)
        if self.held_rows >= IN_MEMORY_ROWS:
            self._spill()

    def _spill(self) -> None:
        if self.spill is None:
            self.spill = Path(tempfile.mkdtemp(prefix="manifest-distinct-"))
            self.files = [open(self.spill / f"{p:03d}", "wb") for p in range(PARTITIONS)]  # noqa: SIM115
        if not self.held:
            return
        rows = np.concatenate(self.held)
        self.held, self.held_rows = [], 0
        part = _partition(rows[:, 0] ^ rows[:, 1])
        order = np.argsort(part, kind="stable")
        rows = rows[order]
        bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        for p in range(PARTITIONS):
            if bounds[p + 1] > bounds[p]:
                self.files[p].write(rows[bounds[p] : bounds[p + 1]].tobytes())

    def first_repeat(self) -> tuple[tuple[int, int], int, int] | None:
        """(key, first id, second id) of a repeated key (the smallest such key), or None."""
        try:
            if self.increasing:
                return None
            if self.spill is None:
                return _repeat(np.concatenate(self.held)) if self.held else None
            self._spill()
            found = []
            for p, f in enumerate(self.files):
                f.close()
                if (hit := _repeat(np.fromfile(self.spill / f"{p:03d}", np.int64).reshape(-1, 3))) is not None:
                    found.append(hit)
            return min(found) if found else None
        finally:
            self.close()

    def close(self) -> None:
        for f in self.files:
            f.close()
        if self.spill is not None:
            for p in range(PARTITIONS):
                (self.spill / f"{p:03d}").unlink(missing_ok=True)
            os.rmdir(self.spill)
        self.spill, self.files, self.held = None, [], []


def _partition(values: np.ndarray) -> np.ndarray:
    mixed = (values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(56)  # Fibonacci hashing
    return mixed.astype(np.int64)


def _repeat(rows: np.ndarray) -> tuple[tuple[int, int], int, int] | None:
    rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
    same = np.flatnonzero((rows[1:, 0] == rows[:-1, 0]) & (rows[1:, 1] == rows[:-1, 1]))
    if not same.size:
        return None
    k = int(same[0])
    return (int(rows[k, 0]), int(rows[k, 1])), int(rows[k, 2]), int(rows[k + 1, 2])


def image_keys(samples: Samples) -> np.ndarray:
    """int64 [n, 2]: equal for two rows exactly when they make the same image (the seed modulo
    2**32, which is all torch's generator keeps, and the conditioning: class id, or a 96-bit hash
    of prompt and negative prompt)."""
    seed32 = samples.seed % SEED_SPACE
    if samples.prompt is None:
        cls = np.zeros(len(samples), np.int64) if samples.class_id is None else samples.class_id.astype(np.int64)
        return np.stack([seed32, cls], axis=1)
    hi, lo = _text_hash(samples.prompt)
    if samples.negative_prompt is not None:
        nhi, nlo = _text_hash(samples.negative_prompt)
        hi, lo = hi ^ (nhi * np.int64(31)), lo ^ (nlo * np.int64(0x5BD1E995))
    return np.stack([(seed32 << np.int64(32)) | (hi & np.int64(0xFFFFFFFF)), lo], axis=1)


def _text_hash(column: TextColumn) -> tuple[np.ndarray, np.ndarray]:
    """Per row, 96 bits of blake2b of its text (each distinct text hashed once; empty cells: 0)."""
    encoded = column.to_arrow().dictionary_encode()
    digests = [hashlib.blake2b(t.encode(), digest_size=12).digest() for t in encoded.dictionary.to_pylist()]
    table = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 12) if digests else np.zeros((0, 12), np.uint8)
    hi = table[:, :4].copy().view("<u4").astype(np.int64)[:, 0] if len(table) else np.zeros(0, np.int64)
    lo = table[:, 4:].copy().view("<i8")[:, 0] if len(table) else np.zeros(0, np.int64)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    hi = np.where(codes >= 0, hi[np.maximum(codes, 0)] if len(hi) else 0, 0)
    lo = np.where(codes >= 0, lo[np.maximum(codes, 0)] if len(lo) else 0, 0)
    return hi.astype(np.int64), lo.astype(np.int64)


class PromptCheck:
    """Every distinct prompt of a chunk through the pipeline's own checks (caption cleaning, token
    limits), skipping prompts already passed while at most `remember` of them are remembered."""

    def __init__(self, check: TextCheck, remember: int = 1 << 16) -> None:
        self.check, self.remember = check, remember
        self.passed: set[bytes] = set()

    def first_bad(self, column: TextColumn) -> BadPrompt | None:
        """The first row whose prompt fails, with how many rows of `column` fail; None if none does."""
        encoded = column.to_arrow().dictionary_encode()
        texts: list[str] = encoded.dictionary.to_pylist()
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        todo = [k for k, key in enumerate(keys) if key not in self.passed]
        problems = self.check([texts[k] for k in todo]) if todo else []
        bad = {todo[i]: reason for i, reason in problems}
        if len(self.passed) + len(todo) > self.remember:
            self.passed.clear()
        self.passed.update(keys[k] for k in todo if k not in bad)
        if not bad:
            return None
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        flags = np.zeros(len(texts), bool)
        flags[list(bad)] = True
        rows = np.flatnonzero((codes >= 0) & flags[np.maximum(codes, 0)])
        first = int(rows[0])
        text = texts[int(codes[first])]
        shown = text if len(text) <= 60 else text[:57] + "..."
        return BadPrompt(first, shown, bad[int(codes[first])], int(rows.size))


@dataclass(frozen=True)
class BadPrompt:
    """A chunk's first prompt the pipeline would change: its row in the chunk, the prompt as a
    message shows it (60 characters at most), why, and how many of the chunk's rows fail."""

    row: int
    shown: str
    reason: str
    rows: int
