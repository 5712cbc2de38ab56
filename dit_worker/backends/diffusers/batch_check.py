"""The generic path's batch check (docs/backends.md, "Other pipelines"): the job's first rows made as one
batch and one at a time on a worker, before anything is written. A pipeline whose batch changes a
row's image by more than the tolerance (one that pads prompts to the longest of the batch without a
mask, as CogView4 does) cannot keep the per-row contract at that batch size; at batch size 1 it
always can, so the job refuses, offering `--batch-size 1`."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from dit_worker.backends.base import Generator, Rows

TOLERANCE = 1  # uint8 levels: the contract's 1/255
CHECK_ROWS = 4  # at most this many rows, the first ones with distinct prompts
SCAN_ROWS = 1000  # the job's first rows, among which they are looked for


class BatchCheck(BaseModel):
    """What the check found; recorded in job.json as `batch_check`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str
    rows: int  # rows compared
    batch_size: int  # the worker's batch size (the check's batch is at most this)
    max_diff: int  # largest |batched - alone| over the rows' pixels, in levels of 255
    tolerance: int = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.tolerance

    def refusal(self) -> str:
        return (
            f"{self.pipeline} failed the batch check: {self.rows} rows made as one batch differ from the same rows "
            f"made one at a time by {self.max_diff} levels of 255 (tolerance {self.tolerance}), so its images would "
            f"depend on the batch; rerun with --batch-size 1, which always keeps each image equal to the pipeline "
            "called for its row alone"
        )


def _take(rows: Rows, index: list[int]) -> Rows:
    pick = lambda column: None if column is None else [column[i] for i in index]  # noqa: E731
    return Rows([rows.seeds[i] for i in index], pick(rows.class_ids), pick(rows.prompts), pick(rows.negative_prompts))


def check_rows(rows: Rows) -> list[int]:
    """The rows to check: the first ones with distinct prompts (padding differs only between prompts of
    different lengths), topped up with the first rows when the job has fewer distinct prompts."""
    chosen: list[int] = []
    seen: set[tuple[str | None, str | None]] = set()
    for i in range(len(rows)):
        key = (rows.prompts[i] if rows.prompts else None, rows.negative_prompts[i] if rows.negative_prompts else None)
        if key not in seen:
            seen.add(key)
            chosen.append(i)
        if len(chosen) == CHECK_ROWS:
            return chosen
    return chosen + [i for i in range(len(rows)) if i not in chosen][: CHECK_ROWS - len(chosen)]


def run_batch_check(generator: Generator, pipeline: str, rows: Rows, batch_size: int) -> BatchCheck:
    """The rows `check_rows` picks from `rows` (at most one batch) made as one batch and one at a time."""
    rows = _take(rows, check_rows(rows)[: max(batch_size, 1)])
    if batch_size <= 1 or len(rows) <= 1:
        return BatchCheck(pipeline=pipeline, rows=len(rows), batch_size=batch_size, max_diff=0)
    together = generator.generate(rows)
    alone = torch.cat([generator.generate(_take(rows, [i])) for i in range(len(rows))])
    diff = int((together.to(torch.int16) - alone.to(torch.int16)).abs().max())
    return BatchCheck(pipeline=pipeline, rows=len(rows), batch_size=batch_size, max_diff=diff)
