"""The pass over manifest files before any model loads: every cell checked, in bounded memory
(dit_worker.manifest.checks), leaving a FileManifest (marks and an identity, no rows).

The manifest is cut into pieces (a file; a Parquet file larger than `piece_bytes`: ranges of
`piece_rows` rows) and each piece is scanned by a task (execution/tasks.py: Ray tasks on a cluster,
processes of this machine with --local; in this process for a manifest under `parallel_bytes`).
The driver merges the pieces' results in manifest order: marks, identity leaves, the order of
their keys, and the first bad row in manifest order. Only when sample ids or image keys do not
increase across the whole manifest does a second pass split those keys by partition where they
are read, and the driver finds repeats one partition at a time (dit_worker.distinct).

What the driver holds whatever the number of rows: a few results in flight, the marks (16 bytes
per 4,096 rows), the identity's leaves (32 bytes per 65,536 rows), a partition of keys at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dit_worker.distinct import DistinctKeys, partitions_for, split_keys
from dit_worker.execution.tasks import Tasks, make_tasks
from dit_worker.labels import ClassNames
from dit_worker.manifest.checks import (
    BLOCK_ROWS,
    KeyOrder,
    PromptCheck,
    TextCheck,
    TreeHash,
    file_digest,
    image_keys,
    manifest_digest,
)
from dit_worker.manifest.files import (
    FORMAT_OF_SUFFIX,
    Chunk,
    FileLayout,
    FileScan,
    Location,
    ManifestError,
    list_files,
    parquet_rows,
)
from dit_worker.manifest.samples import SEED_SPACE, Samples, prompt_line_samples, to_samples
from dit_worker.manifest.sources import FileManifest, FileRows
from dit_worker.rows import Conditioning
from dit_worker.storage.objects import ObjectInfo

PIECE_ROWS = 1 << 20  # rows per piece of a large Parquet file (a multiple of BLOCK_ROWS)
PIECE_BYTES = 32 << 20  # Parquet files this large are cut into pieces; others are one piece each
PARALLEL_BYTES = 64 << 20  # manifests this large are scanned by tasks; smaller ones in this process
KEY_ROWS = 1 << 17  # rows per task of the second pass (24 bytes a row of keys at most: 3 MB)


@dataclass(frozen=True)
class Part:
    """A file, or rows [start, stop) of a Parquet file: what one pass of FileScan reads."""

    file: int  # the file's position in the manifest
    info: ObjectInfo
    format: str
    start: int = 0
    stop: int | None = None
    last: bool = True  # the file's last part: the file's layout and identity node are complete after it


Piece = tuple[Part, ...]  # what one task scans: a run of small files, or one large file or range


@dataclass(frozen=True)
class ScanJob:
    """What the tasks of one scan share: where the files are and what the model accepts."""

    location: Location
    names: ClassNames | None
    conditioning: Conditioning
    check_prompts: TextCheck | None


@dataclass(frozen=True)
class PieceTask:
    """Scan `piece`; `first_id`: for a piece of one part, the manifest row of its file's first row,
    once known (rows without a sample_id column are numbered by it; before, from the file's first row)."""

    job: ScanJob
    piece: Piece
    first_id: int | None = None


@dataclass(frozen=True)
class PartScan:
    """A part's rows, checked: its file's layout (marks) and its identity leaves, the order of its
    sample ids and image keys, its columns; or the message for its first bad row."""

    rows: int = 0
    layout: FileLayout | None = None
    leaves: tuple[bytes, ...] = ()
    columns: frozenset[str] = frozenset()
    negative: bool = False
    implicit_ids: bool = False  # no sample_id column: ids are rows, counted from first_id
    ids: KeyOrder = field(default_factory=KeyOrder)
    images: KeyOrder = field(default_factory=KeyOrder)
    error: str | None = None


def scan_piece(task: PieceTask) -> tuple[PartScan, ...]:
    """A piece's parts through every check that needs only their own rows, up to the first bad one
    (a task: its first bad row comes back as a message rather than raised, so that the driver can
    name the first in manifest order)."""
    scans = []
    for part in task.piece:
        scans.append(scan_part(task.job, part, task.first_id))
        if scans[-1].error is not None:
            break
    return tuple(scans)


def scan_part(job: ScanJob, part: Part, first_id: int | None) -> PartScan:
    scan = FileScan(job.location, part.info, part.format, part.start, part.stop)
    tree, ids, images = TreeHash(), KeyOrder(), KeyOrder()
    prompts = PromptCheck(job.check_prompts) if job.check_prompts is not None else None
    columns: set[str] = set()
    negative = implicit = False
    try:
        for chunk in scan.chunks():
            columns |= set(chunk.table.column_names)
            implicit = "sample_id" not in chunk.table.column_names
            samples = _samples(job, scan, chunk, first_id)
            tree.add(samples)
            ids = ids.add(samples.sample_id[:, None])
            images = images.add(image_keys(samples))
            negative |= samples.negative_prompt is not None
            if prompts is not None:
                _check_prompts(prompts, samples, scan.url, chunk.file_row)
    except ManifestError as err:
        return PartScan(implicit_ids=implicit, error=str(err))
    layout = scan.layout()
    return PartScan(scan.rows, layout, tuple(tree.finish()), frozenset(columns), negative, implicit, ids, images)


def _samples(job: ScanJob, scan: FileScan, chunk: Chunk, first_id: int | None) -> Samples:
    base = None if first_id is None else first_id + chunk.file_row
    return to_samples(chunk.table, scan.url, chunk.file_row, job.names, job.conditioning, first_id=base)


@dataclass(frozen=True)
class KeysTask:
    """A later pass over KEY_ROWS rows of the scanned manifest, read as a shard reads its rows:
    the keys of the checks named in `checks`, split into `partitions`."""

    rows: FileRows
    partitions: int
    checks: tuple[str, ...]  # of KEYS


def range_keys(task: KeysTask) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{check: (rows, bounds)} for each check asked (distinct.split_keys)."""
    samples = task.rows.load()
    return {name: KEYS[name].split(samples, task.partitions) for name in task.checks}


@dataclass(frozen=True)
class KeyCheck:
    """Keys that must be distinct: how a range's rows give them, and whether a sample id names them."""

    key_columns: int
    named: bool
    keys: Callable[[Samples], np.ndarray]

    def split(self, samples: Samples, partitions: int) -> tuple[np.ndarray, np.ndarray]:
        return split_keys(self.keys(samples), samples.sample_id if self.named else None, partitions)


def _seeds(samples: Samples) -> np.ndarray:
    return (samples.seed % SEED_SPACE)[:, None]


KEYS = {
    "ids": KeyCheck(1, False, lambda samples: samples.sample_id[:, None]),
    # Seeds distinct modulo 2**32 make every image key distinct: 8 bytes a row instead of 16-24.
    "seeds": KeyCheck(1, False, _seeds),
    "class images": KeyCheck(1, True, image_keys),
    "text images": KeyCheck(2, True, image_keys),
}


def plan_pieces(location: Location, files: list[ObjectInfo], piece_rows: int, piece_bytes: int) -> list[Piece]:
    """The manifest's pieces in manifest order: runs of consecutive files of `piece_bytes` together
    (a task per file would cost more than a small file's scan), and ranges of `piece_rows` rows of
    each Parquet file over `piece_bytes` (its footer read to cut it; ranges start on identity blocks,
    so leaves do not depend on them)."""
    step = max(BLOCK_ROWS, piece_rows // BLOCK_ROWS * BLOCK_ROWS)
    pieces: list[Piece] = []
    run: list[Part] = []
    run_bytes = 0
    for f, info in enumerate(files):
        fmt = FORMAT_OF_SUFFIX[Path(info.key).suffix]
        if fmt == "parquet" and info.size >= piece_bytes and (rows := parquet_rows(location, info)) > step:
            pieces += [(Part(f, info, fmt, a, min(a + step, rows), a + step >= rows),) for a in range(0, rows, step)]
            continue
        run.append(Part(f, info, fmt))
        run_bytes += info.size
        if run_bytes >= piece_bytes or f + 1 == len(files) or _cut(files[f + 1], piece_bytes):
            pieces.append(tuple(run))
            run, run_bytes = [], 0
    return pieces


def _cut(info: ObjectInfo, piece_bytes: int) -> bool:
    """Whether a run of small files ends before this file (a Parquet file cut into ranges of its own)."""
    return info.key.endswith(".parquet") and info.size >= piece_bytes


def scan_files(
    spec: str,
    names: ClassNames | None,
    conditioning: Conditioning,
    check_prompts: TextCheck | None = None,
    s3_endpoint: str | None = None,
    *,
    local: bool = True,
    address: str | None = None,
    piece_rows: int = PIECE_ROWS,
    piece_bytes: int = PIECE_BYTES,
    parallel_bytes: int = PARALLEL_BYTES,
) -> FileManifest:
    """Scan `--manifest` (a file, a folder or an s3:// prefix): one clear ManifestError for the
    first bad cell, repeated sample id, seed collision or prompt the pipeline would change. `local`:
    tasks are processes of this machine, else Ray tasks (pinned to this node when the files or the
    prompt checks' tokenizers exist only here)."""
    location, files = list_files(spec, s3_endpoint)
    pieces = plan_pieces(location, files, piece_rows, piece_bytes)
    job = ScanJob(location, names, conditioning, check_prompts)
    parallel = sum(info.size for info in files) >= parallel_bytes
    here = not location.portable or check_prompts is not None
    with closing(make_tasks(local=local, items=len(pieces) if parallel else 1, here=here, address=address)) as tasks:
        manifest, ids, images = _merge(spec, tasks, job, pieces, len(files))
        if not (ids and images):
            _find_repeats(spec, tasks, manifest, ids, images)
    return manifest


def _merge(spec: str, tasks: Tasks, job: ScanJob, pieces: list[Piece], files: int) -> tuple[FileManifest, bool, bool]:
    """The first pass: every piece scanned, merged in manifest order; the manifest, and whether its
    sample ids and its image keys increase from its first row to its last."""
    starts = np.zeros(files + 1, np.int64)  # each file's first manifest row, filled in as it is merged
    layouts: list[FileLayout] = []
    nodes: list[bytes] = []
    ids, images = KeyOrder(), KeyOrder()
    columns: set[str] = set()
    negative = False
    merging: list[PartScan] = []  # the parts of the file being merged
    with closing(tasks.map(scan_piece, (PieceTask(job, piece) for piece in pieces))) as results:
        # a piece's scans stop at its first bad part: zip to the shorter
        scanned = zip(pieces, results, strict=True)
        parts = ((part, scan) for piece, scans in scanned for part, scan in zip(piece, scans, strict=False))
        for part, result in parts:
            base = int(starts[part.file])
            if result.error is not None:
                if result.implicit_ids:  # name the sample ids its message names: they are rows from `base`
                    result = scan_part(job, part, base)
                raise ManifestError(result.error)
            merging.append(result)
            ids = ids.then(result.ids.shifted(base) if result.implicit_ids else result.ids)
            images = images.then(result.images)
            columns |= result.columns
            negative |= result.negative
            if part.last:
                rows = sum(r.rows for r in merging)
                assert merging[0].layout is not None
                layouts.append(replace(merging[0].layout, num_rows=rows))
                nodes.append(file_digest(rows, [leaf for r in merging for leaf in r.leaves]))
                starts[part.file + 1] = base + rows
                merging = []
    total = int(starts[-1])
    if total == 0:
        raise ManifestError(f"{spec}: no rows (columns {sorted(columns)}); a manifest needs one row per sample")
    identity = manifest_digest(job.conditioning, total, nodes)
    manifest = FileManifest(
        job.location, tuple(layouts), job.conditioning, job.names, identity, negative, tuple(sorted(columns))
    )
    return manifest, ids.increasing, images.increasing


def _find_repeats(spec: str, tasks: Tasks, manifest: FileManifest, ids_increase: bool, images_increase: bool) -> None:
    """The later passes, for keys that do not increase across the manifest: a repeated sample id;
    two rows that would make the same image, looked for only if two rows share a seed modulo
    2**32 (a pass of their own), named by their sample ids."""
    first = [name for name, needed in (("ids", not ids_increase), ("seeds", not images_increase)) if needed]
    repeats = _repeats(tasks, manifest, first)
    if (repeat := repeats.get("ids")) is not None:
        raise ManifestError(f"{spec}: duplicate sample_id [{repeat[0][0]}]; each sample_id must appear once")
    if repeats.get("seeds") is None:
        return
    images = "text images" if manifest.conditioning == "text" else "class images"
    if (repeat := _repeats(tasks, manifest, [images]).get(images)) is not None:
        _, a, b = repeat
        raise ManifestError(
            f"{spec}: sample_id {a} and sample_id {b} would be the same image: their {_WHAT[manifest.conditioning]} "
            "and their seeds modulo 2**32 are equal (torch's generator keeps only a seed's low 32 bits); give one "
            "of them a seed that differs in its low 32 bits"
        )


def _repeats(tasks: Tasks, manifest: FileManifest, checks: list[str]) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """One pass over the manifest in ranges: {check: its smallest repeated key and the two ids naming it}."""
    total = manifest.num_rows
    partitions = partitions_for(total)
    found = {name: DistinctKeys(partitions, KEYS[name].key_columns, KEYS[name].named) for name in checks}
    asks = (
        KeysTask(manifest.rows(a, min(a + KEY_ROWS, total)), partitions, tuple(checks))
        for a in range(0, total, KEY_ROWS)
    )
    try:
        with closing(tasks.map(range_keys, asks)) as results:
            for split in results:
                for name, (rows, bounds) in split.items():
                    found[name].add(rows, bounds)
        return {name: repeat for name, check in found.items() if (repeat := check.first_repeat()) is not None}
    finally:
        for check in found.values():
            check.close()


_WHAT = {"class": "class ids", "text": "prompts and negative prompts", "none": "conditioning (none)"}


def _check_prompts(check: PromptCheck, samples: Samples, url: str, first_row: int) -> None:
    for name, column in (("prompt", samples.prompt), ("negative_prompt", samples.negative_prompt)):
        if column is None or (bad := check.first_bad(column)) is None:
            continue
        more = f" ({bad.rows} rows of rows {first_row + 1}-{first_row + len(samples)})" if bad.rows > 1 else ""
        raise ManifestError(
            f"{url}: row {first_row + bad.row + 1}, sample_id {int(samples.sample_id[bad.row])}: {name} "
            f"{bad.shown!r} {bad.reason}{more}"
        )


def scan_prompt_lines(spec: str, check_prompts: TextCheck | None) -> tuple[Location, FileScan, str]:
    """`--prompts FILE`: one UTF-8 prompt per line, no blank lines, each through the pipeline's
    checks; (location, its scan with marks, the identity of its lines)."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ManifestError(f"--prompts {spec}: no such file")
    location = Location(str(path.parent.resolve()))
    info = location.storage().stat(path.name)
    assert info is not None
    scan = FileScan(location, info, "lines")
    tree = TreeHash()
    prompts = PromptCheck(check_prompts) if check_prompts is not None else None
    for chunk in scan.chunks():
        column = prompt_line_samples(chunk.table, spec, chunk.file_row)
        ids = np.arange(chunk.file_row, chunk.file_row + len(column), dtype=np.int64)
        lines = Samples(ids, None, np.zeros_like(ids), column)
        tree.add(lines)
        if prompts is not None and (bad := prompts.first_bad(column)) is not None:
            line = chunk.file_row + bad.row + 1
            raise ManifestError(f"--prompts {spec}: line {line}: prompt {bad.shown!r} {bad.reason}")
    if scan.rows == 0:
        raise ManifestError(f"--prompts {spec}: no prompts; write one prompt per line")
    return location, scan, manifest_digest("prompt-lines", scan.rows, [file_digest(scan.rows, tree.finish())])
