"""Which flags apply to which model kind (docs/cli.md, "Flags and model kinds"): one table, consulted
once the model's kind is known and before its settings are resolved, so that every flag given for a
model that would ignore it is refused the same way, in one line, before anything loads or is written.

A flag is "given" when the user set it: a field of `JobConfig.model_fields_set` (or of its sampling
settings), except those a preset fixed, which are the preset's own and are named as the preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from dit_worker.backends import Conditioning, ModelSpec
from dit_worker.backends.options import OPTION_TEXT, Option, model_options
from dit_worker.driver.config import PRESETS, JobConfig, flag
from dit_worker.driver.errors import JobError
from dit_worker.metrics.row_scores import parse_scores

KINDS: dict[Conditioning, str] = {"class": "class-conditional DiT", "text": "text-to-image", "none": "unconditional"}
CLASS: tuple[Conditioning, ...] = ("class",)
TEXT: tuple[Conditioning, ...] = ("text",)
NONE: tuple[Conditioning, ...] = ("none",)
DIFFUSERS: tuple[Conditioning, ...] = ("text", "none")  # every diffusers pipeline (DiT runs natively)


@dataclass(frozen=True)
class Applies:
    """The model kinds a flag is for and, where only some models of those kinds honour it, the option
    (`dit_worker.backends.options`) the model must have."""

    kinds: tuple[Conditioning, ...]
    option: Option | None = None

    def to(self, kind: Conditioning, options: frozenset[Option]) -> bool:
        return kind in self.kinds and (self.option is None or self.option in options)

    def describe(self) -> str:
        kinds = " and ".join(KINDS[k] for k in self.kinds)
        whose = f" whose pipeline takes {OPTION_TEXT[self.option]}" if self.option else ""
        return f"{kinds} models{whose}"


# Flag (a JobConfig or SamplingSettings field) -> the models it applies to. Flags in EVERY_KIND apply
# to every model (the values of --sampler, --steps, --height/--width and a manifest's columns are
# checked by the backend and the row reader); a test holds every field to be in exactly one of the two.
FLAGS: dict[str, Applies] = {
    "preset": Applies(CLASS),
    "classes": Applies(CLASS),
    "per_class": Applies(CLASS),
    "prompts": Applies(TEXT),
    "per_prompt": Applies(TEXT),
    "num_samples": Applies(NONE),
    "vae": Applies(CLASS),
    "cfg_scale": Applies(("class", "text"), "guidance"),
    "cfg_channels": Applies(CLASS),
    "guidance_interval": Applies(CLASS),
    "eta": Applies(("class", "text", "none"), "eta"),
    "negative_prompt": Applies(TEXT, "negative_prompt"),
    "max_sequence_length": Applies(TEXT, "max_sequence_length"),
    "clean_caption": Applies(TEXT, "clean_caption"),
    "text_encoder": Applies(TEXT),
    "pipeline_arg": Applies(DIFFUSERS),
    "lora": Applies(DIFFUSERS, "lora"),
    "variant": Applies(DIFFUSERS),
    "revision": Applies(DIFFUSERS),  # the native DiT path loads a hub id's main revision only
    "offload": Applies(DIFFUSERS),
    "component_dtype": Applies(DIFFUSERS),
    "score_embeddings": Applies(("class", "text")),  # clip's: scored against a prompt or a class name
}
EVERY_KIND = (
    "model", "out", "s3_endpoint", "s3_retry_mode", "manifest", "seed", "sampler", "steps", "height", "width",
    "batch_size", "shard_size", "num_workers", "num_gpus_per_worker", "min_workers", "device", "dtype", "local",
    "format", "image_format", "quality", "io_threads", "max_tries", "retry_backoff", "retry_backoff_max",
    "placement_timeout", "lease_ttl", "verify", "compile", "metrics", "inception_weights", "score",
    "clip_model",
)  # fmt: skip
SAMPLING = ("cfg_scale", "cfg_channels", "guidance_interval", "eta")  # FLAGS keys that live in config.sampling


def given_flags(config: JobConfig) -> dict[str, str]:
    """The table's flags the user set -> how to name them: `--flag`, or `--preset NAME` for the preset."""
    fixed = PRESETS.get(config.preset or "", {})
    given: dict[str, str] = {}
    for field in FLAGS:
        owner = config.sampling if field in SAMPLING else config
        if field not in owner.model_fields_set or getattr(owner, field) in (None, ()):
            continue
        if field in fixed or field in fixed.get("sampling", {}):
            continue  # the preset's own value (it refuses the same flag given next to it)
        given[field] = f"--preset {config.preset}" if field == "preset" else flag(field)
    return given


def check_flags(config: JobConfig, spec: ModelSpec) -> None:
    """Refuse, in one line, every given flag that does not apply to the model: each named with the
    models it is for, then the model, its kind, and the flags of the table it takes."""
    kind, options = spec.conditioning, model_options(spec)
    wrong: dict[str, list[str]] = {}  # what the flags are for -> the flags
    for field, name in given_flags(config).items():
        if not FLAGS[field].to(kind, options):
            wrong.setdefault(FLAGS[field].describe(), []).append(name)
    if not wrong:
        _check_clip_text(config, spec)
        return
    parts = [f"{listed(names)} {'is' if len(names) == 1 else 'are'} for {what}" for what, names in wrong.items()]
    takes = [flag(f) for f, applies in FLAGS.items() if applies.to(kind, options)]
    raise JobError(
        f"{'; '.join(parts)}; {config.model} is a {spec.pipeline_class} ({KINDS[kind]}), which takes "
        f"{', '.join(takes) or 'none of these flags'}; drop {listed([n for names in wrong.values() for n in names])}"
    )


def _check_clip_text(config: JobConfig, spec: ModelSpec) -> None:
    """--score clip needs a text per row: the prompt, or the class name of a class-conditional model."""
    if spec.conditioning == "none" and "clip" in {r.kind for r in parse_scores(config.score)}:
        raise JobError(
            f"--score clip scores each image against its prompt or class name, and {config.model} is a "
            f"{spec.pipeline_class} (unconditional), which has neither; drop --score clip (aesthetic and "
            "classifier:NAME=MODEL need no text)"
        )


def listed(names: list[str]) -> str:
    """Names joined as prose: a; a and b; a, b and c."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
