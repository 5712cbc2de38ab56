"""A job's manifest without its rows: what the driver plans shards from. A shard is a range of
manifest rows [start, stop); its `RowSlice` is all a worker needs to get those rows.

- `DerivedManifest`: `--classes/--per-class`, `--prompts FILE --per-prompt`, `--num-samples`.
  Row r is sample r; its seed is derived (samples.derived_seeds) and its class or prompt is group
  r // per_group. A slice carries only its own groups' classes or prompts, and is computed where
  it is loaded. Planning a billion rows holds the class list and nothing per row.
- `FileManifest`: Parquet, CSV or JSONL files (one, a folder or an s3:// prefix), scanned once by
  the driver (dit_worker.manifest.scan) and kept as per-file marks. A slice names its files' byte
  or row-group ranges; a worker reads them itself when it can reach the files (s3://), else the
  driver reads each shard's rows as it hands the shard out (a local path exists on its node only).

Both are identified by a hash (`identity`) that changes with any row, so that resuming an output
with another manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from dit_worker.labels import ClassNames
from dit_worker.manifest.files import FileLayout, Location, read_rows
from dit_worker.manifest.samples import Samples, check_derived, derived_seeds, to_samples
from dit_worker.manifest.text_column import TextColumn
from dit_worker.rows import Conditioning


class RowSlice(Protocol):
    """A shard's rows as a task carries them: `load()` gives them where they are needed."""

    portable: bool  # loadable on any node (else the driver loads it before handing it out)

    def __len__(self) -> int: ...

    def load(self) -> Samples: ...


class Manifest(Protocol):
    """The job's rows, planned: their number, kind and identity, and any range of them as a RowSlice."""

    num_rows: int
    conditioning: Conditioning
    identity: str  # sha256 hex: changes with any row
    has_negative_prompts: bool

    def rows(self, start: int, stop: int) -> RowSlice: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DerivedRows:
    """Rows [start, stop) of a DerivedManifest: computed, not read (a few bytes plus its groups)."""

    start: int
    stop: int
    global_seed: int
    per_group: int
    first_group: int
    classes: np.ndarray | None = None  # int32: the class ids of groups first_group, first_group + 1, ...
    prompts: TextColumn | None = None  # or their prompts
    portable: bool = True

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self) -> Samples:
        ids = np.arange(self.start, self.stop, dtype=np.int64)
        groups = ids // self.per_group - self.first_group
        return Samples(
            ids,
            None if self.classes is None else self.classes[groups],
            derived_seeds(ids, self.global_seed),
            None if self.prompts is None else self.prompts.take(groups),
        )


@dataclass(frozen=True)
class DerivedManifest:
    """`num_groups * per_group` rows: class-major for --classes, prompt-major for --prompts, one
    group of `count` rows for --num-samples. Usage::

        manifest = DerivedManifest.of_classes([207, 360], per_class=4, global_seed=0)
        manifest.rows(2, 6).load().class_id  # array([207, 207, 360, 360], dtype=int32)
    """

    num_rows: int
    conditioning: Conditioning
    global_seed: int
    per_group: int
    classes: np.ndarray | None = None  # int32
    prompt_file: tuple[Location, FileLayout] | None = None  # --prompts: line g is group g's prompt
    prompt_identity: str = ""  # the prompt file's TreeHash (scan.scan_prompt_lines)
    has_negative_prompts: bool = False

    def __post_init__(self) -> None:
        check_derived(self.num_rows, self.global_seed)  # derived seeds stay distinct (samples module)

    @classmethod
    def of_classes(cls, class_ids: list[int], per_class: int, global_seed: int) -> DerivedManifest:
        return cls(len(class_ids) * per_class, "class", global_seed, per_class, np.asarray(class_ids, np.int32))

    @classmethod
    def of_count(cls, count: int, global_seed: int) -> DerivedManifest:
        return cls(count, "none", global_seed, max(count, 1))

    @classmethod
    def of_prompts(
        cls, file: tuple[Location, FileLayout], identity: str, per_prompt: int, global_seed: int
    ) -> DerivedManifest:
        """`--prompts FILE --per-prompt N`: `file` as scan.scan_prompt_lines left it, with its identity."""
        lines = file[1].num_rows
        return cls(lines * per_prompt, "text", global_seed, per_prompt, prompt_file=file, prompt_identity=identity)

    @property
    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def rows(self, start: int, stop: int) -> DerivedRows:
        first, end = start // self.per_group, (stop - 1) // self.per_group + 1 if stop > start else start
        prompts = None
        if self.prompt_file is not None:
            location, layout = self.prompt_file
            prompts = TextColumn.from_arrow(read_rows(location, layout, first, end).column("prompt"))
        classes = None if self.classes is None else self.classes[first:end].copy()
        return DerivedRows(start, stop, self.global_seed, self.per_group, first, classes, prompts)

    def describe(self) -> dict[str, Any]:
        """What job.json records of the manifest (and what its identity hashes)."""
        return {
            "kind": "derived",
            "conditioning": self.conditioning,
            "rows": self.num_rows,
            "per_group": self.per_group,
            "global_seed": self.global_seed,
            "classes_sha256": None if self.classes is None else hashlib.sha256(self.classes.tobytes()).hexdigest(),
            "prompts": None
            if self.prompt_file is None
            else {"file": self.prompt_file[1].url, "rows": self.prompt_identity},
        }


@dataclass(frozen=True)
class FileRows:
    """Rows of a FileManifest: for each file it spans, (layout cut to the marks needed, first and
    end row in that file, the first row's position in the manifest)."""

    location: Location
    pieces: tuple[tuple[FileLayout, int, int, int], ...]
    conditioning: Conditioning
    names: ClassNames | None

    @property
    def portable(self) -> bool:
        return self.location.portable

    def __len__(self) -> int:
        return sum(stop - start for _, start, stop, _ in self.pieces)

    def load(self) -> Samples:
        parts = [
            to_samples(read_rows(self.location, layout, a, b), layout.url, a, self.names, self.conditioning, first)
            for layout, a, b, first in self.pieces
        ]
        return parts[0] if len(parts) == 1 else concat(parts)


@dataclass(frozen=True)
class FileManifest:
    """Manifest files scanned by the driver (scan.scan_files): per-file marks, no rows."""

    location: Location
    layouts: tuple[FileLayout, ...]
    conditioning: Conditioning
    names: ClassNames | None
    identity: str  # TreeHash of every row, in manifest order
    has_negative_prompts: bool
    columns: tuple[str, ...]

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @cached_property  # asked once per shard: not a pass over the files each time
    def starts(self) -> np.ndarray:
        """The first row of each file in the manifest, and the row count at the end."""
        return np.cumsum([0, *(layout.num_rows for layout in self.layouts)])

    def rows(self, start: int, stop: int) -> FileRows:
        starts = self.starts
        pieces = []
        f = int(np.searchsorted(starts, start, side="right")) - 1
        while start < stop:
            layout, base = self.layouts[f], int(starts[f])
            end = min(stop, base + layout.num_rows)
            if end > start:
                pieces.append((layout.window(start - base, end - base), start - base, end - base, start))
            start, f = end, f + 1
        return FileRows(self.location, tuple(pieces), self.conditioning, self._task_names)

    @property
    def _task_names(self) -> ClassNames | None:
        """What a task needs of the class names: all of them to read a `class_name` column (about
        52 KB pickled for ImageNet's 1000), else only the class count for the range check."""
        if self.names is None or "class_name" in self.columns:
            return self.names
        return ClassNames({}, self.names.num_classes)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "files",
            "location": self.location.root,
            "files": len(self.layouts),
            "rows": self.num_rows,
            "columns": list(self.columns),
        }


def concat(parts: list[Samples]) -> Samples:
    """Rows of several files as one Samples, in order."""

    def cat(columns: list[Any]) -> Any:
        return None if columns[0] is None else np.concatenate(columns)

    def cat_text(columns: list[TextColumn | None]) -> TextColumn | None:
        if all(c is None for c in columns):
            return None
        arrays = [
            c.to_arrow() if c is not None else pa.nulls(len(p), pa.large_string())
            for c, p in zip(columns, parts, strict=True)
        ]
        return TextColumn.from_arrow(pa.chunked_array(arrays))

    return Samples(
        np.concatenate([p.sample_id for p in parts]),
        cat([p.class_id for p in parts]),
        np.concatenate([p.seed for p in parts]),
        cat_text([p.prompt for p in parts]),
        cat_text([p.negative_prompt for p in parts]),
        None if parts[0].extra is None else pa.concat_tables([p.extra for p in parts], promote_options="permissive"),
    )
