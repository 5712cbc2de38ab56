"""Tiny random CLIP and DINOv2 models saved with transformers' `save_pretrained` (real weights
cannot be downloaded here), in the layout `--clip-model` and `--dinov2-model` read.

CLIP's tokenizer is a character-level CLIP BPE (no merges: a vocabulary of the byte-level alphabet,
each symbol plain and word-final, built with `tokenizers`' alphabet), the same token ids on every
run (a trained BPE breaks ties differently from run to run); its image processor is transformers'
`CLIPImageProcessor` at 32 px. DINOv2 keeps the real patch size 14 and 224 px input (the
preprocessing under test resizes to 224), with 32-wide layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CLIP_SIZE = 32
CLIP_TOKENS = 77


def char_clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(f"{c}</w>" for c in alphabet)]
    return CLIPTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[], model_max_length=CLIP_TOKENS)


def tiny_clip_parts():
    """The tiny CLIP's config and its processor (character tokenizer, 32 px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPProcessor

    tokenizer = char_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": CLIP_TOKENS,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": CLIP_SIZE, "patch_size": 8,
        },
        projection_dim=16,
    )  # fmt: skip
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return config, processor


def save_tiny_clip(path: Path, images: np.ndarray, prompts: list[str], seed: int = 0) -> Path:
    """A random CLIP whose cosines between `images` (uint8 [N, H, W, 3]) and `prompts` (pairwise)
    have both signs, so both sides of CLIP score's max(cos, 0) are exercised: random towers
    usually put every pair on one side, so seeds from `seed` are tried until one does."""
    from transformers import CLIPModel

    config, processor = tiny_clip_parts()
    tokenizer = processor.tokenizer
    pixels = processor(images=[torch.from_numpy(i).permute(2, 0, 1) for i in images], return_tensors="pt")
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    for attempt in range(seed, seed + 100):
        torch.manual_seed(attempt)
        model = CLIPModel(config).eval()
        with torch.no_grad():
            a = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
            b = model.get_text_features(**tokens).pooler_output
        positive = float((torch.nn.functional.cosine_similarity(a, b) > 0).float().mean())
        if 0.3 <= positive <= 0.7:
            model.save_pretrained(path)
            processor.save_pretrained(path)
            return path
    raise RuntimeError("no seed gave cosines of both signs")


def save_tiny_dedup_clip(path: Path, calibration: np.ndarray, seed: int = 0) -> Path:
    """The tiny CLIP with a calibrated image projection, for near-duplicate tests: a random tower's pooled
    outputs share one large direction (every pair of images at cosine ~0.999), so the projection is set
    to their principal directions on `calibration` images (uint8 [N, H, W, 3], not the test's own), the
    shared direction removed and each kept direction scaled by 1/sqrt(its singular value): what varies
    most between images dominates, as it does in a trained CLIP."""
    from transformers import CLIPModel

    config, processor = tiny_clip_parts()
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    pixels = processor(images=[torch.from_numpy(i).permute(2, 0, 1) for i in calibration], return_tensors="pt")
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels["pixel_values"]).pooler_output.double().numpy()
        mean = pooled.mean(0)
        off = np.eye(pooled.shape[1]) - np.outer(mean, mean) / (mean @ mean)  # removes the shared direction
        _, singular, directions = np.linalg.svd((pooled - mean) @ off, full_matrices=False)
        k = config.projection_dim
        weight = (directions[:k] / np.sqrt(singular[:k, None])) @ off
        model.visual_projection.weight.copy_(torch.from_numpy(weight).float())
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_dinov2(path: Path, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=224, patch_size=14
    )
    torch.manual_seed(seed)
    Dinov2Model(config).eval().save_pretrained(path)
    return path
