"""The native backend: class-conditional DiT on our own transformer, samplers and VAE decoder.
`checkpoint` loads the weights into our modules, `pipeline` samples, `backend` puts both behind the
job's ModelSpec / Generator interface."""
