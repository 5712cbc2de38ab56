"""A job's rows (class or prompt, seed, sample id): built from flags or read from a manifest file,
checked on the driver, sliced into shards for the workers."""
