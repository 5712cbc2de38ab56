"""The diffusers backend, worker side: a pipeline loaded on one worker, generating a batch of rows.

A batch passes one CPU generator per sample: diffusers' `randn_tensor` draws each sample's initial
latent (and each stochastic step's noise) from its own generator, so a row's image does not depend
on the rest of its batch. Prompts are encoded with the pipeline's own `encode_prompt` and passed as
embeddings, which is what lets the text encoder live elsewhere (`TextEncoderPlacement`).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dit_worker.backends.base import NonFiniteLatents, RowColumns, Rows, TextEncoderPlacement
from dit_worker.backends.diffusers.resolve import (
    FAMILIES,
    SCHEDULERS,
    DiffusersSettings,
    diffusers_module,
    require_caption_cleaning,
)
from dit_worker.backends.labels import ClassNames
from dit_worker.backends.settings import resolve_device, resolve_dtype
from dit_worker.checkpoints.files import read_json
from dit_worker.checkpoints.sources import resolve_source

log = logging.getLogger(__name__)


class DiffusersGenerator:
    """A diffusers pipeline on one worker, behind the Generator interface.

    Usage::

        gen = DiffusersGenerator.load("pixart-dir", settings, device="cuda", dtype="bfloat16")
        gen.begin_shard(all_rows)  # shard-first: encode every prompt of the shard, free the encoder
        images = gen.generate(Rows(seeds=[0, 1], prompts=["a red cat", "a blue dog"]))
    """

    def __init__(
        self,
        pipe: Any,
        root: Path,
        settings: DiffusersSettings,
        text_encoder: TextEncoderPlacement = "device",
        encoder: torch.nn.Module | None = None,
    ) -> None:
        """`pipe`: the pipeline without its text encoder, on its device; `encoder`: the text encoder
        (None for shard-first, which loads it from `root` for each shard)."""
        self.pipe, self.root, self.settings, self.placement = pipe, root, settings, text_encoder
        self.family = FAMILIES[settings.pipeline]
        self.dtype = getattr(pipe, self.family.denoiser).dtype
        self.device = torch.device(getattr(pipe, self.family.denoiser).device)
        self.names: ClassNames | None = None
        self.image_size = (settings.height, settings.width)
        self.columns = RowColumns(settings.sampler or settings.scheduler, settings.steps, settings.cfg_scale, None)
        self.encoder = encoder
        if encoder is not None:
            encoder.to(self.device if text_encoder == "device" else torch.device("cpu"))
        self._cache: dict[str, int] = {}
        self._embeds: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @classmethod
    def load(
        cls,
        model: str,
        settings: DiffusersSettings,
        *,
        device: str,
        dtype: str,
        text_encoder: TextEncoderPlacement = "device",
    ) -> DiffusersGenerator:
        diffusers = diffusers_module()
        if settings.clean_caption:
            require_caption_cleaning()
        root = resolve_source(model, "model")
        dev = resolve_device(device)
        text = FAMILIES[settings.pipeline].conditioning == "text"
        # shard-first never holds the encoder between shards, not even while loading.
        skip = {"text_encoder": None} if text and text_encoder == "shard-first" else {}
        pipe = getattr(diffusers, settings.pipeline).from_pretrained(root, dtype=resolve_dtype(dtype, dev), **skip)
        if settings.sampler is not None:
            pipe.scheduler = getattr(diffusers, SCHEDULERS[settings.sampler]).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        # The pipeline gets embeddings, so it runs without its encoder: its device is the denoiser's.
        encoder = getattr(pipe, "text_encoder", None)
        if encoder is not None:
            pipe.text_encoder = None
        pipe.to(dev)
        return cls(pipe, root, settings, text_encoder, encoder)

    # --- text encoding ---------------------------------------------------------------------------

    def _free_encoder(self) -> None:
        self.encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load_encoder(self) -> torch.nn.Module:
        """shard-first: the encoder, read again from the checkpoint (the class model_index.json names,
        loaded as diffusers loads it), on the device."""
        import transformers

        _, name = read_json(self.root / "model_index.json")["text_encoder"]
        encoder = getattr(transformers, name).from_pretrained(self.root / "text_encoder", dtype=self.dtype)
        return encoder.to(self.device).eval()

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pipeline's own encode_prompt on `texts` (no guidance: each text as a positive prompt,
        which encodes exactly as the negative branch does); results on the device."""
        assert self.encoder is not None
        device = next(self.encoder.parameters()).device
        self.pipe.text_encoder = self.encoder
        try:
            with torch.inference_mode():
                if self.settings.pipeline.startswith("PixArt"):
                    embeds, mask, _, _ = self.pipe.encode_prompt(
                        texts,
                        do_classifier_free_guidance=False,
                        device=device,
                        clean_caption=bool(self.settings.clean_caption),
                        max_sequence_length=self.settings.max_sequence_length,
                    )
                else:
                    embeds, _ = self.pipe.encode_prompt(texts, device, 1, False)
                    mask = None
        finally:
            self.pipe.text_encoder = None
        return embeds.to(self.device), None if mask is None else mask.to(self.device)

    def _encode_into_cache(self, texts: list[str], chunk: int) -> None:
        unique = list(dict.fromkeys(texts))
        parts = [self._encode(unique[lo : lo + chunk]) for lo in range(0, len(unique), chunk)]
        # shard-first keeps a whole shard's embeddings: in host memory (T5-XXL: 2.3 MiB a prompt), each
        # batch's rows copied to the device as it runs.
        home = torch.device("cpu") if self.placement == "shard-first" else self.device
        embeds = torch.cat([p[0].to(home) for p in parts])
        mask = torch.cat([p[1].to(home) for p in parts]) if parts[0][1] is not None else None
        self._cache = {text: i for i, text in enumerate(unique)}
        self._embeds = (embeds, mask)

    def _texts(self, rows: Rows) -> tuple[list[str], list[str]]:
        assert rows.prompts is not None, "text-to-image rows carry prompts"
        fallback = self.settings.negative_prompt or ""  # diffusers' default negative prompt is ""
        negatives = [n if n is not None else fallback for n in (rows.negative_prompts or [None] * len(rows))]
        return rows.prompts, negatives

    @property
    def guided(self) -> bool:
        return self.settings.cfg_scale is not None and self.settings.cfg_scale > 1.0

    def begin_shard(self, rows: Rows) -> None:
        if self.family.conditioning != "text" or self.placement != "shard-first":
            return
        prompts, negatives = self._texts(rows)
        self.encoder = self._load_encoder()
        try:
            self._encode_into_cache(prompts + (negatives if self.guided else []), chunk=max(len(rows), 1))
        finally:
            self._free_encoder()

    # --- sampling --------------------------------------------------------------------------------

    def generate(self, rows: Rows) -> torch.Tensor:
        return self.generate_steps(rows, self.settings.steps)

    def generate_steps(self, rows: Rows, steps: int) -> torch.Tensor:
        """`generate` with another step count (the benchmark's and max_batch_size's one-step calls)."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in rows.seeds],
            "num_inference_steps": steps,
            "output_type": "np",
        }
        if s.eta:
            kwargs["eta"] = s.eta
        if self.family.conditioning == "text":
            kwargs |= self._text_kwargs(rows)
        else:
            kwargs["batch_size"] = len(rows)
        with torch.inference_mode():
            images = np.asarray(self.pipe(**kwargs).images)  # float32 [N, H, W, 3] in [0, 1]
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():  # NaN latents decode to NaN pixels (clamp keeps NaN): never write them as black
            raise NonFiniteLatents(np.flatnonzero(bad).tolist())
        return torch.from_numpy(np.round(images * 255).clip(0, 255).astype(np.uint8))

    def _text_kwargs(self, rows: Rows) -> dict[str, Any]:
        s = self.settings
        prompts, negatives = self._texts(rows)
        wanted = prompts + (negatives if self.guided else [])
        if self.placement != "shard-first":
            self._encode_into_cache(wanted, chunk=len(wanted))
        missing = [t for t in wanted if t not in self._cache]
        if missing:
            raise RuntimeError(f"shard-first: {len(missing)} prompt(s) of this batch were not encoded by begin_shard")
        assert self._embeds is not None
        embeds, mask = self._embeds

        def pick(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
            index = torch.tensor([self._cache[t] for t in texts], device=embeds.device)
            picked = embeds[index].to(self.device)
            return picked, None if mask is None else mask[index].to(self.device)

        kwargs: dict[str, Any] = {"guidance_scale": s.cfg_scale, "height": s.height, "width": s.width}
        pos, pos_mask = pick(prompts)
        kwargs["prompt_embeds"] = pos
        if pos_mask is not None:
            kwargs["prompt_attention_mask"] = pos_mask
        if self.guided:
            neg, neg_mask = pick(negatives)
            kwargs["negative_prompt_embeds"] = neg
            if neg_mask is not None:
                kwargs["negative_prompt_attention_mask"] = neg_mask
        if s.pipeline.startswith("PixArt"):
            kwargs["negative_prompt"] = None  # its default "" may not be passed next to embeddings
        return kwargs

    def compile(self) -> None:
        getattr(self.pipe, self.family.denoiser).compile()

    def max_batch_size(self, limit: int = 256) -> int:
        """Largest batch whose one-step call fits 90% of the free GPU memory, extrapolated from the
        peaks at batches 1 and 2 (peak memory grows linearly with the batch); 8 on CPU."""
        if self.device.type != "cuda":
            return 8
        rows = [Rows(seeds=list(range(b)), prompts=["a"] * b if self.family.conditioning == "text" else None)
                for b in (1, 2)]  # fmt: skip
        peaks = []
        for batch in rows:
            if self.placement == "shard-first":
                self.begin_shard(batch)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.generate_steps(batch, 1)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
        per_sample = max(peaks[1] - peaks[0], 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(limit, int((0.9 * free - (peaks[0] - per_sample)) // per_sample)))
