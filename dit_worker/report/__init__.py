"""A static HTML page to look at a generated set (`python -m jobs.report --out OUT`): sample grids,
the metrics with the command and fingerprint behind them, CLIP scores, and the job's pace."""
