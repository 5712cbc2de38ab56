"""The driver side of a job, in the order it runs: `config` (validated at the edge), `plan`
(`model_info`: the backend's spec; `rows`: the rows built and checked; `record`: job.json, the
fingerprint and resume), `workers` (the shard workers on the one pool), the output's lease,
`progress`, and `run`, which ties them together."""
