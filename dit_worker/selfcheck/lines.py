"""One line of the self-check: a named figure, its bound, and whether it holds."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict


class CheckLine(BaseModel):
    """A measured figure of one check. `holds` is None for a figure without a bound (speed); a line with
    `must` that does not hold makes the command exit 1.

    Usage::

        CheckLine(check="fast-path", name="bfloat16 vs float32 eager", value=52.1, unit="dB PSNR",
                  bound=">= 35", holds=True)
    """

    model_config = ConfigDict(frozen=True)

    check: str  # the check's name (CHECKS), e.g. "fast-path"
    name: str  # what was measured
    value: float | int | str | None = None
    unit: str = ""
    bound: str | None = None  # as written beside the figure, e.g. ">= 35"
    holds: bool | None = None
    must: bool = True
    note: str = ""
    extra: dict[str, Any] = {}  # further figures for the JSON line (batch size, TFLOP/s, ...)

    @property
    def failed(self) -> bool:
        return self.must and self.holds is False

    def json_line(self, conditions: dict[str, Any]) -> str:
        """One JSON object: the line's fields (non-finite figures as strings) and the machine's conditions."""
        data = self.model_dump(exclude={"extra"}) | self.extra | {"conditions": conditions}
        return json.dumps(data, default=str, allow_nan=False)


def at_least(check: str, name: str, value: float | None, bound: float, unit: str, **kw: Any) -> CheckLine:
    """`value >= bound`; None (identical images: infinite PSNR) holds."""
    holds = value is None or value >= bound
    return CheckLine(check=check, name=name, value=_figure(value), unit=unit, bound=f">= {bound:g}", holds=holds, **kw)


def at_most(check: str, name: str, value: float, bound: float, unit: str, **kw: Any) -> CheckLine:
    return CheckLine(
        check=check, name=name, value=_figure(value), unit=unit, bound=f"<= {bound:g}", holds=value <= bound, **kw
    )


def _figure(value: float | None) -> float | int | str:
    if value is None:
        return "identical"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return round(value, 3) if isinstance(value, float) else value


def table(lines: list[CheckLine]) -> str:
    """The lines as a fixed-width table: check, what, figure, bound, ok / FAIL / - (no bound)."""
    rows = [("check", "measured", "figure", "bound", "holds")]
    for line in lines:
        status = "-" if line.holds is None else "ok" if line.holds else "FAIL" if line.must else "no"
        figure = "" if line.value is None else "identical" if line.value == "identical" else f"{line.value} {line.unit}"
        rows.append(
            (line.check, line.name + (f" ({line.note})" if line.note else ""), figure, line.bound or "", status)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in out)
