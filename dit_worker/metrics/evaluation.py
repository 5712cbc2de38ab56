"""One evaluation: generated set + reference -> FID, sFID, IS, precision/recall (+ per-class FID).

Order matters: every input check (set complete, sizes, reference keys, labels, Inception weights)
runs before the first image is read, so a bad command fails in seconds, not after an hour of
feature extraction.

Memory on the driver is flat in the number of samples: the set is known by O(shards) numbers
(`OutputSet.summary`), tasks name shards by index, and the workers' parts are merged as they arrive
into float64 sums (FID, sFID, FD-DINOv2: O(d²)) and the fixed subsample of per-sample rows that the
Inception Score, precision/recall, per-class FID (50,000 rows) and CMMD (`--cmmd-samples`) need
(`subsample`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from dit_worker.backends.settings import resolve_device
from dit_worker.execution.pool import ActorPool, cluster_gpus, make_pool
from dit_worker.execution.tries import TaskQueue
from dit_worker.metrics.cmmd import CMMD_MAX_SAMPLES
from dit_worker.metrics.config import FidSettings
from dit_worker.metrics.embedding_statistics import CLIP, EmbeddingMerger, EmbeddingStatistics
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.frechet import frechet_distance, frechet_distance_of_samples
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.metrics.inception import InceptionWeights, resolve_inception_weights
from dit_worker.metrics.inception_score import SHUFFLE_SEED, SPLITS, inception_score
from dit_worker.metrics.precision_recall import NEIGHBOURHOOD, precision_recall
from dit_worker.metrics.reference import Reference, open_reference
from dit_worker.metrics.set_metrics import embedding_models_for, set_metrics
from dit_worker.metrics.shard_statistics import ShardStatistics, StatisticsMerger
from dit_worker.metrics.subsample import SUBSAMPLE_SIZE
from dit_worker.metrics.tasks import EmbeddingModels, FeatureActor, FeatureTask, SetShardTask, ShardFeatures
from dit_worker.output.encoding import LOSSY_FORMATS
from dit_worker.output.reader import OutputSet
from dit_worker.storage.node_cache import cache_root

log = logging.getLogger(__name__)
FeaturePool = ActorPool[FeatureTask, ShardFeatures]
METRICS_KEY = "metrics.json"
PER_CLASS_KEY = "metrics_per_class.json"


MAX_TRIES = 3


def _collect(
    pool: FeaturePool, tasks: Iterable[FeatureTask], total: int, what: str, cmmd_samples: int
) -> ShardFeatures | None:
    """Every task's part, merged as it arrives (never listed): sums, and the fixed subsamples."""
    merger, chunks, start = StatisticsMerger(SUBSAMPLE_SIZE), 0, time.monotonic()
    embeddings: dict[str, EmbeddingMerger] = {}
    queue = TaskQueue(enumerate(tasks), MAX_TRIES, name=lambda k: f"feature task {k}")
    for _, part in pool.map(queue):
        merger.add(part.inception)
        for kind, emb in part.embeddings.items():
            embeddings.setdefault(kind, EmbeddingMerger(cmmd_samples)).add(emb)
        chunks += 1
        log.info(
            "%s: %d/%d chunks (%d samples), %.0f s", what, chunks, total, part.inception.count, time.monotonic() - start
        )
    if not chunks:
        return None
    return ShardFeatures(merger.result(), {kind: m.result() for kind, m in embeddings.items()})


def _write(path: os.PathLike[str], data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def reference_features(
    ref: Reference,
    weights: InceptionWeights,
    pool: FeaturePool,
    models: EmbeddingModels | None = None,
    cmmd_samples: int = CMMD_MAX_SAMPLES,
) -> ShardFeatures | None:
    """Features of the reference images, cached per node by (reference content, weights), and one
    file per embedding model by (reference content, weights, model; for CLIP also the subsample size)."""
    key = hashlib.sha256(f"{ref.fingerprint()}|{weights.id}".encode()).hexdigest()[:32]
    folder = cache_root() / "fid-reference"
    path = folder / f"{key}.npz"

    def model_key(kind: str, model_id: str) -> str:
        named = f"{model_id}|subsample={cmmd_samples}" if kind == CLIP else model_id
        return hashlib.sha256(named.encode()).hexdigest()[:16]

    parts = {
        kind: folder / f"{key}-{kind}-{model_key(kind, model_id)}.npz"
        for kind, model_id in (models or EmbeddingModels()).ids().items()
    }
    if path.is_file() and all(p.is_file() for p in parts.values()):
        log.info("reference features from cache %s", path)
        embeddings = {kind: EmbeddingStatistics.from_bytes(p.read_bytes()) for kind, p in parts.items()}
        # .subsample(): a cache written before the subsample existed holds every row.
        return ShardFeatures(ShardStatistics.from_bytes(path.read_bytes()).subsample(SUBSAMPLE_SIZE), embeddings)
    stats = _collect(pool, ref.tasks(), ref.num_tasks, "reference features", cmmd_samples)
    if stats is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _write(path, stats.inception.to_bytes())
        for kind, p in parts.items():
            _write(p, stats.embeddings[kind].to_bytes())
    return stats


def _check_inputs(settings: FidSettings) -> tuple[OutputSet, Reference]:
    try:
        resolve_device(settings.device)
    except ValueError as err:
        raise MetricsInputError(f"--device: {err}") from None
    output = OutputSet.open(settings.out, s3_endpoint=settings.s3_endpoint)
    output.require_complete(settings.allow_partial)
    output.check_unique_ids()
    height, width = output.image_size()
    minimum = max(SPLITS, NEIGHBOURHOOD + 1)
    if output.num_samples < minimum:
        raise MetricsInputError(
            f"{output.url}: {output.num_samples} samples; the Inception Score's {SPLITS} splits and "
            f"{NEIGHBOURHOOD}-NN precision/recall need at least {minimum}"
        )
    ref = open_reference(settings.ref, s3_endpoint=settings.s3_endpoint)
    if ref.image_size is not None and ref.image_size != (height, width):
        rh, rw = ref.image_size
        raise MetricsInputError(
            f"image size mismatch: the set {output.url} has {width}x{height} images, the reference {ref.url} has "
            f"{rw}x{rh}. FIDs against a reference of another resolution are not comparable; use the reference "
            "batch made at the set's resolution (ADM: VIRTUAL_imagenet256_labeled.npz at 256, "
            "VIRTUAL_imagenet512.npz at 512)"
        )
    if 0 < ref.num_images <= NEIGHBOURHOOD:
        raise MetricsInputError(
            f"{ref.url}: {ref.num_images} reference images; {NEIGHBOURHOOD}-NN precision/recall need at least "
            f"{NEIGHBOURHOOD + 1}"
        )
    if settings.per_class and not output.labelled:
        raise MetricsInputError(
            f"--per-class needs class ids, and {output.url} has samples without one (a text-to-image or "
            "unconditional set); drop --per-class"
        )
    if settings.per_class and not ref.has_labels:
        raise MetricsInputError(
            f"--per-class needs class ids for the reference images, and {ref.url} has none: use an ADM batch with "
            "arr_1 labels, a folder with one sub-folder per class id (or the 1000 ImageNet WordNet ids), or a "
            "dit-worker output"
        )
    if "clip_score" in settings.set_metrics and not output.prompted:
        raise MetricsInputError(
            f"--set-metrics clip_score scores each image against its prompt, and {output.url} has samples without "
            "one (a class-conditional or unconditional set); drop clip_score (fd_dinov2 and cmmd need no prompts)"
        )
    return output, ref


def resolve_embedding_models(settings: FidSettings) -> EmbeddingModels:
    """The DINOv2 / CLIP models the asked-for set metrics need, checked before any weights load."""
    needs_clip = bool({"cmmd", "clip_score"} & set(settings.set_metrics))
    dinov2 = (
        resolve_hf_model(settings.dinov2_model, flag="--dinov2-model", model_type="dinov2")
        if "fd_dinov2" in settings.set_metrics
        else None
    )
    clip = resolve_hf_model(settings.clip_model, flag="--clip-model", model_type="clip") if needs_clip else None
    return embedding_models_for(settings.set_metrics, dinov2, clip)


def feature_pool(settings: FidSettings, weights: InceptionWeights, models: EmbeddingModels) -> FeaturePool:
    """FeatureActors on the one pool: in this process, or one per GPU on Ray (one actor without
    GPUs), placement checked before any work, dead actors restarted, each task tried MAX_TRIES times."""
    local = settings.mode == "local"
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or "auto"  # an existing cluster
    gpus = 0.0 if local else cluster_gpus(address)
    per_worker = settings.num_gpus_per_worker if settings.num_gpus_per_worker is not None else float(gpus > 0)
    num_workers = 1 if local else settings.num_workers or (None if per_worker else 1)
    # Ray nodes need not share a filesystem: actors there get the weights' bytes.
    weights_arg = weights.path if local else weights.path.read_bytes()
    pool: FeaturePool = make_pool(
        FeatureActor,
        (weights_arg, weights.id, settings.batch_size, settings.device if local else None, models),
        local=local,
        address=address,
        per_actor={"CPU": 1.0, "GPU": per_worker},
        num_workers=num_workers,
        tasks_per_actor=2,  # tasks that carry images (ADM reference chunks) never pile up in the driver
        placement_hint="lower --num-workers or --num-gpus-per-worker, or add nodes",
    )
    pool.start()
    if not local:
        log.info("Ray: %d feature actor(s), %.2g GPU each (cluster has %.3g GPUs)", pool.count, per_worker, gpus)
    return pool


def per_class_fid(samples: ShardStatistics, reference: ShardStatistics, names: dict[int, str]) -> list[dict[str, Any]]:
    """FID of each class's samples against the same class's reference images, worst first.

    From the per-sample rows of both sides, i.e. their fixed subsamples (every sample of a set of at most
    50,000): a class's sums would cost 1000 x 2048² float64 (34 GB) for ImageNet's classes. With ~50
    samples per class in 2048 dimensions the covariances are rank-deficient, so these values are far
    above FID-50K and only meaningful relative to each other: they rank the classes.
    """
    rows = []
    for class_id in np.unique(samples.class_ids):
        mine = samples.pool[samples.class_ids == class_id]
        theirs = reference.pool[reference.class_ids == class_id]
        fid = frechet_distance_of_samples(mine, theirs) if len(mine) >= 2 and len(theirs) >= 2 else None
        rows.append(
            {
                "class_id": int(class_id),
                "class_name": names.get(int(class_id), ""),
                "fid": fid,
                "num_samples": len(mine),
                "num_reference": len(theirs),
            }
        )
    return sorted(rows, key=lambda r: -np.inf if r["fid"] is None else -r["fid"])


def evaluate(settings: FidSettings, command: str | None = None) -> dict[str, Any]:
    """Evaluate the set; `command` (the command line, for the record) goes into metrics.json."""
    output, ref = _check_inputs(settings)
    weights = resolve_inception_weights(settings.inception_weights, s3_endpoint=settings.s3_endpoint)
    models = resolve_embedding_models(settings)
    log.info(
        "evaluating %s (%d samples, %d shards%s) against %s (%s)",
        output.url,
        output.num_samples,
        output.num_shards,
        "" if output.complete else ", partial",
        ref.url,
        ref.kind,
    )
    formats = sorted(output.image_formats())
    if lossy := [f for f in formats if f in LOSSY_FORMATS]:
        log.warning(
            "%s stores %s images: compression artefacts shift FID, so these metrics are not comparable with "
            "those of PNG sets or published ones",
            output.url,
            " and ".join(lossy),
        )
    pool = feature_pool(settings, weights, models)
    try:
        tasks = (
            SetShardTask(output.url, settings.s3_endpoint, index, reuse=not settings.recompute_features)
            for index in output.indices.tolist()
        )
        collected = _collect(pool, tasks, output.num_shards, "set features", settings.cmmd_samples)
        ref_collected = reference_features(ref, weights, pool, models, settings.cmmd_samples)
    finally:
        pool.close()
    assert collected is not None
    samples = collected.inception
    ref_features = ref_collected.inception if ref_collected is not None else None
    pool_ref, spatial_ref = ref.gaussians(ref_features)
    is_mean, is_std = inception_score(samples.logits)
    precision = recall = None
    if ref_features is not None:
        # On the driver: the k-NN distances need the subsamples' features at once (50k x 2048 float32 = 400 MB).
        device = resolve_device(settings.device if settings.mode == "local" else None)
        precision, recall = precision_recall(ref_features.pool, samples.pool, device=device)
    else:
        log.warning("%s holds no reference images (no arr_0): precision and recall are not computed", ref.url)
    metrics: dict[str, Any] = {
        "command": command,
        "fid": frechet_distance(samples.pool_moments.gaussian(), pool_ref),
        "sfid": frechet_distance(samples.spatial_moments.gaussian(), spatial_ref),
        "inception_score_mean": is_mean,
        "inception_score_std": is_std,
        "precision": precision,
        "recall": recall,
        "num_samples": samples.count,
        "subsample_num_samples": [len(samples.sample_ids), len(ref_features.sample_ids) if ref_features else 0],
        "num_shards": output.num_shards,
        "complete": output.complete,
        "image_size": list(output.image_size()),
        "image_formats": formats,  # jpeg / webp: not comparable with lossless sets
        "reference": ref.describe() | {"num_reference_features": ref_features.count if ref_features else 0},
        "inception_weights": {"source": weights.source, "sha256": weights.sha256},
        "protocol": {
            "features": "torch-fidelity inception-v3-compat: pool_3 (FID, precision/recall), mixed_6/conv[..., :7] "
            "(sFID), pool_3 @ fc.weight (IS)",
            "inception_score_splits": SPLITS,
            "inception_score_shuffle_seed": SHUFFLE_SEED,
            "precision_recall_k": NEIGHBOURHOOD,
            "subsample": f"FID and sFID from every sample (float64 sums); the Inception Score, precision/recall and "
            f"per-class FID from the {SUBSAMPLE_SIZE} samples of smallest splitmix64(sample_id) per side, when a side "
            "has more (every sample otherwise)",
        },
    }
    if settings.set_metrics:
        device = resolve_device(settings.device if settings.mode == "local" else None)
        metrics |= set_metrics(
            settings.set_metrics,
            collected.embeddings,
            ref_collected.embeddings if ref_collected is not None else None,
            models,
            cmmd_samples=settings.cmmd_samples,
            device=str(device),
        )
    if settings.per_class:
        assert ref_features is not None
        rows = per_class_fid(samples, ref_features, output.class_names())
        output.storage.put(PER_CLASS_KEY, json.dumps(rows, indent=1).encode())
        metrics["per_class_fid"] = PER_CLASS_KEY
        worst = ", ".join(f"{r['class_id']} ({r['fid']:.1f})" for r in rows[:5] if r["fid"] is not None)
        log.info("per-class FID written to %s; worst classes: %s", output.storage.child(PER_CLASS_KEY), worst)
    output.storage.put(METRICS_KEY, json.dumps(metrics, indent=2).encode())
    log.info(
        "FID %.4f  sFID %.4f  IS %.3f ± %.3f  precision %s  recall %s  (%d samples) -> %s",
        metrics["fid"],
        metrics["sfid"],
        is_mean,
        is_std,
        "n/a" if precision is None else f"{precision:.4f}",
        "n/a" if recall is None else f"{recall:.4f}",
        samples.count,
        output.storage.child(METRICS_KEY),
    )
    return metrics
