"""Strings on the report's page: every value from the set or the user (prompts, class names, label
names, paths, commands) goes through `esc`, `visible` or `user_text`, so markup in it is shown as
text and never interpreted; `safe_id` makes element ids out of such strings."""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

MAX_TEXT = 300  # characters shown of one string from the set (a prompt, a class name); the rest is counted
ID_PART = 32  # characters of a user string kept in an element id (the rest is dropped, an index keeps it unique)
UNSAFE_ID = re.compile(r"[^A-Za-z0-9_]+")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def visible(value: Any, limit: int | None = None) -> str:
    """A string from the set or the user (prompt, class name, path, command) as inert, visible text:
    escaped, its control and format characters (NUL, U+202E's reordering) shown as \\uXXXX, cut at `limit`."""
    text = str(value)
    cut = f"… ({len(text) - limit} more characters)" if limit is not None and len(text) > limit else ""
    shown = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text[:limit])
    return esc(shown) + cut


def user_text(value: Any, limit: int | None = MAX_TEXT) -> str:
    """`visible`, isolated in <bdi> so that right-to-left text cannot reorder what follows it."""
    return f"<bdi>{visible(value, limit)}</bdi>"


def id_part(value: Any) -> str:
    """A user string as a piece of an element id: ASCII letters, digits and `_` only, at most ID_PART
    characters (`-` is left to separate pieces); "x" for a string with none of them."""
    return UNSAFE_ID.sub("_", str(value))[:ID_PART].strip("_") or "x"
