"""Mass-producing class-conditional images with Diffusion Transformers."""

from dit_worker.backends.native.pipeline import DiTPipeline, load_pipeline
from dit_worker.backends.settings import SamplingSettings

__all__ = ["DiTPipeline", "SamplingSettings", "load_pipeline"]
