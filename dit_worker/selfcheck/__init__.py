"""`python -m jobs.selfcheck`: what holds on this machine, each check a named line with its measured figure
and bound (README, "Check a machine"). Tiny random models in the real on-disk formats, built here.

    lines = run_selfcheck(SelfCheckConfig(device="cpu", quick=True))
    failed = [line for line in lines if line.failed]  # the must-hold lines that did not hold
"""

from dit_worker.selfcheck.config import SelfCheckConfig
from dit_worker.selfcheck.lines import CheckLine
from dit_worker.selfcheck.run import CHECKS, run_selfcheck

__all__ = ["CHECKS", "CheckLine", "SelfCheckConfig", "run_selfcheck"]
