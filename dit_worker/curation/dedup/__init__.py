"""`jobs.dedup`: near-duplicate groups over a set's CLIP image embeddings, in resumable steps on the task
pool (docs/output.md, "Near-duplicates: OUT/dedup/"): embed (per run of source shards) -> route (rows to
partitions) -> reduce (faiss range search per bucket) -> merge (connected components of the links) ->
write (per source shard: its dedup part)."""
