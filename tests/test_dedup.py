"""`jobs.dedup`: near-duplicate groups over CLIP image embeddings.

A text set with planted near-duplicates (the same image twice, a JPEG re-encode at quality 75, a 2-pixel
shift, mild noise standing in for another seed of a collapsed prompt) among distinct images, embedded by a
tiny CLIP in the real transformers format whose image projection is calibrated on other images
(tests/hf_models.py, `save_tiny_dedup_clip`: a random tower alone puts every pair at cosine ~0.999):
every planted pair grouped, no distinct pair, at the default threshold; the measured spread is printed.
Stored `clip_embedding` columns: the threshold is inclusive (an exactly representable cosine); the
--within set partition (k-means cells, copies within 2r) gives brute force's components and nearest rows
on vectors planted across cell boundaries; a SIGKILLed run resumes to byte-equal parts; bad input is one
line, exit 2.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hf_models import save_tiny_dedup_clip
from metric_references import blocky
from output_sets import write_output_set
from PIL import Image
from s3_proxy import Faults, s3_proxy
from scipy.ndimage import uniform_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dit_worker.curation.dedup.config import DEFAULT_THRESHOLD, DedupConfig
from dit_worker.curation.dedup.embeddings import unit
from dit_worker.curation.dedup.run import run_dedup
from dit_worker.metrics.clip_score import ClipEmbedder
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.output.reader import OutputSet
from dit_worker.storage.objects import Storage, open_storage
from jobs.dedup import main as dedup_main
from jobs.report import main as report_main

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("a red barn", "a lighthouse at dusk", "an otter")
# Measured (see test_planted_pairs_are_grouped_and_distinct_images_are_not's print): similarity column vs
# the float32 cosine of the same CLIP embeddings, at most 4e-4 apart (the float16 work files).
SIMILARITY_TOL = 2e-3


def smooth_fields(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: random 4x4 colour blocks, box-blurred (a 2-pixel shift stays close)."""
    fields = blocky(n, seed).astype(np.float32)
    return np.stack([uniform_filter(f, size=(7, 7, 1), mode="nearest") for f in fields]).round().astype(np.uint8)


def jpeg75(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def shifted(image: np.ndarray, px: int = 2) -> np.ndarray:
    return np.concatenate([image[:, :1].repeat(px, 1), image[:, :-px]], 1)  # right by px, edge repeated


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 3.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def parts(out: Path) -> dict[int, dict]:
    tables = [pq.read_table(p) for p in sorted((out / "dedup").glob("part-*.parquet"))]
    return {row["sample_id"]: row for row in pa.concat_tables(tables).to_pylist()}


def groups(rows: dict[int, dict]) -> set[frozenset[int]]:
    by: dict[int, set[int]] = {}
    for sid, row in rows.items():
        by.setdefault(row["group"], set()).add(sid)
    return {frozenset(g) for g in by.values() if len(g) > 1}


def check_ranks(rows: dict[int, dict]) -> None:
    """group = the smallest id, size its size, rank 0, 1, ... in sample_id order."""
    for members in groups(rows):
        ordered = sorted(members)
        assert [rows[i]["group"] for i in ordered] == [ordered[0]] * len(ordered)
        assert [rows[i]["dup_rank"] for i in ordered] == list(range(len(ordered)))
        assert {rows[i]["group_size"] for i in ordered} == {len(ordered)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 6-shard text set: four planted pairs under one prompt each, one identical pair under two prompts,
    35 distinct images; rows shuffled so pairs straddle shards."""
    root = tmp_path_factory.mktemp("dedup")
    base = smooth_fields(40, seed=3)
    rows = [(base[0], 0), (base[0], 0), (base[1], 1), (jpeg75(base[1]), 1), (base[2], 2), (shifted(base[2]), 2),
            (base[3], 0), (noisy(base[3], 1), 0), (base[4], 1), (base[4], 2)]  # fmt: skip
    rows += [(base[i], i % 3) for i in range(5, 40)]
    order = np.random.default_rng(0).permutation(len(rows))  # row k of the set is rows[order[k]]
    where = {int(o): k for k, o in enumerate(order)}  # position in `rows` -> sample id
    images = np.stack([rows[o][0] for o in order])
    prompts = [PROMPTS[rows[o][1]] for o in order]
    write_output_set(open_storage(str(root / "set")), images, [0] * len(rows), shard_size=7, prompts=prompts)
    clip = save_tiny_dedup_clip(root / "clip", smooth_fields(300, seed=99))
    pairs = [frozenset((where[2 * i], where[2 * i + 1])) for i in range(5)]
    return {"set": root / "set", "clip": clip, "images": images, "prompt_pairs": set(pairs[:4]), "cross": pairs[4],
            "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def deduped(planted: dict) -> Path:
    """The command itself, with its defaults (within prompt, DEFAULT_THRESHOLD), tasks in processes."""
    assert dedup_main(["--out", str(planted["set"]), "--clip-model", str(planted["clip"])]) == 0
    return planted["set"]


def copy_set(planted: dict, name: str) -> Path:
    to = planted["root"] / name
    shutil.copytree(planted["set"], to, ignore=shutil.ignore_patterns("dedup"))
    return to


def test_planted_pairs_are_grouped_and_distinct_images_are_not(planted: dict, deduped: Path) -> None:
    clip = ClipEmbedder(resolve_hf_model(str(planted["clip"]), flag="--clip-model", model_type="clip"), "cpu")
    read = sorted(OutputSet.open(str(deduped)).iter_samples(), key=lambda s: s.sample_id)
    cos = unit(clip.images(np.stack([s.image for s in read]))) @ unit(clip.images(np.stack([s.image for s in read]))).T
    planted_pairs = [*planted["prompt_pairs"], planted["cross"]]
    lowest = min(float(cos[tuple(sorted(p))]) for p in planted_pairs)
    distinct = np.triu(np.ones(cos.shape, bool), 1)
    for a, b in map(sorted, planted_pairs):
        distinct[a, b] = False
    highest = float(cos[distinct].max())
    print(f"\nlowest planted pair {lowest:.4f}, highest distinct pair {highest:.4f}, threshold {DEFAULT_THRESHOLD}")
    assert highest < DEFAULT_THRESHOLD <= lowest

    rows = parts(deduped)
    assert sorted(rows) == list(range(len(planted["images"])))  # one row per sample
    assert groups(rows) == planted["prompt_pairs"]  # the cross-prompt pair is not compared
    assert groups(rows) != planted["prompt_pairs"] - {next(iter(planted["prompt_pairs"]))}  # one pair fewer misses
    check_ranks(rows)
    gap = 0.0
    for a, b in map(sorted, planted["prompt_pairs"]):
        assert (rows[a]["nearest"], rows[b]["nearest"]) == (b, a)
        gap = max(gap, abs(rows[a]["similarity"] - float(cos[a, b])))
    print(f"similarity column vs float32 cosine: at most {gap:.2e} apart")
    assert gap <= SIMILARITY_TOL
    record = json.loads((deduped / "dedup" / "dedup.json").read_text())
    assert (record["within"], record["threshold"], record["groups"], record["duplicates"]) == (
        "prompt", DEFAULT_THRESHOLD, 4, 4)  # fmt: skip
    assert record["embeddings"].startswith("clip:sha256:") and record["samples"] == len(rows)


def test_a_lower_threshold_groups_distinct_images(planted: dict) -> None:
    """The deliberately wrong input beside the test above: below the highest distinct pair, distinct
    images join groups."""
    out = copy_set(planted, "low")
    run_dedup(DedupConfig(out=str(out), clip_model=str(planted["clip"]), threshold=0.6, runs=1))
    assert len(set().union(*groups(parts(out)))) > 2 * len(planted["prompt_pairs"]) + 4


def test_the_report_shows_the_groups_the_dedup_parts_hold(planted: dict, deduped: Path) -> None:
    """jobs.report over this command's real output (the report's own tests write the documented format):
    the groups on the page are the parts' groups of more than one sample, members in dup_rank order."""
    assert report_main(["--out", str(deduped)]) == 0
    html = (deduped / "report" / "index.html").read_text()
    shown = {
        int(g): [int(m) for m in re.findall(r'<figure data-sample-id="(\d+)"', body)]
        for g, body in re.findall(r'<div class="dup-group" data-group="(\d+)"[^>]*>(.*?)</div></div>', html)
    }
    rows = parts(deduped)
    expected = {min(g): sorted(g) for g in groups(rows)}  # dup_rank order is sample_id order
    assert shown == expected == {min(g): sorted(g) for g in planted["prompt_pairs"]}
    assert shown != {min(g): sorted(g) for g in planted["prompt_pairs"] | {planted["cross"]}}  # another prompt's: not


def test_within_set_groups_identical_images_across_prompts(planted: dict, deduped: Path) -> None:
    out = copy_set(planted, "whole")
    summary = run_dedup(DedupConfig(out=str(out), clip_model=str(planted["clip"]), within="set", cells=4, runs=1))
    assert summary["cells"] == 4 and summary["routed_rows"] > summary["samples"]  # copies across cells
    rows = parts(out)
    assert groups(rows) == planted["prompt_pairs"] | {planted["cross"]}
    assert planted["cross"] not in groups(parts(deduped))  # --within prompt (the default) does not
    check_ranks(rows)


def embedding_set(path: Path, vectors: np.ndarray, shard_size: int, classes: list[int] | None = None) -> Path:
    """A set whose metadata parts hold `vectors` as clip_embedding (tiny blank images beside them)."""
    n, dim = vectors.shape
    store = open_storage(str(path))
    write_output_set(store, np.zeros((n, 2, 2, 3), np.uint8), classes or [0] * n, shard_size=shard_size)
    for part in sorted((path / "metadata").glob("part-*.parquet")):
        table = pq.read_table(part)
        rows = vectors[table.column("sample_id").to_numpy()].astype(np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), dim)
        pq.write_table(table.append_column("clip_embedding", column), part)
    return path


def test_the_threshold_is_inclusive_on_stored_embeddings(tmp_path: Path) -> None:
    # Components of 0.5 (exact in float16): a . b = 0.75 exactly, whatever the order of the sums.
    vectors = np.zeros((6, 8), np.float32)
    vectors[0, :4] = vectors[1, [0, 1, 2, 4]] = vectors[2, 4:] = 0.5
    vectors[3:, 5:] = np.eye(3)
    at = embedding_set(tmp_path / "at", vectors, shard_size=2)
    above = embedding_set(tmp_path / "above", vectors, shard_size=2)
    summary = run_dedup(DedupConfig(out=str(at), threshold=0.75, within="set", runs=1, partition_rows=1))
    assert summary["partitions"] == 6  # one bucket (one cell): five partitions without any
    rows = parts(at)
    assert groups(rows) == {frozenset((0, 1))}
    assert (rows[0]["nearest"], rows[0]["similarity"]) == (1, 0.75)
    assert json.loads((at / "dedup" / "dedup.json").read_text())["embeddings"] == "column clip_embedding"
    run_dedup(DedupConfig(out=str(above), threshold=float(np.nextafter(np.float32(0.75), 1)), within="set", runs=1))
    assert groups(parts(above)) == set()


def straddling_pairs(centroids: np.ndarray, rng: np.random.Generator, n: int, threshold: float) -> np.ndarray:
    """`n` pairs of unit vectors at a cosine just above `threshold`, on the great circle between a centroid
    and its nearest other one: the first on the first's side of their bisector, the second past it by
    about 0.75 r (where a copy margin of r, not 2r, loses the first's nearest row)."""
    c = unit(centroids)
    out = []
    angle = 2 * np.arcsin(0.95 * np.sqrt(2 - 2 * threshold) / 2)  # chord 0.95 r: cosine 0.005 above it
    for _ in range(n):
        i = int(rng.integers(len(c)))
        dist = np.linalg.norm(centroids - centroids[i], axis=1)
        dist[i] = np.inf
        j = int(dist.argmin())
        full = np.arccos(np.clip(c[i] @ c[j], -1, 1))
        ortho = unit((c[j] - (c[i] @ c[j]) * c[i])[None])[0]

        def at(theta: float, i: int = i, ortho: np.ndarray = ortho) -> np.ndarray:
            return np.cos(theta) * c[i] + np.sin(theta) * ortho

        lo, hi = 0.0, full  # bisection for the point as far from both centroids
        for _ in range(60):
            mid = (lo + hi) / 2
            v = at(mid)
            lo, hi = (mid, hi) if np.linalg.norm(v - centroids[i]) < np.linalg.norm(v - centroids[j]) else (lo, mid)
        past = rng.uniform(0.6, 0.9) * angle
        out += [at(lo + past - angle), at(lo + past)]
    return np.asarray(out, np.float32)


def brute_force(vectors: np.ndarray, threshold: float) -> tuple[set[frozenset[int]], np.ndarray]:
    """All-pairs components and each row's best similarity, from the float16-rounded unit vectors."""
    x = unit(vectors).astype(np.float16).astype(np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    a, b = np.nonzero(np.triu(sims >= np.float32(threshold), 1))
    n = len(x)
    _, label = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(n, n)), directed=False)
    found: dict[int, set[int]] = {}
    for i, g in enumerate(label.tolist()):
        found.setdefault(g, set()).add(i)
    return {frozenset(g) for g in found.values() if len(g) > 1}, sims.max(1)


def test_the_set_partition_finds_what_brute_force_finds(tmp_path: Path) -> None:
    """3,000 random unit vectors (dim 8) plus 60 pairs planted across the boundaries of 32 k-means cells:
    the components equal all-pairs brute force, and so does every linked row's nearest similarity."""
    threshold, cells, rng = 0.95, 32, np.random.default_rng(5)
    base = unit(rng.standard_normal((3000, 8)))
    first = embedding_set(tmp_path / "first", base, shard_size=500)
    run_dedup(DedupConfig(out=str(first), within="set", threshold=threshold, cells=cells, runs=1))
    learnt = np.load(first / "dedup" / "work" / "cells.npy")  # the cells these vectors make
    vectors = np.concatenate([base, straddling_pairs(learnt, rng, 60, threshold)])
    out = embedding_set(tmp_path / "set", vectors, shard_size=500)
    config = DedupConfig(out=str(out), within="set", threshold=threshold, cells=cells, runs=1, partition_rows=800)
    summary = run_dedup(config)
    assert summary["partitions"] == 4  # components joined across partitions' links
    centroids = np.load(out / "dedup" / "work" / "cells.npy")
    x = unit(vectors).astype(np.float16).astype(np.float32)
    owner = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    planted = np.arange(3000, len(vectors)).reshape(-1, 2)
    across = int((owner[planted[:, 0]] != owner[planted[:, 1]]).sum())
    print(f"\n{across} of {len(planted)} planted pairs straddle two cells; {summary['routed_rows']} rows routed")
    assert across >= len(planted) // 2
    expected, best = brute_force(vectors, threshold)
    rows = parts(out)
    assert groups(rows) == expected
    assert all(any(int(a) in g and int(b) in g for g in expected) for a, b in planted)  # every planted pair
    linked = np.flatnonzero(best >= np.float32(threshold))
    got = np.array([rows[int(i)]["similarity"] for i in linked], np.float32)
    # Each linked row's nearest is brute force's best: equal up to float32 summation order (measured 6e-8).
    assert np.abs(got - best[linked]).max() <= 1e-5
    check_ranks(rows)


def test_a_killed_run_resumes_to_the_same_parts(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng.standard_normal((480, 16)))
    vectors[1::7] = unit(vectors[::7][: len(vectors[1::7])] + 0.05 * rng.standard_normal((len(vectors[1::7]), 16)))
    classes = [i // 7 % 5 for i in range(480)]  # rows 7k and 7k + 1 (the near pair) share a class
    whole = embedding_set(tmp_path / "whole", vectors, shard_size=40, classes=classes)
    killed = embedding_set(tmp_path / "killed", vectors, shard_size=40, classes=classes)
    run_dedup(DedupConfig(out=str(whole), threshold=0.9, runs=1))
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jobs.dedup", "--out", str(killed), "--threshold", "0.9"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    work = killed / "dedup" / "work" / "embed"

    def finished() -> int:  # whole work files: a write in progress is a dot-named temporary beside them
        return len(list(work.glob("[0-9]*.bin")))

    deadline = time.monotonic() + 120
    while not finished() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its task processes
    proc.wait()
    done = finished()
    assert 0 < done < 12 and not (killed / "dedup" / "dedup.json").exists()
    capsys.readouterr()
    assert dedup_main(["--out", str(killed), "--threshold", "0.9"]) == 0
    assert json.loads(capsys.readouterr().out)["steps_run"][0] == f"embed {12 - done}"  # the rest only
    names = sorted(p.name for p in (whole / "dedup").glob("part-*.parquet"))
    assert names == sorted(p.name for p in (killed / "dedup").glob("part-*.parquet")) and len(names) == 12
    for name in names:
        assert (whole / "dedup" / name).read_bytes() == (killed / "dedup" / name).read_bytes(), name
    assert len(groups(parts(whole))) > 10  # the runs found something to agree on
    assert dedup_main(["--out", str(killed), "--threshold", "0.8"]) == 2  # another threshold over it: refused


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{missing}"], "error: {missing}: not a dit-worker output"),
        (["--threshold", "0"], "error: --threshold: Input should be greater than 0"),
        (["--threshold", "1.5"], "error: --threshold: Input should be less than or equal to 1"),
        (["--within", "shard"], "error: --within: Input should be 'prompt', 'class' or 'set'"),
        (["--within", "class"], "error: --within class: {set} is a text-to-image set (prompts); use --within prompt"),
        (["--clip-model", "{missing}"], "error: --clip-model {missing}: no such directory, nor a hub id"),
        ([], "error: --clip-model openai/clip-vit-large-patch14-336: not a local directory, and fetching it"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(planted: dict, args: list[str], message: str, capsys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default CLIP is not on this machine: no weights to load
    out = copy_set(planted, f"bad{len(list(planted['root'].iterdir()))}")
    fill = {"missing": str(planted["root"] / "nothing"), "set": str(out)}
    argv = [a.format(**fill) for a in args]
    if "--out" not in argv:
        argv = ["--out", str(out), *argv]
    assert dedup_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.format(**fill)) and "\n" not in err, err
    assert not (out / "dedup").exists()


def upload(local: Path, url: str) -> Storage:
    store = open_storage(url)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put(path.relative_to(local).as_posix(), path.read_bytes())
    return store


def test_an_s3_set_gives_the_parts_of_a_local_one(tmp_path: Path, s3_server, s3_bucket: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The same set on S3 (SeaweedFS) and in a folder: byte-equal parts (ranged reads of the work files,
    the cells through a ranged file), with --within set over several cells and partitions."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the task processes inherit it
    rng = np.random.default_rng(6)
    vectors = unit(rng.standard_normal((300, 8)))
    vectors[1::6] = unit(vectors[::6] + 0.05 * rng.standard_normal((50, 8)))
    local = embedding_set(tmp_path / "local", vectors, shard_size=50)
    s3 = upload(local, f"s3://{s3_bucket}/set")
    for out in (str(local), f"s3://{s3_bucket}/set"):
        run_dedup(DedupConfig(out=out, within="set", threshold=0.9, cells=6, runs=3, partition_rows=100, workers=1))
    names = sorted(p.name for p in (local / "dedup").glob("part-*.parquet"))
    assert len(names) == 6 and len(groups(parts(local))) >= 40
    for name in names:
        assert s3.get(f"dedup/{name}") == (local / "dedup" / name).read_bytes(), name
    assert json.loads(s3.get("dedup/dedup.json"))["partitions"] == 3


def test_storage_requests_grow_by_each_shards_own_work(tmp_path: Path, s3_server, s3_bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Counted at an HTTP proxy in front of SeaweedFS (R = 2 runs, their tasks in the driver: workers=1):
    4 more source shards cost exactly 8 more requests (each one's metadata part read and dedup part
    written), nothing else per shard; 2 more partitions at most 2 (4R + 3) (README, "Near-duplicates")."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    faults, rng = Faults(), np.random.default_rng(8)

    def requests(proxy: str, shards: int, partition_rows: int) -> tuple[int, dict]:
        vectors = unit(rng.standard_normal((50 * shards, 8)))
        vectors[1::2] = unit(vectors[::2] + 0.05 * rng.standard_normal((25 * shards, 8)))  # 2k + 1 near 2k
        classes = [i // 2 % 40 for i in range(50 * shards)]  # each run holds all 40 classes
        local = embedding_set(tmp_path / f"{shards}-{partition_rows}", vectors, shard_size=50, classes=classes)
        url = f"s3://{s3_bucket}/{shards}-{partition_rows}"
        upload(local, url)
        before = faults.counts["forwarded"]
        config = DedupConfig(out=url, s3_endpoint=proxy, threshold=0.9, runs=2, partition_rows=partition_rows,
                             workers=1)  # fmt: skip
        summary = run_dedup(config)
        return faults.counts["forwarded"] - before, summary

    with s3_proxy(s3_server.endpoint, faults) as proxy:
        (small, a), (large, b), (fewer, c) = (requests(proxy, *sizes) for sizes in ((4, 50), (8, 100), (8, 200)))
    print(f"\nrequests: 4 shards, 4 partitions {small}; 8 shards, 4 partitions {large}; 8 shards, 2 partitions {fewer}")
    assert [(s["runs"], s["partitions"]) for s in (a, b, c)] == [(2, 4), (2, 4), (2, 2)]
    assert large - small == 2 * 4
    assert 0 < large - fewer <= 2 * (4 * 2 + 3)


# Last: the session's Ray head stays up once started, and its processes would slow every test after it.
def test_ray_tasks_write_the_same_parts(tmp_path: Path, ray_cluster) -> None:
    """`--ray` on a real local Ray head: every step on Ray tasks, the parts those of a local run."""
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((120, 16)))
    vectors[1::5] = unit(vectors[::5] + 0.05 * rng.standard_normal((24, 16)))
    local = embedding_set(tmp_path / "local", vectors, shard_size=30)
    on_ray = embedding_set(tmp_path / "ray", vectors, shard_size=30)
    run_dedup(DedupConfig(out=str(local), within="set", threshold=0.9, cells=3, runs=1))
    env = os.environ | {"RAY_ADDRESS": ray_cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                        "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.dedup", "--out", str(on_ray), "--within", "set", "--threshold", "0.9", "--ray"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["steps_run"][0] == "embed 4"
    got, want = parts(on_ray), parts(local)
    assert groups(got) == groups(want) and len(groups(want)) >= 20
