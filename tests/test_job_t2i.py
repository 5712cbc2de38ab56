"""Text-to-image and unconditional models through the job: PixArt-Σ, Stable Diffusion and DDIM, tiny
random pipelines in the real diffusers layout, run with `ray job submit` (real Ray head, SeaweedFS)
and `--local`. Every image is compared with the diffusers pipeline called for that row alone
(docs/backends.md), and the same comparison against another prompt (or seed) must miss by far."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipelines import reference_images
from test_job_ray import (  # noqa: F401 - _no_leftover_workers: each Ray test starts with no earlier job's workers
    CPU_WORKERS,
    _no_leftover_workers,
    check_complete,
    committed,
    finish,
    generate,
    objects,
    success,
    wait_for,
)

from dit_worker.output.reader import OutputSet
from dit_worker.output.verify import uncommit
from dit_worker.storage.objects import open_storage
from jobs.generate import main

CPU = ["--device", "cpu", "--dtype", "float32"]
TOLERANCE = 1  # uint8 levels: the contract's 1/255
PIXART = ["--steps", "3", "--height", "32", "--width", "32", "--max-sequence-length", "16"]
PIXART_SETTINGS = {"steps": 3, "cfg_scale": 4.5, "height": 32, "width": 32, "max_sequence_length": 16}
ROWS = [
    {"sample_id": 10, "prompt": "a red cat at night", "seed": 5},
    {"sample_id": 11, "prompt": "a blue house over the sea", "seed": 5, "negative_prompt": "a green tree"},
    {"sample_id": 12, "prompt": "a red cat at night", "seed": 6},
    {"sample_id": 13, "prompt": "a watercolor painting of a yellow boat", "seed": 7},
    {"sample_id": 14, "prompt": "A Photo of a Dog &amp; a Bird", "seed": 8},  # caption cleaning at work
]


def run(*args: object) -> int:
    return main([str(a) for a in args])


def write_manifest(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        pq.write_table(pa.table(columns), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def images(url: str) -> dict[int, np.ndarray]:
    """sample_id -> uint8 image of a committed set (each checked against its metadata sha256)."""
    return {s.sample_id: s.image for s in OutputSet.open(url).iter_samples()}


def assert_matches(ours: dict[int, np.ndarray], rows: list[dict], reference: list[np.ndarray]) -> None:
    for row, ref in zip(rows, reference, strict=True):
        diff = np.abs(ours[row["sample_id"]].astype(np.int16) - np.round(ref * 255).astype(np.int16))
        assert diff.max() <= TOLERANCE, (row, int(diff.max()))


def assert_sensitive(ours: np.ndarray, wrong: np.ndarray) -> None:
    """The comparison can fail: against the image of another prompt (or seed) it misses by far."""
    diff = np.abs(ours.astype(np.float64) - np.round(wrong * 255))
    assert diff.mean() > 8 * TOLERANCE and diff.max() > 40 * TOLERANCE, (diff.mean(), diff.max())


def test_pixart_local_equals_the_pipeline_per_sample_for_every_text_encoder_placement(
    pixart_ckpt: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS)
    reference = reference_images(pixart_ckpt, ROWS, PIXART_SETTINGS)
    for placement, batch in (("device", 2), ("cpu", 3), ("shard-first", 2)):
        out = tmp_path / placement
        args = ["--local", "--model", pixart_ckpt, "--manifest", manifest, *PIXART, *CPU, "--shard-size", 3]
        assert run(*args, "--batch-size", batch, "--text-encoder", placement, "--out", out) == 0
        assert_matches(images(str(out)), ROWS, reference)
    ours = images(str(tmp_path / "device"))
    wrong = reference_images(pixart_ckpt, [{**ROWS[0], "prompt": ROWS[3]["prompt"]}], PIXART_SETTINGS)[0]
    assert_sensitive(ours[10], wrong)

    table = pq.read_table(tmp_path / "device" / "metadata").sort_by("sample_id")
    assert table["prompt"].to_pylist() == [r["prompt"] for r in ROWS]
    assert table["negative_prompt"].to_pylist() == [None, "a green tree", None, None, None]
    assert table["class_id"].null_count == table["class_name"].null_count == len(ROWS)
    assert set(table["height"].to_pylist()) == set(table["width"].to_pylist()) == {32}
    assert set(table["cfg_scale"].to_pylist()) == {4.5} and set(table["steps"].to_pylist()) == {3}
    assert set(table["sampler"].to_pylist()) == {"DPMSolverMultistepScheduler"}  # the checkpoint's own
    fingerprint = json.loads((tmp_path / "device" / "job.json").read_text())["fingerprint"]
    assert fingerprint["pipeline"] == "PixArtSigmaPipeline" and fingerprint["clean_caption"] is True
    assert (fingerprint["max_sequence_length"], fingerprint["image_size"]) == (16, [32, 32])


# (fixture, job arguments, rows as the reference pipeline is called, its settings, rows differing by prompt or seed)
CASES = {
    "pixart-sigma": (
        "pixart_ckpt",
        [*PIXART, "--prompts", "PROMPTS", "--per-prompt", 2, "--negative-prompt", "a green tree", "--sampler", "euler",
         "--seed", 3],
        [{"sample_id": i, "prompt": p, "negative_prompt": "a green tree", "seed": (i + 3 * 2654435761) % 2**32}
         for i, p in enumerate(["a red cat at night"] * 2 + ["a blue house over the sea"] * 2)],
        {**PIXART_SETTINGS, "sampler": "euler"},
        "prompt",
    ),
    "stable-diffusion": (
        "sd_ckpt",
        ["--steps", 3, "--manifest", "MANIFEST"],
        # Not in sample_id order: a shard is a range of manifest rows, and each image must still land
        # under its own row's id (the Ray run reads the manifest from an S3 prefix of two files).
        [{"sample_id": 6, "prompt": "a green tree near the river", "seed": 12},
         {"sample_id": 4, "prompt": "a red cat at night", "seed": 11},
         {"sample_id": 7, "prompt": "a red cat at night", "seed": 13},
         {"sample_id": 5, "prompt": "a blue house over the sea", "seed": 11, "negative_prompt": "a yellow bird"}],
        {"steps": 3, "cfg_scale": 7.5},
        "prompt",
    ),
    "flux": (
        "flux_ckpt",
        ["--steps", 3, "--cfg-scale", 6.0, "--height", 48, "--width", 64, "--max-sequence-length", 24,
         "--manifest", "MANIFEST"],
        [{"sample_id": 4, "prompt": "a red cat at night", "seed": 11},
         {"sample_id": 5, "prompt": "a blue house over the sea", "seed": 11},
         {"sample_id": 6, "prompt": "a green tree near the river", "seed": 12},
         {"sample_id": 7, "prompt": "a red cat at night", "seed": 13}],
        {"steps": 3, "cfg_scale": 6.0, "height": 48, "width": 64, "max_sequence_length": 24},
        "prompt",
    ),
    "ddim": (
        "ddim_ckpt",
        ["--num-samples", 5, "--sampler", "ddim", "--eta", 0.5, "--steps", 3],  # eta: per-sample noise every step
        [{"sample_id": i, "seed": i} for i in range(5)],
        {"steps": 3, "sampler": "ddim", "eta": 0.5},
        "seed",
    ),
}  # fmt: skip


# The Ray transport is the same for every family: here it runs for the manifest read from S3 by the
# workers (Stable Diffusion), and the prompts-file source goes through Ray in the killed-worker test
# below (PixArt); PixArt, FLUX (manifest) and DDIM (derived rows) run locally here, the same worker code
# (docs/backends.md), each image still against its pipeline alone.
ON_RAY = ("stable-diffusion",)


@pytest.mark.parametrize("case", list(CASES))
def test_ray_submit_and_local_equal_the_pipeline_per_sample(
    case: str, request: pytest.FixtureRequest, ray_cluster, s3_server, s3_bucket: str, tmp_path: Path, monkeypatch
) -> None:
    fixture, args, rows, settings, varied = CASES[case]
    model = request.getfixturevalue(fixture)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat at night\na blue house over the sea\n")
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    args = [{"PROMPTS": prompts, "MANIFEST": manifest}.get(a, a) for a in args]
    if case in ON_RAY:
        on_s3 = f"s3://{s3_bucket}/manifests/{case}"  # two files under one prefix, read by the workers themselves
        for k, part in enumerate([rows[:3], rows[3:]]):
            data = write_manifest(tmp_path / f"part-{k}.parquet", part).read_bytes()
            s3_server.client().put_object(Bucket=s3_bucket, Key=f"manifests/{case}/part-{k}.parquet", Body=data)
        _, proc = generate(
            ray_cluster, s3_server, "--model", model, *[on_s3 if a == manifest else a for a in args], *CPU_WORKERS,
            "--num-workers", 2, "--shard-size", 2, "--batch-size", 2, "--out", f"s3://{s3_bucket}/ray",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        check_complete(s3_server, s3_bucket, "ray", len(rows))
    local = tmp_path / "local"
    assert run("--local", "--model", model, *args, *CPU, "--shard-size", 3, "--batch-size", 3, "--out", local) == 0

    reference = reference_images(model, rows, settings)
    ours = images(str(local))
    assert_matches(ours, rows, reference)
    if case in ON_RAY:
        for key, value in s3_server.env().items():
            monkeypatch.setenv(key, value)
        ours = images(f"s3://{s3_bucket}/ray")
        assert_matches(ours, rows, reference)
    if varied == "prompt":  # the first row's seed with another row's prompt
        other = {**rows[0], "prompt": next(r["prompt"] for r in rows if r["prompt"] != rows[0]["prompt"])}
    else:
        other = {**rows[0], "seed": rows[0]["seed"] + 1000}
    assert_sensitive(ours[rows[0]["sample_id"]], reference_images(model, [other], settings)[0])


SLOW_T2I = ["--per-prompt", 4, "--steps", 40, "--height", 32, "--width", 32, "--max-sequence-length", 16,
            "--shard-size", 4, "--batch-size", 4]  # fmt: skip


def test_text_to_image_job_survives_a_killed_worker_resumes_and_refuses_a_changed_config(
    ray_cluster, s3_server, s3_bucket: str, pixart_ckpt: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    prompts = tmp_path / "prompts.txt"
    words = ["red", "blue", "green", "yellow"]
    prompts.write_text("".join(f"a {c} {t} at night\n" for c in words for t in ("cat", "dog")))  # 8 shards of 4
    out = f"s3://{s3_bucket}/kill"
    args = ["--model", pixart_ckpt, "--prompts", prompts, *SLOW_T2I]
    sid, _ = generate(ray_cluster, s3_server, *args, *CPU_WORKERS, "--num-workers", 2, "--out", out, wait=False)
    wait_for(lambda: len(committed(s3_server, s3_bucket, "kill")) >= 1, 180, "a first committed shard")
    busy = wait_for(lambda: ray_cluster.running_task_pids("ShardWorker.run"), 60, "a worker running a shard")
    assert len(committed(s3_server, s3_bucket, "kill")) < 6  # mid-run: shards still queued
    os.kill(busy[0], signal.SIGKILL)
    assert finish(ray_cluster, sid) == "SUCCEEDED", ray_cluster.job_logs(sid)[-3000:]
    table = check_complete(s3_server, s3_bucket, "kill", 32)
    summary = success(s3_server, s3_bucket, "kill")
    assert summary["retries"] >= 1 and summary["shards_generated"] == 8, summary
    assert "died" in ray_cluster.job_logs(sid)  # the pool names the lost worker
    assert table["prompt"].to_pylist()[:5] == ["a red cat at night"] * 4 + ["a red dog at night"]

    # A shard whose worker died before its commit, rerun here with --local: only it is made again.
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uncommit(open_storage(f"s3://{s3_bucket}/kill", s3_endpoint=s3_server.endpoint), [5])  # not recorded
    before = {k: v for k, v in objects(s3_server, s3_bucket, "kill").items() if "00005" not in k}
    assert run("--local", *args, *CPU, "--out", out) == 0, capsys.readouterr().err[-2000:]
    summary = success(s3_server, s3_bucket, "kill")
    assert (summary["shards_generated"], summary["shards_skipped"]) == (1, 7)
    after = objects(s3_server, s3_bucket, "kill")
    control = ("_SUCCESS", "_lease.json", "index/committed.bits")  # rewritten by every run; the images and
    # parts must not be
    assert {k: after[k] for k in before if k not in control} == {k: v for k, v in before.items() if k not in control}
    check_complete(s3_server, s3_bucket, "kill", 32)

    capsys.readouterr()
    changed = [a if a != 40 else 41 for a in args]
    assert run("--local", *changed, *CPU, "--out", out, "--negative-prompt", "a tree", "--cfg-scale", 5) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "steps: 40 there, 41 now" in err, err
    assert "negative_prompt: None there, 'a tree' now" in err and "cfg_scale: 4.5 there, 5.0 now" in err
    assert objects(s3_server, s3_bucket, "kill") == after  # nothing written


@pytest.fixture
def bad_model(tmp_path: Path, ddim_ckpt: Path) -> Path:
    """A pipeline directory whose class diffusers does not have."""
    import shutil

    path = Path(shutil.copytree(ddim_ckpt, tmp_path / "my-own"))
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": "MyOwnPipeline"}))
    return path


BAD = {
    "prompt for a class model": ("tiny_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1],
                                 "--prompts and --per-prompt are for text-to-image models; "),
    "class manifest for a text model": ("pixart_ckpt", ["--manifest", {"class_id": [1], "seed": [0]}],
                                        "column(s) class_id are for a class-conditional model"),
    "classes for a text model": ("pixart_ckpt", ["--classes", "1", "--per-class", 1],
                                 "--classes and --per-class are for class-conditional DiT models"),
    "prompt manifest for a class model": ("tiny_ckpt", ["--manifest", {"prompt": ["a cat"], "seed": [0]}],
                                          "column(s) prompt are for a text-to-image model"),
    "empty prompt": ("pixart_ckpt", ["--manifest", {"prompt": ["a red cat", "  "], "seed": [0, 1]}],
                     "row 2 (sample_id 1) has an empty prompt"),
    "over-long prompt": ("pixart_ckpt", ["--manifest", {"prompt": ["a red cat", " ".join(["a red cat"] * 9)],
                                                        "seed": [0, 1]}, "--max-sequence-length", 16],
                         "sample_id 1: prompt 'a red cat a red cat"),
    "blank prompt line": ("pixart_ckpt", ["--prompts", "BLANK", "--per-prompt", 1], "line 2 is empty"),
    "count for a text model": ("pixart_ckpt", ["--num-samples", 1], "--num-samples is for unconditional models"),
    "bad height": ("pixart_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1, "--height", 40],
                   "--height 40 is not a multiple of 16"),
    "unknown sampler": ("pixart_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1, "--sampler", "heun"],
                        "--sampler: Input should be 'ddpm', 'ddim', 'dpm-solver' or 'euler'"),
    "euler on DiT": ("tiny_ckpt", ["--classes", "1", "--per-class", 1, "--sampler", "euler"],
                     "sampler 'euler' is for diffusers pipelines"),
    "euler on DDIMPipeline": ("ddim_ckpt", ["--num-samples", 2, "--sampler", "euler"],
                              "--sampler euler: DDIMPipeline can run ddim"),
    "guidance for an unconditional model": ("ddim_ckpt", ["--num-samples", 2, "--cfg-scale", 2],
                                            "--cfg-scale is for class-conditional DiT and text-to-image"),
    "size of an unconditional model": ("ddim_ckpt", ["--num-samples", 2, "--height", 32],
                                       "makes 16x16 images only"),
    "negative prompt without guidance": ("sd_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1, "--cfg-scale", 1,
                                                     "--negative-prompt", "blur"], "has no effect without guidance"),
    "cfg channels for PixArt": ("pixart_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1, "--cfg-channels", 4],
                                "--cfg-channels is for class-conditional DiT models"),
    "sequence length for SD": ("sd_ckpt", ["--prompts", "PROMPTS", "--per-prompt", 1, "--max-sequence-length", 8],
                               "--max-sequence-length is for text-to-image models whose"),
    "unsupported pipeline": ("bad_model", ["--num-samples", 1],
                             "pipeline class 'MyOwnPipeline' is not a diffusers pipeline; supported: DiTPipeline, "
                             "PixArtSigmaPipeline, PixArtAlphaPipeline, StableDiffusionPipeline, "
                             "StableDiffusion3Pipeline, FluxPipeline, SanaPipeline, StableDiffusionXLPipeline, "
                             "DDIMPipeline, DDPMPipeline, and any other diffusers pipeline class"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_text_to_image_input_is_refused_before_anything_is_written(
    case: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fixture, given, message = BAD[case]
    (tmp_path / "prompts.txt").write_text("a red cat\n")
    (tmp_path / "blank.txt").write_text("a red cat\n\na blue dog\n")
    args = []
    for a in given:
        if isinstance(a, dict):
            rows = [dict(zip(a, v, strict=True)) for v in zip(*a.values(), strict=True)]
            a = write_manifest(tmp_path / "m.parquet", rows)
        args.append({"PROMPTS": tmp_path / "prompts.txt", "BLANK": tmp_path / "blank.txt"}.get(a, a))
    out = tmp_path / "out"
    assert run("--local", "--model", request.getfixturevalue(fixture), *CPU, "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


def test_metrics_export_and_fid_work_on_a_set_without_classes(ddim_ckpt: Path, tmp_path: Path, capsys) -> None:
    """--metrics on an unconditional job, jobs.fid reusing its features, jobs.export_npz (no arr_1)."""
    from inception_weights import random_inception_weights
    from output_sets import png_bytes

    from jobs.export_npz import main as export_main
    from jobs.fid import main as fid_main

    out = tmp_path / "out"
    args = ["--local", "--model", ddim_ckpt, "--num-samples", 12, "--steps", 2, *CPU, "--shard-size", 5, "--out", out]
    first = reference_images(ddim_ckpt, [{"seed": 0}, {"seed": 1}], {"steps": 2})
    weights = random_inception_weights(tmp_path / "inception.pth", np.round(np.stack(first) * 255).astype(np.uint8))
    assert run(*args, "--metrics", "--inception-weights", weights) == 0
    assert sorted(p.name for p in (out / "features").iterdir()) == [f"part-{i:05d}.npz" for i in range(3)]

    npz = tmp_path / "samples.npz"
    assert export_main(["--out", str(out), "--npz", str(npz)]) == 0
    with np.load(npz) as data:
        assert sorted(data.files) == ["arr_0"]  # no class ids to export
        arr = data["arr_0"]
    assert arr.shape == (12, 16, 16, 3)
    assert np.array_equal(arr[1], images(str(out))[1])

    ref = tmp_path / "ref"
    ref.mkdir()
    for i, image in enumerate(arr[::-1]):
        (ref / f"{i:03d}.png").write_bytes(png_bytes(np.ascontiguousarray(image)))
    fid = ["--out", str(out), "--ref", str(ref), "--inception-weights", str(weights), "--local"]
    assert fid_main(fid) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["fid"] == pytest.approx(0.0, abs=1e-3)  # the same 12 images
    capsys.readouterr()
    assert fid_main([*fid, "--per-class"]) == 2
    assert "--per-class needs class ids" in capsys.readouterr().err


def test_benchmark_measures_a_diffusers_pipeline(pixart_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    from jobs.benchmark import main as bench_main

    argv = ["--model", str(pixart_ckpt), *CPU, "--steps", "3", "--height", "32", "--width", "32",
            "--max-sequence-length", "16", "--batch-sizes", "2", "--repeats", "1", "--warmup", "0",
            "--text-encoder", "shard-first"]  # fmt: skip
    assert bench_main(argv) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert (line["impl"], line["pipeline"], line["batch_size"], line["steps"]) == (
        "diffusers",
        "PixArtSigmaPipeline",
        2,
        3,
    )
    # s/step is a slope between two timings: None where this machine's noise hides it, never negative.
    assert line["images_per_s"] > 0 and line["peak_rss_mib"] > 0
    assert line["s_per_step"] is None or line["s_per_step"] > 0
    assert line["sampler"] == "DPMSolverMultistepScheduler" and line["text_encoder"] == "shard-first"
