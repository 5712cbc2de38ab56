"""Where a diffusers pipeline's weights come from and wait: --revision (a hub id's branch, tag or commit,
read from a huggingface_hub cache laid out as the hub client writes it, offline), --variant (a weights
variant such as fp16) and --offload (diffusers' CPU offload). Each is held to the pipeline loaded the
same way by diffusers itself, next to the same comparison with the other weights, which must miss by far.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_job_t2i import assert_matches, assert_sensitive, images, write_manifest

from dit_worker.checkpoints.tiny_pipelines import save_stable_diffusion
from jobs.generate import main

CPU = ["--device", "cpu", "--dtype", "float32"]
ROWS = [
    {"sample_id": 0, "prompt": "a red cat at night", "seed": 5},
    {"sample_id": 1, "prompt": "a blue house over the sea", "seed": 6},
    {"sample_id": 2, "prompt": "a yellow boat near the river", "seed": 7},
]
FLAGS = ["--steps", 3, "--cfg-scale", 6.0]
CALL = {"num_inference_steps": 3, "guidance_scale": 6.0}


def run(*args: object) -> int:
    return main([str(a) for a in args])


def per_row(pipe, rows: list[dict]) -> list[np.ndarray]:
    """The contract's oracle: the pipeline called for each row alone with its own CPU generator."""
    pipe.set_progress_bar_config(disable=True)
    return [
        pipe(
            prompt=r["prompt"], generator=torch.Generator("cpu").manual_seed(r["seed"]), output_type="np", **CALL
        ).images[0]
        for r in rows
    ]


def sd_pipe(path: Path, **kwargs):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, **kwargs)


# --- --revision ------------------------------------------------------------------------------------

REPO = "acme/tiny-sd"
COMMITS = {"main": "1" * 40, "v2": "2" * 40}  # each a snapshot of different weights (seeds 0 and 1)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """huggingface_hub's cache layout: models--org--name/snapshots/<commit>/ and refs/<branch or tag>."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--acme--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    for seed, (ref, commit) in enumerate(COMMITS.items()):
        save_stable_diffusion(repo / "snapshots" / commit, seed=seed)
        (repo / "refs" / ref).write_text(commit)
    return cache


def snapshot(cache: Path, ref: str) -> Path:
    return cache / "models--acme--tiny-sd" / "snapshots" / COMMITS[ref]


def generate_offline(cache: Path, tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    """jobs.generate in a process of its own: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE on import."""
    env = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "DIT_WORKER_CACHE": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "jobs.generate", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_revision_picks_the_hub_commit_the_workers_load_and_the_fingerprint_knows(
    hub_cache: Path, tmp_path: Path
) -> None:
    from dit_worker.checkpoints.identity import checkpoint_identity

    manifest = write_manifest(tmp_path / "m.jsonl", ROWS)
    args = ["--local", "--model", REPO, "--manifest", manifest, *FLAGS, *CPU, "--batch-size", 2]
    outs = {}
    for ref in ("v2", "main"):
        outs[ref] = tmp_path / ref
        done = generate_offline(hub_cache, tmp_path, *args, "--revision", ref, "--out", outs[ref])
        assert done.returncode == 0, done.stderr[-3000:]
    # Each run's images are its revision's pipeline, per row; the other revision's weights miss by far.
    expected = {ref: per_row(sd_pipe(snapshot(hub_cache, ref)), ROWS) for ref in COMMITS}
    ours = {ref: images(str(out)) for ref, out in outs.items()}
    assert_matches(ours["v2"], ROWS, expected["v2"])
    assert_matches(ours["main"], ROWS, expected["main"])
    assert_sensitive(ours["v2"][0], expected["main"][0])
    # The fingerprint holds the commit the revision resolved to, and the weights of that snapshot.
    records = {ref: json.loads((out / "job.json").read_text()) for ref, out in outs.items()}
    for ref, record in records.items():
        fp = record["fingerprint"]
        assert fp["revision"] == COMMITS[ref] and record["config"]["revision"] == ref
        assert fp["weights_sha256"] == checkpoint_identity(str(snapshot(hub_cache, ref))).sha256, ref
        assert record["weights"]["revision"] == COMMITS[ref]
    assert records["v2"]["fingerprint_sha256"] != records["main"]["fingerprint_sha256"]
    # Resuming v2's output with another revision is refused, naming what differs; nothing is added.
    before = sorted(p.relative_to(outs["v2"]) for p in outs["v2"].rglob("*"))
    done = generate_offline(hub_cache, tmp_path, *args, "--revision", "main", "--out", outs["v2"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "different configuration" in done.stderr and "revision: '2222" in done.stderr, done.stderr[-3000:]
    assert sorted(p.relative_to(outs["v2"]) for p in outs["v2"].rglob("*")) == before


def test_an_unknown_revision_is_one_line_before_anything_is_written(hub_cache: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS[:1])
    out = tmp_path / "out"
    args = ["--local", "--model", REPO, "--manifest", manifest, *FLAGS, *CPU, "--out", out]
    done = generate_offline(hub_cache, tmp_path, *args, "--revision", "v9")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"model '{REPO}' at revision 'v9': not a local path, and fetching it from the Hugging Face hub" in errors[0]
    assert not out.exists()


def test_settings_hold_the_commit_their_snapshot_was_read_at(hub_cache: Path) -> None:
    """A revision resolves to the commit of the snapshot the spec was read from, and only if that snapshot
    is the revision's (its refs/ file, written by huggingface_hub, or the commit itself)."""
    from dit_worker.backends import GenerationRequest
    from dit_worker.backends.diffusers.resolve import inspect_diffusers

    def spec(ref: str):
        root = snapshot(hub_cache, ref)
        return inspect_diffusers(root, json.loads((root / "model_index.json").read_text()))

    assert spec("v2").resolve(GenerationRequest(revision="v2")).revision == COMMITS["v2"]
    assert spec("v2").resolve(GenerationRequest(revision=COMMITS["v2"])).revision == COMMITS["v2"]
    assert spec("v2").resolve(GenerationRequest()).revision is None
    with pytest.raises(ValueError, match=f"--revision v2: the model was read at commit {COMMITS['main']}, not at v2"):
        spec("main").resolve(GenerationRequest(revision="v2"))


def test_revision_of_a_local_or_s3_model_is_refused_at_the_edge(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS[:1])
    local = tmp_path / "model"
    local.mkdir()  # never read: the refusal comes before any model work
    for model, what in ((local, "is a local path"), ("s3://bucket/models/sd", "is an s3:// prefix")):
        capsys.readouterr()
        out = tmp_path / "out"
        assert run("--local", "--model", model, "--revision", "v2", "--manifest", manifest, "--out", out, *CPU) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --revision v2: a revision is a branch, tag or commit")
        assert f"--model {model} {what}; drop --revision" in err, err
        assert not out.exists()


# --- --variant -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion directory with its plain weights (seed 0) and an fp16 variant of other weights
    (seed 1, saved in float16 by save_pretrained(variant="fp16"), as hub repositories ship them)."""
    root = tmp_path_factory.mktemp("variant")
    model = save_stable_diffusion(root / "sd", seed=0)
    other = sd_pipe(save_stable_diffusion(root / "other", seed=1))
    other.to(torch.float16).save_pretrained(root / "fp16", variant="fp16", safe_serialization=True)
    for path in (root / "fp16").rglob("*.fp16.safetensors"):
        shutil.copy(path, model / path.relative_to(root / "fp16"))
    return model


def test_variant_loads_the_variants_weights(with_variant: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert sorted(p.name for p in (with_variant / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"
    ]  # fmt: skip
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS)
    args = ["--local", "--model", with_variant, "--manifest", manifest, *FLAGS, *CPU, "--batch-size", 2]
    out = tmp_path / "fp16"
    assert run(*args, "--variant", "fp16", "--out", out) == 0
    ours = images(str(out))
    assert_matches(ours, ROWS, per_row(sd_pipe(with_variant, variant="fp16", torch_dtype=torch.float32), ROWS))
    assert_sensitive(ours[0], per_row(sd_pipe(with_variant), ROWS[:1])[0])  # the plain weights: far
    assert json.loads((out / "job.json").read_text())["fingerprint"]["variant"] == "fp16"

    capsys.readouterr()
    bad = tmp_path / "bf16"
    assert run(*args, "--variant", "bf16", "--out", bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--variant bf16: {with_variant} has no bf16 weights" in err, err
    assert "its variants: fp16; drop --variant or name one of them" in err and not bad.exists()


def test_hub_downloads_fetch_the_weights_each_component_loads() -> None:
    """The allow patterns of a hub download, from a repository's file list: every text encoder and
    tokenizer (SD3 has three), shards and their index, and a variant's files where a folder has them."""
    from fnmatch import fnmatch

    from dit_worker.checkpoints.sources import CONFIG_PATTERNS, weight_patterns

    files = [
        "model_index.json", "scheduler/scheduler_config.json", "README.md", "sd3_medium.safetensors",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.fp16.safetensors", "transformer/diffusion_pytorch_model.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
        "text_encoder_3/config.json", "text_encoder_3/model-00001-of-00002.safetensors",
        "text_encoder_3/model-00002-of-00002.safetensors", "text_encoder_3/model.safetensors.index.json",
        "text_encoder_3/model.fp16-00001-of-00001.safetensors", "text_encoder_3/model.safetensors.index.fp16.json",
        "tokenizer/vocab.json", "tokenizer_2/vocab.json", "tokenizer_3/spiece.model",
    ]  # fmt: skip

    def fetched(variant: str | None) -> list[str]:
        patterns = CONFIG_PATTERNS + weight_patterns(files, variant)
        return sorted(f for f in files if any(fnmatch(f, p) for p in patterns))

    configs = [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder_2/config.json",
        "text_encoder_3/config.json", "tokenizer/vocab.json", "tokenizer_2/vocab.json", "tokenizer_3/spiece.model",
        "transformer/config.json", "vae/config.json",
    ]  # fmt: skip
    assert fetched(None) == sorted([
        *configs, "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
        "text_encoder_3/model-00001-of-00002.safetensors", "text_encoder_3/model-00002-of-00002.safetensors",
        "text_encoder_3/model.safetensors.index.json",
    ])  # fmt: skip
    assert fetched("fp16") == sorted([
        *configs, "transformer/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.fp16.safetensors", "text_encoder_2/model.safetensors",
        "text_encoder_3/model.fp16-00001-of-00001.safetensors", "text_encoder_3/model.safetensors.index.fp16.json",
    ])  # fmt: skip


# --- --offload -------------------------------------------------------------------------------------


def test_offload_is_refused_on_cpu_workers_and_with_compile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS[:1])
    model = tmp_path / "model"
    model.mkdir()  # never read: refused at the edge
    out = tmp_path / "out"
    cases = [
        (["--local", *CPU, "--offload", "model"], "error: --offload model: offloading keeps weights in host memory "
         "and moves them to the GPU as they are used, and the workers run on cpu; use --device cuda"),
        (["--num-gpus-per-worker", 0, "--num-workers", 1, "--offload", "sequential"],
         "error: --offload sequential: offloading keeps weights in host memory"),
        (["--device", "cuda", "--offload", "model", "--compile"], "error: --offload model with --compile"),
        (["--device", "cuda", "--offload", "disk"], "error: --offload: Input should be 'model' or 'sequential'"),
    ]  # fmt: skip
    for flags, expected in cases:
        capsys.readouterr()
        assert run("--model", model, "--manifest", manifest, "--out", out, *flags) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(expected), (flags, err)
        assert not out.exists()


def test_offload_is_recorded_and_left_out_of_the_fingerprint(sd_ckpt: Path, tmp_path: Path) -> None:
    """Planned for a cluster's GPU workers (planning reads configs only): job.json records --offload in
    its config, and the fingerprint is that of the same job without it."""
    from dit_worker.driver.config import JobConfig
    from dit_worker.driver.model_info import inspect_model
    from dit_worker.driver.record import job_record
    from dit_worker.driver.rows import job_rows

    manifest = write_manifest(tmp_path / "m.jsonl", ROWS)
    base = {"model": str(sd_ckpt), "manifest": manifest, "out": str(tmp_path / "o"), "device": "cuda",
            "num_gpus_per_worker": 1, "sampling": {"steps": 3}}  # fmt: skip

    def record(**change: object) -> dict:
        config = JobConfig.model_validate(base | change)
        info = inspect_model(config)
        return job_record(config, info, job_rows(config, info))

    plain = record(compile=False)
    for mode in ("model", "sequential"):
        offloaded = record(offload=mode)  # --compile defaults to off with --offload
        assert offloaded["config"]["offload"] == mode and "offload" not in offloaded["fingerprint"]
        assert offloaded["fingerprint_sha256"] == plain["fingerprint_sha256"], mode
    # The same comparison can fail: a setting that does change pixels moves the fingerprint.
    assert record(compile=False, negative_prompt="blurry")["fingerprint_sha256"] != plain["fingerprint_sha256"]
    assert record()["fingerprint"]["compile"] is True  # without --offload, CUDA workers compile


def test_model_offload_runs_through_diffusers_hooks_and_keeps_every_pixel(sd_ckpt: Path) -> None:
    """diffusers' enable_model_cpu_offload with the CPU as its execution device: the hooks, the encoders kept
    in the pipeline under them (--text-encoder device) and the per-call re-hooking run here; the
    host-to-GPU copies do not (no GPU). enable_sequential_cpu_offload cannot run on a CPU device
    (accelerate fails moving its weights back to meta), so it is not exercised."""
    from dit_worker.backends import GenerationRequest, Rows, inspect_model, load_generator
    from dit_worker.backends.settings import SamplingSettings

    spec = inspect_model(str(sd_ckpt), None)
    rows = Rows(seeds=[r["seed"] for r in ROWS], prompts=[r["prompt"] for r in ROWS])
    sampling = SamplingSettings(steps=3, cfg_scale=6.0)
    made = {}
    for offload in (None, "model"):
        for placement in ("device", "cpu"):
            settings = spec.resolve(GenerationRequest(sampling=sampling, offload=offload))
            assert settings.offload == offload and "offload" not in settings.model_dump()
            gen = load_generator(str(sd_ckpt), None, "cpu", "float32", settings, placement)
            for _ in range(2 if offload else 1):  # as loaded, and after a call (which re-arms the hooks)
                if offload:
                    assert gen.pipe.unet._hf_hook is not None and gen.pipe.vae._hf_hook is not None
                    encoder = gen.pipe.text_encoder  # kept in the pipeline, offloaded in its chain, on "device" only
                    hooked = encoder is not None and encoder._hf_hook is not None
                    assert hooked == (placement == "device"), placement
                made.setdefault((offload, placement), []).append(gen.generate(rows).numpy())
    plain = made[None, "device"][0]
    for key, runs in made.items():
        assert all(np.array_equal(run, plain) for run in runs), key
    # The same comparison can fail: another prompt's row differs by far.
    assert_sensitive(plain[0], plain[1].astype(np.float64) / 255)


def test_a_dit_checkpoint_refuses_the_diffusers_options(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The native path reads none of them: each is refused in one line, nothing written."""
    base = ["--local", "--model", tiny_ckpt, "--classes", "1", "--per-class", 1, *CPU, "--steps", 2]
    for flags in (["--variant", "fp16"], ["--pipeline-arg", "x=1"], ["--component-dtype", "vae=float16"]):
        capsys.readouterr()
        out = tmp_path / "out"
        assert run(*base, *flags, "--out", out) == 2, flags
        err = capsys.readouterr().err
        # The flag table refuses it first (driver/flags.py); the native backend would too (Python API).
        assert err.count("\n") == 1 and f"{flags[0]} is for text-to-image and unconditional models" in err, err
        assert not out.exists()
