"""DiT transformer and VAE decoder modules."""
