"""The job's rows, planned from its flags or manifest and checked against the model on the driver
before any GPU work (docs/manifests.md, docs/backends.md): bad cells, repeated ids, rows that would
make the same image, and prompts the pipeline would change without saying so (cut past its token
limit, cleaned away to nothing) are refused naming the row."""

from __future__ import annotations

from functools import partial

from dit_worker.driver.config import JobConfig
from dit_worker.driver.model_info import ModelInfo
from dit_worker.manifest.files import ManifestError
from dit_worker.manifest.samples import parse_classes
from dit_worker.manifest.scan import scan_files, scan_prompt_lines
from dit_worker.manifest.sources import DerivedManifest, Manifest


def job_rows(config: JobConfig, info: ModelInfo) -> Manifest:
    """The job's manifest, every row checked against the model (streamed: nothing per row is
    kept). Which way of listing rows fits the model was checked with the other flags
    (driver/flags.py)."""
    check_prompts = partial(info.spec.check_prompts, settings=info.settings) if info.conditioning == "text" else None
    if config.manifest is not None:
        manifest: Manifest = scan_files(
            str(config.manifest),
            info.names,
            info.conditioning,
            check_prompts,
            s3_endpoint=config.s3_endpoint,
            local=config.local,  # a large manifest is scanned by Ray tasks, or by this machine's processes
        )
    elif config.prompts is not None:
        assert config.per_prompt is not None
        location, scan, identity = scan_prompt_lines(str(config.prompts), check_prompts)
        manifest = DerivedManifest.of_prompts((location, scan.layout()), identity, config.per_prompt, config.seed)
    elif config.num_samples is not None:
        manifest = DerivedManifest.of_count(config.num_samples, config.seed)
    else:
        assert config.per_class is not None and info.names is not None
        manifest = DerivedManifest.of_classes(parse_classes(config.classes, info.names), config.per_class, config.seed)
    check_negative_prompts(manifest, info, config)
    return manifest


def check_negative_prompts(manifest: Manifest, info: ModelInfo, config: JobConfig) -> None:
    """Per-row negative prompts exclude --negative-prompt, need guidance; --negative-prompt itself
    goes through the pipeline's text checks."""
    if manifest.has_negative_prompts and config.negative_prompt is not None:
        raise ManifestError(
            f"{config.manifest}: rows carry their own negative_prompt; drop --negative-prompt or the column"
        )
    if manifest.has_negative_prompts and not (getattr(info.settings, "cfg_scale", None) or 0) > 1:
        raise ManifestError(
            f"{config.manifest}: negative_prompt has no effect without guidance; raise --cfg-scale above 1 or drop "
            "the column"
        )
    if config.negative_prompt is not None and info.conditioning == "text":
        problems = info.spec.check_prompts([config.negative_prompt], info.settings)
        if problems:
            raise ManifestError(f"--negative-prompt {config.negative_prompt[:60]!r} {problems[0][1]}")
