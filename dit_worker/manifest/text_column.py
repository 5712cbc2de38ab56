"""A column of UTF-8 strings (prompts) as one byte buffer plus offsets: no Python object per row.

A million prompts of 60 bytes are 68 MB here, where a list of str would be about 130 MB and a
million objects for the garbage collector. Slicing copies nothing; pickling a slice (a shard task
sent to a Ray actor) carries only the slice's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class TextColumn:
    """Usage::

    column = TextColumn.from_arrow(table.column("prompt"))
    column[0:4].tolist()  # ["a red cat", None, ...]
    """

    offsets: np.ndarray  # int64 [n + 1], offsets[0] == 0
    data: np.ndarray  # uint8, the UTF-8 bytes of every row, back to back
    valid: np.ndarray | None = None  # bool [n]; None: no empty (null) cells

    @classmethod
    def from_arrow(cls, column: pa.Array | pa.ChunkedArray) -> TextColumn:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        array = array.cast(pa.large_string())
        n = len(array)
        _, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, np.int64)[array.offset : array.offset + n + 1] if n else np.zeros(1)
        offsets = offsets.astype(np.int64)
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        data = data[offsets[0] : offsets[-1]].copy()
        valid = None
        if array.null_count:
            valid = ~array.is_null().to_numpy(zero_copy_only=False)
        return cls(offsets - offsets[0], data, valid)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, rows: slice) -> TextColumn:
        lo, hi, step = rows.indices(len(self))
        assert step == 1, "contiguous slices only"
        hi = max(hi, lo)
        offsets = self.offsets[lo : hi + 1]
        valid = None if self.valid is None else self.valid[lo:hi]
        return TextColumn(offsets - offsets[0], self.data[offsets[0] : offsets[-1]], valid)

    def to_arrow(self) -> pa.LargeStringArray:
        validity = None if self.valid is None else pa.array(self.valid).buffers()[1]
        return pa.LargeStringArray.from_buffers(
            len(self), pa.py_buffer(self.offsets), pa.py_buffer(self.data), validity, offset=0
        )

    def take(self, order: np.ndarray) -> TextColumn:
        return TextColumn.from_arrow(self.to_arrow().take(pa.array(order)))

    def tolist(self) -> list[str | None]:
        return self.to_arrow().to_pylist()
