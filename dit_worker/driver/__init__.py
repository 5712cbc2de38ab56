"""The driver side of a job, in the order it runs: `config` (validated at the edge), `model_info`
(the backend's spec), `row_checks`, `record` (job.json, fingerprint, resume), the output's lease,
`workers` (the shard workers on the one pool), `progress`, and `run`, which ties them together."""
