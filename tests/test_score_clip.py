"""`jobs.generate --score clip=MODEL [--score-embeddings]`: per-image CLIP scores (and embeddings)
computed on the worker as images are made, in every shard's metadata part, equal to torchmetrics'
CLIPScore on the stored images; part of the fingerprint (class-conditional models, scored against
their class names, and the other scores: tests/test_scores.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hf_models import save_tiny_clip
from metric_references import blocky, torchmetrics_clip_scores
from PIL import Image
from test_set_metrics import CLIP_TOL

from jobs.generate import main as generate_main

PROMPTS = ["a red cat at night", "a blue house over the sea", "a green tree near the river"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Calibrated on blocky images: the tiny SD pipeline's images are not known before it runs.
    return save_tiny_clip(tmp_path_factory.mktemp("score-clip") / "clip", blocky(6, seed=4), PROMPTS * 2)


def generate(model: Path, out: Path, prompts: Path, *extra: str) -> int:
    args = ["--local", "--model", str(model), "--prompts", str(prompts), "--per-prompt", "2", "--steps", "2",
            "--device", "cpu", "--dtype", "float32", "--shard-size", "4", "--batch-size", "3", "--out", str(out),
            *extra]  # fmt: skip
    return generate_main(args)


@pytest.fixture(scope="module")
def scored(sd_ckpt: Path, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("scored")
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = work / "out"
    assert generate(sd_ckpt, out, work / "prompts.txt", "--score", f"clip={clip_dir}", "--score-embeddings") == 0
    return out, work / "prompts.txt"


def test_scores_in_the_metadata_equal_torchmetrics(scored: tuple[Path, Path], clip_dir: Path) -> None:
    out, _ = scored
    table = ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")
    assert table.num_rows == 6 and len(list((out / "metadata").iterdir())) == 2  # two shards, both scored
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO((out / k).read_bytes()))) for k in table["image_key"].to_pylist()]
    )
    prompts = table["prompt"].to_pylist()
    expected = torchmetrics_clip_scores(clip_dir, images, prompts)
    ours = np.asarray(table["clip_score"].to_pylist())
    print("worker", ours, "torchmetrics", expected)
    # Measured 9.5e-6 here (1.3e-5 with batches of 2): the worker embeds batches of up to 3 images
    # (float32 rounding of another batch composition), stores float32 (6e-7 relative), and
    # torchmetrics normalises in float32.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2 * CLIP_TOL)
    assert (ours > 0).any()
    # The same images against other rows' prompts: far off.
    shuffled = torchmetrics_clip_scores(clip_dir, images, prompts[2:] + prompts[:2])
    assert np.abs(shuffled - ours).max() > 100 * CLIP_TOL
    embeddings = table["clip_embedding"]
    assert pa.types.is_fixed_size_list(embeddings.type) and embeddings.type.list_size == 16
    assert embeddings.type.value_type == pa.float32()
    record = json.loads((out / "job.json").read_text())["fingerprint"]["score"]
    assert record["column"] == "clip_score" and record["embeddings"] is True
    assert record["clip_model_id"].startswith("clip:sha256:")


def test_resume_without_score_is_refused(scored: tuple[Path, Path], sd_ckpt: Path, capsys) -> None:
    out, prompts = scored
    assert generate(sd_ckpt, out, prompts) == 2
    err = capsys.readouterr().err
    assert "score:" in err and "different configuration" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--score", "dinov2"], "unknown score; expected clip[=MODEL]"), (["--score-embeddings"], "add --score clip")],
)
def test_bad_score_flags(sd_ckpt: Path, tmp_path: Path, flags: list[str], message: str, capsys) -> None:
    (tmp_path / "p.txt").write_text("a cat\n")
    assert generate(sd_ckpt, tmp_path / "out", tmp_path / "p.txt", *flags) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
