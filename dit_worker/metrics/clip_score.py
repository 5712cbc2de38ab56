"""CLIP embeddings and the CLIP score of an image against its prompt (Hessel et al. 2021).

The score is torchmetrics' `CLIPScore` definition, per image: 100 · max(cos(E_image, E_prompt), 0)
with E the projected embeddings of transformers' `CLIPModel`, images prepared by the model's own
`CLIPImageProcessor` (short side resized bicubically, centre crop, CLIP normalisation) and prompts
by its tokenizer. Prompts longer than the text model's positions (77 tokens) are truncated by the
tokenizer, keeping the end-of-text token the text model pools at (torchmetrics cuts the ids after
tokenizing instead, which drops it). The same image embeddings, unit-normalised, feed CMMD.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dit_worker.metrics.dinov2 import host_images
from dit_worker.metrics.hf_models import HfModel, local_copy

CLIP_SCALE = 100.0  # torchmetrics' (and Hessel et al.'s w = 2.5 aside) scale of the cosine
DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """100 · max(cos, 0) row by row, in float64."""
    a = np.asarray(image_embeddings, np.float64)
    b = np.asarray(text_embeddings, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return CLIP_SCALE * np.maximum(cos, 0.0)


class ClipEmbedder:
    """transformers' `CLIPModel` and its processor, loaded once.

    Usage::

        clip = ClipEmbedder(resolve_hf_model("openai/clip-vit-large-patch14-336", flag="--clip-model",
                                             model_type="clip"), device="cuda")
        scores = clip_scores(clip.images(images), clip.texts(prompts))  # [N], 0..100
    """

    def __init__(self, model: HfModel, device: torch.device | str, batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model_id, self.device, self.batch_size = model.id, torch.device(device), batch_size
        path = local_copy(model)
        self.net = CLIPModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self.max_tokens = int(self.net.config.text_config.max_position_embeddings)

    @property
    def dim(self) -> int:
        return int(self.net.config.projection_dim)

    @torch.no_grad()
    def images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 [N, projection_dim] image embeddings (not normalised) of uint8 [N, H, W, 3] images."""
        host, out = host_images(images), []
        for lo in range(0, host.shape[0], self.batch_size):
            chunk = [torch.from_numpy(image).permute(2, 0, 1) for image in host[lo : lo + self.batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(self.net.get_image_features(pixel_values=pixels).pooler_output.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def texts(self, prompts: Sequence[str]) -> np.ndarray:
        """float32 [N, projection_dim] text embeddings (not normalised)."""
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(prompts[lo : lo + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            ids, mask = tokens["input_ids"], tokens["attention_mask"]
            features = self.net.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            out.append(features.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
