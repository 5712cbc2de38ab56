"""The driver's one pass over manifest files, before any model loads: every cell checked, chunk
by chunk, in bounded memory (dit_worker.manifest.checks), leaving a FileManifest (marks and an
identity, no rows).

What the pass holds whatever the number of rows: one chunk (8 MB of a line format, 65,536 Parquet
rows), the marks (16 bytes per 4,096 rows), the identity's leaves (32 bytes per 65,536 rows), up
to 4M (value, id) pairs per distinct-values check (64 MB) before they spill to local disk, and up
to 1M remembered prompt hashes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dit_worker.backends import Conditioning
from dit_worker.backends.labels import ClassNames
from dit_worker.manifest.checks import DistinctCheck, PromptCheck, TextCheck, TreeHash, image_keys
from dit_worker.manifest.files import FORMAT_OF_SUFFIX, FileScan, Location, ManifestError, list_files
from dit_worker.manifest.samples import Samples, prompt_line_samples, to_samples
from dit_worker.manifest.sources import FileManifest


def scan_files(
    spec: str,
    names: ClassNames | None,
    conditioning: Conditioning,
    check_prompts: TextCheck | None = None,
    s3_endpoint: str | None = None,
) -> FileManifest:
    """Scan `--manifest` (a file, a folder or an s3:// prefix): one clear ManifestError for the
    first bad cell, repeated sample id, seed collision or prompt the pipeline would change."""
    location, files = list_files(spec, s3_endpoint)
    tree, ids, images = TreeHash(conditioning), DistinctCheck(), DistinctCheck()
    prompts = PromptCheck(check_prompts) if check_prompts is not None else None
    layouts, columns, negative, row = [], set(), False, 0
    try:
        for info in files:
            scan = FileScan(location, info, FORMAT_OF_SUFFIX[Path(info.key).suffix])
            for chunk in scan.chunks():
                columns |= set(chunk.table.column_names)
                samples = to_samples(chunk.table, scan.url, chunk.file_row, names, conditioning, first_id=row)
                tree.add(samples)
                ids.add(samples.sample_id, samples.sample_id)
                images.add(image_keys(samples), samples.sample_id)
                negative |= samples.negative_prompt is not None
                if prompts is not None:
                    _check_prompts(prompts, samples, scan.url, chunk.file_row)
                row += len(samples)
            layouts.append(scan.layout())
        if row == 0:
            raise ManifestError(f"{spec}: no rows (columns {sorted(columns)}); a manifest needs one row per sample")
        if (repeat := ids.first_repeat()) is not None:
            raise ManifestError(f"{spec}: duplicate sample_id [{repeat[0][0]}]; each sample_id must appear once")
        if (repeat := images.first_repeat()) is not None:
            _, a, b = repeat
            raise ManifestError(
                f"{spec}: sample_id {a} and sample_id {b} would be the same image: their {_WHAT[conditioning]} and "
                "their seeds modulo 2**32 are equal (torch's generator keeps only a seed's low 32 bits); give one "
                "of them a seed that differs in its low 32 bits"
            )
    finally:
        ids.close()
        images.close()
    return FileManifest(
        location, tuple(layouts), conditioning, names, tree.hexdigest(), negative, tuple(sorted(columns))
    )


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
    tree = TreeHash("prompt-lines")
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
    return location, scan, tree.hexdigest()
