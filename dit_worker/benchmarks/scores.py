"""`python -m jobs.benchmark --score VALUE | --score-random`: what each `jobs.generate --score` costs
next to generation, one JSON line per score, on the batch the DiT benchmark just made.

Each score is timed alone, the way the worker runs it (`row_scorers`: the model loaded once, then
`add` per batch on the batch still on the device): `score_s_per_image`, and `fraction_of_generation`,
its time over the batch's generation time at the benchmarked steps (the fraction shrinks with more
steps; `score_s_per_image` does not). `--score-random` needs no downloads: random weights at the
published models' sizes (CLIP ViT-L/14 at 224 px with the aesthetic MLP 768→1024→128→64→16→1 on it,
and a ViT-B/16 classifier with two labels), so the figures are those models' compute, not their output.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dit_worker.checkpoints.tiny_tokenizers import clip_tokenizer
from dit_worker.metrics.row_scores import parse_scores, row_scorers

# CLIP ViT-L/14 (openai/clip-vit-large-patch14) and ViT-B/16 (google/vit-base-patch16-224) sizes.
CLIP_L14 = {
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "projection_dim": 768,
}  # fmt: skip
VIT_B16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "image_size": 224, "patch_size": 16}  # fmt: skip
AESTHETIC_WIDTHS = (768, 1024, 128, 64, 16, 1)


def random_score_models(root: Path) -> None:
    """Random models at the published sizes, saved under `root` (see random_score_models_values)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    tokenizer = clip_tokenizer(max_length=77)
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    text = CLIP_L14["text_config"] | {"vocab_size": len(tokenizer), "max_position_embeddings": 77} | ids
    config = CLIPConfig(text_config=text, vision_config=CLIP_L14["vision_config"], projection_dim=768)
    CLIPModel(config).save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    linear = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(AESTHETIC_WIDTHS)]
    state = {}
    for index, layer in zip((0, 2, 4, 6, 7), linear, strict=True):  # the published `layers.N` names
        state |= {f"layers.{index}.weight": layer.weight.data, f"layers.{index}.bias": layer.bias.data}
    torch.save(state, root / "aesthetic.pth")
    vit = ViTConfig(**VIT_B16, num_labels=2, id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    ViTForImageClassification(vit).save_pretrained(root / "classifier")
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(root / "classifier")


def random_score_models_values(root: Path) -> tuple[list[str], str]:
    """The --score values of the models random_score_models saved under `root`, and their CLIP."""
    return ["clip", f"aesthetic={root / 'aesthetic.pth'}", f"classifier:safety={root / 'classifier'}"], str(
        root / "clip"
    )


def measure_scores(
    values: Sequence[str],
    clip_model: str | None,
    images: torch.Tensor,
    texts: Sequence[str],
    generation_s: float,
    repeats: int,
) -> list[dict[str, Any]]:
    """One line per score: its median time over `repeats` passes on `images` (after one warm-up)."""
    lines = []
    for value in values:
        request = parse_scores([value])[0]
        named = clip_model if request.kind in ("clip", "aesthetic") else None
        make = row_scorers([value], False, images.device, named)
        times = []
        for _ in range(repeats + 1):
            scorer = make(0)[0]
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            start = time.perf_counter()
            scorer.add(texts, images)
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            times.append(time.perf_counter() - start)
        score_s = statistics.median(times[1:])
        n = int(images.shape[0])
        lines.append(
            {
                "benchmark": "score",
                "score": request.kind if request.kind != "classifier" else f"classifier:{request.name}",
                "columns": list(request.columns),
                "batch_size": n,
                "score_s_per_image": score_s / n,
                "generation_s_per_image": generation_s / n,
                "fraction_of_generation": score_s / generation_s,
                "repeats": repeats,
            }
        )
    return lines
