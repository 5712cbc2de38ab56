"""Mass-producing class-conditional images with Diffusion Transformers."""

from dit_worker.pipeline import DiTPipeline, load_pipeline
from dit_worker.settings import SamplingSettings

__all__ = ["DiTPipeline", "SamplingSettings", "load_pipeline"]
