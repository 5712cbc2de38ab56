"""Manifests: the three file formats, folders of files, seed derivation, shard slices, and the
errors for bad rows (scanned in chunks: the same checks hold across chunk and file boundaries)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from checkpoints import id2label

from dit_worker import distinct
from dit_worker.labels import ClassNames
from dit_worker.manifest import checks, files, scan
from dit_worker.manifest.files import ManifestError
from dit_worker.manifest.samples import Samples, check_derived, parse_classes
from dit_worker.manifest.scan import scan_files
from dit_worker.manifest.sources import DerivedManifest
from dit_worker.shard import num_shards, shard_task

NAMES = ClassNames(id2label(), 1000)
ROWS = {"sample_id": [7, 3, 11], "class_id": [207, 879, 2], "seed": [2**63 - 1, 0, 42]}


def read_manifest(path: Path, names: ClassNames = NAMES) -> Samples:
    """Every row of a scanned manifest, in manifest order."""
    manifest = scan_files(str(path), names, "class")
    return manifest.rows(0, manifest.num_rows).load()


def from_classes(class_ids: list[int], per_class: int, global_seed: int) -> Samples:
    manifest = DerivedManifest.of_classes(class_ids, per_class, global_seed)
    return manifest.rows(0, manifest.num_rows).load()


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
def test_formats_read_alike_in_file_order(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"m{suffix}", ROWS)
    samples = read_manifest(path)
    assert samples.sample_id.tolist() == [7, 3, 11]  # file order: a shard is a range of manifest rows
    assert samples.class_id.tolist() == [207, 879, 2]
    assert samples.seed.tolist() == [2**63 - 1, 0, 42]
    assert (samples.sample_id.dtype, samples.class_id.dtype, samples.seed.dtype) == (np.int64, np.int32, np.int64)
    identity = scan_files(str(path), NAMES, "class").identity
    assert identity == scan_files(str(write(tmp_path / "ref.parquet", ROWS)), NAMES, "class").identity
    swapped = {k: [v[1], v[0], v[2]] for k, v in ROWS.items()}  # the same rows in another order
    assert identity != scan_files(str(write(tmp_path / "swapped.parquet", swapped)), NAMES, "class").identity


def test_class_names_and_implicit_sample_ids(tmp_path: Path) -> None:
    rows = {"class_name": ["umbrella", "Golden Retriever", "white shark", "umbrella"], "seed": [5, 6, 7, 8]}
    samples = read_manifest(write(tmp_path / "m.csv", rows))
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
        read_manifest(write(tmp_path / "m.parquet", rows))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_seed_beyond_int64_is_named_not_rounded(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        path.write_text("class_id,seed\n1,5\n2,9223372036854775808\n")
    else:
        path.write_text('{"class_id": 1, "seed": 5}\n{"class_id": 2, "seed": 9223372036854775808}\n')
    with pytest.raises(ManifestError, match=r"seed must be \[0, 2\*\*63\), got 9223372036854775808"):
        read_manifest(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"unknown manifest format; use one of \.parquet, \.csv"):
        read_manifest(tmp_path / "m.xlsx")
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "m.csv")


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
        check_derived(1, global_seed=2**31)


def test_parse_classes_mixes_ids_and_names() -> None:
    assert parse_classes(["golden retriever", " 5", "umbrella"], NAMES) == [207, 5, 879]
    assert parse_classes(None, NAMES) == list(range(1000))
    with pytest.raises(ManifestError, match=r"--classes: class ids must lie in 0..999, got \[1000\]"):
        parse_classes(["1000"], NAMES)
    with pytest.raises(ManifestError, match="class 207 is listed twice"):
        parse_classes(["207", "golden retriever"], NAMES)


def test_shards_are_contiguous_slices() -> None:
    manifest = DerivedManifest.of_classes(list(range(10)), per_class=1, global_seed=0)
    assert num_shards(10, 4) == 3
    assert [shard_task(manifest, k, 4).rows.load().sample_id.tolist() for k in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, marks every 3 rows, spills after 8 pairs: every boundary is crossed."""
    monkeypatch.setattr(files, "CHUNK_BYTES", 64)
    monkeypatch.setattr(files, "PARQUET_BATCH", 5)
    monkeypatch.setattr(files, "MARK_EVERY", 3)
    monkeypatch.setattr(checks, "BLOCK_ROWS", 7)
    monkeypatch.setattr(scan, "BLOCK_ROWS", 7)
    monkeypatch.setattr(distinct, "IN_MEMORY_ROWS", 8)
    monkeypatch.setattr(distinct, "PARTITION_ROWS", 16)


def many_rows(n: int) -> dict[str, list]:
    rng = np.random.default_rng(5)
    ids = rng.permutation(10 * n)[:n].tolist()  # neither sorted nor contiguous
    return {"sample_id": ids, "class_id": rng.integers(0, 1000, n).tolist(), "seed": rng.permutation(n).tolist()}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_folder_reads_as_one_manifest_across_chunks(tmp_path: Path, suffix: str, monkeypatch) -> None:
    rows = many_rows(60)
    whole = read_manifest(write(tmp_path / f"whole{suffix}", rows))
    folder = tmp_path / "folder"
    folder.mkdir()
    for k, (a, b) in enumerate([(0, 17), (17, 18), (18, 60)]):  # key order is manifest order
        write(folder / f"part-{k}{suffix}", {c: v[a:b] for c, v in rows.items()})
    small_chunks(monkeypatch)
    manifest = scan_files(str(folder), NAMES, "class")
    assert manifest.num_rows == 60 and len(manifest.layouts) == 3
    for a, b in [(0, 60), (5, 23), (16, 19), (59, 60), (3, 4)]:  # ranges across marks, chunks and files
        got = manifest.rows(a, b).load()
        assert got.sample_id.tolist() == rows["sample_id"][a:b]
        assert got.class_id.tolist() == rows["class_id"][a:b] and got.seed.tolist() == rows["seed"][a:b]
    # One identity for the same rows in the same files however they are chunked or stored ...
    small = manifest.identity
    parquet = tmp_path / "as-parquet"
    parquet.mkdir()
    for k, (a, b) in enumerate([(0, 17), (17, 18), (18, 60)]):
        write(parquet / f"part-{k}.parquet", {c: v[a:b] for c, v in rows.items()})
    assert scan_files(str(parquet), NAMES, "class").identity == small
    in_pieces = scan_files(str(parquet), NAMES, "class", piece_rows=14, piece_bytes=0)  # part-2: pieces of 2 blocks
    assert in_pieces.identity == small and in_pieces.layouts == scan_files(str(parquet), NAMES, "class").layouts
    monkeypatch.undo()
    assert scan_files(str(folder), NAMES, "class").identity == scan_files(str(parquet), NAMES, "class").identity
    assert whole.sample_id.tolist() == rows["sample_id"]
    # ... and another when one seed changes, or when the rows are cut into files otherwise.
    changed = {**rows, "seed": [*rows["seed"][:-1], 10**6]}
    same = scan_files(str(tmp_path / f"whole{suffix}"), NAMES, "class").identity
    assert same != scan_files(str(write(tmp_path / f"changed{suffix}", changed)), NAMES, "class").identity
    assert same != small


def test_csv_rows_with_newlines_inside_quotes(tmp_path: Path, monkeypatch) -> None:
    prompts = [f'a "quoted"\ncat number {i},\r\nwith commas' if i % 3 == 0 else f"dog {i}" for i in range(40)]
    path = tmp_path / "m.csv"
    pcsv.write_csv(pa.table({"prompt": prompts, "seed": list(range(40))}), path)
    small_chunks(monkeypatch)
    manifest = scan_files(str(path), None, "text")
    assert manifest.num_rows == 40
    assert manifest.rows(0, 40).load().prompt.tolist() == prompts
    assert manifest.rows(11, 25).load().prompt.tolist() == prompts[11:25]


@pytest.mark.parametrize("spill", [False, True])
def test_repeats_found_across_chunks_and_files(tmp_path: Path, spill: bool, monkeypatch) -> None:
    rows = many_rows(60)
    if spill:
        small_chunks(monkeypatch)
    folder = tmp_path / "ok"
    folder.mkdir()
    write(folder / "a.parquet", {c: v[:30] for c, v in rows.items()})
    write(folder / "b.parquet", {c: v[30:] for c, v in rows.items()})
    assert scan_files(str(folder), NAMES, "class").num_rows == 60  # distinct: accepted
    # A sample id repeated 50 rows apart, in another file.
    dup = {**rows, "sample_id": [*rows["sample_id"][:55], rows["sample_id"][5], *rows["sample_id"][56:]]}
    write(folder / "b.parquet", {c: v[30:] for c, v in dup.items()})
    with pytest.raises(ManifestError, match=rf"duplicate sample_id \[{rows['sample_id'][5]}\]"):
        scan_files(str(folder), NAMES, "class")

    # Seeds 2**32 apart and the same class: torch's generator sees one seed, so one image twice.
    def with_row_55(seed: int, class_id: int) -> None:
        changed = {**rows, "seed": [*rows["seed"][:55], seed, *rows["seed"][56:]]}
        changed["class_id"] = [*rows["class_id"][:55], class_id, *rows["class_id"][56:]]
        write(folder / "b.parquet", {c: v[30:] for c, v in changed.items()})

    with_row_55(rows["seed"][5] + 2**32, rows["class_id"][5])
    a, b = sorted([rows["sample_id"][5], rows["sample_id"][55]])
    with pytest.raises(ManifestError, match=rf"sample_id {a} and sample_id {b} would be the same image"):
        scan_files(str(folder), NAMES, "class")
    # The same noise for another class is another image (a common way to compare classes): accepted;
    # so is a seed that differs from row 5's in its low 32 bits.
    with_row_55(rows["seed"][5] + 2**32, (rows["class_id"][5] + 1) % 1000)
    assert scan_files(str(folder), NAMES, "class").num_rows == 60
    with_row_55(rows["seed"][5] + 2**32 + 1, rows["class_id"][5])
    assert scan_files(str(folder), NAMES, "class").num_rows == 60


def test_bad_cell_is_named_by_file_and_row_past_the_first_chunk(tmp_path: Path, monkeypatch) -> None:
    rows = many_rows(40)
    rows["class_id"][33] = 1000
    path = write(tmp_path / "m.jsonl", rows)
    small_chunks(monkeypatch)
    with pytest.raises(ManifestError, match=r"m\.jsonl: class ids must lie in 0..999, got \[1000\]"):
        scan_files(str(path), NAMES, "class")
    rows["class_id"][33], rows["seed"][37] = 1, -4
    with pytest.raises(ManifestError, match=r"m\.jsonl: row 38: seed must be \[0, 2\*\*63\), got -4"):
        scan_files(str(write(path, rows)), NAMES, "class")


def test_a_late_row_with_a_new_column_is_refused(tmp_path: Path, monkeypatch) -> None:
    lines = [json.dumps({"class_id": 1, "seed": i}) for i in range(30)]
    lines[25] = json.dumps({"class_id": 1, "seed": 25, "negative_promt": "blurry"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    small_chunks(monkeypatch)
    with pytest.raises(ManifestError, match="negative_promt"):
        scan_files(str(path), NAMES, "class")


def test_derived_slices_hold_only_their_groups() -> None:
    manifest = DerivedManifest.of_classes(list(range(1000)), per_class=10**6, global_seed=3)  # 1e9 rows
    assert manifest.num_rows == 10**9
    rows = manifest.rows(5 * 10**6 - 2, 5 * 10**6 + 3)
    assert rows.classes.tolist() == [4, 5]  # what the task carries: two class ids, not a row array
    samples = rows.load()
    assert samples.class_id.tolist() == [4, 4, 5, 5, 5]
    assert samples.sample_id.tolist() == list(range(5 * 10**6 - 2, 5 * 10**6 + 3))
    assert manifest.identity != DerivedManifest.of_classes(list(range(1000)), 10**6, 4).identity
    with pytest.raises(ManifestError, match="exceed the 2\\*\\*32 distinct seeds"):
        DerivedManifest.of_count(2**32 + 1, 0)  # derived seeds would repeat
    assert DerivedManifest.of_count(2**32, 0).num_rows == 2**32


@pytest.mark.parametrize(
    ("column", "intended"),
    [("negative_promt", "negative_prompt"), ("promt", "prompt"), ("sampleid", "sample_id"),
     ("class_nmae", "class_name"), ("Seed", "seed")],
)  # fmt: skip
def test_a_misspelt_column_is_refused_naming_the_intended_one(tmp_path: Path, column: str, intended: str) -> None:
    rows = {"prompt": ["a cat", "a dog"], "seed": [1, 2], column: ["x", "y"]}
    path = tmp_path / "m.jsonl"
    lines = [dict(zip(rows, v, strict=True)) for v in zip(*rows.values(), strict=True)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ManifestError, match=rf"column '{column}' looks like '{intended}' misspelt"):
        scan_files(str(path), None, "text")


def test_own_columns_are_carried_typed_and_in_the_identity(tmp_path: Path) -> None:
    rows = {"class_id": [1, 2, 3], "seed": [1, 2, 3], "source_id": [10, 20, 30], "licence": ["cc-by", None, "cc0"],
            "prompt_id": [0.5, 1.5, 2.5]}  # fmt: skip
    manifest = scan_files(str(write(tmp_path / "m.parquet", rows)), NAMES, "class")
    extra = manifest.rows(1, 3).load().extra
    assert extra.column_names == ["source_id", "licence", "prompt_id"]
    assert extra.to_pydict() == {"source_id": [20, 30], "licence": [None, "cc0"], "prompt_id": [1.5, 2.5]}
    assert extra.schema.field("source_id").type == pa.int64()
    changed = scan_files(str(write(tmp_path / "c.parquet", {**rows, "licence": ["cc-by", None, "cc-by"]})), NAMES,
                         "class")  # fmt: skip
    assert changed.identity != manifest.identity  # they are written into the metadata: part of what OUT holds
    for reserved in ("sha256", "image_key", "clip_score", "image"):
        with pytest.raises(ManifestError, match=rf"column '{reserved}' is one the job writes"):
            scan_files(str(write(tmp_path / "r.parquet", {**rows, reserved: ["a", "b", "c"]})), NAMES, "class")


def test_a_task_carries_the_class_names_only_when_it_reads_names(tmp_path: Path) -> None:
    """A billion rows in a million tasks: 52 KB of ImageNet labels each would be 52 GB sent to workers."""
    import pickle

    by_id = scan_files(str(write(tmp_path / "ids.parquet", ROWS)), NAMES, "class")
    by_name = scan_files(str(write(tmp_path / "names.csv", {"class_name": ["umbrella"] * 3, "seed": [1, 2, 3]})),
                         NAMES, "class")  # fmt: skip
    assert len(pickle.dumps(by_id.rows(0, 3))) < 2000 < 40_000 < len(pickle.dumps(by_name.rows(0, 3)))
    assert by_id.rows(0, 3).load().class_id.tolist() == [207, 879, 2]  # still range-checked and read
    assert by_name.rows(0, 3).load().class_id.tolist() == [879] * 3
