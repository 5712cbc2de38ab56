"""Reliability of one output, on local folders and SeaweedFS: the lease (one writer per output),
content fingerprints, verified resume and jobs.verify, non-finite samples, file modes, and the
one-line errors of every refused command. Real processes, real files, a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from safetensors.torch import load_file, save_file

from dit_worker.output.commit_index import committed_shards
from dit_worker.output.lease import LeaseLost, acquire, holds
from dit_worker.storage.objects import open_storage
from jobs.generate import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--dtype", "float32"]
JOB = ["--local", "--classes", "1,2,3", "--per-class", "2", *FAST, "--shard-size", "2"]


def generate(*args: object) -> int:
    return main([str(a) for a in args])


def last_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def rows_check(out: Path, expected: int) -> None:
    """Every manifest sample exactly once, each image matching its recorded sha256."""
    table = ds.dataset(out / "metadata", format="parquet").to_table()
    ids = table["sample_id"].to_pylist()
    assert sorted(ids) == list(range(expected)) and len(set(ids)) == expected
    for key, sha in zip(table["image_key"].to_pylist(), table["sha256"].to_pylist(), strict=True):
        assert hashlib.sha256((out / key).read_bytes()).hexdigest() == sha, key


def popen_job(out: Path, *extra: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.generate", *map(str, extra), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- one writer per output ---------------------------------------------------------------------


def slow_job(ckpt: Path) -> list[object]:
    """Many one-sample shards with 20 ddpm steps: seconds of work, committed shard by shard."""
    return ["--local", "--model", ckpt, "--classes", "1,2,3,4", "--per-class", "6", "--sampler", "ddpm",
            "--steps", "20", "--device", "cpu", "--shard-size", "1", "--batch-size", "1"]  # fmt: skip


def test_a_second_run_on_a_held_output_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = popen_job(out, *slow_job(tiny_ckpt))
    try:
        wait_for(lambda: (out / "_lease.json").exists(), 60, "the first run's lease")
        first.send_signal(signal.SIGSTOP)  # hold it mid-run (its lease lasts 120 s) while others try
        # The same job and a different one, while the first holds the output: both refused, one line,
        # exit 2, nothing written (the different one by the lease, or by job.json if the first wrote it).
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        for steps, refusal in (("20", "is being written by another run (pid"), ("5", "")):
            args = [str(a) for a in slow_job(tiny_ckpt)]
            args[args.index("--steps") + 1] = steps
            proc = subprocess.run([sys.executable, "-m", "jobs.generate", *args, "--out", str(out)], cwd=REPO,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert lines[-1].startswith("error: ") and refusal in lines[-1], lines
            assert "is being written by another run" in lines[-1] or "different configuration" in lines[-1]
            assert not [line for line in lines if "ready:" in line], lines  # refused before a worker loaded a model
            assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:] if first.stderr else ""
    finally:
        first.kill()
    rows_check(out, 24)
    lease = json.loads((out / "_lease.json").read_text())
    assert lease["expires_at_s"] == 0.0  # released at the end: the next run takes it at once
    assert generate(*slow_job(tiny_ckpt), "--out", out) == 0  # complete and intact: nothing to do


def test_a_killed_driver_lease_is_taken_over_after_it_expires(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    # 16 shards of 200 steps: the run outlasts the index's first logs (LOG_SECONDS), so it dies mid-run.
    job = [*slow_job(tiny_ckpt), "--per-class", "4", "--steps", "200", "--lease-ttl", "4"]
    proc = popen_job(out, *job)
    recorded = lambda: len(committed_shards(open_storage(str(out)))) if (out / "index").is_dir() else 0  # noqa: E731
    wait_for(lambda: recorded() >= 2, 120, "two shards recorded in the commit index")
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-run: no release, no _SUCCESS
    proc.wait(timeout=30)
    assert generate(*job, "--out", out) == 2
    line = last_line(capsys)
    assert "is being written by another run" in line and "lease expires" in line, line
    time.sleep(4.5)  # the dead driver's lease expires: the rerun takes it over and finishes the set
    assert generate(*job, "--out", out) == 0
    rows_check(out, 16)
    assert json.loads((out / "_SUCCESS").read_text())["shards_skipped"] >= 2


def test_concurrent_acquires_have_one_winner_and_commits_are_fenced(
    tmp_path: Path, s3_server, s3_bucket, monkeypatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for url in (str(tmp_path / "out"), f"s3://{s3_bucket}/fenced"):
        storage = open_storage(url, s3_endpoint=s3_server.endpoint)
        # A ttl of seconds, not fractions: on a loaded machine one S3 round trip can take half a second.
        mine = acquire(storage, ttl=3.0)
        with pytest.raises(ValueError, match="is being written by another run"):
            acquire(storage, ttl=3.0)
        time.sleep(3.2)  # expired: exactly one of two takers wins the compare-and-swap
        theirs = acquire(storage, ttl=30)
        assert holds(storage, theirs.token) and not holds(storage, mine.token)
        with pytest.raises(LeaseLost):
            mine.renew()  # the old holder learns it lost the lease, and its workers are fenced
        with pytest.raises(ValueError, match="is being written by another run"):
            acquire(storage, ttl=30)


# --- content fingerprints ----------------------------------------------------------------------


def copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_the_fingerprint_knows_weights_by_content(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path / "model")
    out = tmp_path / "out"
    assert generate(*JOB, "--model", ckpt, "--out", out) == 0
    job = json.loads((out / "job.json").read_text())
    assert set(job["weights"]["files"]) == {
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    # The same weights spelled differently resume (here: complete, nothing to do).
    assert generate(*JOB, "--model", f"{ckpt}/", "--out", out) == 0
    moved = copy_checkpoint(ckpt, tmp_path / "moved")
    (out / "_SUCCESS").unlink()
    assert generate(*JOB, "--model", moved, "--out", out) == 0
    # New weights at the same path: refused, naming both hashes.
    weights = ckpt / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    save_file(state, weights)
    (out / "_SUCCESS").unlink()
    assert generate(*JOB, "--model", ckpt, "--out", out) == 2
    line = last_line(capsys)
    assert "weights_sha256: " in line and job["fingerprint"]["weights_sha256"] in line, line
    # Settings that change pixels but were not fingerprinted before: --compile.
    assert generate(*JOB, "--model", moved, "--compile", "--out", out) == 2
    assert "compile: False there, True now" in last_line(capsys)


# --- verified resume ---------------------------------------------------------------------------


def test_resume_regenerates_shards_whose_images_are_gone_or_changed(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert generate(*JOB, "--model", tiny_ckpt, "--out", out) == 0
    good = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "images").rglob("*.png")}
    (out / "images" / "00000" / "00000001.png").unlink()  # deleted
    truncated = out / "images" / "00002" / "00000004.png"
    truncated.write_bytes(truncated.read_bytes()[:-10])  # size differs from the metadata
    # A plain rerun trusts the commit index (a resume costs O(pending), not a read of every shard) ...
    assert generate(*JOB, "--model", tiny_ckpt, "--out", out) == 0
    assert json.loads((out / "_SUCCESS").read_text())["shards_repaired"] == 0
    # ... and --verify checks every committed shard's objects, regenerating the broken ones.
    assert generate(*JOB, "--model", tiny_ckpt, "--verify", "--out", out) == 0
    summary = json.loads((out / "_SUCCESS").read_text())
    assert (summary["shards_repaired"], summary["shards_generated"], summary["samples_generated"]) == (2, 2, 4)
    assert {k: (out / k).read_bytes() for k in good} == good
    rows_check(out, 6)

    # Same size, other bytes: only the sha256 check sees it (--verify, or jobs.verify --full).
    flipped = out / "images" / "00001" / "00000002.png"
    data = bytearray(flipped.read_bytes())
    data[-20] ^= 0xFF
    flipped.write_bytes(bytes(data))
    from jobs.verify import main as verify

    assert verify(["--out", str(out)]) == 0
    capsys.readouterr()
    assert verify(["--out", str(out), "--full"]) == 1
    report = capsys.readouterr()
    assert "shard 00001: " in report.err and "sha256 differs" in report.err
    assert json.loads(report.out)["shards_broken"] == [1]
    assert verify(["--out", str(out), "--full", "--repair"]) == 0
    assert not (out / "metadata" / "part-00001.parquet").exists() and not (out / "_SUCCESS").exists()
    assert 1 not in committed_shards(open_storage(str(out)))
    assert generate(*JOB, "--model", tiny_ckpt, "--out", out) == 0
    assert flipped.read_bytes() == good["images/00001/00000002.png"]
    rows_check(out, 6)


def test_verify_and_resume_on_s3(tiny_ckpt: Path, s3_server, s3_bucket: str, capsys, monkeypatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_bucket}/set"
    assert generate(*JOB, "--model", tiny_ckpt, "--out", url) == 0
    client = s3_server.client()
    client.delete_object(Bucket=s3_bucket, Key="set/images/00001/00000003.png")
    from jobs.verify import main as verify

    assert verify(["--out", url]) == 1
    assert "shard 00001: " in capsys.readouterr().err
    assert generate(*JOB, "--model", tiny_ckpt, "--verify", "--out", url) == 0
    assert json.loads(client.get_object(Bucket=s3_bucket, Key="set/_SUCCESS")["Body"].read())["shards_repaired"] == 1
    assert verify(["--out", url, "--full"]) == 0


# --- non-finite samples ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_settings_are_refused(tiny_ckpt: Path, tmp_path: Path, capsys, value: str) -> None:
    out = tmp_path / "out"
    assert generate(*JOB, "--model", tiny_ckpt, f"--cfg-scale={value}", "--out", out) == 2
    line = last_line(capsys)
    assert line == f"error: --cfg-scale: Input should be a finite number (got {value})", line
    assert not out.exists()


def test_nan_weights_fail_the_shard_naming_the_samples(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path / "model")
    weights = ckpt / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096  # 4 KiB of the last tensors overwritten: float32 0xffffffff is NaN
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    start = time.monotonic()
    assert generate(*JOB, "--model", ckpt, "--out", out) == 1
    line = last_line(capsys)
    assert "failed, not retried" in line and "non-finite latents for sample(s) 0 (class 1, seed 0)" in line, line
    assert time.monotonic() - start < 60  # not retried with backoff: the same inputs fail the same way
    assert not list(out.glob("metadata/*.parquet"))
    assert not (out / "_SUCCESS").exists()


# --- file modes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_output_files_honour_the_umask(tiny_ckpt: Path, tmp_path: Path, umask: int, mode: int) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.generate", *map(str, JOB), "--model", str(tiny_ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(umask))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 6 and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


# --- one line for every refused command --------------------------------------------------------


def test_a_full_disk_at_the_first_write_is_one_line_and_leaves_no_folder(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"

    def no_room() -> None:  # writes fail as on a full disk (EFBIG instead of ENOSPC: the same path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (128, 128))  # tempfile's 4-byte probe fits, the lease does not

    env = os.environ | {"DIT_WORKER_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "jobs.generate", *map(str, JOB), "--model", str(tiny_ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=no_room)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith(f"error: {out}: cannot write"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_inputs_are_one_line(tiny_ckpt: Path, tmp_path: Path, capsys, s3_server, s3_bucket, monkeypatch) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("class_id,seed\n")
    contradicting = tmp_path / "wrong.csv"
    contradicting.write_text("class_id,class_name,seed\n207,golden retriever,1\n2,umbrella,2\n")
    out = tmp_path / "out"
    cases = {
        "text file as --model": (["--model", text], "not a checkpoint: expected an original DiT .pt"),
        "text file with --vae": (["--model", text, "--vae", tiny_ckpt], "not a checkpoint: expected an original"),
        "header-only CSV": (["--model", tiny_ckpt, "--manifest", header_only], "empty.csv: no rows"),
        "contradicting row": (["--model", tiny_ckpt, "--manifest", contradicting], "data row 2 has class_id 2"),
    }
    for name, (args, expected) in cases.items():
        sampling = [] if "--manifest" in args else ["--classes", "1", "--per-class", "1"]
        assert generate("--local", *FAST, *sampling, *args, "--out", out) == 2, name
        line = last_line(capsys)
        assert line.startswith("error: ") and expected in line, (name, line)
        assert not out.exists(), name

    # Readers of a set on S3 with wrong, missing or no credentials, a missing bucket; a file as --out.
    from jobs.export_npz import main as export_npz

    assert generate(*JOB, "--model", tiny_ckpt, "--out", out) == 0
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    reader_cases = {
        "missing bucket": ({}, "s3://no-such-bucket-x/set", "bucket 'no-such-bucket-x' does not exist"),
        "wrong secret": ({"AWS_SECRET_ACCESS_KEY": "wrong"}, f"s3://{s3_bucket}/set", "access denied"),
        "no credentials": ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, f"s3://{s3_bucket}/set",
                           "no AWS credentials found"),
        "a file as --out": ({}, str(text), "not a dit-worker output"),
    }  # fmt: skip
    for name, (env, url, expected) in reader_cases.items():
        with monkeypatch.context() as m:
            for key, value in env.items():
                if value is None:
                    m.delenv(key, raising=False)
                else:
                    m.setenv(key, value)
            m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
            m.setenv("AWS_EC2_METADATA_DISABLED", "true")
            assert export_npz(["--out", url, "--npz", str(tmp_path / "x.npz")]) == 2, name
            line = last_line(capsys)
            assert line.startswith("error: ") and expected in line, (name, line)


def test_the_fingerprint_moves_with_every_recorded_field(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Weights bytes, format, dtype and device kind each change the fingerprint; the same inputs do not."""
    import hashlib as _hashlib
    import shutil

    from dit_worker.driver.config import JobConfig
    from dit_worker.driver.model_info import inspect_model
    from dit_worker.driver.record import job_record
    from dit_worker.driver.rows import job_rows

    base = {"model": str(tiny_ckpt), "classes": ("1", "2"), "per_class": 2, "out": str(tmp_path / "o"),
            "device": "cpu", "dtype": "float32", "num_gpus_per_worker": 0, "num_workers": 1}  # fmt: skip

    def record(**change: object) -> dict:
        config = JobConfig.model_validate(base | change)
        info = inspect_model(config)
        return job_record(config, info, job_rows(config, info))

    ref = record()
    assert record()["fingerprint_sha256"] == ref["fingerprint_sha256"]  # deterministic
    cuda = {"device": "cuda", "num_gpus_per_worker": 1}  # a cluster's GPU workers: planned here, run there
    for change, field in (({"dtype": "bfloat16"}, "dtype"), (cuda, "device"),
                          ({"format": "webdataset"}, "format")):  # fmt: skip
        other = record(**change)
        assert other["fingerprint"][field] != ref["fingerprint"][field], field
        assert other["fingerprint_sha256"] != ref["fingerprint_sha256"], field
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ckpt, copy)
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's last value
    weights.write_bytes(bytes(data))
    moved = record(model=str(copy))
    assert moved["fingerprint"]["weights_sha256"] != ref["fingerprint"]["weights_sha256"]
    assert moved["weights"]["files"]["vae/diffusion_pytorch_model.safetensors"] == _hashlib.sha256(data).hexdigest()
    same = tmp_path / "same"
    shutil.copytree(tiny_ckpt, same)  # the same bytes elsewhere: the same fingerprint
    assert record(model=str(same))["fingerprint_sha256"] == ref["fingerprint_sha256"]
