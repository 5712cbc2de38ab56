"""The checks a manifest scan runs over its rows as they stream past, each in bounded memory:
the manifest's identity as a hash tree, values that must be distinct (sample ids; seeds modulo
2**32), and prompts through the pipeline's own text checks, each distinct prompt once per chunk.

Each check is split in two so that pieces of the manifest can be checked by separate tasks: what a
task computes over its own rows (TreeHash, KeyOrder, PromptCheck), and what the driver merges from
the tasks' results in manifest order (file_digest, manifest_digest; repeats: dit_worker.distinct).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dit_worker.manifest.samples import SEED_SPACE, Samples
from dit_worker.manifest.text_column import TextColumn

BLOCK_ROWS = 1 << 16  # rows per leaf of the identity's hash tree

TextCheck = Callable[[list[str]], list[tuple[int, str]]]  # texts -> [(index, reason)] for the bad ones


class TreeHash:
    """The leaves of one file's identity: a sha256 per block of BLOCK_ROWS rows (counted from the
    file's first row), each over one running digest per column. The same rows give the same leaves
    however they are chunked or stored (Parquet, CSV, JSONL); a piece of a file that starts on a
    block boundary yields that file's leaves for its rows, so pieces hashed apart concatenate.
    32 bytes are kept per block (0.5 MB at a billion rows)."""

    def __init__(self) -> None:
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

    def finish(self) -> list[bytes]:
        """The leaves, the last (partial) block's included."""
        if self._block:
            self._close_block()
        return self.leaves


def file_digest(rows: int, leaves: list[bytes]) -> bytes:
    """One file's node of the tree: its row count and its blocks' leaves, in order."""
    node = hashlib.sha256(f"file/{rows}".encode())
    for leaf in leaves:
        node.update(leaf)
    return node.digest()


def manifest_digest(kind: str, rows: int, files: list[bytes]) -> str:
    """The manifest's identity: the root over its files' nodes, in manifest order. It changes with
    any row, and with how the rows are split into files (never with chunking, format or pieces)."""
    root = hashlib.sha256(f"rows/{kind}/{rows}".encode())
    for node in files:
        root.update(node)
    return root.hexdigest()


def _text_parts(name: str, text: TextColumn) -> list[tuple[str, bytes]]:
    lengths = np.diff(text.offsets).astype("<i8")
    valid = np.ones(len(text), bool) if text.valid is None else text.valid
    return [
        (f"{name}.lengths", lengths.tobytes()),
        (f"{name}.bytes", text.data.tobytes()),
        (f"{name}.valid", valid.astype(np.uint8).tobytes()),
    ]


@dataclass(frozen=True)
class KeyOrder:
    """Whether a stream of keys only ever increases, with its first and last key: keys that
    increase across all pieces in manifest order (sample ids written in order) are distinct with
    no further pass. Keys are tuples of int64 values, compared as tuples."""

    first: tuple[int, ...] | None = None
    last: tuple[int, ...] | None = None
    increasing: bool = True

    def add(self, keys: np.ndarray) -> KeyOrder:
        """This order followed by `keys` (int64 [n, k])."""
        if not len(keys):
            return self
        first, last = tuple(map(int, keys[0])), tuple(map(int, keys[-1]))
        return self.then(KeyOrder(first, last, _strictly_increasing(keys)))

    def then(self, later: KeyOrder) -> KeyOrder:
        """This stream followed by `later`."""
        if self.last is None or later.first is None:
            return later if self.last is None else self
        up = self.increasing and later.increasing and later.first > self.last
        return KeyOrder(self.first, later.last, up)

    def shifted(self, by: int) -> KeyOrder:
        """The order of keys `by` higher (a file's implicit sample ids, once its first row's place is known)."""
        move = lambda key: None if key is None else (key[0] + by, *key[1:])  # noqa: E731
        return KeyOrder(move(self.first), move(self.last), self.increasing)


def _strictly_increasing(keys: np.ndarray) -> bool:
    later = keys[1:, -1] > keys[:-1, -1]
    for col in range(keys.shape[1] - 2, -1, -1):  # lexicographic: the first column decides, then the next
        later = (keys[1:, col] > keys[:-1, col]) | ((keys[1:, col] == keys[:-1, col]) & later)
    return bool(np.all(later))


def image_keys(samples: Samples) -> np.ndarray:
    """int64 [n, k]: equal for two rows exactly when they make the same image (the seed modulo
    2**32, which is all torch's generator keeps, and the conditioning): one column (seed and
    class id, 32 bits each) without prompts; two (seed and a 96-bit hash of prompt and negative
    prompt) with them."""
    seed32 = samples.seed % SEED_SPACE
    if samples.prompt is None:
        cls = np.zeros(len(samples), np.uint64) if samples.class_id is None else samples.class_id.astype(np.uint64)
        return ((seed32.astype(np.uint64) << np.uint64(32)) | cls).view(np.int64)[:, None]
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
