"""A static HTML page to look at a generated set (`python -m jobs.report --out OUT`): sample grids,
the metrics with the command and fingerprint behind them, per-image scores (histograms, lowest and
highest samples), jobs.dedup's largest duplicate groups, and the job's pace."""
