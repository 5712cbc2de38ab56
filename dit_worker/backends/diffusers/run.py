"""The diffusers backend, worker side: a pipeline loaded on one worker, generating a batch of rows.

A batch passes one CPU generator per sample: diffusers' `randn_tensor` draws each sample's initial
latent (and each stochastic step's noise) from its own generator, so a row's image does not depend
on the rest of its batch. Prompts are encoded with the pipeline's own `encode_prompt` and passed as
embeddings (prompt_encoding.py, family by family), which is what lets the text encoders live
elsewhere (`TextEncoderPlacement`). The generic path passes prompts as text.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dit_worker.backends.base import NonFiniteLatents, RowColumns, Rows, TextEncoderPlacement
from dit_worker.backends.diffusers.families import FAMILIES, SCHEDULERS, generic_family
from dit_worker.backends.diffusers.prompt_encoding import ENCODERS, Encoded
from dit_worker.backends.diffusers.resolve import (
    DiffusersSettings,
    call_parameters,
    diffusers_module,
    require_caption_cleaning,
)
from dit_worker.backends.settings import DTYPES, resolve_device, resolve_dtype
from dit_worker.checkpoints.files import read_json
from dit_worker.checkpoints.sources import resolve_source
from dit_worker.labels import ClassNames

log = logging.getLogger(__name__)
Role = Literal["positive", "negative"]


class DiffusersGenerator:
    """A diffusers pipeline on one worker, behind the Generator interface.

    Usage::

        gen = DiffusersGenerator.load("pixart-dir", settings, device="cuda", dtype="bfloat16")
        gen.begin_shard(all_rows)  # shard-first: encode every prompt of the shard, free the encoders
        images = gen.generate(Rows(seeds=[0, 1], prompts=["a red cat", "a blue dog"]))
    """

    def __init__(
        self,
        pipe: Any,
        root: Path,
        settings: DiffusersSettings,
        text_encoder: TextEncoderPlacement = "device",
        encoders: dict[str, torch.nn.Module | None] | None = None,
        job_dtype: torch.dtype | None = None,
    ) -> None:
        """`pipe`: the pipeline without its text encoders, on its device; `encoders`: the family's text
        encoders by component (empty for shard-first, which loads them from `root` for each shard)."""
        self.pipe, self.root, self.settings, self.placement = pipe, root, settings, text_encoder
        self.family = FAMILIES.get(settings.pipeline) or generic_family(
            read_json(root / "model_index.json"), set(call_parameters(settings.pipeline))
        )
        self.dtype = getattr(pipe, self.family.denoiser).dtype
        self.job_dtype = job_dtype or self.dtype
        # Offloaded weights wait on the CPU (or the meta device); the pipeline runs on its offload device.
        offloaded = getattr(pipe, "_offload_device", None) if settings.offload else None
        self.device = torch.device(offloaded or getattr(pipe, self.family.denoiser).device)
        # --offload with --text-encoder device: the encoders stay in the pipeline, under its offload hooks.
        self.attached = bool(settings.offload) and text_encoder == "device"
        # Offload hooks move weights in and out during forward passes: run as diffusers' own __call__ does
        # (no_grad), not under inference_mode, whose tensors the moved parameters would become.
        self.grad_mode = torch.no_grad if settings.offload else torch.inference_mode
        self.names: ClassNames | None = None
        self.image_size = (settings.height, settings.width)
        self.columns = RowColumns(settings.sampler or settings.scheduler, settings.steps, settings.cfg_scale, None)
        self.encoders = encoders or {}
        home = self.device if text_encoder == "device" else torch.device("cpu")
        for encoder in self.encoders.values():
            if encoder is not None and not self.attached:
                encoder.to(home)
        # role -> (text -> row, stacked keywords): the encoded prompts of the current batch or shard.
        self._encoded: dict[Role, tuple[dict[str | None, int], Encoded]] = {}

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
        root = resolve_source(model, "model", revision=settings.revision, variant=settings.variant)
        dev = resolve_device(device)
        job_dtype = resolve_dtype(dtype, dev)
        family = FAMILIES.get(settings.pipeline)
        names = family.encoders if family is not None else ()
        # shard-first never holds the encoders between shards, not even while loading.
        skip = {name: None for name in names} if text_encoder == "shard-first" else {}
        # Components saved as null (SD3 without its T5: text_encoder_3, tokenizer_3) are passed as None, as
        # diffusers documents for leaving them out; from_pretrained refuses a directory without them otherwise.
        index = read_json(root / "model_index.json")
        skip |= {name: None for name, entry in index.items() if isinstance(entry, list) and entry == [None, None]}
        torch_dtype: Any = job_dtype
        if settings.component_dtypes:  # diffusers takes a dict: per component, "default" for the rest
            torch_dtype = {"default": job_dtype} | {k: DTYPES[v] for k, v in settings.component_dtypes.items()}
        extra = {"variant": settings.variant} if settings.variant else {}
        pipe = getattr(diffusers, settings.pipeline).from_pretrained(root, torch_dtype=torch_dtype, **extra, **skip)
        if settings.sampler is not None:
            pipe.scheduler = getattr(diffusers, SCHEDULERS[settings.sampler]).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if settings.loras:  # loaded with the encoders attached: an adapter may patch them too
            adapters = [f"adapter_{i}" for i in range(len(settings.loras))]
            for adapter, lora in zip(adapters, settings.loras, strict=True):
                pipe.load_lora_weights(lora.source, adapter_name=adapter)
            pipe.set_adapters(adapters, adapter_weights=[lora.scale for lora in settings.loras])
        # The pipeline gets embeddings, so it runs without its encoders: its device is the denoiser's.
        # With --offload and --text-encoder device they stay in it, offloaded in its chain like the rest.
        encoders = {name: getattr(pipe, name, None) for name in names if name not in skip}
        if not (settings.offload and text_encoder == "device"):
            for name in names:
                setattr(pipe, name, None)
        if settings.offload == "model":
            pipe.enable_model_cpu_offload(device=dev)
        elif settings.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=dev)
        else:
            pipe.to(dev)
        return cls(pipe, root, settings, text_encoder, encoders, job_dtype)

    # --- text encoding ---------------------------------------------------------------------------

    def _load_encoders(self) -> dict[str, torch.nn.Module | None]:
        """shard-first: the encoders, read again from the checkpoint (the classes model_index.json names,
        loaded as diffusers loads them, in their dtypes), on the device."""
        import transformers

        index = read_json(self.root / "model_index.json")
        encoders: dict[str, torch.nn.Module | None] = {}
        for name in self.family.encoders:
            _, cls_name = index.get(name) or (None, None)
            if cls_name is None:  # an optional encoder the checkpoint leaves out (SD3 without T5)
                encoders[name] = None
                continue
            dtype = DTYPES[self.settings.component_dtypes[name]] if name in self.settings.component_dtypes else None
            extra = {"variant": self.settings.variant} if self.settings.variant else {}
            encoder = getattr(transformers, cls_name).from_pretrained(
                self.root / name, dtype=dtype or self.job_dtype, **extra
            )
            encoders[name] = encoder.to(self.device).eval()
        return encoders

    def _free_encoders(self) -> None:
        self.encoders = {}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _encode(self, texts: list[str | None], role: Role) -> Encoded:
        """The family's encoder on `texts` (None: a negative given zeros, SDXL's empty negative);
        results on the device."""
        live = [e for e in self.encoders.values() if e is not None]
        device = next(live[0].parameters()).device if live and not self.attached else self.device
        for name, encoder in self.encoders.items():
            setattr(self.pipe, name, encoder)
        try:
            with self.grad_mode():
                assert self.family.encoding is not None
                encode = ENCODERS[self.family.encoding]
                out = encode(self.pipe, [t or "" for t in texts], device, self.settings, role == "negative")
        finally:
            for name in self.encoders:
                if not self.attached:
                    setattr(self.pipe, name, None)
        zero = torch.tensor([t is None for t in texts], device=device)
        result = {}
        for key, value in out.items():
            if zero.any() and value.is_floating_point():
                value = torch.where(zero.view(-1, *[1] * (value.dim() - 1)), torch.zeros_like(value), value)
            result[key] = value.to(self.device)
        return result

    def _encode_into_cache(self, role: Role, texts: list[str | None], chunk: int) -> None:
        unique = list(dict.fromkeys(texts))
        parts = [self._encode(unique[lo : lo + chunk], role) for lo in range(0, len(unique), chunk)]
        # shard-first keeps a whole shard's embeddings: in host memory (T5-XXL: 2.3 MiB a prompt), each
        # batch's rows copied to the device as it runs.
        home = torch.device("cpu") if self.placement == "shard-first" else self.device
        stacked = {key: torch.cat([p[key].to(home) for p in parts]) for key in parts[0]}
        self._encoded[role] = ({text: i for i, text in enumerate(unique)}, stacked)

    def _texts(self, rows: Rows) -> dict[Role, list[str | None]]:
        """The texts each role encodes for `rows`: prompts, and negatives where guidance uses them."""
        assert rows.prompts is not None, "text-to-image rows carry prompts"
        texts: dict[Role, list[str | None]] = {"positive": list(rows.prompts)}
        if self.uses_negative:
            # A row without its own: --negative-prompt, else the family's empty negative ("" or zeros).
            fallback = self.settings.negative_prompt or ("" if self.settings.empty_negative == "text" else None)
            texts["negative"] = [
                n if n is not None else fallback for n in (rows.negative_prompts or [None] * len(rows))
            ]
        return texts

    @property
    def uses_negative(self) -> bool:
        s = self.settings
        return s.empty_negative not in (None, "none") and s.cfg_scale is not None and s.cfg_scale > 1.0

    def begin_shard(self, rows: Rows) -> None:
        if self.family.conditioning != "text" or self.placement != "shard-first":
            return
        self.encoders = self._load_encoders()
        try:
            for role, texts in self._texts(rows).items():
                self._encode_into_cache(role, texts, chunk=max(len(rows), 1))
        finally:
            self._free_encoders()

    # --- sampling --------------------------------------------------------------------------------

    def generate(self, rows: Rows) -> torch.Tensor:
        return self.generate_steps(rows, self.settings.steps)

    def generate_steps(self, rows: Rows, steps: int) -> torch.Tensor:
        """`generate` with another step count (the benchmark's and max_batch_size's one-step calls)."""
        if self.family.generic and self.family.conditioning == "text":
            return self._generate_text_generic(rows, steps)
        kwargs = self._common_kwargs(rows, steps)
        if self.family.conditioning == "text":
            kwargs |= self._text_kwargs(rows)
        elif "batch_size" in call_parameters(self.settings.pipeline):
            kwargs["batch_size"] = len(rows)
        return self._call(kwargs)

    def _common_kwargs(self, rows: Rows, steps: int) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in rows.seeds],
            "num_inference_steps": steps,
            "output_type": "np",
            **s.pipeline_args,
        }
        if s.eta:
            kwargs["eta"] = s.eta
        if self.family.conditioning == "text":
            kwargs |= {"height": s.height, "width": s.width}
            if s.cfg_scale is not None:
                kwargs["guidance_scale"] = s.cfg_scale
        return kwargs

    def _call(self, kwargs: dict[str, Any]) -> torch.Tensor:
        with self.grad_mode():
            images = np.asarray(self.pipe(**kwargs).images)  # float32 [N, H, W, 3] in [0, 1]
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():  # NaN latents decode to NaN pixels (clamp keeps NaN): never write them as black
            raise NonFiniteLatents(np.flatnonzero(bad).tolist())
        return torch.from_numpy(np.round(images * 255).clip(0, 255).astype(np.uint8))

    def _generate_text_generic(self, rows: Rows, steps: int) -> torch.Tensor:
        """The generic path: prompts (and negative prompts) passed to __call__ as text. Rows with and
        without a negative prompt go in separate calls: a pipeline takes a list of both or neither."""
        assert rows.prompts is not None
        fallback = self.settings.negative_prompt
        negatives = [n if n is not None else fallback for n in (rows.negative_prompts or [None] * len(rows))]
        groups = [[i for i, n in enumerate(negatives) if (n is None) == none] for none in (True, False)]
        out: list[torch.Tensor | None] = [None] * len(rows)
        for group in (g for g in groups if g):
            kwargs = self._common_kwargs(Rows(seeds=[rows.seeds[i] for i in group]), steps)
            kwargs["prompt"] = [rows.prompts[i] for i in group]
            if negatives[group[0]] is not None:
                kwargs["negative_prompt"] = [negatives[i] for i in group]
            for i, image in zip(group, self._call(kwargs), strict=True):
                out[i] = image
        return torch.stack([o for o in out if o is not None])

    def _text_kwargs(self, rows: Rows) -> dict[str, Any]:
        texts = self._texts(rows)
        if self.placement != "shard-first":
            for role, role_texts in texts.items():
                self._encode_into_cache(role, role_texts, chunk=len(role_texts))
        kwargs: dict[str, Any] = {}
        for role, role_texts in texts.items():
            index, stacked = self._encoded.get(role, ({}, {}))
            missing = [t for t in role_texts if t not in index]
            if missing:
                raise RuntimeError(f"shard-first: {len(missing)} {role} prompt(s) of this batch were not encoded")
            for key, values in stacked.items():
                picked = values[torch.tensor([index[t] for t in role_texts], device=values.device)]
                kwargs[key if role == "positive" else "negative_" + key] = picked.to(self.device)
        if "negative_prompt" in call_parameters(self.settings.pipeline):
            kwargs["negative_prompt"] = None  # a default "" (PixArt, Sana) may not be passed next to embeddings
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
