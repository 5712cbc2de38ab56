"""The diffusers backend, worker side: prompts encoded outside the pipeline call, family by family,
with the pipeline's own `encode_prompt`, into the `__call__` keywords that carry them.

Each family's encoder gets a list of texts and whether they are negative prompts, and returns the
positive keywords (`prompt_embeds`, `pooled_prompt_embeds`, `prompt_attention_mask`); negatives are
passed as `negative_` + the same names. Encoding a text as a positive prompt gives what the
pipeline's negative branch gives it, except where a family treats negatives apart: Sana prefixes its
instruction to prompts only, and SDXL gives rows without a negative prompt zeros (the caller's job,
`empty_negative`). The tests hold every family to the pipeline called per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dit_worker.backends.diffusers.resolve import DiffusersSettings

Encoded = dict[str, torch.Tensor]  # positive __call__ keyword -> [N, ...], row i for text i
PromptEncoder = Callable[[Any, list[str], torch.device, DiffusersSettings, bool], Encoded]


def _pixart(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    embeds, mask, _, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, device=device, clean_caption=bool(s.clean_caption),
        max_sequence_length=s.max_sequence_length,
    )  # fmt: skip
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _sd(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    embeds, _ = pipe.encode_prompt(texts, device, 1, False)
    return {"prompt_embeds": embeds}


def _sd3(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    # CLIP padded to 77 and T5 to max_sequence_length, neither masked: the length shapes the image.
    embeds, _, pooled, _ = pipe.encode_prompt(
        texts, None, None, device=device, do_classifier_free_guidance=False, max_sequence_length=s.max_sequence_length
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _flux(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    embeds, pooled, _ = pipe.encode_prompt(texts, None, device=device, max_sequence_length=s.max_sequence_length)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _sana(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    # The instruction goes before prompts only (diffusers encodes negatives without it); without it
    # the positive path keeps every token, as the negative path does.
    instruction = None if negative or not s.complex_human_instruction else list(s.complex_human_instruction)
    embeds, mask, _, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, device=device, clean_caption=bool(s.clean_caption),
        max_sequence_length=s.max_sequence_length, complex_human_instruction=instruction,
    )  # fmt: skip
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _sdxl(pipe: Any, texts: list[str], device: torch.device, s: DiffusersSettings, negative: bool) -> Encoded:
    embeds, _, pooled, _ = pipe.encode_prompt(texts, None, device, 1, False)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


# Family.encoding -> its encoder (dit_worker.backends.diffusers.families).
ENCODERS: dict[str, PromptEncoder] = {
    "pixart": _pixart,
    "sd": _sd,
    "sd3": _sd3,
    "flux": _flux,
    "sana": _sana,
    "sdxl": _sdxl,
}
