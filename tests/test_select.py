"""`jobs.select` on a set whose job was SIGKILLed mid-run and resumed: the selected set equals the filter
applied to the whole metadata (re-done here in plain Python), every selected sample once, each image's
bytes those of the source; in every --format; opened by jobs.verify, jobs.report and HF `datasets`; a
partial selection resumes; a bad expression or an unknown column is one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dedup import embedding_set, groups, parts

from dit_worker.backends.settings import SamplingSettings
from dit_worker.curation.dedup.config import DedupConfig
from dit_worker.curation.dedup.embeddings import unit
from dit_worker.curation.dedup.run import run_dedup
from dit_worker.driver.config import JobConfig
from dit_worker.driver.run import run_job
from dit_worker.output.reader import OutputSet
from dit_worker.selfcheck.job import kill_after_first_commit
from jobs.report import main as report_main
from jobs.select import main as select_main
from jobs.verify import main as verify_main

# Non-default everything: a `not`, a chained comparison, a string column, `in`, arithmetic.
WHERE = (
    "not (seed < 3) and 3 <= class_id <= 5 and class_id != 4 or class_name in ('synthetic class 6',) and seed * 2 > 10"
)


def keep(row: dict) -> bool:
    """WHERE in plain Python (None compares as a missing value: not kept)."""
    c, s = row["class_id"], row["seed"]
    return (not s < 3 and 3 <= c <= 5 and c != 4) or (row["class_name"] == "synthetic class 6" and s * 2 > 10)


@pytest.fixture(scope="module")
def source(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 shards of two samples, SIGKILLed after its first commit and resumed with the same job."""
    root = tmp_path_factory.mktemp("select")
    config = JobConfig(model=str(tiny_ckpt), out=str(root / "set"), local=True, device="cpu", dtype="float32",
                       classes=tuple(map(str, range(1, 7))), per_class=2, shard_size=2, batch_size=1,
                       sampling=SamplingSettings(sampler="ddim", steps=30, cfg_scale=3.0), lease_ttl=2.0)  # fmt: skip
    (killed_at,) = kill_after_first_commit([config], [root / "killed.log"])
    assert 0 < killed_at < 6, killed_at
    time.sleep(2.0)  # the killed run's lease expires
    run_job(config)
    return root / "set"


def all_rows(out: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted((out / "metadata").glob("part-*.parquet"))]
    return pa.concat_tables(tables).to_pylist()


def stored_sha256(out: Path) -> dict[int, str]:
    output = OutputSet.open(str(out))
    return {int(i): h for s in output.iter_shards() for i, h in zip(s.sample_ids, s.sha256, strict=True)}


@pytest.mark.parametrize("fmt", ["png", "parquet", "webdataset"])
def test_the_selection_is_the_filter_applied_to_the_whole_metadata(source: Path, tmp_path: Path, fmt: str) -> None:
    rows = all_rows(source)
    expected = sorted(r["sample_id"] for r in rows if keep(r))
    assert 0 < len(expected) < len(rows)  # the filter keeps some and drops some
    to = tmp_path / "kept"
    assert select_main(["--out", str(source), "--where", WHERE, "--to", str(to), "--format", fmt]) == 0
    got = all_rows(to)
    assert sorted(r["sample_id"] for r in got) == expected  # each selected sample once
    source_sha = stored_sha256(source)
    assert stored_sha256(to) == {i: source_sha[i] for i in expected}  # the very bytes, sha256-checked on read
    for read in OutputSet.open(str(to)).iter_samples():
        assert read.image.shape == (16, 16, 3)
    record = json.loads((to / "job.json").read_text())
    assert record["selected_from"] == str(source) and record["where"] == WHERE and record["format"] == fmt
    assert verify_main(["--out", str(to), "--full"]) == 0
    if fmt == "png":
        assert report_main(["--out", str(to)]) == 0
    # The same comparison against a filter that differs in one clause misses.
    assert sorted(r["sample_id"] for r in rows if keep(r) and r["class_id"] != 3) != expected


def test_datasets_opens_a_selected_parquet_set(source: Path, tmp_path: Path) -> None:
    import datasets

    to = tmp_path / "kept"
    assert select_main(["--out", str(source), "--where", WHERE, "--to", str(to), "--format", "parquet"]) == 0
    data = datasets.load_dataset("parquet", data_files=str(to / "data" / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "hf"))  # fmt: skip
    raw = data.cast_column("image", datasets.Image(decode=False))
    assert {r["sample_id"]: hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in raw} == stored_sha256(to)


def test_a_partial_selection_resumes_and_a_changed_filter_is_refused(source: Path, tmp_path: Path, capsys) -> None:
    to = tmp_path / "kept"
    args = ["--out", str(source), "--where", WHERE, "--to", str(to)]
    assert select_main(args) == 0
    expected = stored_sha256(to)
    # What a run killed before its last three shards leaves: their images maybe, no metadata part, no _SUCCESS.
    for k in (3, 4, 5):
        (to / "metadata" / f"part-{k:05d}.parquet").unlink()
    (to / "_SUCCESS").unlink()
    assert select_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["shards_selected"], summary["shards_skipped"]) == (3, 3)
    assert stored_sha256(to) == expected
    before = sorted(p.relative_to(to) for p in to.rglob("*"))
    assert select_main(["--out", str(source), "--where", "seed > 1", "--to", str(to)]) == 2
    assert "holds another selection (where:" in capsys.readouterr().err
    assert sorted(p.relative_to(to) for p in to.rglob("*")) == before


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("clip_score > 28",
         "error: --where 'clip_score > 28': unknown column 'clip_score'; the set's columns: sample_id,"),
        ("seed >", "error: --where 'seed >': not an expression (invalid syntax); accepted: columns, numbers"),
        ("__import__('os').system('x')",
         "error: --where \"__import__('os').system('x')\": \"__import__('os').system('x')\" is not accepted"),
        ("prompt > 3",
         "error: --where 'prompt > 3': does not apply to the set's columns (Function 'greater' has no kernel"),
    ],
)  # fmt: skip
def test_a_bad_filter_is_one_line_and_nothing_is_written(source: Path, tmp_path: Path, where: str, message: str,
                                                         capsys) -> None:  # fmt: skip
    to = tmp_path / "kept"
    assert select_main(["--out", str(source), "--where", where, "--to", str(to)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not to.exists()


def test_dup_rank_zero_keeps_one_image_per_group(tmp_path: Path) -> None:
    """After jobs.dedup: `dup_rank == 0` keeps each group's smallest sample id and every unique image; the
    joined columns are not written into the selection's metadata."""
    rng = np.random.default_rng(4)
    vectors = unit(rng.standard_normal((60, 16)))
    vectors[[7, 21, 22, 40]] = unit(vectors[[3, 3, 5, 12]] + 0.02 * rng.standard_normal((4, 16)))
    out = embedding_set(tmp_path / "set", vectors, shard_size=8)
    run_dedup(DedupConfig(out=str(out), threshold=0.9, within="set", runs=1))
    found = groups(parts(out))
    assert found == {frozenset((3, 7, 21)), frozenset((5, 22)), frozenset((12, 40))}
    to = tmp_path / "kept"
    assert select_main(["--out", str(out), "--where", "dup_rank == 0", "--to", str(to)]) == 0
    kept = all_rows(to)
    assert sorted(r["sample_id"] for r in kept) == sorted(set(range(60)) - {7, 21, 22, 40})
    assert "dup_rank" not in kept[0] and "group" not in kept[0]
    to2 = tmp_path / "dups"  # the complement, through the other joined columns: the rows dropped above
    assert select_main(["--out", str(out), "--where", "group_size > 1 and dup_rank > 0", "--to", str(to2)]) == 0
    assert sorted(r["sample_id"] for r in all_rows(to2)) == [7, 21, 22, 40]


def test_dup_rank_without_a_dedup_run_is_one_line(source: Path, tmp_path: Path, capsys) -> None:
    to = tmp_path / "kept"
    assert select_main(["--out", str(source), "--where", "dup_rank == 0", "--to", str(to)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --where 'dup_rank == 0': column 'dup_rank' comes from jobs.dedup") and "\n" not in err
    assert f"run python -m jobs.dedup --out {source}" in err and not to.exists()
