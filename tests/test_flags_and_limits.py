"""Flags for another kind of model, sizes and sequence lengths the model cannot take, and a batch that runs
out of memory (issue 24, parts 3 to 5; docs/cli.md, "Flags and model kinds" and "Sizes and memory").

Every refusal: exit 2, one `error:` line, before any model loads; a new --out is not created and an
earlier output in --out is left as it was. An allocation failure during a shard: exit 1, one line,
the shard tried once, naming the batch size that failed and the one that fits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_job_local import snapshot

from dit_worker.backends.options import NATIVE_OPTIONS, OPTION_TEXT
from dit_worker.backends.settings import SamplingSettings
from dit_worker.driver.config import JobConfig
from dit_worker.driver.flags import EVERY_KIND, FLAGS, KINDS, SAMPLING
from jobs.generate import main

REPO = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--dtype", "float32"]
PROMPTS = ["--prompts", "PROMPTS", "--per-prompt", 1]


def run(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def sd3_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dit_worker.checkpoints.tiny_pipelines import save_sd3

    return save_sd3(tmp_path_factory.mktemp("sd3") / "sd3")


@pytest.fixture(scope="module")
def short_tokenizer_ckpt(pixart_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny PixArt-Σ with a T5 tokenizer whose model_max_length is 64."""
    path = Path(shutil.copytree(pixart_ckpt, tmp_path_factory.mktemp("short") / "pixart"))
    config = path / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 64}))
    return path


@pytest.fixture(scope="module")
def earlier(ddim_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output a finished job left in --out: every refused command below is pointed at it too."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    assert run("--local", "--model", ddim_ckpt, "--num-samples", 2, "--steps", 1, *CPU, "--out", out) == 0
    return out


# case -> (model fixture, arguments, text of the one error line, text it must not hold)
FLAG_CASES = {
    # Part 3: --classes next to --prompts for a text-to-image model used to be ignored (exit 0).
    "classes next to prompts": (
        "pixart_ckpt", [*PROMPTS, "--classes", "1"],
        "error: --classes is for class-conditional DiT models; {model} is a PixArtSigmaPipeline (text-to-image), "
        "which takes --prompts, --per-prompt, --cfg-scale", None,
    ),
    # Part 5: the preset is named as the preset, not by a flag it sets (--cfg-channels).
    "fid50k preset for PixArt": (
        "pixart_ckpt", ["--preset", "fid50k"],
        "error: --preset fid50k is for class-conditional DiT models; {model} is a PixArtSigmaPipeline",
        "--cfg-channels",
    ),
    "text encoder placement for DiT": (
        "tiny_ckpt", ["--classes", "1", "--per-class", 1, "--text-encoder", "cpu"],
        "--text-encoder is for text-to-image models; {model} is a DiTPipeline (class-conditional DiT), which takes "
        "--preset, --classes, --per-class, --vae, --cfg-scale, --cfg-channels, --guidance-interval, --eta, "
        "--score-embeddings; "
        "drop --text-encoder", None,
    ),
    "pipeline arguments for DiT": (
        "tiny_ckpt", ["--classes", "1", "--per-class", 1, "--pipeline-arg", "eta=0.5"],
        "--pipeline-arg is for text-to-image and unconditional models;", None,
    ),
    "vae for a diffusers pipeline": (
        "ddim_ckpt", ["--num-samples", 1, "--vae", "TINY_VAE"],
        "--vae is for class-conditional DiT models; {model} is a DDIMPipeline (unconditional)", None,
    ),
    "negative prompt for FLUX": (
        "flux_ckpt", [*PROMPTS, "--negative-prompt", "blur"],
        "--negative-prompt is for text-to-image models whose pipeline takes a negative prompt; {model} is a "
        "FluxPipeline", None,
    ),
    "LoRA for PixArt": (
        "pixart_ckpt", [*PROMPTS, "--lora", "some/adapter"],
        "--lora is for text-to-image and unconditional models whose pipeline takes LoRA adapters", None,
    ),
    "score for an unconditional model": (
        "ddim_ckpt", ["--num-samples", 1, "--score", "clip"],
        "--score clip scores each image against its prompt or class name, and {model} is a DDIMPipeline "
        "(unconditional), which has neither", None,
    ),
    "several flags at once": (
        "sd_ckpt", [*PROMPTS, "--cfg-channels", 4, "--max-sequence-length", 8, "--classes", "1"],
        "error: --classes and --cfg-channels are for class-conditional DiT models; --max-sequence-length is for "
        "text-to-image models whose pipeline takes a sequence length (PixArt, SD3, FLUX, Sana); {model} is a "
        "StableDiffusionPipeline (text-to-image)", None,
    ),
}  # fmt: skip

# Part 4: upper bounds, before loading.
LIMIT_CASES = {
    "width 100000 past PixArt's resolution bins": (
        "pixart_ckpt", [*PROMPTS, "--width", 100000],
        "--height/--width 256x100000: aspect ratio 0.00256 (height/width) is outside PixArtSigmaPipeline's "
        "resolution bins (0.25 to 4)", None,
    ),
    "width 100000 past SD3's position embeddings": (
        "sd3_ckpt", [*PROMPTS, "--width", 100000],
        "--width 100000: StableDiffusion3Pipeline's position embeddings reach 256 px", None,
    ),
    "width 100000 past FLUX's timestep shift": (
        "flux_ckpt", [*PROMPTS, "--width", 100000],
        "--height/--width 512x100000: 800000 latent tokens, and FluxPipeline's scheduler shifts", None,
    ),
    "a sample larger than this machine's memory": (
        "sd_ckpt", [*PROMPTS, "--height", 100000, "--width", 100000],
        "--height/--width 100000x100000: one sample needs about", None,
    ),
    "sequence length 100000 past FLUX's 512": (
        "flux_ckpt", [*PROMPTS, "--max-sequence-length", 100000],
        "--max-sequence-length 100000: at most 512 (FluxPipeline refuses more than that)", None,
    ),
    "sequence length past the tokenizer's": (
        "short_tokenizer_ckpt", [*PROMPTS, "--max-sequence-length", 100],
        "--max-sequence-length 100: at most 64 (tokenizer's model_max_length)", None,
    ),
    "sequence length whose attention outgrows memory": (
        "pixart_ckpt", [*PROMPTS, "--max-sequence-length", 1000000],
        "with --max-sequence-length 1000000: one sample needs about", None,
    ),
    "another size for DiT": (
        "tiny_ckpt", ["--classes", "1", "--per-class", 1, "--height", 32],
        "--height 32: DiTPipeline makes 16x16 images only", None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", [*FLAG_CASES, *LIMIT_CASES])
def test_refused_in_one_line_before_loading_and_nothing_written(
    case: str,
    request: pytest.FixtureRequest,
    earlier: Path,
    tiny_vae_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    fixture, given, message, absent = {**FLAG_CASES, **LIMIT_CASES}[case]
    model = request.getfixturevalue(fixture)
    (tmp_path / "prompts.txt").write_text("a red cat\n")
    args = [{"PROMPTS": tmp_path / "prompts.txt", "TINY_VAE": tiny_vae_dir}.get(a, a) for a in given]
    before = snapshot(earlier)
    for out in (tmp_path / "new", earlier):
        capsys.readouterr()
        # (--max-tries 1: were the refusal missing, the shard's failure would end the job at once)
        assert run("--local", "--model", model, *CPU, *args, "--max-tries", 1, "--out", out) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message.format(model=model) in lines[0], err
        assert absent is None or absent not in lines[0], lines[0]
        assert "Traceback" not in err and "Loading" not in err, err  # no component was loaded
    assert not (tmp_path / "new").exists()
    assert snapshot(earlier) == before


def test_every_flag_is_in_the_table_or_applies_to_every_kind() -> None:
    fields = (set(JobConfig.model_fields) - {"sampling"}) | set(SamplingSettings.model_fields)
    assert set(FLAGS) | set(EVERY_KIND) == fields and not set(FLAGS) & set(EVERY_KIND)
    assert set(SAMPLING) == set(FLAGS) & set(SamplingSettings.model_fields)


def test_docs_table_is_the_flag_table() -> None:
    """docs/cli.md's "Flags and model kinds" rows say what FLAGS says, kind by kind."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split("## Flags and model kinds", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for row in [line for line in section.splitlines() if line.startswith("| `--")]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        field = re.match(r"`--([a-z-]+)", cells[0]).group(1).replace("-", "_")
        documented[field] = tuple(cells[1:4])
    expected = {}
    for field, applies in FLAGS.items():
        cells = []
        for kind in KINDS:
            if kind not in applies.kinds:
                cells.append("")
            elif applies.option is None or (kind == "class" and applies.option in NATIVE_OPTIONS):
                cells.append("yes")
            else:
                cells.append(f"if its pipeline takes {OPTION_TEXT[applies.option]}")
        expected[field] = tuple(cells)
    assert documented == expected


# A real allocation failure: the job runs in a process whose address space is capped (RLIMIT_AS) a little
# above what it holds once its libraries are imported, so that a batch of 8 1024x1024 images cannot be
# decoded while smaller batches can.
CAPPED = """
import resource, sys
from pathlib import Path
import torch, diffusers, transformers
from diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel
from transformers import T5EncoderModel, T5Tokenizer
import dit_worker.backends.diffusers.run, jobs.generate
status = Path("/proc/self/status").read_text().splitlines()
used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
sys.exit(jobs.generate.main(sys.argv[2:]))
"""


def test_out_of_memory_fails_the_shard_once_naming_a_batch_size_that_fits(pixart_ckpt: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n")
    out = tmp_path / "out"
    args = ["--local", "--model", pixart_ckpt, "--prompts", prompts, "--per-prompt", 8, "--height", 1024, "--width",
            1024, "--pipeline-arg", "use_resolution_binning=false", "--max-sequence-length", 8, "--steps", 1, *CPU,
            "--batch-size", 8, "--max-tries", 3, "--retry-backoff", 0]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2"}
    capped = [sys.executable, "-c", CAPPED, "1000", *map(str, args)]
    proc = subprocess.run([*capped, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    found = re.search(r"out of memory on cpu at a batch of 8 \(--batch-size 8\): .*can't allocate memory.*; "
                      r"a batch of (\d) fits \(measured here\): rerun with --batch-size \1", lines[0])  # fmt: skip
    assert found and int(found.group(1)) in (1, 2, 4), lines[0]
    assert "shard 00000 failed, not retried" in lines[0]
    assert proc.stderr.count("shard 00000 failed on worker") == 1, proc.stderr[-3000:]  # one try of three
    assert not list((out / "metadata").glob("*.parquet")) and not list(out.rglob("*.png"))
    assert not (out / "_SUCCESS").exists()
