"""The job's rows, built from its flags or manifest and checked against the model on the driver
before any GPU work (docs/backends.md): a way of listing samples for another kind of model, and
prompts the pipeline would change without saying so (cut past its token limit, cleaned away to
nothing), are refused naming the row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dit_worker.driver.config import JobConfig
from dit_worker.driver.model_info import ModelInfo
from dit_worker.manifest.samples import (
    ManifestError,
    Samples,
    from_classes,
    from_count,
    from_prompts,
    parse_classes,
    read_manifest,
)

HOW_TO_LIST = {
    "class": "--classes/--per-class or a manifest with class_id or class_name",
    "text": "--prompts FILE --per-prompt N or a manifest with a prompt column",
    "none": "--num-samples N or a manifest with seed (and sample_id) only",
}
KIND = {"class": "class-conditional", "text": "text-to-image", "none": "unconditional"}
SOURCE_KIND = {"per_class": "class", "prompts": "text", "num_samples": "none"}


def job_rows(config: JobConfig, info: ModelInfo) -> Samples:
    """The job's rows, each checked against the model; the way they are listed is checked first."""
    check_sample_source(config, info)
    if config.manifest is not None:
        samples = read_manifest(config.manifest, info.names, info.conditioning)
    elif config.prompts is not None:
        assert config.per_prompt is not None
        samples = from_prompts(config.prompts, config.per_prompt, config.seed)
    elif config.num_samples is not None:
        samples = from_count(config.num_samples, config.seed)
    else:
        assert config.per_class is not None and info.names is not None
        samples = from_classes(parse_classes(config.classes, info.names), config.per_class, config.seed)
    check_rows(samples, info, config)
    return samples


def check_sample_source(config: JobConfig, info: ModelInfo) -> None:
    """--classes, --prompts and --num-samples each fit one kind of model."""
    kind = info.conditioning
    for field, wants in SOURCE_KIND.items():
        if getattr(config, field) is None or wants == kind:
            continue
        what = f"--preset {config.preset}" if config.preset else "--" + field.replace("_", "-")
        raise ManifestError(
            f"{what} is for {KIND[wants]} models, but {config.model} is a {info.pipeline_class} "
            f"({KIND[kind]}); list its samples with {HOW_TO_LIST[kind]}"
        )


def check_rows(samples: Samples, info: ModelInfo, config: JobConfig) -> None:
    """Every prompt and negative prompt through the pipeline's own text preprocessing and tokenizer."""
    if samples.negative_prompt is not None and config.negative_prompt is not None:
        raise ManifestError(
            f"{config.manifest}: rows carry their own negative_prompt; drop --negative-prompt or the column"
        )
    if samples.prompt is None:
        return
    if samples.negative_prompt is not None and not (getattr(info.settings, "cfg_scale", None) or 0) > 1:
        raise ManifestError(
            f"{config.manifest}: negative_prompt has no effect without guidance; raise --cfg-scale above 1 or drop "
            "the column"
        )
    columns = [("prompt", samples.prompt.to_arrow())]
    if samples.negative_prompt is not None:
        columns.append(("negative_prompt", samples.negative_prompt.to_arrow()))
    for name, column in columns:
        encoded = column.dictionary_encode()
        texts = encoded.dictionary.to_pylist()
        problems = info.spec.check_prompts(texts, info.settings)
        if problems:
            _refuse(name, texts, problems, encoded.indices, samples.sample_id)
    if config.negative_prompt is not None:
        problems = info.spec.check_prompts([config.negative_prompt], info.settings)
        if problems:
            raise ManifestError(f"--negative-prompt {config.negative_prompt[:60]!r} {problems[0][1]}")


def _refuse(
    name: str, texts: list[str], problems: list[tuple[int, str]], indices: pa.Array, sample_id: np.ndarray
) -> None:
    """Name the first bad row (by sample_id) and how many rows share the problem."""
    bad = np.zeros(len(texts), bool)
    bad[[i for i, _ in problems]] = True
    codes = indices.fill_null(-1).to_numpy(zero_copy_only=False)  # negative prompts may be empty cells
    rows = np.flatnonzero((codes >= 0) & bad[np.maximum(codes, 0)])
    first = int(rows[0])
    reason = dict(problems)[int(codes[first])]
    text = texts[int(codes[first])]
    more = f" ({rows.size} rows in all)" if rows.size > 1 else ""
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise ManifestError(f"sample_id {int(sample_id[first])}: {name} {shown!r} {reason}{more}")
