"""A manifest scanned in pieces by tasks (other processes of this machine, and Ray tasks on a real
Ray head): the same layouts, identity and rows as one process, the first bad row in manifest order,
and repeats found across pieces by the second pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from checkpoints import id2label

from dit_worker import distinct
from dit_worker.labels import ClassNames
from dit_worker.manifest.files import ManifestError
from dit_worker.manifest.scan import scan_files

HERE = Path(__file__).resolve().parent
NAMES = ClassNames(id2label(), 1000)
TASKS = {"parallel_bytes": 0, "piece_rows": 1 << 16, "piece_bytes": 0}  # every file a task; big ones in pieces
ONE_PROCESS = {"parallel_bytes": 1 << 60}
RUNS = {"parallel_bytes": 0, "piece_bytes": 2500}  # small files scanned in runs: two of these files a task


def class_rows(n: int, first: int = 0, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.arange(first, first + n, dtype=np.int64)
    return {"sample_id": ids, "class_id": rng.integers(0, 1000, n, dtype=np.int32), "seed": ids * 7919 + 11}


def write_folder(folder: Path, parts: list[dict[str, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(parts):
        pq.write_table(pa.table(rows), folder / f"part-{k:02d}.parquet", row_group_size=50_000)
    return folder


def test_pieces_scanned_by_processes_match_one_process(tmp_path: Path) -> None:
    # 150k rows: three pieces of 65,536 rows across row groups of 50,000; then two small files.
    parts = [class_rows(150_000), class_rows(10, 150_000), class_rows(7, 150_010)]
    folder = write_folder(tmp_path / "m", parts)
    apart, together = scan_files(str(folder), NAMES, "class", **TASKS), scan_files(str(folder), NAMES, "class")
    assert apart.identity == together.identity and apart.num_rows == together.num_rows == 150_017
    for a, b in zip(apart.layouts, together.layouts, strict=True):
        assert (a.num_rows, a.mark_rows.tolist(), a.mark_offsets.tolist()) == (
            b.num_rows, b.mark_rows.tolist(), b.mark_offsets.tolist(),
        )  # fmt: skip
    got = apart.rows(65_530, 150_012).load()
    assert got.sample_id.tolist() == list(range(65_530, 150_012))
    assert got.seed.tolist() == (got.sample_id * 7919 + 11).tolist()
    # The same comparison with one seed changed, in the middle piece: another identity.
    parts[0]["seed"][100_000] += 1
    changed = write_folder(tmp_path / "changed", parts)
    assert scan_files(str(changed), NAMES, "class", **TASKS).identity != together.identity


def flag_marked(texts: list[str]) -> list[tuple[int, str]]:
    """A prompt check that says which process ran it (for prompts containing 'mark')."""
    return [(i, f"checked in process {os.getpid()}") for i, t in enumerate(texts) if "mark" in t]


def test_the_first_bad_row_in_manifest_order_is_named(tmp_path: Path) -> None:
    def prompts(n: int, bad: int | None, first_id: int | None = None) -> dict[str, list]:
        texts = [f"a cat number {i}" for i in range(n)]
        if bad is not None:
            texts[bad] = "a mark here"
        ids = {} if first_id is None else {"sample_id": list(range(first_id + 1000, first_id + 1000 + n))}
        return {**ids, "prompt": texts, "seed": list(range(n))}

    parts = [prompts(40, None, 0), prompts(30, 17, 40), prompts(20, 3, 70)]  # two files fail: the first is named
    with pytest.raises(ManifestError) as caught:
        scan_files(str(write_folder(tmp_path / "m", parts)), None, "text", flag_marked, **TASKS)
    message = str(caught.value)
    assert "part-01.parquet: row 18, sample_id 1057: prompt 'a mark here' checked in process" in message
    assert f"process {os.getpid()}" not in message  # checked by a task in another process
    # Without a sample_id column a row's id is its place in the manifest: counted across files.
    implicit = write_folder(tmp_path / "implicit", [prompts(40, None), prompts(30, 17), prompts(20, 3)])
    assert 1000 < (implicit / "part-00.parquet").stat().st_size < 2500  # RUNS: parts 00-01 one task, 02 another
    for how in (TASKS, RUNS, ONE_PROCESS):
        with pytest.raises(ManifestError, match=r"part-01.parquet: row 18, sample_id 57: prompt 'a mark here'"):
            scan_files(str(implicit), None, "text", flag_marked, **how)
    parts = [prompts(40, None), prompts(30, None), prompts(20, None)]
    parts[2]["prompt"][5] = ""
    with pytest.raises(ManifestError, match=r"part-02.parquet: row 6 \(sample_id 75\) has an empty prompt"):
        scan_files(str(write_folder(tmp_path / "empty", parts)), None, "text", **TASKS)


@pytest.mark.parametrize("spill", [False, True])
def test_repeats_are_found_across_pieces(tmp_path: Path, spill: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if spill:  # the driver's side of the second pass: several partitions, spilled to disk
        monkeypatch.setattr(distinct, "IN_MEMORY_ROWS", 1000)
        monkeypatch.setattr(distinct, "PARTITION_ROWS", 30_000)
    # Each file's ids increase, but the second starts inside the first: only a pass over both finds 70,000.
    overlap = write_folder(tmp_path / "overlap", [class_rows(100_000), class_rows(50_000, 70_000, seed=4)])
    with pytest.raises(ManifestError, match=r"duplicate sample_id \[70000\]"):
        scan_files(str(overlap), NAMES, "class", **TASKS)
    # Distinct ids in scattered order, and one seed 2**32 away from another row's with its class.
    rows = class_rows(120_000)
    rows["sample_id"] = np.random.default_rng(1).permutation(120_000).astype(np.int64)
    folder = write_folder(
        tmp_path / "ok", [{k: v[:80_000] for k, v in rows.items()}, {k: v[80_000:] for k, v in rows.items()}]
    )
    assert scan_files(str(folder), NAMES, "class", **TASKS).num_rows == 120_000
    rows["seed"][110_000] = rows["seed"][5] + 2**32
    rows["class_id"][110_000] = rows["class_id"][5]
    folder = write_folder(
        tmp_path / "same", [{k: v[:80_000] for k, v in rows.items()}, {k: v[80_000:] for k, v in rows.items()}]
    )
    a, b = sorted([int(rows["sample_id"][5]), int(rows["sample_id"][110_000])])
    with pytest.raises(ManifestError, match=rf"sample_id {a} and sample_id {b} would be the same image"):
        scan_files(str(folder), NAMES, "class", **TASKS)


def test_ray_tasks_scan_like_one_process(ray_cluster, s3_server, s3_bucket: str, tmp_path: Path) -> None:
    parts = [class_rows(150_000), class_rows(10, 150_000)]
    local = write_folder(tmp_path / "m", parts)
    client = s3_server.client()
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), s3_bucket, f"manifest/{path.name}")
    dup = write_folder(tmp_path / "dup", [class_rows(100_000), class_rows(50_000, 70_000, seed=4)])
    scans = {"s3": f"s3://{s3_bucket}/manifest", "local": str(local), "dup": str(dup)}
    (tmp_path / "scans.json").write_text(json.dumps(scans))
    env = os.environ | s3_server.env() | {
        "RAY_ADDRESS": ray_cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
    }  # fmt: skip
    cmd = [sys.executable, str(HERE / "ray_scan.py"), str(tmp_path / "scans.json"), str(tmp_path / "out.json")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    expected = scan_files(str(local), NAMES, "class").identity
    assert got["s3"]["identity"] == got["local"]["identity"] == expected
    assert got["s3"]["rows"] == 150_010 and got["s3"]["first"] == list(range(65_530, 65_540))
    assert got["dup"]["error"].endswith("duplicate sample_id [70000]; each sample_id must appear once")
    assert got["tasks"]["scan_piece"] >= 3 * 3 and got["tasks"]["range_keys"] >= 1  # they ran as Ray tasks (attempts)


def test_the_pipelines_own_prompt_check_runs_in_the_tasks(tmp_path: Path, pixart_ckpt: Path) -> None:
    from functools import partial

    from dit_worker.driver.config import JobConfig
    from dit_worker.driver.model_info import inspect_model

    config = JobConfig.model_validate({
        "model": str(pixart_ckpt), "manifest": str(tmp_path), "out": str(tmp_path / "o"), "local": True,
        "device": "cpu", "dtype": "float32", "max_sequence_length": 16,
    })  # fmt: skip
    info = inspect_model(config)
    check = partial(info.spec.check_prompts, settings=info.settings)  # pickled into each task
    parts = [{"prompt": [f"cat {i}" for i in range(n)], "seed": list(range(s, s + n))} for s, n in ((0, 30), (30, 20))]
    folder = write_folder(tmp_path / "m", parts)
    assert scan_files(str(folder), None, "text", check, **ONE_PROCESS).num_rows == 50
    # In task processes below: part-00's rows pass the check there, and the first row over the limit is
    # named from its task (each task process starting the pipeline's tokenizer costs seconds here).
    parts[1]["prompt"][4] = " ".join(["word"] * 40)  # over the 16 tokens the pipeline would keep
    folder = write_folder(tmp_path / "long", parts)
    expected = (
        r"part-01.parquet: row 5, sample_id 34: prompt 'word word .*' is \d+ tokens, over --max-sequence-length 16"
    )
    for how in (TASKS, ONE_PROCESS):
        with pytest.raises(ManifestError, match=expected):
            scan_files(str(folder), None, "text", check, **how)
