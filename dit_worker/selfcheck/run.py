"""Running the checks in order; a check that raises is one failing line naming it, and the rest still run."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from dit_worker.selfcheck.config import SelfCheckConfig
from dit_worker.selfcheck.context import Context
from dit_worker.selfcheck.families import check_families
from dit_worker.selfcheck.fast_path import check_fast_path
from dit_worker.selfcheck.job import check_job
from dit_worker.selfcheck.lines import CheckLine
from dit_worker.selfcheck.rows import check_rows
from dit_worker.selfcheck.speed import check_speed

log = logging.getLogger(__name__)
CHECKS: dict[str, Callable[[Context], list[CheckLine]]] = {
    "fast-path": check_fast_path,
    "rows": check_rows,
    "job": check_job,
    "speed": check_speed,
    "families": check_families,
}


def run_selfcheck(config: SelfCheckConfig) -> Iterator[CheckLine]:
    """Every chosen check's lines, as each check finishes (in CHECKS order)."""
    work = Path(config.out) if config.out else Path(tempfile.mkdtemp(prefix="dit-selfcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(config, work)
    try:
        for name, check in CHECKS.items():
            if config.only and name not in config.only:
                continue
            t0 = time.perf_counter()
            try:
                lines = check(ctx)
            except Exception as err:  # a check that cannot run fails, named; the others still run
                log.debug("check %s raised", name, exc_info=True)
                where = traceback.extract_tb(err.__traceback__)[-1]
                lines = [
                    CheckLine(
                        check=name,
                        name="ran to the end",
                        value=f"{type(err).__name__}: {err}",
                        holds=False,
                        note=f"{Path(where.filename).name}:{where.lineno}",
                    )
                ]
            seconds = time.perf_counter() - t0
            yield from (
                line.model_copy(update={"extra": {**line.extra, "check_seconds": round(seconds, 1)}}) for line in lines
            )
    finally:
        if not config.out:
            shutil.rmtree(work, ignore_errors=True)
