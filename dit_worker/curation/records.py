"""The JSON records a curation command keeps beside its output (job.json of a selection, dedup's
settings), read back and compared on a rerun: one way for `select` and `dedup`."""

from __future__ import annotations

import json
from typing import Any

from dit_worker.storage.objects import Storage


def read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    """The record at `key`, or None when there is none."""
    return json.loads(storage.get(key)) if storage.exists(key) else None


def differences(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """'k: <stored> there, <now> now; ...' for each key of `now` whose stored value differs ('' if none)."""
    return "; ".join(f"{k}: {stored.get(k)!r} there, {now[k]!r} now" for k in now if stored.get(k) != now[k])
