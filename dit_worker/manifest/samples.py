"""The samples a job makes: (sample_id, seed) rows in sample_id order, each with its conditioning:
a class id (class-conditional DiT), a prompt and optional negative prompt (text-to-image), or
nothing (unconditional).

Kept as numpy columns (20 bytes a sample for a class model: a 1,000,000-sample manifest is 20 MB)
and prompts as one byte buffer plus offsets (TextColumn), so the driver slices shards out of it
without building a Python object per sample.

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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dit_worker.backends import Conditioning, Rows
from dit_worker.backends.labels import ClassNames
from dit_worker.manifest.text_column import TextColumn
from dit_worker.sampling.noise import MAX_SEED

SEED_SPACE = 2**32  # the seeds torch's CPU generator tells apart: it keeps the low 32 bits
SEED_SHIFT = 2654435761  # Knuth's multiplicative-hash constant, ~2**32 / golden ratio: spreads global seeds
MAX_GLOBAL_SEED = 2**31  # exclusive
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file or flag and the bad value."""


@dataclass(frozen=True)
class Samples:
    """A job's rows as columns (no Python object per row): sample id, seed and the conditioning.

    Slicing (`samples[a:b]`) gives a shard's rows; `rows()` the lists a backend takes. Usage::

        samples = from_classes([207, 360], per_class=4, global_seed=0)  # 8 rows, seeds = sample ids
        samples[0:4].class_id  # array([207, 207, 207, 207], dtype=int32)
    """

    sample_id: np.ndarray  # int64, strictly increasing
    class_id: np.ndarray | None  # int32; None: the rows carry no class (text-to-image, unconditional)
    seed: np.ndarray  # int64, in [0, 2**63)
    prompt: TextColumn | None = None  # text-to-image rows
    negative_prompt: TextColumn | None = None  # optional per-row negative prompts (empty cells: none)

    def __len__(self) -> int:
        return len(self.sample_id)

    def __getitem__(self, rows: slice) -> Samples:
        return Samples(
            self.sample_id[rows],
            None if self.class_id is None else self.class_id[rows],
            self.seed[rows],
            None if self.prompt is None else self.prompt[rows],
            None if self.negative_prompt is None else self.negative_prompt[rows],
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

    def sha256(self) -> str:
        """Content hash: the same samples give the same hash whatever file format they came from."""
        h = hashlib.sha256()
        if self.class_id is not None and self.prompt is None:  # class rows: the hash jobs have always had
            for column, dtype in ((self.sample_id, "<i8"), (self.class_id, "<i4"), (self.seed, "<i8")):
                h.update(np.ascontiguousarray(column, dtype=dtype).tobytes())
            return h.hexdigest()
        h.update(f"samples/{self.conditioning}".encode())
        for column, dtype in ((self.sample_id, "<i8"), (self.seed, "<i8")):
            h.update(np.ascontiguousarray(column, dtype=dtype).tobytes())
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if text is not None:
                h.update(name.encode())
                text.digest_into(h)
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
    sample_id, seed = _derived(len(class_ids) * per_class, global_seed)
    return Samples(sample_id, np.repeat(np.asarray(class_ids, dtype=np.int32), per_class), seed)


def from_prompts(path: Path, per_prompt: int, global_seed: int) -> Samples:
    """`--prompts FILE --per-prompt N`: one UTF-8 prompt per line, prompt-major like `from_classes`."""
    prompts = read_prompt_lines(path)
    sample_id, seed = _derived(len(prompts) * per_prompt, global_seed)
    return Samples(sample_id, None, seed, prompts.repeat(per_prompt))


def from_count(count: int, global_seed: int) -> Samples:
    """`--num-samples N` of an unconditional model."""
    sample_id, seed = _derived(count, global_seed)
    return Samples(sample_id, None, seed)


def _derived(count: int, global_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sample_id 0..count-1 and seed = (sample_id + global_seed * SEED_SHIFT) mod 2**32 (module docstring)."""
    if not 0 <= global_seed < MAX_GLOBAL_SEED:
        raise ManifestError(f"--seed must lie in [0, 2**31), got {global_seed}")
    if count > SEED_SPACE:
        raise ManifestError(f"{count} samples exceed the 2**32 distinct seeds torch's generator has; use --manifest")
    sample_id = np.arange(count, dtype=np.int64)
    return sample_id, derived_seeds(sample_id, global_seed)


def derived_seeds(sample_id: np.ndarray, global_seed: int) -> np.ndarray:
    return (sample_id + global_seed * SEED_SHIFT) % SEED_SPACE


def read_prompt_lines(path: Path) -> TextColumn:
    """One prompt per line (a final newline is optional; CRLF is read as LF); refuses empty lines."""
    if not path.is_file():
        raise ManifestError(f"--prompts {path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ManifestError(
            f"--prompts {path}: line {line} is not UTF-8 ({err.reason}); save the file as UTF-8"
        ) from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ManifestError(f"--prompts {path}: no prompts; write one prompt per line")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ManifestError(f"--prompts {path}: line {number} is empty; write one prompt per line, no blank lines")
    return TextColumn.from_strings(lines)


def read_manifest(path: Path, names: ClassNames | None, conditioning: Conditioning = "class") -> Samples:
    """A Parquet, CSV or JSONL file with `seed`, optional `sample_id`, and the model's conditioning:
    `class_id` or `class_name` (class-conditional), `prompt` and optional `negative_prompt`
    (text-to-image), or neither (unconditional). Columns for another kind of model are refused.

    Without `sample_id`, rows are numbered 0, 1, ... in file order.
    """
    table = _read_table(path)
    columns = set(table.column_names)
    if table.num_rows == 0:  # before any column check: a header-only CSV has null-typed columns
        raise ManifestError(f"{path}: no rows (columns {sorted(columns)}); a manifest needs one row per sample")
    if "seed" not in columns:
        raise ManifestError(f"{path}: missing column 'seed' (found {sorted(columns)}); every row needs its seed")
    _refuse_other_conditioning(path, columns, conditioning)
    class_id = prompt = negative = None
    if conditioning == "class":
        assert names is not None
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
        class_id = class_id.astype(np.int32)
    elif conditioning == "text":
        if "prompt" not in columns:
            raise ManifestError(f"{path}: a text-to-image model needs a 'prompt' column (found {sorted(columns)})")
        prompt = _text_column(table, "prompt", path, nulls=False)
        if "negative_prompt" in columns:
            negative = _text_column(table, "negative_prompt", path, nulls=True)
    seed = _int_column(table, "seed", path, lo=0, hi=MAX_SEED, bounds="[0, 2**63)")
    if "sample_id" in columns:
        sample_id = _int_column(table, "sample_id", path, lo=0, hi=2**63, bounds=">= 0")
    else:
        sample_id = np.arange(table.num_rows, dtype=np.int64)
    if prompt is not None:
        _refuse_empty_prompts(path, prompt, sample_id)
    order = np.argsort(sample_id, kind="stable")
    sample_id = sample_id[order]
    dup = np.flatnonzero(sample_id[1:] == sample_id[:-1])
    if dup.size:
        values = sorted({int(v) for v in sample_id[dup[:5]]})
        raise ManifestError(f"{path}: duplicate sample_id {values}; each sample_id must appear once")
    return Samples(
        sample_id,
        None if class_id is None else class_id[order],
        seed[order],
        None if prompt is None else prompt.take(order),
        None if negative is None else negative.take(order),
    )


_CONDITIONING_COLUMNS: dict[str, tuple[str, ...]] = {
    "class": ("class_id", "class_name"),
    "text": ("prompt", "negative_prompt"),
    "none": (),
}
_KIND = {"class": "a class-conditional model", "text": "a text-to-image model", "none": "an unconditional model"}


def _refuse_other_conditioning(path: Path, columns: set[str], conditioning: Conditioning) -> None:
    for other, names in _CONDITIONING_COLUMNS.items():
        found = sorted(columns & set(names))
        if other != conditioning and found:
            takes = ", ".join(_CONDITIONING_COLUMNS[conditioning]) or "only seed and sample_id"
            raise ManifestError(
                f"{path}: column(s) {', '.join(found)} are for {_KIND[other]}, but this is {_KIND[conditioning]} "
                f"(it takes {takes}); drop them"
            )


def _text_column(table: pa.Table, name: str, path: Path, *, nulls: bool) -> TextColumn:
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise ManifestError(f"{path}: column {name!r} must hold text, found {column.type}")
    if column.null_count and not nulls:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ManifestError(f"{path}: row {row + 1} has no {name}; every row needs one")
    return TextColumn.from_arrow(column.cast(pa.large_string()))


def _refuse_empty_prompts(path: Path, prompt: TextColumn, sample_id: np.ndarray) -> None:
    import pyarrow.compute as pc

    blank = pc.equal(pc.utf8_trim_whitespace(prompt.to_arrow()), "").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(blank)
    if rows.size:
        row = int(rows[0])
        raise ManifestError(
            f"{path}: row {row + 1} (sample_id {int(sample_id[row])}) has an empty prompt"
            f"{f' ({rows.size} rows in all)' if rows.size > 1 else ''}; give every row a prompt"
        )


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
