"""python -m jobs.selfcheck: prove this machine before a big job. Each check is a named line with its
measured figure and bound (README, "Check a machine"); exit 1 when a line that must hold does not.

Tiny random models in the real on-disk formats are built here (no download); without --quick the real
DiT-XL/2 size is timed too, with random weights.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from dit_worker.benchmarks.conditions import machine_conditions
from dit_worker.driver.config import describe_config_error
from dit_worker.selfcheck import CHECKS, SelfCheckConfig, run_selfcheck
from dit_worker.selfcheck.lines import table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.selfcheck", description=__doc__.split("\n")[0])
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--quick", action="store_true", help="skip the large sizes (DiT-XL/2's timing)")
    p.add_argument("--out", help="keep the models, jobs and lines in this folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    p.add_argument("--only", help=f"comma-separated checks to run: {', '.join(CHECKS)} (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = tuple(args.only.split(",")) if args.only else ()
    try:
        config = SelfCheckConfig(device=args.device, quick=args.quick, out=args.out, only=only)
    except ValidationError as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return 2
    conditions = machine_conditions(config.torch_device)
    lines = []
    for line in run_selfcheck(config):
        lines.append(line)
        if args.json:
            print(line.json_line(conditions), flush=True)
    failed = [line for line in lines if line.failed]
    if not args.json:
        print(table(lines))
        print(f"\n{len(lines)} lines, {len(failed)} failed; {conditions}")
    for line in failed:
        print(f"FAILED {line.check}: {line.name}: {line.value} {line.unit} (bound {line.bound})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
