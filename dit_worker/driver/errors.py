"""How a job ends early: refused before anything is written (exit 2), or failed while running (exit 1)."""


class JobError(ValueError):
    """Input refused before anything is written; the message names the value and what would do."""


class JobFailed(RuntimeError):
    """The job stopped before every shard was committed; committed shards stay in place for a rerun."""
