"""The report's view of a set's per-image scores (`jobs.generate --score`, docs/output.md): for each
float score a fixed-bin histogram, its count, mean, min and max, and its lowest and highest samples;
for each classifier a count of its top labels.

Streaming, two passes over the metadata parts, each reading only `sample_id` and the score columns
(Parquet column chunks, ranged reads on S3): the first keeps per score a count, a sum, the min and
max and the EXTREMES lowest and highest (value, sample_id) rows; the second counts the values into
BINS equal bins spanning that min..max (np.histogram's bins, so a score's bins do not depend on how
the set is split into parts). Memory: one part's score columns plus O(scores x (BINS + EXTREMES)),
whatever the set's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dit_worker.metrics.embedding_statistics import CLIP, EmbeddingStatistics, embedding_key
from dit_worker.output.layout import part_key
from dit_worker.output.reader import OutputSet, OutputSetError
from dit_worker.report.ranking import SmallestK
from dit_worker.storage.objects import StorageError

BINS = 40  # bars per histogram
EXTREMES = 8  # lowest and highest samples shown per float score
MAX_LABELS = 8  # label probabilities given a histogram per classifier: its most frequent top labels
# The float score columns jobs.generate --score writes (dit_worker.metrics.row_scores; named here so
# that reading a report does not import torch).
FLOAT_SCORES = ("clip_score", "aesthetic")
LABEL_SUFFIX = "_label"


@dataclass
class ScoreHistogram:
    """One float score over the set: its histogram (BINS counts between `edges`), count (finite values),
    mean, min, max, and the EXTREMES lowest and highest samples as (value, sample_id, shard index)."""

    column: str
    label: str | None = None  # a classifier's label (a field of the NAME struct), None for a float column
    label_index: int | None = None  # the label's position in the struct (the model's id)
    source: str = ""  # where the values come from, for the page
    dtype: str = "float32"  # the column's type: values are shown in its shortest round-trip form
    count: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    lowest: list[tuple[float, int, int]] = field(default_factory=list)
    highest: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def edges(self) -> np.ndarray:
        """BINS + 1 bin edges, as np.histogram(values, BINS) gives them for these values."""
        return np.histogram(np.zeros(0), BINS, range=(self.min, self.max))[1]

    def observe(self, values: np.ndarray) -> None:
        """First pass: count, sum, min and max of a chunk's finite values."""
        if values.size:
            self.count += int(values.size)
            self.total += float(values.sum())
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))

    def bin(self, values: np.ndarray) -> None:
        """Second pass: the chunk's values counted into the bins of the first pass's min..max."""
        if values.size:
            self.counts += np.histogram(values, BINS, range=(self.min, self.max))[0]


@dataclass(frozen=True)
class LabelCounts:
    """How often each label of a classifier is a sample's top label (the NAME_label column)."""

    column: str  # NAME
    labels: list[tuple[str, int]]  # (label, samples whose top label it is), in the model's id order
    other: int  # NAME_label values that are none of NAME's labels (counted, not listed: the list stays bounded)
    missing: int  # samples without a top label (null)


@dataclass
class _Classifier:
    name: str
    labels: list[str]
    top: np.ndarray  # int64 per label
    other: int = 0
    missing: int = 0


@dataclass(frozen=True)
class ScoreReport:
    """Every score the report shows."""

    scores: list[ScoreHistogram]
    label_counts: list[LabelCounts]


def _finite(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(values)  # a null (to_numpy gives NaN) or NaN score is no score
    return values[keep], ids[keep]


def _float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), np.float64)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def score_schema(schema: pa.Schema) -> tuple[list[str], dict[str, list[str]]]:
    """(float score columns, {classifier NAME: its labels in id order}) of a metadata part's schema: a
    classifier is a struct NAME of float fields beside a string NAME_label, as --score classifier writes."""
    floats = [c for c in FLOAT_SCORES if c in schema.names and _is_float(schema.field(c).type)]
    classifiers = {}
    for f in schema:
        label = schema.field(f.name + LABEL_SUFFIX) if f.name + LABEL_SUFFIX in schema.names else None
        if (
            pa.types.is_struct(f.type)
            and f.type.num_fields
            and all(_is_float(f.type.field(i).type) for i in range(f.type.num_fields))
            and label is not None
            and pa.types.is_string(label.type)
        ):
            classifiers[f.name] = [f.type.field(i).name for i in range(f.type.num_fields)]
    return floats, classifiers


def _part(output: OutputSet, index: int, columns: list[str] | None) -> tuple[pa.Schema, pa.Table | None]:
    """A metadata part's schema and (unless `columns` is None) those of `columns` that it has."""
    key = part_key(index)
    try:
        part = pq.ParquetFile(output.storage.open_object(key))
        have = None if columns is None else [c for c in columns if c in part.schema_arrow.names]
        # use_threads=False: a few columns need no decode threads, and with torch loaded pyarrow's
        # threads made 1 in 16 to 1 in 8 exits abort ('terminate called without an active exception').
        return part.schema_arrow, None if have is None else part.read(columns=have, use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise OutputSetError(f"{output.storage.child(key)}: not a readable Parquet file ({err})") from None


def _parts(output: OutputSet, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """(shard index, the part's `columns` that it has), one metadata part at a time."""
    for index in output.indices.tolist():
        table = _part(output, index, columns)[1]
        assert table is not None
        yield index, table


def _label_values(table: pa.Table, name: str, labels: list[str]) -> np.ndarray:
    """float64 [rows, labels]: each label's probability (NaN where the part lacks it or it is null)."""
    out = np.full((table.num_rows, len(labels)), np.nan)
    if name not in table.column_names:
        return out
    struct = table.column(name).combine_chunks()
    names = [struct.type.field(i).name for i in range(struct.type.num_fields)]
    fields = dict(zip(names, struct.flatten(), strict=True))
    for j, label in enumerate(labels):
        if label in fields:
            out[:, j] = _float(fields[label])
    return out


def read_scores(output: OutputSet) -> ScoreReport:
    """The scores of the metadata's score columns (those of the first committed part), else the CLIP
    scores `jobs.fid --set-metrics clip_score` stored; two streaming passes (module docstring)."""
    if not output.indices.size:
        return ScoreReport([], [])
    first = _part(output, int(output.indices[0]), None)[0]
    floats, classes = score_schema(first)
    if not floats and not classes:
        fallback = _feature_clip_scores(output)
        return ScoreReport([fallback] if fallback else [], [])
    columns = ["sample_id", *floats, *[c for name in classes for c in (name, name + LABEL_SUFFIX)]]
    dtypes = {c: str(first.field(c).type.to_pandas_dtype().__name__) for c in floats}
    source = "metadata column {} (jobs.generate --score)"
    series = {c: ScoreHistogram(c, source=source.format(c), dtype=dtypes[c]) for c in floats}
    low = {c: SmallestK(EXTREMES) for c in floats}
    high = {c: SmallestK(EXTREMES) for c in floats}
    found = {n: _Classifier(n, labels, np.zeros(len(labels), np.int64)) for n, labels in classes.items()}
    stats = {n: LabelStats(len(c.labels)) for n, c in found.items()}
    for shard, table in _parts(output, columns):  # first pass
        ids = np.asarray(table.column("sample_id").to_numpy(), np.int64)
        for c in floats:
            if c in table.column_names:
                values, kept = _finite(_float(table.column(c)), ids)
                series[c].observe(values)
                where = np.full(kept.shape, shard, np.int64)
                low[c].offer(values, kept, where)
                high[c].offer(-values, kept, where)
        for name, clf in found.items():
            stats[name].observe(_label_values(table, name, clf.labels))
            _count_labels(clf, table)
    chosen = {n: _most_frequent(c) for n, c in found.items()}
    label_series = {
        n: [stats[n].summary(n, j, clf.labels[j], source.format(f"{n}.{clf.labels[j]}")) for j in chosen[n]]
        for n, clf in found.items()
    }
    for _, table in _parts(output, columns):  # second pass: the bins
        for c in floats:
            if c in table.column_names:
                series[c].bin(_finite(_float(table.column(c)), np.zeros(table.num_rows, np.int64))[0])
        for name, clf in found.items():
            values = _label_values(table, name, clf.labels)
            for summary, j in zip(label_series[name], chosen[name], strict=True):
                column = values[:, j]
                summary.bin(column[np.isfinite(column)])
    for c in floats:
        series[c].lowest = low[c].rows()
        series[c].highest = [(-v, i, s) for v, i, s in high[c].rows()]
    every = [series[c] for c in floats] + [s for n in found for s in label_series[n]]
    scores = [s for s in every if s.count]  # a column of nulls only has no histogram (nor a min and max)
    counts = [
        LabelCounts(n, list(zip(c.labels, c.top.tolist(), strict=True)), c.other, c.missing) for n, c in found.items()
    ]
    return ScoreReport(scores, counts)


class LabelStats:
    """First-pass count, sum, min and max of every label of one classifier at once (vectorised over the
    labels: a 1,000-label classifier costs a few arrays, not a thousand objects)."""

    def __init__(self, labels: int) -> None:
        self.count = np.zeros(labels, np.int64)
        self.total = np.zeros(labels)
        self.min = np.full(labels, np.inf)
        self.max = np.full(labels, -np.inf)

    def observe(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        self.count += finite.sum(axis=0)
        self.total += np.where(finite, values, 0.0).sum(axis=0)
        self.min = np.minimum(self.min, np.where(finite, values, np.inf).min(axis=0, initial=np.inf))
        self.max = np.maximum(self.max, np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf))

    def summary(self, column: str, j: int, label: str, source: str) -> ScoreHistogram:
        return ScoreHistogram(
            column, label, j, source, "float32", int(self.count[j]), float(self.total[j]), float(self.min[j]),
            float(self.max[j]),
        )  # fmt: skip


def _count_labels(clf: _Classifier, table: pa.Table) -> None:
    column = clf.name + LABEL_SUFFIX
    if column not in table.column_names:
        return
    counts = table.column(column).value_counts()
    position = {label: j for j, label in enumerate(clf.labels)}
    for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
        if value is None:
            clf.missing += count
        elif value in position:
            clf.top[position[value]] += count
        else:
            clf.other += count


def _most_frequent(clf: _Classifier) -> list[int]:
    """The MAX_LABELS labels most often on top (ties and never-top labels in id order), in id order."""
    order = np.lexsort((np.arange(len(clf.labels)), -clf.top))[:MAX_LABELS]
    return sorted(order.tolist())


def _feature_clip_scores(output: OutputSet) -> ScoreHistogram | None:
    """The CLIP scores jobs.fid --set-metrics clip_score stored (features/clip-part-*.npz), in two passes
    over those parts; they carry no sample ids, so this score has a histogram but no lowest and highest."""
    summary = ScoreHistogram("clip_score", source="features/clip-part-*.npz (jobs.fid --set-metrics clip_score)")

    def parts() -> Iterator[np.ndarray]:
        for index in output.indices.tolist():
            scores = EmbeddingStatistics.from_bytes(output.storage.get(embedding_key(CLIP, index))).scores
            values = np.asarray(scores, np.float64)
            yield values[np.isfinite(values)]

    try:
        for values in parts():
            summary.observe(values)
        for values in parts():
            summary.bin(values)
    except (StorageError, ValueError, KeyError):
        return None
    return summary if summary.count else None
