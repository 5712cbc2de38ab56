"""Check 3: the job on this machine. A small local job (png, then parquet) killed (SIGKILL) after its
first commit and resumed with the same command holds every sample once, each image's sha256 equal to an
uninterrupted run's; `--batch-size auto` picks a size and the job says which."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dit_worker.backends.settings import SamplingSettings
from dit_worker.driver.config import JobConfig
from dit_worker.output.layout import PART_KEY
from dit_worker.output.reader import OutputSet
from dit_worker.selfcheck.context import Context
from dit_worker.selfcheck.lines import CheckLine

NAME = "job"
CLASSES, PER_CLASS, SHARD_SIZE, BATCH = (1, 2, 3, 4, 5, 6), 4, 2, 2  # 12 shards: the kill lands mid-run
SAMPLING = SamplingSettings(sampler="ddim", steps=12, cfg_scale=2.5, cfg_channels=3)
LEASE_TTL = 2.0  # the killed run's lease: taken over this long after its last renewal
# Eager: every run here is a fresh worker, and compiling each (CUDA graphs) would cost more than the check;
# the compiled path's images are the fast-path check's.
KILL_WITHIN_S = 300.0  # the killed run must commit its first shard within this


def job_config(
    ctx: Context, out: Path, fmt: str, batch_size: int | str, classes: tuple[int, ...] = CLASSES
) -> JobConfig:
    return JobConfig(
        model=str(ctx.dit),
        out=str(out),
        local=True,
        device=ctx.device.type,
        format=fmt,
        classes=tuple(map(str, classes)),
        per_class=PER_CLASS,
        shard_size=SHARD_SIZE,
        batch_size=batch_size,
        sampling=SAMPLING,
        lease_ttl=LEASE_TTL,
        compile=False,
    )


def command(config: JobConfig) -> list[str]:
    """The `jobs.generate` command line of `config` (the same job, as a user would type it)."""
    s = config.sampling
    flags = {
        "--model": config.model, "--out": config.out, "--device": config.device, "--format": config.format,
        "--classes": ",".join(config.classes or ()), "--per-class": config.per_class,
        "--shard-size": config.shard_size, "--batch-size": config.batch_size, "--sampler": s.sampler,
        "--steps": s.steps, "--cfg-scale": s.cfg_scale, "--cfg-channels": s.cfg_channels,
        "--lease-ttl": config.lease_ttl,
    }  # fmt: skip
    return [
        sys.executable,
        "-m",
        "jobs.generate",
        "--local",
        "--no-compile",
        *(str(x) for pair in flags.items() for x in pair),
    ]


def digests(out: Path) -> list[tuple[int, str]]:
    """(sample_id, sha256) of every committed row, in shard order (repeats kept: they must not exist)."""
    output = OutputSet.open(str(out))
    return [(int(i), h) for shard in output.iter_shards() for i, h in zip(shard.sample_ids, shard.sha256, strict=True)]


def committed(out: Path) -> int:
    folder = out / "metadata"
    return sum(1 for p in folder.iterdir() if PART_KEY.match(f"metadata/{p.name}")) if folder.is_dir() else 0


def kill_after_first_commit(configs: list[JobConfig], logs: list[Path]) -> list[int]:
    """Start each job as a process of its own (side by side), SIGKILL each once it has committed a shard;
    the shards each had committed then."""
    procs = []
    for config, log in zip(configs, logs, strict=True):
        with log.open("wb") as sink:
            procs.append(subprocess.Popen(command(config), stdout=sink, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + KILL_WITHIN_S
    try:
        waiting = set(range(len(procs)))
        while waiting and time.monotonic() < deadline:
            for k in list(waiting):
                if committed(Path(configs[k].out)) or procs[k].poll() is not None:
                    procs[k].send_signal(signal.SIGKILL)
                    waiting.discard(k)
            time.sleep(0.01)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return [committed(Path(config.out)) for config in configs]


class BatchSizeSeen(logging.Handler):
    """The batch size the job's workers report when ready ("... batch N ...")."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"\bbatch (\d+)", record.getMessage())
        if found and "ready" in record.getMessage():
            self.sizes.append(int(found.group(1)))


def check_job(ctx: Context) -> list[CheckLine]:
    lines = []
    shards = len(CLASSES) * PER_CLASS // SHARD_SIZE
    jobs = ctx.work / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    formats = ("png", "parquet")
    broken = [job_config(ctx, jobs / f"{fmt}-killed", fmt, BATCH) for fmt in formats]
    at_kill = kill_after_first_commit(broken, [jobs / f"{fmt}-killed.log" for fmt in formats])
    time.sleep(LEASE_TTL)  # the killed runs' leases expire
    for fmt, config, killed_at in zip(formats, broken, at_kill, strict=True):
        ctx.run_job(f"{fmt}-resumed", config)  # the same job, resumed
        whole = job_config(ctx, jobs / f"{fmt}-whole", fmt, BATCH)
        ctx.run_job(f"{fmt}-whole", whole)
        got, expected = digests(Path(config.out)), digests(Path(whole.out))
        ids = [i for i, _ in got]
        once = len(set(ids)) == len(ids) == len(expected)
        equal = sum(a == b for a, b in zip(sorted(got), sorted(expected), strict=False))
        killed_mid_run = 0 < killed_at < shards
        note = f"{killed_at}/{shards} shards committed at SIGKILL; {len(got)} rows after resume"
        lines.append(CheckLine(check=NAME, name=f"{fmt}: killed and resumed = uninterrupted (sha256)", value=equal,
                               unit="rows equal", bound=f"{len(expected)}, each once",
                               holds=once and equal == len(expected) and killed_mid_run,
                               note=note if killed_mid_run else f"{note}; NOT killed mid-run"))  # fmt: skip
    seen = BatchSizeSeen()
    logger = logging.getLogger("dit_worker")
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ctx.run_job("auto", job_config(ctx, ctx.work / "jobs" / "auto", "png", "auto", classes=(7,)))
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    lines.append(
        CheckLine(
            check=NAME,
            name="--batch-size auto picks",
            value=seen.sizes[0] if seen.sizes else None,
            unit="rows per batch",
            holds=bool(seen.sizes),
            bound="reported",
            note="CPU: a fixed 8" if ctx.device.type == "cpu" else "measured from free memory",
        )
    )
    return lines
