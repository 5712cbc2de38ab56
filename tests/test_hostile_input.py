"""Hostile input, each case a test that can fail: markup in the report, a checkpoint that runs code when
unpickled, S3 endpoints that are closed, silent, not S3 or refuse us, own-column names and values that look
like paths, and a disk that fills mid-run. The product rule: bad input is one line (exit 2) before any
model work, naming the value and what would do, earlier output untouched, never a traceback.
"""

from __future__ import annotations

import builtins
import json
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from servers import free_ports

from dit_worker.storage.objects import PROBE_BOUND_S
from jobs.convert import main as convert_main
from jobs.generate import main as generate_main

FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--dtype", "float32"]


def generate(*args: object) -> int:
    return generate_main([str(a) for a in args])


def one_line(err: str) -> str:
    """The refusal: stderr's only non-log line, which must start with `error:`."""
    logged = (" INFO ", " WARNING ", "samples: ")  # log records and the progress bar's redraws
    lines = [line for line in err.strip().splitlines() if not any(mark in line for mark in logged)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[0]


def record(what: str, capsys: pytest.CaptureFixture) -> None:
    """A measured case, shown with -s (outside capsys, which the next refusal's check reads)."""
    with capsys.disabled():
        print(f"\n  {what}")


# --- 2. a checkpoint whose unpickling would run code ---------------------------------------------------------


class _Exploit:
    """What a malicious checkpoint holds: unpickling it opens (creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(
    legacy: bool, tmp_path: Path, tiny_vae_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"model": {"x_embedder.proj.weight": torch.zeros(2, 4, 2, 2)}, "payload": _Exploit(marker)}
    torch.save(payload, evil, _use_new_zipfile_serialization=not legacy)
    expected = "evil.pt: refusing to load, the file needs arbitrary unpickling"

    out = tmp_path / "out"
    started = time.perf_counter()
    assert generate("--local", "--model", evil, "--vae", tiny_vae_dir, "--classes", "1", "--per-class", "1",
                    *FAST, "--out", out) == 2  # fmt: skip
    line = one_line(capsys.readouterr().err)
    record(f"generate: exit 2 in {time.perf_counter() - started:.2f} s: {line}", capsys)
    assert expected in line and "(it names io.open, which weights_only loading refuses)" in line
    assert not marker.exists() and not out.exists()

    converted = tmp_path / "converted"
    started = time.perf_counter()
    assert convert_main([str(evil), "--vae", str(tiny_vae_dir), "--out", str(converted)]) == 2
    line = one_line(capsys.readouterr().err)
    record(f"convert: exit 2 in {time.perf_counter() - started:.2f} s: {line}", capsys)
    assert expected in line
    assert not marker.exists() and not converted.exists()


# --- 3. S3 endpoints that cannot be used ---------------------------------------------------------------------


class _NotS3(BaseHTTPRequestHandler):
    """A web server that is not S3: a 404 page for everything, or (status 200) an HTML page for everything."""

    status = 404

    def _answer(self, body: bool) -> None:
        page = b"<html><body><h1>Not here</h1></body></html>"
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)

    def do_GET(self) -> None:
        self._answer(True)

    def do_PUT(self) -> None:
        self._answer(True)

    def do_DELETE(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: object) -> None:
        pass


class _Ok(_NotS3):
    status = 200


@contextmanager
def web_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def black_hole() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def endpoint_for(case: str, s3_server) -> Iterator[str]:
    if case == "closed port":
        yield f"http://127.0.0.1:{free_ports(1)[0]}"
    elif case == "silent port":
        with black_hole() as url:
            yield url
    elif case in ("web server 404", "web server 200"):
        with web_server(_NotS3 if case == "web server 404" else _Ok) as url:
            yield url
    else:
        yield s3_server.endpoint


S3_CASES = {
    "closed port": "cannot reach S3 to reach the bucket (Could not connect to the endpoint URL",
    "silent port": "cannot reach S3 to reach the bucket (Read timeout on endpoint URL",
    "web server 404": "not an S3 endpoint (it answered HTTP 404 without an S3 request id to reach the bucket)",
    "web server 200": "not an S3 endpoint (it accepted a probe object but returned other bytes for it)",
    "wrong credentials": "access denied (",
    "missing bucket": "does not exist; create it first",
}


@pytest.mark.parametrize("case", list(S3_CASES))
def test_unusable_s3_output_is_one_line_within_the_bound(
    case: str, tiny_ckpt: Path, s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = s3_server.env()
    if case == "wrong credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"{s3_bucket}-missing" if case == "missing bucket" else s3_bucket
    with endpoint_for(case, s3_server) as endpoint:
        started = time.perf_counter()
        rc = generate("--local", "--model", tiny_ckpt, "--classes", "1", "--per-class", "1", *FAST,
                      "--s3-endpoint", endpoint, "--out", f"s3://{bucket}/run")  # fmt: skip
        took = time.perf_counter() - started
    line = one_line(capsys.readouterr().err)
    record(f"{case}: exit {rc} in {took:.2f} s: {line}", capsys)
    assert rc == 2 and S3_CASES[case] in line, line
    assert f"s3://{bucket}/run (endpoint {endpoint})" in line
    assert took < PROBE_BOUND_S, took  # docs/cli.md states this bound
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert "Contents" not in listed  # nothing written into the real bucket (no probe object left either)
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert f"{s3_bucket}-missing" not in names


# --- 4. own columns whose names or values look like paths ----------------------------------------------------

PATHLIKE_VALUES = ["../x", "a/b", "", "nul\x00byte", "/etc/passwd", "..", "C:\\x", "\u202eevil.png"]
PATHLIKE_NAMES = ["../x", "a/b", "..", "/abs"]
# Every key a local job writes below OUT (docs/output.md), whatever the manifest holds.
LAYOUT = re.compile(
    r"(_lease\.json|\._lease\.json\.lock|_SUCCESS|job\.json|index/committed\.bits|index/log-[^/]+\.json"
    r"|images/\d{5}/\d{8}\.png|shards/\d{5}\.tar|data/part-\d{5}\.parquet|metadata/part-\d{5}\.parquet)"
)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


@pytest.mark.parametrize("fmt", ["png", "webdataset", "parquet"])
def test_pathlike_own_columns_are_stored_as_data_in_every_format(
    fmt: str, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Names like `../x` and values like `../x`, `a/b`, "" or a NUL byte are data: no key is derived from
    them (every object lies in the documented layout below OUT) and they come back as they went in."""
    n = len(PATHLIKE_VALUES)
    own = {name: PATHLIKE_VALUES[i:] + PATHLIKE_VALUES[:i] for i, name in enumerate(PATHLIKE_NAMES)}
    table = pa.table({"sample_id": range(n), "class_id": [1] * n, "seed": range(n), **own})
    work = tmp_path / "work"
    work.mkdir()
    pq.write_table(table, work / "m.parquet")
    before = files_under(tmp_path)
    out = work / "out"
    started = time.perf_counter()
    assert generate("--local", "--model", tiny_ckpt, "--manifest", work / "m.parquet", *FAST, "--shard-size", 3,
                    "--format", fmt, "--out", out) == 0  # fmt: skip
    took = time.perf_counter() - started
    written = files_under(tmp_path) - before
    assert all(key.startswith("work/out/") for key in written), written  # nothing beside or above OUT
    strays = sorted(k for k in files_under(out) if not LAYOUT.fullmatch(k))
    assert not strays, strays
    expected = dict(own)
    got = ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")
    assert {name: got[name].to_pylist() for name in own} == expected
    if fmt == "webdataset":
        with tarfile.open(out / "shards" / "00000.tar") as tar:
            assert sorted(tar.getnames()) == [f"{i:08d}.{e}" for i in range(3) for e in ("json", "png")]
            rows = [json.load(tar.extractfile(f"{i:08d}.json")) for i in range(3)]
        assert {name: [r[name] for r in rows] for name in own} == {k: v[:3] for k, v in expected.items()}
    if fmt == "parquet":
        data = ds.dataset(out / "data", format="parquet").to_table().sort_by("sample_id")
        assert {name: data[name].to_pylist() for name in own} == expected
        assert [r["path"] for r in data["image"].to_pylist()] == [f"{i:08d}.png" for i in range(n)]
    record(f"{fmt}: exit 0 in {took:.2f} s, {len(written)} files, all in the layout below OUT", capsys)


@pytest.mark.parametrize("name", ["", "nul\x00", "\u202eevil", " "], ids=["empty", "nul", "rtl-override", "blank"])
def test_invisible_own_column_names_are_refused(
    name: str, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pq.write_table(pa.table({"class_id": [1, 2], "seed": [0, 1], name: ["a", "b"]}), tmp_path / "m.parquet")
    out = tmp_path / "out"
    started = time.perf_counter()
    assert generate("--local", "--model", tiny_ckpt, "--manifest", tmp_path / "m.parquet", *FAST, "--out", out) == 2
    line = one_line(capsys.readouterr().err)
    record(f"column {name!r}: exit 2 in {time.perf_counter() - started:.2f} s: {line}", capsys)
    assert f"column {name!r} is empty or holds control or format characters" in line
    assert not out.exists()


# --- 1. markup in the report ---------------------------------------------------------------------------------

# Each payload, were it interpreted, sets window.__pwned or adds an element; none holds a comma (a class
# name is the first of its id2label synonyms).
PAYLOADS = {
    "script": "<script>window.__pwned='script'</script>",
    "onerror": '"><img src=x onerror="window.__pwned=\'onerror\'">',
    "long": "W" * 5000,
    "control": "tab\tnul\x00bell\x07 rtl\u202egnp.exe",
}
COMMAND_PAYLOAD = "jobs.fid </code><script>window.__pwned='command'</script>"
OUT_PAYLOAD = "<img src=x onerror=window.__pwned='url'>"


def page_facts(index: Path) -> dict:
    """What chromium made of the page: globals, elements, texts, layout."""
    from playwright.sync_api import sync_playwright
    from test_report import CHROMIUM

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(index.resolve().as_uri())
            page.evaluate(  # lazy images load once scrolled to
                """async () => {
                    for (let y = 0; y <= document.body.scrollHeight; y += 500) {
                        window.scrollTo(0, y);
                        await new Promise(r => requestAnimationFrame(r));
                    }
                }"""
            )
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
            return page.evaluate(
                """() => ({
                    pwned: typeof window.__pwned === 'undefined' ? null : String(window.__pwned),
                    scripts: document.scripts.length,
                    handlers: document.querySelectorAll('[onerror], [onload]').length,
                    srcs: Array.from(document.images).map(i => i.getAttribute('src')),
                    titles: Array.from(document.querySelectorAll('.group h3 bdi')).map(b => b.textContent),
                    h1: document.querySelector('h1').textContent,
                    title: document.title,
                    command: document.querySelector('#fid-command')?.textContent ?? null,
                    overflow: document.documentElement.scrollWidth - window.innerWidth,
                    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
                    scoreTitles: Array.from(document.querySelectorAll('.score h3')).map(h => h.textContent),
                    labelRows: Array.from(document.querySelectorAll('table.labels tr'))
                        .map(r => [r.querySelector('bdi').textContent, Number(r.dataset.count)]),
                    labelTitles: Array.from(document.querySelectorAll('.score-labels h3')).map(h => h.textContent),
                    dedup: Array.from(document.querySelectorAll('#dedup-record td')).map(td => td.textContent),
                    elements: document.querySelectorAll('*').length,
                })"""
            )
        finally:
            browser.close()


def check_inert(facts: dict, titles: list[str]) -> None:
    assert facts["pwned"] is None and facts["scripts"] == 0 and facts["handlers"] == 0, facts
    assert facts["srcs"] and all(s.startswith("thumbs/") and s.endswith(".jpg") for s in facts["srcs"])
    assert facts["overflow"] <= 0, facts["overflow"]  # a 5,000-character word wraps, the page stays its width
    for payload in (PAYLOADS["script"], PAYLOADS["onerror"]):
        assert any(payload in t for t in facts["titles"]), payload  # shown as the text it is
    long = next(t for t in facts["titles"] if "WWWW" in t)
    assert len(long) < 400 and re.search(r"W… \((4700|4710) more characters\)$", long), long  # 4710: "class 3 ("
    control = next(t for t in facts["titles"] if "rtl" in t)
    assert "\\u202e" in control and "\\u0000" in control and "\\u0007" in control and "\\u0009" in control
    assert "\u202e" not in control and "\x00" not in control
    assert len(titles) == len(facts["titles"])


def test_markup_in_prompts_class_names_and_paths_is_shown_as_text(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from metric_references import blocky
    from output_sets import write_output_set

    from dit_worker.storage.objects import open_storage
    from jobs.report import main as report_main

    # Class names, through a real job on a checkpoint whose id2label holds the payloads, with own columns
    # holding them too.
    ckpt = Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))
    index = json.loads((ckpt / "model_index.json").read_text())
    index["id2label"] |= {str(i + 1): payload for i, payload in enumerate(PAYLOADS.values())}
    (ckpt / "model_index.json").write_text(json.dumps(index))
    rows = [{"class_id": i + 1, "seed": i, "note": payload, "<b>own</b>": payload}
            for i, payload in enumerate(PAYLOADS.values())]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    classes = tmp_path / OUT_PAYLOAD
    assert generate("--local", "--model", ckpt, "--manifest", tmp_path / "m.jsonl", *FAST, "--out", classes) == 0
    (classes / "metrics.json").write_text(json.dumps({"command": COMMAND_PAYLOAD, "fid": 1.5}))
    # Prompts, in a set of the same layout.
    prompts = tmp_path / "prompts"
    texts = [payload for payload in PAYLOADS.values() for _ in range(2)]
    write_output_set(open_storage(str(prompts)), blocky(len(texts), seed=1), [-1] * len(texts), shard_size=4,
                     prompts=texts)  # fmt: skip
    for out in (classes, prompts):
        started = time.perf_counter()
        assert report_main(["--out", str(out)]) == 0
        facts = page_facts(out / "report" / "index.html")
        check_inert(facts, list(PAYLOADS))
        took = time.perf_counter() - started
        record(f"report of {out.name[:24]!r}: exit 0, built and checked in chromium in {took:.2f} s", capsys)
    assert facts["h1"] == str(prompts)
    facts = page_facts(classes / "report" / "index.html")
    assert facts["h1"] == str(classes) and OUT_PAYLOAD in facts["title"] and facts["command"] == COMMAND_PAYLOAD
    html_text = (classes / "report" / "index.html").read_text()
    assert "<script" not in html_text and "<img src=x" not in html_text  # and by grep, for what it is worth


SAFE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
HOSTILE_CLASSIFIER = "<b>kind</b>"  # a hand-built set's struct column: jobs.generate refuses such a NAME


def test_markup_in_classifier_labels_and_dedup_is_shown_as_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Label names (the NAME struct's field names, the model's id2label: user text), NAME_label values, the
    classifier's column name and dedup.json's strings are shown as text; the ids made of them stay valid."""
    import numpy as np
    from metric_references import blocky
    from output_sets import add_columns, write_dedup, write_output_set

    from dit_worker.storage.objects import open_storage
    from jobs.report import main as report_main

    out = tmp_path / "scored"
    labels = list(PAYLOADS.values())
    n = 8
    write_output_set(open_storage(str(out)), blocky(n, seed=2), [-1] * n, shard_size=4, prompts=["a cat"] * n)
    probabilities = np.random.default_rng(0).dirichlet(np.ones(len(labels)), n).astype(np.float32)
    top = [labels[i % len(labels)] for i in range(n - 1)] + ["<script>window.__pwned='label'</script>"]
    fields = [pa.array(probabilities[:, j]) for j in range(len(labels))]
    add_columns(open_storage(str(out)), {
        HOSTILE_CLASSIFIER: pa.StructArray.from_arrays(fields, names=labels),
        HOSTILE_CLASSIFIER + "_label": pa.array(top),
    })  # fmt: skip
    write_dedup(open_storage(str(out)), n, 4, [[0, 5], [1, 2, 3]], within=PAYLOADS["onerror"])
    started = time.perf_counter()
    assert report_main(["--out", str(out)]) == 0
    facts = page_facts(out / "report" / "index.html")
    record(
        f"report of classifier labels: built and checked in chromium in {time.perf_counter() - started:.2f} s", capsys
    )
    assert facts["pwned"] is None and facts["scripts"] == 0 and facts["handlers"] == 0, facts
    assert facts["srcs"] and all(s.startswith("thumbs/") and s.endswith(".jpg") for s in facts["srcs"])
    assert len(facts["srcs"]) == n + 2 + 3  # the grid's and the duplicates': no image from a payload
    assert facts["overflow"] <= 0, facts["overflow"]
    bad = [i for i in facts["ids"] if not SAFE_ID.fullmatch(i)]
    assert not bad and len(set(facts["ids"])) == len(facts["ids"]), facts["ids"]
    assert len([i for i in facts["ids"] if i.startswith("hist-b_kind_b-")]) == len(labels)  # one per label
    titles = facts["scoreTitles"]
    assert len(titles) == len(labels) and all(t.startswith(HOSTILE_CLASSIFIER + ": probability of ") for t in titles)
    for payload in (PAYLOADS["script"], PAYLOADS["onerror"]):
        assert any(t.endswith(payload) for t in titles), payload  # shown as the text it is
        assert any(text == payload for text, _ in facts["labelRows"]), payload
    long = next(t for t in titles if "WWWW" in t)
    assert re.search(r"W… \(4700 more characters\)$", long), long[-60:]
    control = next(t for t in titles if "rtl" in t)
    assert "\\u202e" in control and "\\u0000" in control and "\u202e" not in control and "\x00" not in control
    assert facts["labelTitles"] == [HOSTILE_CLASSIFIER + ": top label"]
    assert sum(c for _, c in facts["labelRows"]) == n - 1  # the eighth's top label is none of the labels
    assert PAYLOADS["onerror"] in facts["dedup"]
    html_text = (out / "report" / "index.html").read_text()
    assert "<script" not in html_text and "<img src=x" not in html_text and "<b>" not in html_text


# --- 5. a disk that fills during a local run -----------------------------------------------------------------


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `where` (the tests run as root), unmounted afterwards."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def committed_ids(out: Path) -> list[int]:
    """The committed samples' ids, read back by the project's reader (committed shards only)."""
    from dit_worker.output.reader import OutputSet, OutputSetError

    try:
        output = OutputSet.open(str(out))
    except OutputSetError:  # no shard committed (the index names none) and no _SUCCESS
        return []
    return sorted(int(i) for shard in output.shards for i in shard.sample_ids.tolist())


def test_a_full_disk_fails_in_one_line_and_a_rerun_with_room_completes_every_sample_once(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from jobs.verify import main as verify_main

    with small_disk(tmp_path / "disk", "96k") as disk:
        out = disk / "out"
        # 32 images in 8 shards of 4: each file takes a 4 KiB page, so about 5 shards fit in 96 KiB.
        args = ["--local", "--model", tiny_ckpt, "--classes", "1,2", "--per-class", 16, *FAST, "--shard-size", 4,
                "--out", out]  # fmt: skip
        started = time.perf_counter()
        assert generate(*args) == 1
        line = one_line(capsys.readouterr().err)
        record(f"full disk: exit 1 in {time.perf_counter() - started:.2f} s: {line}", capsys)
        assert "failed, not retried: DiskFull:" in line and "no space left on device (ENOSPC) writing " in line
        assert f"writing {out}/" in line
        assert not (out / "_SUCCESS").exists() and not (out / "_lease.json").exists()  # released by removal
        assert not [p for p in out.rglob(".*") if p.name != "._lease.json.lock"]  # no temporary file left
        # Committed means named by the index, whose last log may not fit either: whole shards or none.
        first = committed_ids(out)
        assert len(first) < 32 and first == sorted({s * 4 + k for s in {i // 4 for i in first} for k in range(4)})
        parts = sorted(p.name for p in (out / "metadata").glob("part-*.parquet"))
        record(f"after it: {len(first) // 4} shard(s) committed, metadata parts on disk {parts}", capsys)
        if first:
            assert verify_main(["--out", str(out), "--full"]) == 0  # every committed shard intact
            capsys.readouterr()

        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        started = time.perf_counter()
        assert generate(*args) == 0
        record(f"rerun with room: exit 0 in {time.perf_counter() - started:.2f} s", capsys)
        summary = json.loads((out / "_SUCCESS").read_text())
        assert summary["samples"] == 32 and summary["shards_skipped"] >= len(first) // 4
        assert committed_ids(out) == list(range(32))  # every sample exactly once
        assert verify_main(["--out", str(out), "--full"]) == 0
