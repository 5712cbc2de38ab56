"""Keeping the right images of a finished set: `select` (a filtered copy, `jobs.select`), with filters
written as `where` expressions over the set's metadata columns."""
