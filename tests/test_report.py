"""jobs.report opened in a real browser: Debian's chromium driven by playwright.

Every thumbnail loads (naturalWidth > 0 after scrolling the page through, so lazy images are
fetched), the metrics on the page are the numbers metrics.json holds, digit for digit, and on a
10,000-image set the report stays under its documented size and opens within its documented time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from metric_references import blocky
from output_sets import add_columns, write_dedup, write_output_set
from synthetic_sets import write_synthetic_set

from dit_worker.checkpoints.tiny_tokenizers import WORDS
from dit_worker.report.score_columns import BINS, EXTREMES
from dit_worker.storage.objects import open_storage
from jobs.report import main as report_main

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); playwright's own download is not used
# README, "The report": at most 32 groups x 8 thumbnails of <= 128 px, so under 2 MB for any set size.
MAX_REPORT_BYTES = 2 << 20
# README: the 10,000-image report opens (every image loaded) within 10 s on the 2-core build machine;
# measured 0.72 and 0.88 s with the machine shared (load average 10.5 and 6.9).
MAX_OPEN_S = 10.0
METRICS = {
    "command": "python -m jobs.fid --out OUT --ref REF --set-metrics all",
    "fid": 12.345678901234567,
    "sfid": 3.0000000000000004,
    "inception_score_mean": 1.0805450077723098,
    "inception_score_std": 0.08744857363033212,
    "precision": 0.4,
    "recall": 0.45,
    "fd_dinov2": 1.0828441398155806,
    "cmmd": 0.13859016268713553,
    "clip_score": 11.385460878977534,
    "num_samples": 24,
}


def open_report(index: Path, screenshot: Path | None = None, viewport: tuple[int, int] = (1280, 900)) -> dict:
    """Load the page from disk, scroll it through, wait for every image; what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            start = time.perf_counter()
            page.goto(index.resolve().as_uri())
            page.evaluate(
                """async () => {
                    for (let y = 0; y <= document.body.scrollHeight; y += 500) {
                        window.scrollTo(0, y);
                        await new Promise(r => requestAnimationFrame(r));
                    }
                }"""
            )
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
            elapsed = time.perf_counter() - start
            shown = page.evaluate(
                """() => ({
                    widths: Array.from(document.images).map(i => i.naturalWidth),
                    metrics: Object.fromEntries(Array.from(document.querySelectorAll('td[data-metric]'))
                        .map(td => [td.dataset.metric, td.textContent])),
                    sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                    scores: Array.from(document.querySelectorAll('.score')).map(d => ({
                        id: d.id, column: d.dataset.column, labelIndex: d.dataset.labelIndex ?? null,
                        svg: d.querySelector('svg')?.id ?? null,
                        counts: Array.from(d.querySelectorAll('svg rect')).map(r => Number(r.dataset.count)),
                        lo: Array.from(d.querySelectorAll('svg rect')).map(r => Number(r.dataset.lo)),
                        hi: Array.from(d.querySelectorAll('svg rect')).map(r => Number(r.dataset.hi)),
                        stats: Object.fromEntries(Array.from(d.querySelectorAll('[data-stat]'))
                            .map(s => [s.dataset.stat, s.textContent])),
                        lowest: Array.from(d.querySelectorAll('[id^="lowest-"] figure'))
                            .map(f => Number(f.dataset.sampleId)),
                        highest: Array.from(d.querySelectorAll('[id^="highest-"] figure'))
                            .map(f => Number(f.dataset.sampleId)),
                        values: Array.from(d.querySelectorAll('figure .value')).map(v => v.textContent),
                    })),
                    labels: Object.fromEntries(Array.from(document.querySelectorAll('table.labels')).map(t =>
                        [t.id, Array.from(t.querySelectorAll('tr'))
                            .map(r => [Number(r.dataset.labelIndex), Number(r.dataset.count)])])),
                    dups: Array.from(document.querySelectorAll('.dup-group')).map(g => ({
                        group: Number(g.dataset.group), size: Number(g.dataset.size),
                        members: Array.from(g.querySelectorAll('figure')).map(f => Number(f.dataset.sampleId)),
                        ranks: Array.from(g.querySelectorAll('figure')).map(f => Number(f.dataset.dupRank)),
                    })),
                    dedup: Object.fromEntries(Array.from(document.querySelectorAll('td[data-dedup]'))
                        .map(td => [td.dataset.dedup, td.textContent])),
                    command: document.querySelector('#fid-command')?.textContent ?? null,
                    fingerprint: document.querySelector('#fingerprint').textContent,
                    groups: document.querySelectorAll('.group').length,
                    timing: document.querySelectorAll('#timing rect').length,
                })"""
            )
            if screenshot is not None:
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return shown | {"elapsed": elapsed}


def report_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "report").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "set"
    prompts = [f"a {WORDS[i % 6]} by a river" for i in range(24)]  # 6 prompts, 4 samples each
    write_output_set(open_storage(str(out)), blocky(24, seed=3), [-1] * 24, shard_size=8, prompts=prompts)
    (out / "metrics.json").write_text(json.dumps(METRICS, indent=2))
    return out


def test_report_opens_and_shows_the_recorded_numbers(small_set: Path) -> None:
    assert report_main(["--out", str(small_set)]) == 0
    shown = open_report(small_set / "report" / "index.html")
    assert len(shown["widths"]) == 24 and all(w > 0 for w in shown["widths"])
    assert shown["groups"] == 6  # one per prompt
    expected = {k: v for k, v in METRICS.items() if isinstance(v, float)}
    assert set(shown["metrics"]) == set(expected)
    for key, value in expected.items():  # the very digits of metrics.json, not a rounding of them
        assert shown["metrics"][key] == repr(value) and float(shown["metrics"][key]) == value, key
    assert shown["command"] == METRICS["command"]
    assert shown["timing"] >= 1
    # No score column and no OUT/dedup: no score or duplicate section (the scored set below has both).
    assert shown["sections"] == [] and shown["scores"] == [] and shown["dups"] == [] and shown["labels"] == {}


def test_report_refuses_a_folder_that_is_not_a_set(tmp_path: Path, capsys) -> None:
    assert report_main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a dit-worker output" in err and len(err.splitlines()) == 1


def test_report_of_10000_images_is_small_and_opens_fast(tmp_path: Path) -> None:
    out = tmp_path / "big"
    write_synthetic_set(open_storage(str(out)), 10_000, shard_size=1000)  # clip_score, aesthetic, a classifier
    write_dedup(open_storage(str(out)), 10_000, 1000, [list(range(k, 10_000, 1000)) for k in range(12)])
    started = time.perf_counter()
    assert report_main(["--out", str(out)]) == 0
    built = time.perf_counter() - started
    size = report_bytes(out)
    shown = open_report(out / "report" / "index.html")
    thumbs = len(list((out / "report" / "thumbs").iterdir()))
    print(f"10k report: built in {built:.1f} s, {size} bytes, {thumbs} thumbnails, opened in {shown['elapsed']:.2f} s")
    assert size < MAX_REPORT_BYTES
    assert shown["elapsed"] < MAX_OPEN_S
    # 32 of 100 classes x 8, the lowest and highest 8 of clip_score and aesthetic, 8 groups x 8 duplicates.
    assert len(shown["widths"]) == 32 * 8 + 2 * 2 * 8 + 8 * 8 and all(w > 0 for w in shown["widths"])
    assert thumbs <= 32 * 8 + 2 * 2 * 8 + 8 * 8  # only the shown samples' images became thumbnails
    # The histograms summarise the metadata's score columns: clip_score's mean is its column's, not aesthetic's.
    table = ds.dataset(out / "metadata", format="parquet").to_table(columns=["clip_score", "aesthetic"])
    scores = {s["column"] + (s["labelIndex"] or ""): s for s in shown["scores"]}
    assert list(scores) == ["clip_score", "aesthetic", "kind0", "kind1", "kind2"]
    for column in ("clip_score", "aesthetic"):
        mean = np.asarray(table.column(column), np.float64).mean()
        assert float(scores[column]["stats"]["mean"]) == pytest.approx(mean, rel=1e-12)
        assert sum(scores[column]["counts"]) == 10_000 and len(scores[column]["counts"]) == BINS
    assert abs(float(scores["clip_score"]["stats"]["mean"]) - float(scores["aesthetic"]["stats"]["mean"])) > 10
    assert shown["fingerprint"] == "0" * 64 and len(shown["dups"]) == 8


def test_report_on_s3(s3_server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written under an s3:// prefix with content types a browser acts on; relative links only, so the
    objects as they lie in the bucket make a page whose every image loads."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_bucket}/sets/a"
    prompts = [f"a {WORDS[i % 3]} at dawn" for i in range(12)]
    write_output_set(open_storage(url), blocky(12, seed=5), [-1] * 12, shard_size=4, prompts=prompts)
    assert report_main(["--out", url]) == 0
    client = s3_server.client()
    head = client.head_object(Bucket=s3_bucket, Key="sets/a/report/index.html")
    assert head["ContentType"] == "text/html"
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="sets/a/report/")["Contents"]
    for obj in listed:  # the bucket's objects, as they are, in a folder of their own
        local = tmp_path / obj["Key"].removeprefix("sets/a/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read())
        if obj["Key"].endswith(".jpg"):
            assert client.head_object(Bucket=s3_bucket, Key=obj["Key"])["ContentType"] == "image/jpeg"
    shown = open_report(tmp_path / "report" / "index.html")
    assert len(shown["widths"]) == 12 and all(w > 0 for w in shown["widths"]) and shown["groups"] == 3


# A scored, deduplicated set of 40 samples in 5 shards: ties at both ends of clip_score (broken by sample id),
# a missing and a NaN score, a classifier of three labels, and duplicate groups whose dup_rank order is not
# their id order, with ties in size (broken by group id) and more groups than are shown.
N, SHARD = 40, 8
LABELS = ["cat", "dog", "bird"]
GROUPS = [
    list(range(20, 32)),  # 12 members, 8 shown
    [7, 1, 39, 15, 8],  # group 1, kept 7
    [2, 33, 4, 9, 10],  # group 2: as large as group 1, shown after it
    [12, 0, 13],
    [14, 16, 17],
    [18, 19],
    [3, 5],
    [6, 11],
    [32, 34],  # the three last pairs are not among the 8 largest (ties by group id)
    [35, 36],
    [37, 38],
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scored") / "set"
    prompts = [f"a {WORDS[i % 10]} in the snow" for i in range(N)]
    write_output_set(open_storage(str(out)), blocky(N, seed=4), [-1] * N, shard_size=SHARD, prompts=prompts)
    rng = np.random.default_rng(11)
    clip = rng.uniform(10, 30, N).astype(np.float32)
    clip[[30, 3, 17]] = 9.5  # a three-way tie for the lowest
    clip[[22, 5]] = 31.0  # and a tie for the highest
    clip[11] = np.nan
    missing = np.zeros(N, bool)
    missing[12] = True  # a null: no score
    probabilities = rng.dirichlet(np.ones(3), N).astype(np.float32)
    add_columns(
        open_storage(str(out)),
        {
            "clip_score": pa.array(clip, mask=missing),
            "aesthetic": pa.array(rng.normal(5, 1, N).astype(np.float32)),
            "kind": pa.StructArray.from_arrays([pa.array(probabilities[:, j]) for j in range(3)], names=LABELS),
            "kind_label": pa.array([LABELS[j] for j in probabilities.argmax(1).tolist()]),
        },
    )
    write_dedup(open_storage(str(out)), N, SHARD, GROUPS, threshold=0.95)
    assert report_main(["--out", str(out)]) == 0
    return out, open_report(out / "report" / "index.html")


def test_each_score_histogram_is_numpys_of_its_column(scored: tuple[Path, dict]) -> None:
    out, shown = scored
    table = ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")
    columns = {
        "clip_score": np.asarray(table["clip_score"].to_numpy(zero_copy_only=False), np.float64),
        "aesthetic": np.asarray(table["aesthetic"], np.float64),
        **{f"kind{j}": np.asarray(table["kind"].combine_chunks().field(j), np.float64) for j in range(3)},
    }
    scores = {s["column"] + (s["labelIndex"] or ""): s for s in shown["scores"]}
    assert list(scores) == list(columns)
    assert sorted(s["svg"] for s in shown["scores"]) == sorted(
        ["hist-clip_score", "hist-aesthetic"] + [f"hist-kind-{j}-{label}" for j, label in enumerate(LABELS)]
    )
    for name, values in columns.items():
        values = values[np.isfinite(values)]
        counts, edges = np.histogram(values, BINS)
        got = scores[name]
        assert got["counts"] == counts.tolist(), name  # bin for bin, numpy's
        assert sum(got["counts"]) == values.size == int(got["stats"]["count"]) == (38 if name == "clip_score" else N)
        assert got["lo"] == edges[:-1].tolist() and got["hi"] == edges[1:].tolist(), name
        assert float(got["stats"]["mean"]) == pytest.approx(values.mean(), rel=1e-12)
        assert float(got["stats"]["min"]) == np.float32(values.min()) and float(got["stats"]["max"]) == np.float32(
            values.max()
        )
        other = columns["aesthetic" if name == "clip_score" else "clip_score"]  # the wrong column fails by far
        wrong = np.histogram(other[np.isfinite(other)], BINS)[0]
        assert np.abs(wrong - counts).sum() >= 10, name
        assert np.histogram(values, BINS + 1)[0].tolist() != got["counts"]  # as do bins one off
    # kind_label's bars: each label's count of samples whose top label it is.
    labels = table["kind_label"].to_pylist()
    assert sorted(shown["labels"]["labels-kind"]) == sorted([j, labels.count(x)] for j, x in enumerate(LABELS))
    assert sum(c for _, c in shown["labels"]["labels-kind"]) == N


def test_lowest_and_highest_of_each_score_are_the_expected_samples(scored: tuple[Path, dict]) -> None:
    out, shown = scored
    table = ds.dataset(out / "metadata", format="parquet").to_table(columns=["sample_id", "clip_score", "aesthetic"])
    ids = table["sample_id"].to_pylist()
    scores = {s["column"]: s for s in shown["scores"] if s["labelIndex"] is None}
    for name in ("clip_score", "aesthetic"):
        rows = [(v, i) for v, i in zip(table[name].to_pylist(), ids, strict=True) if v is not None and v == v]
        lowest = [i for _, i in sorted(rows)[:EXTREMES]]  # by value, ties by sample id
        highest = [i for _, i in sorted((-v, i) for v, i in rows)[:EXTREMES]]
        assert scores[name]["lowest"] == lowest and scores[name]["highest"] == highest, name
        assert lowest != highest[::-1]  # top-k lowest taken from the highest end would fail
        by_value = dict((i, v) for v, i in rows)
        assert scores[name]["values"] == [str(np.float32(by_value[i])) for i in lowest + highest]
    assert scores["clip_score"]["lowest"][:3] == [3, 17, 30] and scores["clip_score"]["highest"][:2] == [5, 22]
    assert 11 not in scores["clip_score"]["lowest"] + scores["clip_score"]["highest"]  # NaN is no score
    assert len(shown["widths"]) == N + 2 * 2 * EXTREMES + 8 + 5 + 5 + 3 + 3 + 2 + 2 + 2  # grid, extremes, groups
    assert all(w > 0 for w in shown["widths"])


def test_largest_duplicate_groups_are_shown_in_dup_rank_order(scored: tuple[Path, dict]) -> None:
    _, shown = scored
    largest = sorted(GROUPS, key=lambda g: (-len(g), min(g)))[:8]
    assert [(g["group"], g["size"]) for g in shown["dups"]] == [(min(g), len(g)) for g in largest]
    assert [(g["group"], g["size"]) for g in shown["dups"]][:5] == [(20, 12), (1, 5), (2, 5), (0, 3), (14, 3)]
    assert [g["members"] for g in shown["dups"]] == [g[:8] for g in largest]  # dup_rank order, not id order
    assert [g["ranks"] for g in shown["dups"]] == [list(range(min(8, len(g)))) for g in largest]
    assert shown["dups"][1]["members"] != sorted(shown["dups"][1]["members"])
    assert shown["dedup"]["threshold"] == "0.95" and shown["dedup"]["within"] == "set"
    assert shown["dedup"]["duplicates"] == str(N - len(GROUPS))
    assert shown["sections"] == ["scores", "duplicates"]


def test_an_unreadable_dedup_part_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "set"
    write_output_set(open_storage(str(out)), blocky(8, seed=1), [-1] * 8, shard_size=4, prompts=["a cat"] * 8)
    write_dedup(open_storage(str(out)), 8, 4, [[0, 5]])
    assert report_main(["--out", str(out)]) == 0  # readable: the report is made
    capsys.readouterr()
    (out / "dedup" / "part-00001.parquet").write_bytes(b"not parquet")
    assert report_main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "dedup/part-00001.parquet" in err, err
    assert "Traceback" not in err


def test_a_score_column_of_nulls_only_shows_no_histogram(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_output_set(open_storage(str(out)), blocky(8, seed=1), [-1] * 8, shard_size=4, prompts=["a cat"] * 8)
    add_columns(open_storage(str(out)), {"clip_score": pa.nulls(8, pa.float32()), "aesthetic": pa.array([5.0] * 8)})
    assert report_main(["--out", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert 'id="hist-aesthetic"' in page and 'id="hist-clip_score"' not in page  # aesthetic: 8 equal values
