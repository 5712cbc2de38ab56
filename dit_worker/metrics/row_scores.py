"""`jobs.generate --score KIND[...]` (repeatable): per-image scores computed on the worker from the
generated batch (still on the device), written as columns of the shard's metadata part (and of its
webdataset json / Parquet data part):

- `clip[=MODEL]`: `clip_score`, the CLIP score against the row's prompt, or, on class-conditional
  models, against its class name verbatim (the `class_name` column; no prompt template);
  `--score-embeddings` adds the image embedding as `clip_embedding`, a fixed-size float32 list.
- `aesthetic[=WEIGHTS]`: `aesthetic`, the LAION improved aesthetic predictor (metrics.aesthetic) on
  the same CLIP image embedding: one CLIP forward pass serves both columns.
- `classifier:NAME=MODEL`: `NAME`, a struct of each label's probability (float32 fields in id
  order), and `NAME_label`, the most probable label (metrics.image_classifier).

Every model is loaded once per worker; each one's identity is part of the job's fingerprint, so a
resumed job never mixes parts scored by one model, another, or none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import torch

from dit_worker.metrics.aesthetic import AESTHETIC_CLIP, AestheticScorer, resolve_aesthetic_weights
from dit_worker.metrics.clip_score import DEFAULT_CLIP, ClipEmbedder, clip_scores
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.metrics.image_classifier import ImageClassifier, resolve_classifier
from dit_worker.output.metadata import RESERVED_COLUMNS

SCORE_COLUMN = "clip_score"
EMBEDDING_COLUMN = "clip_embedding"
AESTHETIC_COLUMN = "aesthetic"
LABEL_SUFFIX = "_label"
SCORE_FLAG = "--score"
# A column name every reader takes as it is: Parquet, webdataset json keys, `datasets` features,
# pyarrow / Ray filter expressions (an identifier), and never a path.
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
KIND_ORDER = {"clip": 0, "aesthetic": 1, "classifier": 2}
EXPECTED = "expected clip[=MODEL], aesthetic[=WEIGHTS] or classifier:NAME=MODEL"

ScoreKind = Literal["clip", "aesthetic", "classifier"]


@dataclass(frozen=True)
class ScoreRequest:
    """One `--score` value: its kind, the model (or weights) it names (None: the default) and, for a
    classifier, its column name."""

    kind: ScoreKind
    source: str | None = None
    name: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        if self.kind == "clip":
            return (SCORE_COLUMN,)
        if self.kind == "aesthetic":
            return (AESTHETIC_COLUMN,)
        return (self.name, self.name + LABEL_SUFFIX)


def parse_score(value: str) -> ScoreRequest:
    """One `--score` value, checked for its form only (no file is read)."""
    head, sep, source = value.partition("=")
    if sep and not source:
        raise ValueError(f"{SCORE_FLAG} {value!r}: nothing after '='; {EXPECTED}")
    if head in ("clip", "aesthetic"):
        return ScoreRequest(head, source or None)
    kind, colon, name = head.partition(":")
    if kind != "classifier" or not colon:
        raise ValueError(f"{SCORE_FLAG} {value!r}: unknown score; {EXPECTED}")
    if not sep:
        raise ValueError(f"{SCORE_FLAG} {value!r}: a classifier needs its model: classifier:NAME=MODEL")
    if not COLUMN_NAME.match(name):
        raise ValueError(
            f"{SCORE_FLAG} {value!r}: NAME {name!r} is not a column name (a letter or _, then letters, digits or _; "
            "at most 64)"
        )
    return ScoreRequest("classifier", source, name)


def parse_scores(values: Sequence[str]) -> tuple[ScoreRequest, ...]:
    """The job's scores in column order (clip, aesthetic, classifiers by name), each kind once and every
    column distinct from the metadata's own; a ValueError naming the value otherwise."""
    requests = [parse_score(v) for v in values]
    seen: dict[str, str] = {}
    for value, request in zip(values, requests, strict=True):
        key = request.name or request.kind
        if key in seen:
            raise ValueError(f"{SCORE_FLAG} {value!r} repeats {SCORE_FLAG} {seen[key]!r}; pass each score once")
        seen[key] = value
        if request.kind == "classifier":
            taken = [c for c in request.columns if c in RESERVED_COLUMNS]
            if taken:
                raise ValueError(
                    f"{SCORE_FLAG} {value!r}: column {taken[0]!r} is one the job already writes; pick another NAME"
                )
    columns = [c for r in requests for c in r.columns]
    clash = next((c for c in columns if columns.count(c) > 1), None)
    if clash is not None:
        raise ValueError(f"{SCORE_FLAG}: two scores would write the column {clash!r}; pick another NAME")
    return tuple(sorted(requests, key=lambda r: (KIND_ORDER[r.kind], r.name)))


def clip_model(requests: Sequence[ScoreRequest], named: str | None = None) -> str | None:
    """The job's one CLIP model, shared by clip_score and aesthetic: `named` (--clip-model) or the one
    clip=MODEL names, else the aesthetic predictor's own ViT-L/14 when aesthetic is scored, else
    DEFAULT_CLIP; None without either."""
    kinds = {r.kind: r for r in requests}
    given = kinds["clip"].source if "clip" in kinds else None
    if named is not None and given is not None and named != given:
        raise ValueError(f"--clip-model {named} and {SCORE_FLAG} clip={given} name two CLIP models; pass one of them")
    if named is not None or given is not None:
        if not kinds.keys() & {"clip", "aesthetic"}:
            raise ValueError(f"--clip-model is the CLIP of {SCORE_FLAG} clip and aesthetic; add one or drop it")
        return named or given
    if "aesthetic" in kinds:
        return AESTHETIC_CLIP
    return DEFAULT_CLIP if "clip" in kinds else None


def score_record(values: Sequence[str], embeddings: bool, named_clip: str | None = None) -> dict[str, Any] | None:
    """What the fingerprint records of --score: every model by the sha256 of its weights (checked here,
    on the driver, before any worker loads them). `--score clip[=MODEL]` alone keeps the record of
    older job.json files, so their jobs resume."""
    if not values:
        return None
    requests = parse_scores(values)
    clip_spec = clip_model(requests, named_clip)
    clip = resolve_hf_model(clip_spec, flag=SCORE_FLAG, model_type="clip") if clip_spec else None
    if [r.kind for r in requests] == ["clip"]:
        return {"column": SCORE_COLUMN, "clip_model_id": clip.id if clip else None, "embeddings": embeddings}
    record: dict[str, Any] = {"columns": [c for r in requests for c in r.columns]}
    record |= {"clip_model_id": clip.id if clip else None, "embeddings": embeddings}
    for request in requests:
        if request.kind == "aesthetic" and clip is not None:
            weights = resolve_aesthetic_weights(request.source, flag=SCORE_FLAG)
            width = int(json.loads((clip.path / "config.json").read_text()).get("projection_dim", 512))
            if width != weights.input_dim:
                raise MetricsInputError(
                    f"{SCORE_FLAG} aesthetic: its MLP takes {weights.input_dim}-wide CLIP embeddings and the CLIP "
                    f"model {clip_spec} makes {width}-wide ones; name the CLIP it was fitted on with --score clip=MODEL"
                )
            record["aesthetic_weights_id"] = weights.id
        elif request.kind == "classifier":
            model, labels = resolve_classifier(request.source or "", flag=f"{SCORE_FLAG} classifier:{request.name}")
            record.setdefault("classifiers", {})[request.name] = {"model_id": model.id, "labels": list(labels)}
    return record


class RowScorer(Protocol):
    """One shard's score columns, batch by batch; `columns()` gives them in sample order."""

    def add(self, texts: Sequence[str], images: np.ndarray | torch.Tensor) -> None:
        """images: uint8 [N, H, W, 3]; texts: row i's prompt or class name (empty when not needed)."""

    def columns(self) -> dict[str, pa.Array]: ...


class ClipRowScorer:
    """clip_score, clip_embedding and aesthetic, all from one CLIP image embedding per image."""

    def __init__(
        self, clip: ClipEmbedder, embeddings: bool, score: bool = True, aesthetic: AestheticScorer | None = None
    ) -> None:
        self.clip, self.embeddings, self.score, self.aesthetic = clip, embeddings, score, aesthetic
        self._scores: list[np.ndarray] = []
        self._aesthetic: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def add(self, texts: Sequence[str], images: np.ndarray | torch.Tensor) -> None:
        features = self.clip.images(images)
        if self.score:
            self._scores.append(clip_scores(features, self.clip.texts(list(texts))).astype(np.float32))
        if self.aesthetic is not None:
            self._aesthetic.append(self.aesthetic.scores(features).astype(np.float32))
        if self.embeddings:
            self._rows.append(features.astype(np.float32))

    def columns(self) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {}
        if self.score:
            out[SCORE_COLUMN] = pa.array(np.concatenate(self._scores), pa.float32())
        if self.aesthetic is not None:
            out[AESTHETIC_COLUMN] = pa.array(np.concatenate(self._aesthetic), pa.float32())
        if self.embeddings:
            rows = np.concatenate(self._rows)
            out[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
        return out


def probability_type(labels: Sequence[str]) -> pa.DataType:
    """The NAME column's type: a struct of one float32 field per label, in id order (Parquet, json
    and `datasets` all keep a struct; a map column is not a `datasets` feature)."""
    return pa.struct([pa.field(label, pa.float32()) for label in labels])


class ClassifierRowScorer:
    """`NAME` (each label's probability) and `NAME_label` (the top label) of one classifier."""

    def __init__(self, classifier: ImageClassifier, name: str, labels: Sequence[str]) -> None:
        self.classifier, self.name, self.labels = classifier, name, tuple(labels)
        self._probabilities: list[np.ndarray] = []

    def add(self, texts: Sequence[str], images: np.ndarray | torch.Tensor) -> None:
        self._probabilities.append(self.classifier.probabilities(images).astype(np.float32))

    def columns(self) -> dict[str, pa.Array]:
        p = np.concatenate(self._probabilities)
        fields = [pa.array(p[:, i], pa.float32()) for i in range(len(self.labels))]
        struct = pa.StructArray.from_arrays(fields, fields=list(probability_type(self.labels)))
        top = [self.labels[i] for i in p.argmax(1).tolist()]  # the first of equal maxima, as argmax of logits
        return {self.name: struct, self.name + LABEL_SUFFIX: pa.array(top, pa.string())}


def row_scorers(
    values: Sequence[str], embeddings: bool, device: torch.device | str, named_clip: str | None = None
) -> Callable[[int], list[RowScorer]]:
    """Load every score's model once per worker; each shard gets its own scorers."""
    requests = parse_scores(values)
    kinds = {r.kind for r in requests}
    clip_spec = clip_model(requests, named_clip)
    clip = None
    if clip_spec is not None:
        clip = ClipEmbedder(resolve_hf_model(clip_spec, flag=SCORE_FLAG, model_type="clip"), device)
    aesthetic = None
    for request in requests:
        if request.kind == "aesthetic":
            aesthetic = AestheticScorer(resolve_aesthetic_weights(request.source, flag=SCORE_FLAG), device)
    classifiers = []
    for request in requests:
        if request.kind == "classifier":
            model, labels = resolve_classifier(request.source or "", flag=SCORE_FLAG)
            classifiers.append((ImageClassifier(model, device), request.name, labels))

    def scorers(shard: int) -> list[RowScorer]:
        out: list[RowScorer] = []
        if clip is not None:
            out.append(ClipRowScorer(clip, embeddings, score="clip" in kinds, aesthetic=aesthetic))
        out += [ClassifierRowScorer(c, name, labels) for c, name, labels in classifiers]
        return out

    return scorers
