"""SD3, FLUX, SDXL and Sana through `jobs.generate --local`, each image against the family's diffusers
pipeline called for that row alone (docs/backends.md), with non-default guidance and size; the
generic path and its batch check (SD + PAG passes, CogView4 is refused and runs at --batch-size 1);
pipeline options (--pipeline-arg, --lora, --component-dtype); a model that overflows; prompt limits.
Every parity assertion sits next to the same comparison with a wrong input, which must miss by far."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from family_pipelines import save_cogview4, save_sd_pag
from test_job_t2i import assert_matches, assert_sensitive, images, write_manifest

from dit_worker.checkpoints.tiny_pipelines import save_flux, save_sana, save_sd3, save_sdxl, save_stable_diffusion
from jobs.generate import main

CPU = ["--device", "cpu", "--dtype", "float32"]
TOLERANCE = 1  # uint8 levels: the contract's 1/255
ROWS = [
    {"sample_id": 0, "prompt": "a red cat at night", "seed": 5},
    {"sample_id": 1, "prompt": "a blue house over the sea", "seed": 5, "negative_prompt": "a green tree"},
    {"sample_id": 2, "prompt": "a red cat at night", "seed": 6},
    {"sample_id": 3, "prompt": "a watercolor painting of a yellow boat near the river", "seed": 7},
]
NO_NEGATIVE = [{k: v for k, v in r.items() if k != "negative_prompt"} for r in ROWS]
# family -> (builder, job flags, reference call keywords, rows, another guidance scale)
FAMILIES = {
    "sd3": (save_sd3, ["--steps", 3, "--cfg-scale", 5.0, "--height", 48, "--width", 64, "--max-sequence-length", 24],
            {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 48, "width": 64, "max_sequence_length": 24},
            ROWS, 1.5),
    "flux": (save_flux, ["--steps", 3, "--cfg-scale", 6.0, "--height", 48, "--width", 64, "--max-sequence-length", 24],
             {"num_inference_steps": 3, "guidance_scale": 6.0, "height": 48, "width": 64, "max_sequence_length": 24},
             NO_NEGATIVE, 1.0),
    "sdxl": (save_sdxl, ["--steps", 3, "--cfg-scale", 6.5, "--height", 24, "--width", 32],
             {"num_inference_steps": 3, "guidance_scale": 6.5, "height": 24, "width": 32}, ROWS, 1.5),
    "sana": (save_sana, ["--steps", 3, "--cfg-scale", 3.0, "--height", 64, "--width", 32, "--max-sequence-length", 20],
             {"num_inference_steps": 3, "guidance_scale": 3.0, "height": 64, "width": 32, "max_sequence_length": 20},
             ROWS, 1.5),
}  # fmt: skip


def run(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: builder(root / name) for name, (builder, *_) in FAMILIES.items()}


class Reference:
    """The oracle: each family's diffusers pipeline, loaded once, called for one row at a time."""

    def __init__(self) -> None:
        self.pipes: dict[Path, object] = {}

    def pipe(self, model: Path):
        import diffusers

        if model not in self.pipes:
            index = json.loads((model / "model_index.json").read_text())
            pipe = getattr(diffusers, index["_class_name"]).from_pretrained(model)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[model] = pipe
        return self.pipes[model]

    def __call__(self, model: Path, rows: list[dict], call: dict, pipe=None) -> list[np.ndarray]:
        pipe = pipe or self.pipe(model)
        out = []
        for row in rows:
            kwargs = {**call, "prompt": row["prompt"], "generator": torch.Generator("cpu").manual_seed(row["seed"])}
            if row.get("negative_prompt") is not None:
                kwargs["negative_prompt"] = row["negative_prompt"]
            out.append(pipe(**kwargs, output_type="np").images[0])
        return out


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_local_equals_its_pipeline_per_row(
    family: str, models: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    _, flags, call, rows, other_cfg = FAMILIES[family]
    model = models[family]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    expected = reference(model, rows, call)
    for placement, batch in (("device", 3), ("shard-first", 2)):
        out = tmp_path / placement
        args = ["--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--shard-size", 3]
        assert run(*args, "--batch-size", batch, "--text-encoder", placement, "--out", out) == 0
        ours = images(str(out))
        assert_matches(ours, rows, expected)
    # The same comparison against another prompt and another guidance scale misses by far.
    assert_sensitive(ours[0], reference(model, [{**rows[0], "prompt": rows[3]["prompt"]}], call)[0])
    assert_sensitive(ours[0], reference(model, [rows[0]], {**call, "guidance_scale": other_cfg})[0])
    record = json.loads((tmp_path / "device" / "job.json").read_text())
    fp = record["fingerprint"]
    assert (fp["steps"], fp["cfg_scale"], fp["image_size"]) == (
        3,
        call["guidance_scale"],
        [call["height"], call["width"]],
    )
    assert fp["max_sequence_length"] == call.get("max_sequence_length")
    assert "first-class family" in record["batch_check"]
    if family == "sana":  # its instruction changes images: recorded, and on by default
        assert fp["complex_human_instruction"] and fp["resolution_binning"] is True
    if family == "sdxl":
        assert fp["empty_negative"] == "zeros"


# Measured on these tiny models (mean / max |difference| in levels of 255, same seed): what each trap moves.
@pytest.mark.parametrize(
    ("family", "change"),
    [
        ("sd3", {"max_sequence_length": 32}),  # T5 padded to the length without a mask
        ("flux", {"max_sequence_length": 32}),
        ("sana", {"complex_human_instruction": []}),  # the instruction prefix off
        ("sana", {"use_resolution_binning": False}),  # generated at 64x32 instead of a 512-px bin
        ("sdxl", {"negative_prompt": ""}),  # "" encoded instead of SDXL's zeros for no negative prompt
    ],
)
def test_each_trap_moves_pixels_far_beyond_the_tolerance(
    family: str, change: dict, models: dict[str, Path], reference: Reference
) -> None:
    _, _, call, rows, _ = FAMILIES[family]
    base = reference(models[family], rows[:1], call)[0]
    moved = reference(models[family], rows[:1], {**call, **change})[0]
    diff = np.abs(np.round(base * 255) - np.round(moved * 255))
    print(f"{family} {change}: mean {diff.mean():.1f}, max {diff.max():.0f} levels")
    assert diff.mean() > 1 and diff.max() > 10 * TOLERANCE, (diff.mean(), diff.max())


def test_gemma_pads_left_unless_told_and_sana_pads_right(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["sana"] / "tokenizer")
    assert tokenizer.padding_side == "left"  # as Gemma ships it: an encoder outside Sana must set "right"
    mask = tokenizer(["a red cat"], padding="max_length", max_length=8)["attention_mask"][0]
    assert mask[0] == 0 and mask[-1] == 1


def test_pipeline_arg_reaches_the_call_and_unknown_keys_are_refused(
    models: dict[str, Path], reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, flags, call, rows, _ = FAMILIES["sana"]
    manifest = write_manifest(tmp_path / "m.jsonl", rows[:2])
    out = tmp_path / "out"
    args = ["--local", "--model", models["sana"], "--manifest", manifest, *flags, *CPU]
    assert run(*args, "--pipeline-arg", "use_resolution_binning=false", "--out", out) == 0
    expected = reference(models["sana"], rows[:2], {**call, "use_resolution_binning": False})
    assert_matches(images(str(out)), rows[:2], expected)
    assert_sensitive(images(str(out))[0], reference(models["sana"], rows[:1], call)[0])  # binning on: far
    fp = json.loads((out / "job.json").read_text())["fingerprint"]
    assert fp["pipeline_args"] == {"use_resolution_binning": False} and fp["resolution_binning"] is False

    capsys.readouterr()
    assert run(*args, "--pipeline-arg", "strength=0.5", "--out", tmp_path / "bad") == 2
    err = capsys.readouterr().err
    assert "--pipeline-arg strength: SanaPipeline.__call__ takes no 'strength'; it accepts" in err, err
    assert "use_resolution_binning" in err and "Traceback" not in err and not (tmp_path / "bad").exists()
    assert run(*args, "--pipeline-arg", "guidance_scale=2", "--out", tmp_path / "bad") == 2
    assert "set by --cfg-scale" in capsys.readouterr().err


def _save_lora(model: Path, path: Path, seed: int) -> Path:
    """A random LoRA (rank 4) on the FLUX transformer's attention, saved as diffusers saves adapters."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(model / "transformer")
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_v_proj", "proj_mlp"])
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p))
    FluxPipeline.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return path


def test_lora_adapter_and_its_scale_equal_the_pipeline_with_the_adapter(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from diffusers import FluxPipeline

    _, flags, call, rows, _ = FAMILIES["flux"]
    lora = _save_lora(models["flux"], tmp_path / "lora", seed=3)
    pipe = FluxPipeline.from_pretrained(models["flux"])
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora, adapter_name="a")
    oracle = Reference()
    pipe.set_adapters(["a"], adapter_weights=[0.7])
    expected = oracle(models["flux"], rows[:2], call, pipe)
    manifest = write_manifest(tmp_path / "m.jsonl", rows[:2])
    out = tmp_path / "out"
    args = ["--local", "--model", models["flux"], "--manifest", manifest, *flags, *CPU, "--batch-size", 2]
    assert run(*args, "--lora", f"{lora}:0.7", "--out", out) == 0
    ours = images(str(out))
    assert_matches(ours, rows[:2], expected)
    pipe.set_adapters(["a"], adapter_weights=[-0.7])
    assert_sensitive(ours[0], oracle(models["flux"], rows[:1], call, pipe)[0])  # another scale: far
    fp = json.loads((out / "job.json").read_text())["fingerprint"]
    assert [a["scale"] for a in fp["loras"]] == [0.7] and len(fp["loras"][0]["sha256"]) == 64
    assert "source" not in fp["loras"][0]  # the adapter is known by its bytes, not its path


def test_component_dtype_is_recorded_and_changes_only_that_component(
    models: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    _, flags, call, rows, _ = FAMILIES["sd3"]
    manifest = write_manifest(tmp_path / "m.jsonl", rows[:1])
    out = tmp_path / "out"
    args = ["--local", "--model", models["sd3"], "--manifest", manifest, *flags, *CPU]
    assert run(*args, "--component-dtype", "text_encoder_3=bfloat16", "--out", out) == 0
    fp = json.loads((out / "job.json").read_text())["fingerprint"]
    assert fp["component_dtypes"] == {"text_encoder_3": "bfloat16"}
    # The image stays close to float32's (the T5 rounds to bf16), and far from another prompt's.
    base = reference(models["sd3"], rows[:1], call)[0]
    diff = np.abs(images(str(out))[0].astype(float) - np.round(base * 255))
    assert diff.mean() < 4, diff.mean()


def test_prompt_limits_after_the_pipelines_own_processing(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    long = " ".join(["a red cat"] * 10)
    for family in ("sd3", "flux", "sana"):
        _, flags, *_ = FAMILIES[family]
        manifest = write_manifest(
            tmp_path / "m.jsonl", [{"prompt": "a red cat", "seed": 0}, {"prompt": long, "seed": 1}]
        )
        capsys.readouterr()
        out = tmp_path / family
        assert run("--local", "--model", models[family], "--manifest", manifest, *flags, *CPU, "--out", out) == 2
        err = capsys.readouterr().err
        assert "sample_id 1: prompt 'a red cat a red cat" in err and "--max-sequence-length" in err, err
        assert not out.exists()
    # Sana counts its instruction's tokens apart: a prompt that fits without it fits with it.
    manifest = write_manifest(tmp_path / "ok.jsonl", [{"prompt": "a red cat near the river", "seed": 0}])
    _, flags, *_ = FAMILIES["sana"]
    assert run("--local", "--model", models["sana"], "--manifest", manifest, *flags, *CPU, "--steps", 1,
               "--out", tmp_path / "ok") == 0  # fmt: skip
    # FLUX has no negative prompt.
    capsys.readouterr()
    _, flags, *_ = FAMILIES["flux"]
    assert run("--local", "--model", models["flux"], "--manifest", manifest, *flags, *CPU, "--negative-prompt", "x",
               "--out", tmp_path / "neg") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--negative-prompt is for text-to-image models whose pipeline takes a negative prompt" in err, err


def test_a_model_that_overflows_fails_its_shard_and_commits_nothing(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(models["sd3"], tmp_path / "overflow"))
    weights = next((model / "transformer").glob("*.safetensors"))
    state = load_file(weights)
    state = {k: v * 1e36 if k.startswith("proj_out") else v for k, v in state.items()}  # float32 overflows
    save_file(state, weights)
    _, flags, *_ = FAMILIES["sd3"]
    manifest = write_manifest(tmp_path / "m.jsonl", ROWS[:2])
    out = tmp_path / "out"
    assert run("--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--out", out) == 1
    err = capsys.readouterr().err
    assert "non-finite latents for sample(s) 0 (seed 5), 1 (seed 5); nothing of the shard was committed" in err, err
    assert not (out / "metadata").exists() or not list((out / "metadata").iterdir())
    assert not (out / "images").exists() or not list((out / "images").rglob("*.png"))


@pytest.fixture(scope="module")
def generic_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generic")
    sd = save_stable_diffusion(root / "sd")
    return {"pag": save_sd_pag(sd, root / "sd-pag"), "cogview4": save_cogview4(root / "cogview4")}


GENERIC_ROWS = [
    {"sample_id": 0, "prompt": "a red cat at night", "seed": 1},
    {"sample_id": 1, "prompt": "a watercolor painting of a yellow boat near the river under the sky at night over "
                               "the sea near a green tree under a blue sky", "seed": 2},
    {"sample_id": 2, "prompt": "a blue house", "seed": 3},
]  # fmt: skip


def test_generic_path_passes_its_batch_check_and_equals_the_pipeline_per_row(
    generic_models: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    model = generic_models["pag"]
    rows = [{**r, "prompt": " ".join(r["prompt"].split()[:6])} for r in GENERIC_ROWS]  # within CLIP's 20 tokens
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    args = ["--local", "--model", model, "--manifest", manifest, "--steps", 3, "--cfg-scale", 6.0, *CPU]
    assert run(*args, "--batch-size", 3, "--out", out) == 0
    call = {"num_inference_steps": 3, "guidance_scale": 6.0, "height": 16, "width": 16}
    expected = reference(model, rows, call)
    assert_matches(images(str(out)), rows, expected)
    assert_sensitive(images(str(out))[0], reference(model, [{**rows[0], "prompt": rows[2]["prompt"]}], call)[0])
    record = json.loads((out / "job.json").read_text())
    check = record["batch_check"]
    assert check["passed"] and check["rows"] == 3 and check["max_diff"] <= check["tolerance"] == 1, check
    assert record["fingerprint"]["generic"] is True


def test_batch_dependent_pipeline_is_refused_by_the_batch_check_and_runs_at_batch_size_one(
    generic_models: dict[str, Path], reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = generic_models["cogview4"]
    manifest = write_manifest(tmp_path / "m.jsonl", GENERIC_ROWS)
    args = ["--local", "--model", model, "--manifest", manifest, "--steps", 3, "--height", 64, "--width", 48, *CPU]
    capsys.readouterr()
    assert run(*args, "--batch-size", 3, "--out", tmp_path / "batched") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "CogView4Pipeline failed the batch check" in lines[0], err
    assert "rerun with --batch-size 1" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "batched").exists()  # refused before anything was written

    out = tmp_path / "alone"
    assert run(*args, "--batch-size", 1, "--out", out) == 0
    call = {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 64, "width": 48}
    expected = reference(model, GENERIC_ROWS, call)
    assert_matches(images(str(out)), GENERIC_ROWS, expected)
    assert_sensitive(images(str(out))[1], reference(model, [{**GENERIC_ROWS[1], "seed": 99}], call)[0])
    check = json.loads((out / "job.json").read_text())["batch_check"]
    assert check["batch_size"] == 1 and check["passed"]


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SD3 saved without its T5 (text_encoder_3 and tokenizer_3 null) and FLUX schnell (guidance_embeds False)."""
    root = tmp_path_factory.mktemp("variants")
    return {"sd3-no-t5": save_sd3(root / "sd3-no-t5", with_t5=False),
            "flux-schnell": save_flux(root / "flux-schnell", guidance_embeds=False)}  # fmt: skip


def test_sd3_without_t5_equals_its_pipeline_and_its_prompts_fit_clip(
    variants: dict[str, Path], reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from diffusers import StableDiffusion3Pipeline

    model = variants["sd3-no-t5"]
    index = json.loads((model / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]
    _, flags, call, rows, _ = FAMILIES["sd3"]
    # diffusers loads SD3 without its T5 only when told so (its documented text_encoder_3=None, tokenizer_3=None).
    with pytest.raises(ValueError, match="expected"):
        StableDiffusion3Pipeline.from_pretrained(model)
    pipe = StableDiffusion3Pipeline.from_pretrained(model, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    expected = reference(model, rows, call, pipe)
    for placement, batch in (("device", 3), ("shard-first", 2)):
        out = tmp_path / placement
        args = ["--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--shard-size", 3]
        assert run(*args, "--batch-size", batch, "--text-encoder", placement, "--out", out) == 0
        assert_matches(images(str(out)), rows, expected)
    ours = images(str(tmp_path / "device"))
    assert_sensitive(ours[0], reference(model, [{**rows[0], "prompt": rows[3]["prompt"]}], call, pipe)[0])
    # Without a T5 the pipeline pads zeros to --max-sequence-length (unmasked): the length still moves the
    # image, by less than another prompt (measured: 3.4 mean, 34 max levels) but far beyond the tolerance.
    longer = reference(model, rows[:1], {**call, "max_sequence_length": 32}, pipe)[0]
    diff = np.abs(ours[0].astype(np.float64) - np.round(longer * 255))
    assert diff.mean() > 1 and diff.max() > 10 * TOLERANCE, (diff.mean(), diff.max())
    # Without a T5, CLIP's 77 tokens (special tokens included) are the prompt's limit.
    long = " ".join(["red"] * 76)  # 78 CLIP tokens with <|startoftext|> and <|endoftext|>
    manifest = write_manifest(tmp_path / "long.jsonl", [{"prompt": long, "seed": 0}])
    capsys.readouterr()
    out = tmp_path / "long"
    assert run("--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--out", out) == 2
    err = capsys.readouterr().err
    assert "sample_id 0: prompt 'red red" in err and "is 78 tokens, over tokenizer's model_max_length 77" in err, err
    assert not out.exists()


def test_sd3_with_t5_takes_prompts_past_clips_77_tokens_as_its_pipeline_does(
    models: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    """CLIP sees the first 77 tokens (the pipeline truncates them, by design) and the T5 the whole prompt."""
    from transformers import CLIPTokenizer

    model = models["sd3"]
    _, flags, call, _, _ = FAMILIES["sd3"]
    head = ["red"] * 76  # with <|startoftext|> and <|endoftext|>, all CLIP keeps
    tails = ("a cat near the river under the sky at night over the sea near a green tree",
             "the blue house over the mountain near a yellow boat under the morning sky of the city")  # fmt: skip
    rows = [{"sample_id": i, "prompt": " ".join([*head, tail]), "seed": 5} for i, tail in enumerate(tails)]
    clip = CLIPTokenizer.from_pretrained(model / "tokenizer")
    assert len(clip(rows[0]["prompt"])["input_ids"]) > 77
    assert clip(rows[0]["prompt"], truncation=True, max_length=77) == clip(rows[1]["prompt"], truncation=True,
                                                                           max_length=77)  # fmt: skip
    long_call = {**call, "max_sequence_length": 128}
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    assert run("--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--max-sequence-length", 128,
               "--out", out) == 0  # fmt: skip
    ours = images(str(out))
    assert_matches(ours, rows, reference(model, rows, long_call))
    # The two prompts differ only past CLIP's 77 tokens: the T5 alone tells them apart, and that moves pixels.
    tail = np.abs(ours[0].astype(np.float64) - np.round(reference(model, rows[1:], long_call)[0] * 255))
    print(f"tail only: mean {tail.mean():.2f}, max {tail.max():.0f} levels")
    assert tail.max() > 4 * TOLERANCE, (tail.mean(), tail.max())
    assert_sensitive(ours[0], reference(model, [{**rows[0], "seed": 6}], long_call)[0])  # another seed: far


def test_flux_schnell_runs_without_guidance_and_refuses_cfg_scale(
    variants: dict[str, Path], reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = variants["flux-schnell"]
    assert json.loads((model / "transformer" / "config.json").read_text())["guidance_embeds"] is False
    flags = ["--steps", 3, "--height", 48, "--width", 64, "--max-sequence-length", 24]
    call = {"num_inference_steps": 3, "height": 48, "width": 64, "max_sequence_length": 24}
    rows = NO_NEGATIVE
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    assert run("--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--batch-size", 3, "--out", out) == 0
    ours = images(str(out))
    assert_matches(ours, rows, reference(model, rows, call))
    assert_sensitive(ours[0], reference(model, [{**rows[0], "prompt": rows[3]["prompt"]}], call)[0])
    assert json.loads((out / "job.json").read_text())["fingerprint"]["cfg_scale"] is None
    # Why --cfg-scale is refused: the pipeline ignores guidance_scale without a guidance embedding.
    one, six = (reference(model, rows[:1], {**call, "guidance_scale": g})[0] for g in (1.0, 6.0))
    assert np.array_equal(one, six)
    capsys.readouterr()
    bad = tmp_path / "cfg"
    assert run("--local", "--model", model, "--manifest", manifest, *flags, *CPU, "--cfg-scale", 6.0,
               "--out", bad) == 2  # fmt: skip
    err = capsys.readouterr().err
    refusal = "--cfg-scale is for class-conditional DiT and text-to-image models whose pipeline takes a guidance scale"
    assert err.count("\n") == 1 and refusal in err, err  # the flag table (driver/flags.py), before any loading
    assert not bad.exists()
