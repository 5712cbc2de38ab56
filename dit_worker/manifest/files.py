"""Manifest files read in bounded memory: one file, a folder or an s3:// prefix of Parquet, CSV or
JSONL files, taken in key order as one sequence of rows.

The driver reads each file once, front to back, in chunks (`scan`); on the way it keeps a few
marks per file (Parquet: the first row of each row group; CSV/JSONL: the byte offset of every
MARK_EVERY-th row), so that any row range can later be read on its own (`read_rows`) with one
ranged read, by the driver or by a worker that can reach the file. Nothing here grows with the
number of rows but the marks (16 bytes per MARK_EVERY rows: 4 MB at a billion rows).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dit_worker.storage.objects import ObjectInfo, Storage, StorageError, open_storage

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
FORMAT_OF_SUFFIX = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK_BYTES = 8 << 20  # a scan reads line formats 8 MB at a time
PARQUET_BATCH = 65536  # and Parquet this many rows at a time
MARK_EVERY = 4096  # rows between byte-offset marks: a shard's read overshoots by at most this many rows


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file or flag and the bad value."""


@dataclass(frozen=True)
class Location:
    """Where manifest files live: a local folder or an s3:// prefix (and its endpoint)."""

    root: str
    s3_endpoint: str | None = None

    @property
    def portable(self) -> bool:
        """Whether a worker on another node can read it (a local path exists only on the driver's node)."""
        return self.root.startswith("s3://")

    def storage(self) -> Storage:
        return _open(self.root, self.s3_endpoint)


@lru_cache(maxsize=8)
def _open(root: str, s3_endpoint: str | None) -> Storage:
    return open_storage(root, s3_endpoint=s3_endpoint)


@dataclass(frozen=True)
class FileLayout:
    """One scanned file: its rows, and the marks from which any row range is read on its own."""

    key: str
    url: str  # as messages name it
    format: str  # parquet | csv | jsonl | lines
    size: int
    etag: str  # as scanned: a Parquet file rewritten since is refused, not read
    num_rows: int
    mark_rows: np.ndarray  # int64, ascending, starting at 0: rows where a read can start
    mark_offsets: np.ndarray  # int64: byte offset of each mark (line formats) or row group index (parquet)
    header: bytes = b""  # CSV: the header line, put in front of every ranged read
    schema: pa.Schema | None = field(default=None, compare=False)  # line formats: the types the scan settled on

    def window(self, start: int, stop: int) -> FileLayout:
        """This layout with only the marks a read of rows [start, stop) uses (what a task carries)."""
        first = int(np.searchsorted(self.mark_rows, start, side="right")) - 1
        end = int(np.searchsorted(self.mark_rows, stop, side="left"))
        size = int(self.mark_offsets[end]) if end < len(self.mark_offsets) and self.format != "parquet" else self.size
        return replace(
            self,
            size=size,
            mark_rows=self.mark_rows[first:end].copy(),
            mark_offsets=self.mark_offsets[first:end].copy(),
        )


def list_files(
    spec: str, s3_endpoint: str | None, suffixes: tuple[str, ...] = MANIFEST_SUFFIXES
) -> tuple[Location, list[tuple[str, int]]]:
    """(location, [(key, size), ...]) for a file, a folder or an s3:// prefix, in key order; one format only."""
    if spec.startswith("s3://"):
        bucket_prefix = spec[len("s3://") :].rstrip("/")
        if "/" in bucket_prefix and Path(bucket_prefix).suffix in suffixes:
            parent, name = bucket_prefix.rsplit("/", 1)
            location = Location(f"s3://{parent}", s3_endpoint)
            info = location.storage().stat(name)
            if info is None:
                raise ManifestError(f"{spec}: no such manifest object")
            return location, [info]
        location = Location(f"s3://{bucket_prefix}", s3_endpoint)
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix not in suffixes:
                raise ManifestError(f"{spec}: unknown manifest format; use one of {', '.join(suffixes)}")
            location = Location(str(path.parent.resolve()))
            return location, [_stat(location, path.name)]
        if not path.is_dir():
            if path.suffix not in suffixes:
                raise ManifestError(f"{spec}: unknown manifest format; use one of {', '.join(suffixes)}")
            raise ManifestError(f"{spec}: no such manifest file")
        location = Location(str(path.resolve()))
    try:
        objects = [o for o in location.storage().list() if Path(o.key).suffix in suffixes]
    except StorageError as err:
        raise ManifestError(f"{spec}: {err}") from None
    if not objects:
        raise ManifestError(f"{spec}: holds no manifest files ({', '.join(suffixes)})")
    kinds = {FORMAT_OF_SUFFIX.get(Path(o.key).suffix, "lines") for o in objects}
    if len(kinds) > 1:
        raise ManifestError(f"{spec}: holds manifest files of several formats ({', '.join(sorted(kinds))}); use one")
    return location, sorted(objects, key=lambda o: o.key)


def _stat(location: Location, key: str) -> ObjectInfo:
    info = location.storage().stat(key)
    if info is None:
        raise ManifestError(f"{location.root}/{key}: no such manifest file")
    return info


@dataclass
class Chunk:
    """Rows read by a scan: a table of consecutive rows of one file."""

    table: pa.Table
    file_row: int  # the table's first row, counted in its file


class FileScan:
    """Reads one file front to back in chunks, recording its marks; `layout()` once exhausted.
    A Parquet file can be read as pieces: rows [start, stop) only (its marks are all of the file's
    row groups either way)."""

    def __init__(self, location: Location, info: ObjectInfo, fmt: str, start: int = 0, stop: int | None = None) -> None:
        assert fmt == "parquet" or (start, stop) == (0, None), "line formats are read whole"
        self.location, self.key, self.size, self.etag, self.format = location, info.key, info.size, info.etag, fmt
        self.start, self.stop = start, stop
        self.url = f"{location.root.rstrip('/')}/{info.key}"
        self.rows = 0
        self.marks: list[tuple[int, int]] = []
        self.header = b""
        self.schema: pa.Schema | None = None

    def chunks(self) -> Iterator[Chunk]:
        if self.format == "parquet":
            yield from self._parquet_chunks()
        else:
            yield from self._line_chunks()

    def layout(self) -> FileLayout:
        marks = np.array(self.marks or [(0, 0)], np.int64).reshape(-1, 2)
        return FileLayout(
            key=self.key, url=self.url, format=self.format, size=self.size, etag=self.etag, num_rows=self.rows,
            mark_rows=marks[:, 0].copy(), mark_offsets=marks[:, 1].copy(), header=self.header, schema=self.schema,
        )  # fmt: skip

    def _parquet_chunks(self) -> Iterator[Chunk]:
        parquet = _parquet_file(self.location, self.key, self.url, self.etag)
        meta = parquet.metadata
        starts = np.concatenate([[0], np.cumsum([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])])
        self.marks = [(int(starts[i]), i) for i in range(meta.num_row_groups)]
        stop = meta.num_rows if self.stop is None else min(self.stop, meta.num_rows)
        groups = [g for g in range(meta.num_row_groups) if starts[g] < stop and starts[g + 1] > self.start]
        row = int(starts[groups[0]]) if groups else 0  # the file row of the batch at hand
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, row_groups=groups) if groups else ():
                a, b = max(self.start - row, 0), min(stop - row, batch.num_rows)
                if b > a:
                    yield Chunk(pa.Table.from_batches([batch.slice(a, b - a)]), row + a)
                    self.rows += b - a
                row += batch.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise ManifestError(f"{self.url}: not a readable parquet manifest ({err})") from None

    def _line_chunks(self) -> Iterator[Chunk]:
        storage = self.location.storage()
        carry, offset = b"", 0  # carry: the bytes of a row cut by the chunk's end
        while offset < self.size or carry:
            data = storage.get_range(self.key, offset, min(offset + CHUNK_BYTES, self.size))
            start = offset - len(carry)
            offset += len(data)
            buf = carry + data
            last = offset >= self.size
            if self.format == "csv" and not self.header:
                cut = _row_ends(buf, quoted=True)
                if not cut.size and not last:
                    carry = buf
                    continue
                header_end = int(cut[0]) if cut.size else len(buf)
                self.header, buf, start = buf[:header_end], buf[header_end:], start + header_end
                if not self.header.endswith(b"\n"):
                    self.header += b"\n"
            ends = _row_ends(buf, quoted=self.format == "csv", keep_blank=self.format == "lines")
            if last and buf[ends[-1] if ends.size else 0 :].strip(b"\r\n" if self.format == "lines" else None):
                ends = np.append(ends, len(buf))  # a last row without its newline
            if not ends.size:
                carry = b"" if last else buf
                if last:
                    break
                continue
            body, carry = buf[: int(ends[-1])], buf[int(ends[-1]) :]
            row_starts = np.concatenate([[0], ends[:-1]])
            first = self.rows
            picks = np.flatnonzero((np.arange(first, first + len(ends)) % MARK_EVERY) == 0)
            self.marks.extend((first + int(i), start + int(row_starts[i])) for i in picks)
            table = self._parse(body)
            if table.num_rows != len(ends):
                raise ManifestError(
                    f"{self.url}: rows {first + 1}-{first + len(ends)} parse as {table.num_rows} rows, "
                    f"not {len(ends)}; write one row per line"
                )
            yield Chunk(table, first)
            self.rows += len(ends)
            if last and not carry.strip():
                break

    def _parse(self, body: bytes) -> pa.Table:
        table = parse_lines(body, self.format, self.header, self.schema, self.url, self.rows)
        if self.schema is None:
            self.schema = pa.schema(
                [pa.field(f.name, pa.large_string()) if pa.types.is_null(f.type) else f for f in table.schema]
            )
        return table


def parquet_rows(location: Location, info: ObjectInfo) -> int:
    """A Parquet file's row count, from its footer (to split it into pieces before reading it)."""
    return _parquet_file(location, info.key, f"{location.root.rstrip('/')}/{info.key}", info.etag).metadata.num_rows


def parse_lines(
    body: bytes, fmt: str, header: bytes, schema: pa.Schema | None, url: str, first_row: int = 0
) -> pa.Table:
    """Rows of a CSV or JSONL file as a table, typed as `schema` (the scan's first chunk) when
    given; a prompt file (`lines`: one UTF-8 prompt per line) as a `prompt` column."""
    if fmt == "lines":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            line = first_row + body[: err.start].count(b"\n") + 1
            raise ManifestError(f"{url}: line {line} is not UTF-8 ({err.reason}); save the file as UTF-8") from None
        lines = text.replace("\r\n", "\n").split("\n")
        if lines and lines[-1] == "" and text.endswith("\n"):
            lines.pop()
        return pa.table({"prompt": pa.array(lines, pa.large_string())})
    try:
        if fmt == "csv":
            import pyarrow.csv as pcsv

            types = {f.name: f.type for f in schema} if schema is not None else None
            return pcsv.read_csv(io.BytesIO(header + body), convert_options=pcsv.ConvertOptions(column_types=types))
        import pyarrow.json as pjson

        options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error") if schema else None
        return pjson.read_json(io.BytesIO(body), parse_options=options)
    except (pa.ArrowInvalid, OSError) as err:
        if fmt == "jsonl" and schema is not None and "unexpected field" in str(err):
            _refuse_new_keys(body, schema, url, first_row)
        raise ManifestError(f"{url}: not a readable {fmt} manifest ({err})") from None


def _refuse_new_keys(body: bytes, schema: pa.Schema, url: str, first_row: int) -> None:
    """A JSONL row with a key the file's first rows lack: name it (often a misspelt column)."""
    import json

    for n, line in enumerate(body.splitlines()):
        if line.strip() and (new := sorted(set(json.loads(line)) - set(schema.names))):
            raise ManifestError(
                f"{url}: row {first_row + n + 1} has key(s) {new} that the file's first rows lack "
                f"(columns {schema.names}); give every row the same keys"
            )


def _row_ends(buf: bytes, *, quoted: bool, keep_blank: bool = False) -> np.ndarray:
    """Byte offsets just past each non-blank row's newline (CSV and JSONL readers skip blank
    lines; a prompt file keeps them, to refuse them); in CSV only newlines outside quotes end a
    row (RFC 4180 doubles a quote inside a quoted field, so quote parity tells)."""
    raw = np.frombuffer(buf, np.uint8)
    newlines = np.flatnonzero(raw == 10)
    if quoted and newlines.size:
        quotes_before = np.cumsum(raw == 34)[newlines]
        newlines = newlines[quotes_before % 2 == 0]
    if not newlines.size or keep_blank:
        return (newlines + 1).astype(np.int64)
    starts = np.concatenate([[0], newlines[:-1] + 1])
    length = newlines - starts
    blank = (length == 0) | ((length == 1) & (raw[np.minimum(starts, len(raw) - 1)] == 13))
    return (newlines[~blank] + 1).astype(np.int64)


@lru_cache(maxsize=4)
def _parquet_file(location: Location, key: str, url: str, etag: str) -> pq.ParquetFile:
    storage = location.storage()
    info = storage.stat(key)
    if info is None or info.etag != etag:
        raise ManifestError(f"{url}: the manifest file changed after the job scanned it; rerun the job")
    try:
        # pre_buffer off: pyarrow would otherwise keep every row group it read for the file's lifetime
        return pq.ParquetFile(storage.open_object(key), pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{url}: not a readable parquet manifest ({err})") from None


def read_rows(location: Location, layout: FileLayout, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of one scanned file, read with one ranged request (or its row groups)."""
    first = int(np.searchsorted(layout.mark_rows, start, side="right")) - 1
    end = int(np.searchsorted(layout.mark_rows, stop, side="left"))
    if layout.format == "parquet":
        groups = tuple(int(g) for g in layout.mark_offsets[first:end])
        table = _row_groups(location, layout.key, layout.url, layout.etag, groups)
        return table.slice(start - int(layout.mark_rows[first]), stop - start)
    lo = int(layout.mark_offsets[first])
    hi = int(layout.mark_offsets[end]) if end < len(layout.mark_offsets) else layout.size
    body = location.storage().get_range(layout.key, lo, hi)
    table = parse_lines(body, layout.format, layout.header, layout.schema, layout.url)
    return table.slice(start - int(layout.mark_rows[first]), stop - start)  # the mark is at or before start


@lru_cache(maxsize=2)  # consecutive shards usually share a row group: read it once
def _row_groups(location: Location, key: str, url: str, etag: str, groups: tuple[int, ...]) -> pa.Table:
    return _parquet_file(location, key, url, etag).read_row_groups(list(groups))
