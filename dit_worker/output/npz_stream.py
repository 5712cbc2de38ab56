"""Streaming .npz files: write and read one large array in row chunks, never whole.

An .npz is a zip archive of .npy members (numpy.lib.format). We write the .npy header for the final
shape first and then append rows into a ZIP_STORED, ZIP64 member, so a 50,000 x 512 x 512 x 3 array
(39 GB) is written with memory bounded by one chunk; `numpy.load` reads the result as usual. The
reader does the reverse for ADM reference batches (`arr_0` of 10,000 images).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np


class NpzArrayWriter:
    """Rows of one array member; `write` appends rows in order, the total must reach `shape[0]`."""

    def __init__(self, stream: IO[bytes], name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.stream, self.name, self.shape, self.dtype = stream, name, shape, np.dtype(dtype)
        self.rows = 0
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        # Format 1.0: what np.save writes for such headers and what ADM's streaming reader accepts.
        np.lib.format.write_array_header_1_0(stream, header)

    def write(self, rows: np.ndarray) -> None:
        if rows.dtype != self.dtype or rows.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"{self.name}: expected rows {self.dtype} {self.shape[1:]}, got {rows.dtype} {rows.shape[1:]}"
            )
        if self.rows + rows.shape[0] > self.shape[0]:
            raise ValueError(f"{self.name}: more than the declared {self.shape[0]} rows")
        self.stream.write(np.ascontiguousarray(rows).tobytes())
        self.rows += rows.shape[0]


class NpzStreamWriter:
    """`with NpzStreamWriter(path) as npz:` then `npz.array(...)` / `npz.save(...)`.

    The archive is written to a hidden temporary name and renamed on success, so FILE is either
    complete or absent, never a truncated archive that np.load would half-read.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")

    def __enter__(self) -> NpzStreamWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.zip.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    @contextmanager
    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> Iterator[NpzArrayWriter]:
        with self.zip.open(f"{name}.npy", mode="w", force_zip64=True) as member:
            writer = NpzArrayWriter(member, name, tuple(int(s) for s in shape), np.dtype(dtype))
            yield writer
            if writer.rows != writer.shape[0]:
                raise ValueError(f"{name}: wrote {writer.rows} rows, declared {writer.shape[0]}")

    def save(self, name: str, value: np.ndarray) -> None:
        """A small array (at least 1-D), written whole."""
        with self.array(name, value.shape, value.dtype) as writer:
            writer.write(value)


@contextmanager
def open_npz_array(path: Path, name: str) -> Iterator[NpzArrayReader]:
    """Stream one array member of an .npz (stored or deflated) without loading it whole."""
    with zipfile.ZipFile(path) as archive:
        if f"{name}.npy" not in archive.namelist():
            raise KeyError(name)
        with archive.open(f"{name}.npy") as member:
            yield NpzArrayReader(member, name)


class NpzArrayReader:
    """Reads one .npy member of an .npz in row chunks, without loading the whole array."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"{name}: .npy format {version} cannot be streamed; re-save it with numpy.savez")
        if fortran or dtype.hasobject:
            raise ValueError(f"{name}: Fortran-ordered or object arrays cannot be streamed")
        self.stream, self.name, self.shape, self.dtype = stream, name, tuple(shape), dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        self.rows_read = 0

    def read(self, rows: int) -> np.ndarray:
        """The next `rows` rows (fewer at the end; empty when done)."""
        rows = min(rows, self.shape[0] - self.rows_read)
        want = rows * self.row_bytes
        data = self.stream.read(want)
        if len(data) != want:
            raise ValueError(f"{self.name}: truncated, expected {want} bytes, got {len(data)}")
        self.rows_read += rows
        # bytearray: a writable buffer (torch.from_numpy refuses read-only ones), without a second copy.
        return np.frombuffer(bytearray(data), dtype=self.dtype).reshape(rows, *self.shape[1:])
