"""Checkpoint formats on disk (docs/checkpoints.md): diffusers-layout directories, original DiT
`.pt` files, where they come from (a path, a hub id, s3://), conversion, and the weights' identity."""
