"""The diffusers backend: text-to-image and unconditional pipelines run through diffusers' own
pipeline classes. `resolve` is the driver side (configs, settings, prompt checks), `run` the worker
side (the loaded pipeline)."""
