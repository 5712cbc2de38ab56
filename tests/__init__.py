"""The test suite. A package so that `python -m tests.mutations` finds this folder: torch-fidelity
installs a top-level `tests` package of its own, which would win over a plain folder."""
