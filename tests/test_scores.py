"""`jobs.generate --score ...` beyond CLIP: the LAION aesthetic predictor and any transformers image
classifier, next to CLIP, on a class-conditional DiT job (CLIP then scores the class name).

Each column equals the reference model called alone on the committed images: the aesthetic MLP
(built here in the published `layers.N` layout) on transformers' CLIP image embedding, L2-normalised;
`AutoModelForImageClassification` on its own `AutoImageProcessor`'s pixels, softmax; torchmetrics'
CLIPScore against the class name. Next to each parity assertion the same comparison on another
image misses by far more than the tolerance. Models are tiny and random, saved in their real formats.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch
from hf_models import save_tiny_clip
from metric_references import blocky, torchmetrics_clip_scores
from PIL import Image
from test_set_metrics import CLIP_TOL
from torch import nn

from dit_worker.metrics.clip_score import ClipEmbedder
from jobs.generate import main as generate_main

CLASSES = "207,879,360"  # golden retriever, umbrella, otter
NAMES = ["golden retriever", "umbrella", "otter"]
LABELS = {0: "safe", 1: "unsafe", 2: "unsure"}
# Measured on this CPU: the worker's aesthetic scores within 3.0e-8 of the MLP on transformers' embedding
# (scores of about 0.36, float32 spacing 3e-8; batches of 2 against one of 6), its probabilities equal
# (0.0, of 0.1..0.6). Another image misses by at least 4.0e-4 (aesthetic) and up to 0.30 (probabilities).
# The tolerances leave room for another CPU's rounding.
AESTHETIC_TOL = 1e-6
PROBABILITY_TOL = 1e-6


class PublishedMlp(nn.Module):
    """The improved aesthetic predictor's module layout (Linear, Dropout x3 interleaved, two Linears,
    no activations), narrower: the tiny CLIP's embeddings are 16 wide, not ViT-L/14's 768."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 16, 8, 4)) -> None:
        super().__init__()
        a, b, c, d, e = widths
        self.layers = nn.Sequential(
            nn.Linear(a, b), nn.Dropout(0.2), nn.Linear(b, c), nn.Dropout(0.2), nn.Linear(c, d), nn.Dropout(0.1),
            nn.Linear(d, e), nn.Linear(e, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def save_tiny_classifier(path: Path, images: np.ndarray, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=24,
        patch_size=8, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    # 24 px from the DiT's 16: the processor's resize acts, with non-default mean and std.
    processor = ViTImageProcessor(
        size={"height": 24, "width": 24}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        # A random head gives ~1/3 each and one label everywhere: widen it and centre its logits on
        # images like the DiT's (the job's own are not known before it runs), so the top label varies.
        model.classifier.weight.mul_(20.0)
        logits = model(**processor(images=list(images), return_tensors="pt")).logits
        model.classifier.bias.sub_(logits.mean(0))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score-models")
    dit_like = blocky(6, seed=9, size=(16, 16))
    clip = save_tiny_clip(root / "clip", dit_like, NAMES * 2)
    torch.manual_seed(3)
    mlp = PublishedMlp()
    torch.save(mlp.state_dict(), root / "aesthetic.pth")
    return {
        "clip": clip,
        "aesthetic": root / "aesthetic.pth",
        "classifier": save_tiny_classifier(root / "vit", dit_like),
    }


def generate(model: Path, out: Path, models: dict[str, Path], *extra: str) -> int:
    args = ["--local", "--model", str(model), "--classes", CLASSES, "--per-class", "2", "--steps", "3",
            "--sampler", "ddim", "--cfg-scale", "2.5", "--seed", "7", "--device", "cpu", "--dtype", "float32",
            "--shard-size", "4", "--batch-size", "2", "--out", str(out), *extra]  # fmt: skip
    return generate_main(args)


def score_flags(models: dict[str, Path]) -> list[str]:
    return ["--score", f"clip={models['clip']}", "--score", f"aesthetic={models['aesthetic']}",
            "--score", f"classifier:safety={models['classifier']}"]  # fmt: skip


@pytest.fixture(scope="module")
def scored(tiny_ckpt: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scored") / "out"
    calls = []
    images = ClipEmbedder.images

    def counted(self: ClipEmbedder, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        calls.append(len(batch))
        return images(self, batch)

    with pytest.MonkeyPatch.context() as patch:  # --local runs the worker in this process
        patch.setattr(ClipEmbedder, "images", counted)
        assert generate(tiny_ckpt, out, models, *score_flags(models)) == 0
    # One CLIP image pass per batch serves clip_score and aesthetic: 2 + 2 + 2 images in 3 batches.
    assert calls == [2, 2, 2]
    return out


def stored(out: Path) -> tuple[pa.Table, np.ndarray]:
    table = ds.dataset(out / "metadata", format="parquet").to_table().sort_by("sample_id")
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO((out / k).read_bytes()))) for k in table["image_key"].to_pylist()]
    )
    return table, images


def reference_aesthetic(models: dict[str, Path], images: np.ndarray) -> np.ndarray:
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(models["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(models["clip"])
    mlp = PublishedMlp().eval()
    mlp.load_state_dict(torch.load(models["aesthetic"], weights_only=True))
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        embedding = clip.get_image_features(pixel_values=pixels).pooler_output
        return mlp(embedding / embedding.norm(dim=-1, keepdim=True))[:, 0].numpy()


def reference_probabilities(models: dict[str, Path], images: np.ndarray) -> np.ndarray:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(models["classifier"]).eval()
    processor = AutoImageProcessor.from_pretrained(models["classifier"])
    with torch.no_grad():
        logits = model(**processor(images=list(images), return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()


def test_aesthetic_equals_the_mlp_on_the_normalised_clip_embedding(scored: Path, models: dict[str, Path]) -> None:
    table, images = stored(scored)
    assert table.schema.field("aesthetic").type == pa.float32()
    ours = np.asarray(table["aesthetic"].to_pylist())
    expected = reference_aesthetic(models, images)
    print("aesthetic", ours, expected, np.abs(ours - expected).max())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=AESTHETIC_TOL)
    other = reference_aesthetic(models, np.roll(images, 1, axis=0))  # each row against another image
    assert np.abs(other - ours).min() > 100 * AESTHETIC_TOL


def test_classifier_columns_equal_the_model_alone(scored: Path, models: dict[str, Path]) -> None:
    table, images = stored(scored)
    column = table["safety"]
    assert pa.types.is_struct(column.type) and [f.name for f in column.type] == list(LABELS.values())
    ours = np.asarray([[row[label] for label in LABELS.values()] for row in column.to_pylist()])
    expected = reference_probabilities(models, images)
    print("probabilities", ours, expected, np.abs(ours - expected).max())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=PROBABILITY_TOL)
    other = reference_probabilities(models, np.roll(images, 1, axis=0))
    assert np.abs(other - ours).max() > 100 * PROBABILITY_TOL
    top = [LABELS[i] for i in expected.argmax(1)]
    assert table["safety_label"].to_pylist() == top and len(set(top)) > 1  # the labels differ between images


def test_clip_scores_a_class_model_against_its_class_name(scored: Path, models: dict[str, Path]) -> None:
    table, images = stored(scored)
    names = table["class_name"].to_pylist()
    assert sorted(set(names)) == sorted(NAMES)
    ours = np.asarray(table["clip_score"].to_pylist())
    expected = torchmetrics_clip_scores(models["clip"], images, names)
    print("clip", ours, expected)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2 * CLIP_TOL)
    shuffled = torchmetrics_clip_scores(models["clip"], images, names[2:] + names[:2])
    assert np.abs(shuffled - ours).max() > 100 * CLIP_TOL


def test_every_score_is_in_the_fingerprint_and_a_resume_with_another_set_is_refused(
    scored: Path, tiny_ckpt: Path, models: dict[str, Path], capsys
) -> None:
    record = json.loads((scored / "job.json").read_text())["fingerprint"]["score"]
    assert record["columns"] == ["clip_score", "aesthetic", "safety", "safety_label"]
    assert record["clip_model_id"].startswith("clip:sha256:")
    assert record["aesthetic_weights_id"].startswith("aesthetic:sha256:")
    assert record["classifiers"]["safety"]["model_id"].startswith("vit:sha256:")
    assert record["classifiers"]["safety"]["labels"] == list(LABELS.values())
    capsys.readouterr()
    assert generate(tiny_ckpt, scored, models, *score_flags(models)[:4]) == 2  # the classifier dropped
    err = capsys.readouterr().err
    assert "score:" in err and "different configuration" in err and len(err.strip().splitlines()) == 1
    # The same set in another order is the same job (columns have one order): it resumes, complete.
    flags = score_flags(models)
    assert generate(tiny_ckpt, scored, models, *flags[4:], *flags[:4]) == 0


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_the_columns_are_in_every_format(
    fmt: str, tiny_ckpt: Path, models: dict[str, Path], scored: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    flags = ["--clip-model", str(models["clip"]), "--score", f"aesthetic={models['aesthetic']}",
             "--score", f"classifier:safety={models['classifier']}"]  # fmt: skip
    assert generate(tiny_ckpt, out, models, "--format", fmt, *flags) == 0
    table = ds.dataset(scored / "metadata", format="parquet").to_table().sort_by("sample_id")
    want = {r["sample_id"]: r for r in table.select(["sample_id", "aesthetic", "safety", "safety_label"]).to_pylist()}
    if fmt == "webdataset":
        rows = []
        for tar in sorted((out / "shards").iterdir()):
            with tarfile.open(tar) as t:
                rows += [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")]
    else:
        from datasets import load_dataset

        files = sorted(str(p) for p in (out / "data").iterdir())
        data = load_dataset("parquet", data_files=files, split="train")
        assert set(data.features["safety"]) == set(LABELS.values())  # a struct feature, one field per label
        rows = data.remove_columns(["image"]).to_list()
    assert len(rows) == 6
    for row in rows:  # the png job's images are the same bytes, so the same scores
        expected = want[row["sample_id"]]
        assert row["safety_label"] == expected["safety_label"]
        assert row["aesthetic"] == pytest.approx(expected["aesthetic"], abs=AESTHETIC_TOL)
        assert row["safety"] == pytest.approx(expected["safety"], abs=PROBABILITY_TOL)


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ("sharpness", "unknown score; expected clip[=MODEL], aesthetic[=WEIGHTS] or classifier:NAME=MODEL"),
        ("aesthetic=/nonexistent/weights.pth", "no such file"),
        ("aesthetic={clip}/config.json", "not a torch state dict"),
        ("classifier:safety={clip}", "not an image classifier"),
        ("classifier:../x={classifier}", "is not a column name"),
        ("classifier:={classifier}", "is not a column name"),
        ("classifier:seed={classifier}", "column 'seed' is one the job already writes"),
        ("classifier:clip={classifier}", "column 'clip_label'"),
        ("classifier:safety", "a classifier needs its model"),
    ],
)
def test_bad_scores_are_one_line_before_any_model_loads(
    score: str, message: str, tiny_ckpt: Path, models: dict[str, Path], tmp_path: Path, capsys
) -> None:
    value = score.format(**{k: str(v) for k, v in models.items()})
    extra = ["--score", value] + (
        ["--score", "classifier:clip_label=" + str(models["classifier"])] if "clip_label" in message else []
    )
    if value.startswith("aesthetic"):  # (a CLIP it could run on, so that only the weights are wrong)
        extra += ["--clip-model", str(models["clip"])]
    assert generate(tiny_ckpt, tmp_path / "out", models, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out" / "job.json").exists()
