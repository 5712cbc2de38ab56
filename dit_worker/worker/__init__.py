"""The worker side of a job: `shard_worker` loads the backend and samples each shard's batches,
`shard_writer` encodes and stores the images and commits the shard's metadata part."""
