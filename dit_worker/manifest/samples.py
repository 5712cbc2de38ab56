"""A shard's samples: (sample_id, seed) rows, each with its conditioning: a class id
(class-conditional DiT), a prompt and optional negative prompt (text-to-image), or nothing
(unconditional); and the conversion of a manifest's table into them, checking every cell.

Kept as numpy columns and prompts as one byte buffer plus offsets (TextColumn): no Python object
per sample. Only a shard's rows (or a scan's chunk) are ever held; the whole job is a Manifest
(dit_worker.manifest.sources), which computes or reads them.

Seeds derived from `--seed` (no manifest file): `seed = (sample_id + global_seed * 2654435761) mod
2**32`, with `0 <= global_seed < 2**31` and `sample_id < 2**32`. Seeds must differ in their low 32
bits: torch's CPU generator (mt19937) keeps only those of `manual_seed(seed)`, so the earlier
`global_seed * 2**32 + sample_id` gave every global seed the same noise. For one global seed the
seeds of up to 2**32 samples are distinct (adding a constant mod 2**32 is a bijection); global seed
0 gives seed = sample_id, as before. Different global seeds shift the block by multiples of Knuth's
multiplicative-hash constant (about 2**32 / golden ratio), so two sets of N samples share seeds
only when their shifted blocks overlap: with probability about 2N / 2**32 per pair of global seeds.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dit_worker.labels import ClassNames
from dit_worker.manifest.files import ManifestError
from dit_worker.manifest.text_column import TextColumn
from dit_worker.output.metadata import RESERVED_COLUMNS
from dit_worker.rows import MAX_SEED, Conditioning, Rows

SEED_SPACE = 2**32  # the seeds torch's CPU generator tells apart: it keeps the low 32 bits
SEED_SHIFT = 2654435761  # Knuth's multiplicative-hash constant, ~2**32 / golden ratio: spreads global seeds
MAX_GLOBAL_SEED = 2**31  # exclusive


@dataclass(frozen=True)
class Samples:
    """A job's rows as columns (no Python object per row): sample id, seed and the conditioning.

    Slicing (`samples[a:b]`) gives part of the rows; `rows()` the lists a backend takes. Usage::

        ids = np.arange(8)
        samples = Samples(ids, np.repeat(np.int32([207, 360]), 4), derived_seeds(ids, 0))
        samples[0:4].class_id  # array([207, 207, 207, 207], dtype=int32)
    """

    sample_id: np.ndarray  # int64, distinct
    class_id: np.ndarray | None  # int32; None: the rows carry no class (text-to-image, unconditional)
    seed: np.ndarray  # int64, in [0, 2**63)
    prompt: TextColumn | None = None  # text-to-image rows
    negative_prompt: TextColumn | None = None  # optional per-row negative prompts (empty cells: none)
    extra: pa.Table | None = None  # the manifest's own columns, carried into the metadata as they are
    portable: ClassVar[bool] = True  # as a RowSlice (dit_worker.manifest.sources): already loaded

    def load(self) -> Samples:
        return self

    def __len__(self) -> int:
        return len(self.sample_id)

    def __getitem__(self, rows: slice) -> Samples:
        return Samples(
            self.sample_id[rows],
            None if self.class_id is None else self.class_id[rows],
            self.seed[rows],
            None if self.prompt is None else self.prompt[rows],
            None if self.negative_prompt is None else self.negative_prompt[rows],
            None if self.extra is None else _slice_table(self.extra, rows, len(self)),
        )

    @property
    def conditioning(self) -> Conditioning:
        return "class" if self.class_id is not None else "text" if self.prompt is not None else "none"

    def rows(self) -> Rows:
        """These samples as a generator takes them (one batch: Python lists are fine here)."""
        return Rows(
            seeds=self.seed.tolist(),
            class_ids=None if self.class_id is None else self.class_id.tolist(),
            prompts=None if self.prompt is None else self.prompt.tolist(),  # type: ignore[arg-type]
            negative_prompts=None if self.negative_prompt is None else self.negative_prompt.tolist(),
        )


def _slice_table(table: pa.Table, rows: slice, n: int) -> pa.Table:
    lo, hi, _ = rows.indices(n)
    return table.slice(lo, max(hi - lo, 0))


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


def check_derived(count: int, global_seed: int) -> None:
    """Seeds derived from `--seed` for `count` samples are distinct (module docstring)."""
    if not 0 <= global_seed < MAX_GLOBAL_SEED:
        raise ManifestError(f"--seed must lie in [0, 2**31), got {global_seed}")
    if count > SEED_SPACE:
        raise ManifestError(f"{count} samples exceed the 2**32 distinct seeds torch's generator has; use --manifest")


def derived_seeds(sample_id: np.ndarray, global_seed: int) -> np.ndarray:
    """seed = (sample_id + global_seed * SEED_SHIFT) mod 2**32 (module docstring)."""
    return (sample_id + global_seed * SEED_SHIFT) % SEED_SPACE


def to_samples(
    table: pa.Table,
    where: str,
    first_row: int,
    names: ClassNames | None,
    conditioning: Conditioning,
    first_id: int | None = None,
) -> Samples:
    """Manifest rows as Samples, in file order, every cell checked: a Parquet, CSV or JSONL table
    with `seed`, optional `sample_id`, and the model's conditioning: `class_id` or `class_name`
    (class-conditional), `prompt` and optional `negative_prompt` (text-to-image), or neither
    (unconditional). Columns for another kind of model are refused. `first_row` numbers the rows
    (0-based, in the file) for messages; rows without a `sample_id` column are numbered from
    `first_id` (their position in the manifest: the files in key order, then file order).
    """
    columns = set(table.column_names)
    extra = _extra_columns(table, where, conditioning)
    if "seed" not in columns:
        raise ManifestError(f"{where}: missing column 'seed' (found {sorted(columns)}); every row needs its seed")
    _refuse_other_conditioning(where, columns, conditioning)
    class_id = prompt = negative = None
    if conditioning == "class":
        assert names is not None
        if "class_id" in columns:
            class_id = _int_column(table, "class_id", where, first_row)
            try:
                names.check_ids(np.unique(class_id).tolist())
            except ValueError as err:
                raise ManifestError(f"{where}: {err}") from None
            if "class_name" in columns and names.labels:
                _check_names_match(table, class_id, where, first_row, names)
        elif "class_name" in columns:
            class_id = _class_names_to_ids(table, where, names)
        else:
            raise ManifestError(f"{where}: needs a 'class_id' or 'class_name' column (found {sorted(columns)})")
        class_id = class_id.astype(np.int32)
    elif conditioning == "text":
        if "prompt" not in columns:
            raise ManifestError(f"{where}: a text-to-image model needs a 'prompt' column (found {sorted(columns)})")
        prompt = _text_column(table, "prompt", where, first_row, nulls=False)
        if "negative_prompt" in columns:
            negative = _text_column(table, "negative_prompt", where, first_row, nulls=True)
    seed = _int_column(table, "seed", where, first_row, lo=0, hi=MAX_SEED, bounds="[0, 2**63)")
    if "sample_id" in columns:
        sample_id = _int_column(table, "sample_id", where, first_row, lo=0, hi=2**63, bounds=">= 0")
    else:
        base = first_row if first_id is None else first_id
        sample_id = np.arange(base, base + table.num_rows, dtype=np.int64)
    if prompt is not None:
        _refuse_empty_prompts(where, prompt, sample_id, first_row)
    return Samples(sample_id, class_id, seed, prompt, negative, table.select(extra) if extra else None)


def _extra_columns(table: pa.Table, where: str, conditioning: Conditioning) -> list[str]:
    """The manifest's own columns (carried into the metadata), after refusing a name that looks
    like a misspelt known column, a name the metadata already has, and nested values."""
    known = {"sample_id", "seed", *(c for names in _CONDITIONING_COLUMNS.values() for c in names)}
    extra = [c for c in table.column_names if c not in known]
    for name in extra:
        if not name.strip() or any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
            # Stored, such a name would be one no reader shows or selects as typed (NUL, U+202E, "").
            raise ManifestError(
                f"{where}: column {name!r} is empty or holds control or format characters; name your own columns "
                "with visible text"
            )
        close = [k for k in sorted(known) if _misspelt(name, k)]
        if close:
            raise ManifestError(
                f"{where}: column {name!r} looks like {close[0]!r} misspelt; rename it to {close[0]!r} (or, to carry "
                "it into the metadata as your own column, to a name further from it)"
            )
        if name in RESERVED_COLUMNS:
            raise ManifestError(
                f"{where}: column {name!r} is one the job writes into metadata rows (its own and the --score "
                "columns); rename your column"
            )
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):  # fmt: skip
            raise ManifestError(
                f"{where}: column {name!r} holds {kind}; your own columns must hold numbers, booleans or text"
            )
    return extra


def _misspelt(name: str, known: str) -> bool:
    """Within a small edit distance of a known column, ignoring case, '_' and '-' (`negative_promt`,
    `sampleid`, `class_nmae`, `Seed`): 1 edit, or 2 for names of 8 letters or more (so `prompt_id`
    stays a column of your own)."""
    a, b = (s.lower().replace("_", "").replace("-", "") for s in (name, known))
    return _edit_distance(a, b) <= (2 if len(b) >= 8 else 1)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), one row at a time."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def prompt_line_samples(table: pa.Table, where: str, first_line: int) -> TextColumn:
    """A prompt file's lines (`--prompts`), refusing empty ones by line number."""
    prompt = table.column("prompt")
    blank = np.flatnonzero(pc.equal(pc.utf8_trim_whitespace(prompt), "").to_numpy(zero_copy_only=False))
    if blank.size:
        raise ManifestError(
            f"--prompts {where}: line {first_line + int(blank[0]) + 1} is empty; "
            "write one prompt per line, no blank lines"
        )
    return TextColumn.from_arrow(prompt)


_CONDITIONING_COLUMNS: dict[str, tuple[str, ...]] = {
    "class": ("class_id", "class_name"),
    "text": ("prompt", "negative_prompt"),
    "none": (),
}
_KIND = {"class": "a class-conditional model", "text": "a text-to-image model", "none": "an unconditional model"}


def _refuse_other_conditioning(where: str, columns: set[str], conditioning: Conditioning) -> None:
    for other, names in _CONDITIONING_COLUMNS.items():
        found = sorted(columns & set(names))
        if other != conditioning and found:
            takes = ", ".join(_CONDITIONING_COLUMNS[conditioning]) or "only seed and sample_id"
            raise ManifestError(
                f"{where}: column(s) {', '.join(found)} are for {_KIND[other]}, but this is {_KIND[conditioning]} "
                f"(it takes {takes}); drop them"
            )


def _text_column(table: pa.Table, name: str, where: str, first_row: int, *, nulls: bool) -> TextColumn:
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise ManifestError(f"{where}: column {name!r} must hold text, found {column.type}")
    if column.null_count and not nulls:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ManifestError(f"{where}: row {row + 1} has no {name}; every row needs one")
    return TextColumn.from_arrow(column.cast(pa.large_string()))


def _refuse_empty_prompts(where: str, prompt: TextColumn, sample_id: np.ndarray, first_row: int) -> None:
    blank = pc.equal(pc.utf8_trim_whitespace(prompt.to_arrow()), "").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(blank)
    if rows.size:
        row = int(rows[0])
        raise ManifestError(
            f"{where}: row {first_row + row + 1} (sample_id {int(sample_id[row])}) has an empty prompt"
            f"{f' ({rows.size} rows in all)' if rows.size > 1 else ''}; give every row a prompt"
        )


def _int_column(
    table: pa.Table,
    name: str,
    where: str,
    first_row: int,
    *,
    lo: int = -(2**63),
    hi: int = 2**63,
    bounds: str = "an int64",
) -> np.ndarray:
    """An integer column as int64, refusing empty cells, fractions and values outside [lo, hi)."""
    column = table.column(name)
    if column.null_count:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ManifestError(
            f"{where}: row {row + 1} has no {name} (column {name!r} has {column.null_count} empty value(s))"
        )
    kind = column.type
    values = column.to_numpy()
    if pa.types.is_integer(kind):
        if values.dtype == np.uint64 and values.size and values.max() > np.uint64(2**63 - 1):
            raise ManifestError(f"{where}: {name} must be {bounds}, got {int(values.max())}")
        values = values.astype(np.int64)
        bad = np.flatnonzero((values < lo) | (values > hi - 1))  # hi - 1 and lo fit int64; hi may not
        if bad.size:
            row = first_row + int(bad[0])
            raise ManifestError(f"{where}: row {row + 1}: {name} must be {bounds}, got {int(values[bad[0]])}")
        return values
    if pa.types.is_floating(kind):
        # CSV/JSON readers turn integers beyond int64 into float64: name the value, then refuse fractions.
        bad = np.flatnonzero((values < lo) | (values >= hi))
        if bad.size:
            row = first_row + int(bad[0])
            raise ManifestError(f"{where}: row {row + 1}: {name} must be {bounds}, got {int(values[bad[0]])}")
        fractional = values[values != np.floor(values)]
        example = float(fractional[0] if fractional.size else values[0])
        raise ManifestError(f"{where}: column {name!r} must hold integers, got {example} ({kind})")
    raise ManifestError(f"{where}: column {name!r} must hold integers, found {kind}")


def _class_names_to_ids(table: pa.Table, where: str, names: ClassNames) -> np.ndarray:
    column = table.column("class_name")
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ManifestError(f"{where}: column 'class_name' must hold a name in every row")
    encoded = column.combine_chunks().dictionary_encode()
    ids = np.asarray(_names_to_ids(encoded.dictionary.to_pylist(), names, where), dtype=np.int32)
    return ids[encoded.indices.to_numpy()]


def _check_names_match(table: pa.Table, class_id: np.ndarray, where: str, first_row: int, names: ClassNames) -> None:
    """With both columns, each row's name must name its id: a mismatch means a mislabelled manifest."""
    column = table.column("class_name")
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ManifestError(f"{where}: column 'class_name' must hold a name in every row")
    pairs = pa.table({"name": column, "id": class_id}).group_by(["name", "id"]).aggregate([])
    for name, cid in zip(pairs.column("name").to_pylist(), pairs.column("id").to_pylist(), strict=True):
        if cid not in names.candidates(name):
            row = first_row + int(
                np.flatnonzero((column.to_numpy(zero_copy_only=False) == name) & (class_id == cid))[0]
            )
            raise ManifestError(
                f"{where}: data row {row + 1} has class_id {cid} ({names.name(cid)!r}) but class_name {name!r}, "
                "which names another class; fix the row or drop one of the two columns"
            )


def _names_to_ids(raw: Sequence[str], names: ClassNames, where: str) -> list[int]:
    try:
        return names.ids(raw)
    except ValueError as err:
        raise ManifestError(f"{where}: {err}") from None
