"""Manifests: the three file formats, seed derivation, and the errors for bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from checkpoints import id2label

from dit_worker.backends.labels import ClassNames
from dit_worker.manifest.samples import ManifestError, from_classes, parse_classes, read_manifest
from dit_worker.shard import num_shards, shard_task

NAMES = ClassNames(id2label(), 1000)
ROWS = {"sample_id": [7, 3, 11], "class_id": [207, 879, 2], "seed": [2**63 - 1, 0, 42]}


def write(path: Path, rows: dict[str, list]) -> Path:
    table = pa.table(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_formats_read_alike_and_sort_by_sample_id(tmp_path: Path, suffix: str) -> None:
    samples = read_manifest(write(tmp_path / f"m{suffix}", ROWS), NAMES)
    assert samples.sample_id.tolist() == [3, 7, 11]
    assert samples.class_id.tolist() == [879, 207, 2]
    assert samples.seed.tolist() == [0, 2**63 - 1, 42]
    assert (samples.sample_id.dtype, samples.class_id.dtype, samples.seed.dtype) == (np.int64, np.int32, np.int64)
    reference = read_manifest(write(tmp_path / "ref.parquet", ROWS), NAMES)
    assert samples.sha256() == reference.sha256()


def test_class_names_and_implicit_sample_ids(tmp_path: Path) -> None:
    rows = {"class_name": ["umbrella", "Golden Retriever", "white shark", "umbrella"], "seed": [5, 6, 7, 8]}
    samples = read_manifest(write(tmp_path / "m.csv", rows), NAMES)
    assert samples.sample_id.tolist() == [0, 1, 2, 3]
    assert samples.class_id.tolist() == [879, 207, 2, 879]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"class_id": [1, 2]}, "missing column 'seed'"),
        ({"seed": [1, 2]}, "needs a 'class_id' or 'class_name' column"),
        ({"class_id": [1, 1000], "seed": [1, 2]}, r"class ids must lie in 0..999, got \[1000\]"),
        ({"class_id": [-1, 3], "seed": [1, 2]}, r"class ids must lie in 0..999, got \[-1\]"),
        ({"class_name": ["umbrela"], "seed": [1]}, "unknown class name 'umbrela'; close matches: 'umbrella'"),
        ({"class_id": [1, 2], "seed": [-1, 2]}, r"seed must be \[0, 2\*\*63\), got -1"),
        ({"class_id": [1, 2], "seed": [1, 2], "sample_id": [4, 4]}, r"duplicate sample_id \[4\]"),
        ({"class_id": [1, 2], "seed": [1.5, 2.0]}, "column 'seed' must hold integers, got 1.5"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, rows: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(write(tmp_path / "m.parquet", rows), NAMES)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_seed_beyond_int64_is_named_not_rounded(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        path.write_text("class_id,seed\n1,5\n2,9223372036854775808\n")
    else:
        path.write_text('{"class_id": 1, "seed": 5}\n{"class_id": 2, "seed": 9223372036854775808}\n')
    with pytest.raises(ManifestError, match=r"seed must be \[0, 2\*\*63\), got 9223372036854775808"):
        read_manifest(path, NAMES)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"unknown manifest format; use one of \.parquet, \.csv"):
        read_manifest(tmp_path / "m.xlsx", NAMES)
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "m.csv", NAMES)


def first_draws(seeds) -> set[tuple[float, ...]]:
    """The first noise values each seed's generator draws: what the seed means to the sampler (four
    of them, since single float32 draws of 3000 seeds can collide by chance)."""
    import torch

    return {tuple(torch.randn(4, generator=torch.Generator("cpu").manual_seed(int(s))).tolist()) for s in seeds}


def test_global_seeds_give_different_noise() -> None:
    a = from_classes([1, 2, 3], per_class=1000, global_seed=0)
    b = from_classes([1, 2, 3], per_class=1000, global_seed=1)
    assert a.seed.tolist()[:3] == [0, 1, 2]  # global seed 0: seed = sample_id, as sets made before
    assert len(set(a.seed.tolist())) == 3000 and int(b.seed.max()) < 2**32
    # What counts is the noise: torch's generator keeps the low 32 bits of a seed, so compare draws.
    noise_a, noise_b = first_draws(a.seed), first_draws(b.seed)
    assert len(noise_a) == 3000 and not noise_a & noise_b
    # The derivation this replaces, global_seed * 2**32 + sample_id, fails that very check.
    assert first_draws(2**32 + a.seed[:100]) == first_draws(a.seed[:100])
    assert a.class_id.tolist()[999:1001] == [1, 2]  # class-major
    top = from_classes([0], per_class=2, global_seed=2**31 - 1)
    assert int(top.seed.min()) >= 0 and int(top.seed.max()) < 2**32
    with pytest.raises(ManifestError, match=r"--seed must lie in \[0, 2\*\*31\)"):
        from_classes([0], per_class=1, global_seed=2**31)


def test_parse_classes_mixes_ids_and_names() -> None:
    assert parse_classes(["golden retriever", " 5", "umbrella"], NAMES) == [207, 5, 879]
    assert parse_classes(None, NAMES) == list(range(1000))
    with pytest.raises(ManifestError, match=r"--classes: class ids must lie in 0..999, got \[1000\]"):
        parse_classes(["1000"], NAMES)
    with pytest.raises(ManifestError, match="class 207 is listed twice"):
        parse_classes(["207", "golden retriever"], NAMES)


def test_shards_are_contiguous_slices() -> None:
    samples = from_classes(list(range(10)), per_class=1, global_seed=0)
    assert num_shards(10, 4) == 3
    assert [shard_task(samples, k, 4).samples.sample_id.tolist() for k in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
