"""Any transformers image-classification model (a safety classifier, an ImageNet classifier, ...):
each image's probability of every label and its top label, for `--score classifier:NAME=MODEL`.

The model runs as transformers runs it: `AutoModelForImageClassification` on pixels prepared by the
model's own `AutoImageProcessor`, probabilities the softmax of its logits (single-label models:
multi-label ones, `problem_type` multi_label_classification, are refused rather than given the
wrong normalisation). Labels come from the config's `id2label`, in id order.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from dit_worker.metrics.dinov2 import host_images
from dit_worker.metrics.errors import MetricsInputError
from dit_worker.metrics.hf_models import HfModel, local_copy, resolve_hf_model

ARCHITECTURE_SUFFIX = "ForImageClassification"


def resolve_classifier(spec: str, *, flag: str) -> tuple[HfModel, tuple[str, ...]]:
    """The model directory and its labels (in id order), refused in one MetricsInputError unless its
    config names an image-classification architecture with distinct, non-empty labels."""
    model = resolve_hf_model(spec, flag=flag, model_type=None)
    config = json.loads((model.path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(ARCHITECTURE_SUFFIX) for a in architectures):
        raise MetricsInputError(
            f"{flag} {spec}: a {architectures or config.get('model_type')!r} model, not an image classifier "
            f"(its config.json names no *{ARCHITECTURE_SUFFIX} architecture)"
        )
    if config.get("problem_type") == "multi_label_classification":
        raise MetricsInputError(f"{flag} {spec}: a multi-label classifier; only single-label (softmax) ones are scored")
    id2label = config.get("id2label") or {}
    try:
        labels = tuple(str(id2label[str(i)]) for i in range(len(id2label)))
    except KeyError:
        raise MetricsInputError(f"{flag} {spec}: its id2label ids are not 0..{len(id2label) - 1}") from None
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise MetricsInputError(f"{flag} {spec}: its labels must be two or more distinct names (got {list(labels)})")
    return model, labels


class ImageClassifier:
    """The classifier and its image processor, loaded once.

    Usage::

        model, labels = resolve_classifier("Falconsai/nsfw_image_detection", flag="--score")
        probabilities = ImageClassifier(model, "cuda").probabilities(images)  # [N, len(labels)]
    """

    def __init__(self, model: HfModel, device: torch.device | str, batch_size: int = 64) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        path = local_copy(model)
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = AutoModelForImageClassification.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 [N, labels]: the softmax of the logits of uint8 [N, H, W, 3] images."""
        host, out = host_images(images), []
        for lo in range(0, host.shape[0], self.batch_size):
            chunk = list(host[lo : lo + self.batch_size])
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            logits = self.net(pixel_values=pixels).logits.float()
            out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.net.config.num_labels), np.float32)
