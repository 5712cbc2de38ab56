"""The samples a job makes: (sample_id, class_id, seed) rows in sample_id order.

Kept as three numpy columns, 20 bytes a sample (a 1,000,000-sample manifest is 20 MB), so the
driver slices shards out of it without building a Python object per sample.

Seeds derived from `--seed` (no manifest file): `seed = global_seed * 2**32 + sample_id`, with
`0 <= global_seed < 2**31` and `sample_id < 2**32`. Each global seed owns its own 2**32-wide block,
so different global seeds give disjoint seed sets, and every seed stays below 2**63.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dit_worker.labels import ClassNames
from dit_worker.sampling.noise import MAX_SEED

SEED_STRIDE = 2**32
MAX_GLOBAL_SEED = 2**31  # exclusive
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file or flag and the bad value."""


@dataclass(frozen=True)
class Samples:
    sample_id: np.ndarray  # int64, strictly increasing
    class_id: np.ndarray  # int32
    seed: np.ndarray  # int64, in [0, 2**63)

    def __len__(self) -> int:
        return len(self.sample_id)

    def __getitem__(self, rows: slice) -> Samples:
        return Samples(self.sample_id[rows], self.class_id[rows], self.seed[rows])

    def sha256(self) -> str:
        """Content hash: the same samples give the same hash whatever file format they came from."""
        h = hashlib.sha256()
        for column, dtype in ((self.sample_id, "<i8"), (self.class_id, "<i4"), (self.seed, "<i8")):
            h.update(np.ascontiguousarray(column, dtype=dtype).tobytes())
        return h.hexdigest()


def parse_classes(tokens: Sequence[str] | None, names: ClassNames) -> list[int]:
    """`--classes` tokens (ids or names, mixed) to ids; None means every class of the model."""
    if tokens is None:
        return list(range(names.num_classes))
    ids = []
    for token in tokens:
        text = token.strip()
        if text.lstrip("-").isdigit():
            ids.append(int(text))
        else:
            ids.extend(_names_to_ids([text], names, "--classes"))
    try:
        names.check_ids(ids)
    except ValueError as err:
        raise ManifestError(f"--classes: {err}") from None
    seen: set[int] = set()
    for class_id in ids:
        if class_id in seen:
            raise ManifestError(f"--classes: class {class_id} is listed twice; list each class once")
        seen.add(class_id)
    return ids


def from_classes(class_ids: Sequence[int], per_class: int, global_seed: int) -> Samples:
    """`per_class` samples of each class, class-major: sample_id = class position * per_class + n."""
    if not 0 <= global_seed < MAX_GLOBAL_SEED:
        raise ManifestError(f"--seed must lie in [0, 2**31), got {global_seed}")
    count = len(class_ids) * per_class
    if count > SEED_STRIDE:
        raise ManifestError(f"{count} samples exceed the 2**32 that --seed derivation allows; use --manifest")
    sample_id = np.arange(count, dtype=np.int64)
    class_id = np.repeat(np.asarray(class_ids, dtype=np.int32), per_class)
    return Samples(sample_id, class_id, global_seed * SEED_STRIDE + sample_id)


def read_manifest(path: Path, names: ClassNames) -> Samples:
    """A Parquet, CSV or JSONL file with `class_id` (or `class_name`) and `seed`, optional `sample_id`.

    Without `sample_id`, rows are numbered 0, 1, ... in file order.
    """
    table = _read_table(path)
    columns = set(table.column_names)
    if table.num_rows == 0:  # before any column check: a header-only CSV has null-typed columns
        raise ManifestError(f"{path}: no rows (columns {sorted(columns)}); a manifest needs one row per sample")
    if "seed" not in columns:
        raise ManifestError(f"{path}: missing column 'seed' (found {sorted(columns)}); every row needs its seed")
    if "class_id" in columns:
        class_id = _int_column(table, "class_id", path)
        try:
            names.check_ids(np.unique(class_id).tolist())
        except ValueError as err:
            raise ManifestError(f"{path}: {err}") from None
        if "class_name" in columns and names.labels:
            _check_names_match(table, class_id, path, names)
    elif "class_name" in columns:
        class_id = _class_names_to_ids(table, path, names)
    else:
        raise ManifestError(f"{path}: needs a 'class_id' or 'class_name' column (found {sorted(columns)})")
    seed = _int_column(table, "seed", path, lo=0, hi=MAX_SEED, bounds="[0, 2**63)")
    if "sample_id" in columns:
        sample_id = _int_column(table, "sample_id", path, lo=0, hi=2**63, bounds=">= 0")
    else:
        sample_id = np.arange(table.num_rows, dtype=np.int64)
    order = np.argsort(sample_id, kind="stable")
    sample_id = sample_id[order]
    dup = np.flatnonzero(sample_id[1:] == sample_id[:-1])
    if dup.size:
        values = sorted({int(v) for v in sample_id[dup[:5]]})
        raise ManifestError(f"{path}: duplicate sample_id {values}; each sample_id must appear once")
    return Samples(sample_id, class_id.astype(np.int32)[order], seed[order])


def _read_table(path: Path) -> pa.Table:
    if path.suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(f"{path}: unknown manifest format; use one of {', '.join(MANIFEST_SUFFIXES)}")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        import pyarrow.json as pjson

        return pjson.read_json(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{path}: not a readable {path.suffix[1:]} manifest ({err})") from None


def _int_column(
    table: pa.Table, name: str, path: Path, *, lo: int = -(2**63), hi: int = 2**63, bounds: str = "an int64"
) -> np.ndarray:
    """An integer column as int64, refusing empty cells, fractions and values outside [lo, hi)."""
    column = table.column(name)
    if column.null_count:
        raise ManifestError(f"{path}: column {name!r} has {column.null_count} empty value(s)")
    kind = column.type
    values = column.to_numpy()
    if pa.types.is_integer(kind):
        if values.dtype == np.uint64 and values.size and values.max() > np.uint64(2**63 - 1):
            raise ManifestError(f"{path}: {name} must be {bounds}, got {int(values.max())}")
        values = values.astype(np.int64)
        bad = values[(values < lo) | (values > hi - 1)]  # hi - 1 and lo fit int64; hi may not
        if bad.size:
            raise ManifestError(f"{path}: {name} must be {bounds}, got {int(bad[0])}")
        return values
    if pa.types.is_floating(kind):
        # CSV/JSON readers turn integers beyond int64 into float64: name the value, then refuse fractions.
        bad = values[(values < lo) | (values >= hi)]
        if bad.size:
            raise ManifestError(f"{path}: {name} must be {bounds}, got {int(bad[0])}")
        fractional = values[values != np.floor(values)]
        example = float(fractional[0] if fractional.size else values[0])
        raise ManifestError(f"{path}: column {name!r} must hold integers, got {example} ({kind})")
    raise ManifestError(f"{path}: column {name!r} must hold integers, found {kind}")


def _class_names_to_ids(table: pa.Table, path: Path, names: ClassNames) -> np.ndarray:
    column = table.column("class_name")
    if column.null_count or not pa.types.is_string(column.type):
        raise ManifestError(f"{path}: column 'class_name' must hold a name in every row")
    encoded = column.combine_chunks().dictionary_encode()
    ids = np.asarray(_names_to_ids(encoded.dictionary.to_pylist(), names, str(path)), dtype=np.int32)
    return ids[encoded.indices.to_numpy()]


def _check_names_match(table: pa.Table, class_id: np.ndarray, path: Path, names: ClassNames) -> None:
    """With both columns, each row's name must name its id: a mismatch means a mislabelled manifest."""
    column = table.column("class_name")
    if column.null_count or not pa.types.is_string(column.type):
        raise ManifestError(f"{path}: column 'class_name' must hold a name in every row")
    pairs = pa.table({"name": column, "id": class_id}).group_by(["name", "id"]).aggregate([])
    for name, cid in zip(pairs.column("name").to_pylist(), pairs.column("id").to_pylist(), strict=True):
        if cid not in names.candidates(name):
            row = int(np.flatnonzero((column.to_numpy(zero_copy_only=False) == name) & (class_id == cid))[0])
            raise ManifestError(
                f"{path}: data row {row + 1} has class_id {cid} ({names.name(cid)!r}) but class_name {name!r}, "
                "which names another class; fix the row or drop one of the two columns"
            )


def _names_to_ids(raw: Sequence[str], names: ClassNames, where: str) -> list[int]:
    try:
        return names.ids(raw)
    except ValueError as err:
        raise ManifestError(f"{where}: {err}") from None
