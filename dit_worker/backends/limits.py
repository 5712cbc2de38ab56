"""Upper bounds on a diffusers job's image size and sequence length, checked on the driver before any
weights load (docs/cli.md, "Sizes and memory"): what the model supports (its position embeddings,
its resolution bins, its pipeline's and tokenizer's sequence limits), and an estimate of the memory
one sample needs, set against the memory of the device it would run on.

DiT checkpoints make one size only (their resolve refuses any other), so neither applies to them.
"""

from __future__ import annotations

import inspect
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_worker.backends.base import ModelSpec
from dit_worker.backends.diffusers.resolve import DiffusersModel, DiffusersSettings, diffusers_module
from dit_worker.checkpoints.files import read_json

GIB = 2**30
UNSET_LENGTH = 10**9  # transformers' model_max_length for a tokenizer saved without one is 1e30


def check_limits(spec: ModelSpec, settings: object) -> None:
    """Refuse (ValueError, one line) a size or sequence length the model itself cannot take."""
    if not isinstance(spec, DiffusersModel) or spec.conditioning != "text":
        return  # DiT and unconditional pipelines make their one size (resolve refuses any other)
    assert isinstance(settings, DiffusersSettings)
    _check_size(spec, settings)
    if settings.max_sequence_length is not None:
        _check_sequence(spec, settings.max_sequence_length)


def _check_size(spec: DiffusersModel, s: DiffusersSettings) -> None:
    name, config = spec.pipeline_class, spec.denoiser_config
    bins = resolution_bins(spec, s)
    if bins is not None:
        ratios = sorted(float(r) for r in bins)
        ratio = s.height / s.width
        if not ratios[0] <= ratio <= ratios[-1]:
            raise ValueError(
                f"--height/--width {s.height}x{s.width}: aspect ratio {ratio:.3g} (height/width) is outside "
                f"{name}'s resolution bins ({ratios[0]:g} to {ratios[-1]:g}), so the pipeline would make an image "
                "at the nearest bin and crop it; choose a size within them, or pass --pipeline-arg "
                "use_resolution_binning=false"
            )
    _check_shift(spec, s)
    limit = config.get("pos_embed_max_size") if not spec.family.generic else None
    if limit:  # SD3: position embeddings cropped from a pos_embed_max_size x pos_embed_max_size grid
        largest = int(limit) * spec.family.patch_factor(config) * spec.vae_scale()
        for flag, value in (("--height", s.height), ("--width", s.width)):
            if value > largest:
                raise ValueError(
                    f"{flag} {value}: {name}'s position embeddings reach {largest} px ({spec.family.denoiser} "
                    f"pos_embed_max_size {limit} x patch {spec.family.patch_factor(config)} x VAE "
                    f"{spec.vae_scale()}); use at most {largest}"
                )


def _check_shift(spec: DiffusersModel, s: DiffusersSettings) -> None:
    """Flow-matching pipelines with dynamic shifting (FLUX, SD3 where configured) compute mu linearly in
    the latent token count and the scheduler takes exp(mu): past float64's range (mu > 709) the
    pipeline raises OverflowError on the worker."""
    sched = spec.scheduler_config
    if spec.family.generic or not sched.get("use_dynamic_shifting"):
        return
    if sched.get("time_shift_type", "exponential") != "exponential":
        return
    params = _shift_parameters(sched)
    if params is None:
        return
    base_len, max_len, base_shift, max_shift = params
    slope = (max_shift - base_shift) / (max_len - base_len)
    if slope <= 0:
        return
    p, scale = spec.family.patch_factor(spec.denoiser_config), spec.vae_scale()
    tokens = (s.height // scale // p) * (s.width // scale // p)
    most = int((EXP_LIMIT - (base_shift - slope * base_len)) / slope)
    if tokens > most:
        raise ValueError(
            f"--height/--width {s.height}x{s.width}: {tokens} latent tokens, and {spec.pipeline_class}'s scheduler "
            f"shifts its timesteps by exp(mu) with mu growing with the token count (base_image_seq_len {base_len:g}, "
            f"max_image_seq_len {max_len:g}): past {most} tokens exp(mu) overflows; use a smaller size"
        )


EXP_LIMIT = 709.0  # math.exp overflows just above 709.78


def _shift_parameters(sched: dict) -> tuple[float, float, float, float] | None:
    """(base_image_seq_len, max_image_seq_len, base_shift, max_shift) of a scheduler config, as the
    pipelines read them (with their defaults 256, 4096, 0.5, 1.15)."""
    try:
        return (
            float(sched.get("base_image_seq_len", 256)),
            float(sched.get("max_image_seq_len", 4096)),
            float(sched.get("base_shift", 0.5)),
            float(sched.get("max_shift", 1.15)),
        )
    except (TypeError, ValueError):
        return None


def _check_sequence(spec: DiffusersModel, length: int) -> None:
    limits = []
    if spec.family.sequence_limit is not None:
        limits.append((spec.family.sequence_limit, f"{spec.pipeline_class} refuses more than that"))
    tokenizer = sequence_tokenizer(spec)
    if tokenizer is not None:
        most = spec.tokenizer(tokenizer).model_max_length
        if most < UNSET_LENGTH:
            limits.append((int(most), f"{tokenizer}'s model_max_length"))
        encoder = encoder_config(spec, tokenizer)
        positions = encoder.get("max_position_embeddings") if encoder else None
        if positions:
            limits.append((int(positions), f"{tokenizer.replace('tokenizer', 'text_encoder')}'s position embeddings"))
    for most, why in limits:
        if length > most:
            raise ValueError(f"--max-sequence-length {length}: at most {most} ({why}); use {most} or fewer")


def resolution_bins(spec: DiffusersModel, s: DiffusersSettings) -> dict[str, list[float]] | None:
    """The aspect-ratio bins the pipeline maps a request to (PixArt, Sana with binning on): diffusers'
    own `ASPECT_RATIO_<px>_BIN` table for the transformer's sample size, read from the pipeline's module."""
    if not (s.resolution_binning and spec.family.binned_sample_sizes):
        return None
    base = int(spec.denoiser_config.get("sample_size", 0)) * spec.vae_scale()
    module = inspect.getmodule(getattr(diffusers_module(), spec.pipeline_class))
    return getattr(module, f"ASPECT_RATIO_{base}_BIN", None)


def sequence_tokenizer(spec: DiffusersModel) -> str | None:
    """The tokenizer component whose length --max-sequence-length sets (T5, Gemma), if the directory has it."""
    for check in spec.family.length_checks:
        if check.limit == "sequence" and (spec.index.get(check.tokenizer) or [None])[0] is not None:
            return check.tokenizer
    return None


def encoder_config(spec: DiffusersModel, tokenizer: str) -> dict | None:
    path = Path(spec.root) / tokenizer.replace("tokenizer", "text_encoder") / "config.json"
    return read_json(path) if path.is_file() else None


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes one sample needs on the worker's device at its largest phase, weights not counted."""

    bytes: int
    phase: str  # what peaks: "the text encoder at 300 tokens", ...


def sample_memory(spec: ModelSpec, settings: object, dtype: torch.dtype) -> MemoryEstimate | None:
    """The estimate of docs/cli.md ("Sizes and memory") for a diffusers pipeline; None for DiT.

    b = bytes per element of `dtype`; g = 2 when guidance runs a negative branch, else 1. Phases run
    one after the other, so the peak is the largest of: the sequence encoder, heads x L^2 x b (one
    layer's attention scores; T5's position bias has this size even with fused attention); the
    denoiser, g x (6 x T x d + heads x T x L) x b for a transformer on T tokens of width d (one block's
    residual stream in and out and its 4d-wide MLP, plus masked cross-attention scores; its
    self-attention runs fused, so no heads x T^2 term), or g x 4 x c x h x w x b for a UNet (its
    first level's c channels on the h x w latents); and decoding, 2 x c_vae x H x W x b (one
    full-resolution convolution's input and output) plus 2 x 3 x H x W x 4 (the float32 image the
    pipeline returns and its rounded copy)."""
    if not isinstance(spec, DiffusersModel):
        return None
    assert isinstance(settings, DiffusersSettings)
    b = torch.tensor([], dtype=dtype).element_size()
    height, width = settings.height, settings.width
    bins = resolution_bins(spec, settings) if spec.conditioning == "text" else None
    if bins is not None:  # generated at the nearest bin, then resized to the request
        gen_h, gen_w = (int(x) for x in bins[min(bins, key=lambda r: abs(float(r) - height / width))])
    else:
        gen_h, gen_w = height, width
    negative = settings.cfg_scale is not None and settings.cfg_scale > 1 and settings.empty_negative != "none"
    g = 2 if negative else 1
    length = settings.max_sequence_length or 0
    phases = [(0, "")]

    tokenizer = sequence_tokenizer(spec) if length else None
    encoder = encoder_config(spec, tokenizer) if tokenizer else None
    if encoder:
        heads = int(encoder.get("num_heads") or encoder.get("num_attention_heads") or 1)
        phases.append((heads * length**2 * b, f"the text encoder's attention at {length} tokens"))

    config, scale = spec.denoiser_config, spec.vae_scale()
    h, w = gen_h // scale, gen_w // scale
    if spec.family.denoiser == "transformer":
        p = spec.family.patch_factor(config)
        tokens = (h // p) * (w // p)
        heads = int(config.get("num_attention_heads") or 1)
        d = heads * int(config.get("attention_head_dim") or 0) or int(config.get("hidden_size") or 0)
        cross = heads * tokens * length if spec.family.encoding in ("pixart", "sana") else 0  # masked
        phases.append((g * (6 * tokens * d + cross) * b, f"the transformer on {tokens} tokens"))
    else:
        channels = int((config.get("block_out_channels") or [0])[0])
        phases.append((g * 4 * channels * h * w * b, f"the UNet on {h}x{w} latents"))

    vae = spec.vae_config or {}
    c_vae = int((vae.get("decoder_block_out_channels") or vae.get("block_out_channels") or [0])[0])
    decode = 2 * c_vae * gen_h * gen_w * b + 2 * 3 * height * width * 4
    phases.append((decode, f"decoding {gen_h}x{gen_w} px" + (f" to {height}x{width}" if bins else "")))
    most, phase = max(phases)
    return MemoryEstimate(most, phase)


def check_memory(spec: ModelSpec, settings: object, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse (ValueError, one line) settings whose one sample needs more than `device` has."""
    estimate, room = sample_memory(spec, settings, dtype), device_memory(device)
    if estimate is None or room is None or estimate.bytes <= room[0]:
        return
    assert isinstance(settings, DiffusersSettings)
    length = f" with --max-sequence-length {settings.max_sequence_length}" if settings.max_sequence_length else ""
    raise ValueError(
        f"--height/--width {settings.height}x{settings.width}{length}: one sample needs about "
        f"{estimate.bytes / GIB:,.1f} GiB on {device} at its peak ({estimate.phase}; the estimate of docs/cli.md, "
        f'"Sizes and memory"), more than the {room[0] / GIB:,.1f} GiB of {room[1]}; use a smaller size or sequence '
        "length"
    )


def device_memory(device: torch.device) -> tuple[int, str] | None:
    """Bytes a sample may use on `device`, and where the figure comes from: a GPU's total memory; on
    the CPU the memory available now (MemAvailable), lowered by this process's cgroup limit and its
    address-space limit (RLIMIT_AS), where set."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{device}'s total memory"
    figures = []
    available = _meminfo("MemAvailable")
    if available is not None:
        figures.append((available, "available memory (MemAvailable)"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        figures.append((cgroup, "room under this process's cgroup memory.max"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        figures.append((max(0, soft - _status("VmSize")), "room under this process's RLIMIT_AS"))
    return min(figures) if figures else None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cgroup_room() -> int | None:
    """memory.max minus memory.current of this process's cgroup (v2), or None without a limit."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::")[-1]
        root = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None
