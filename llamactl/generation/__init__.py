"""Text generation over the inner model: static KV cache, sampling, streaming, CUDA-graph decode."""

from llamactl.generation.engine import DecodeMode, GenerationOutput, Generator
from llamactl.generation.sampling import SamplingConfig, next_tokens
from llamactl.generation.streaming import TextStream

__all__ = ["DecodeMode", "GenerationOutput", "Generator", "SamplingConfig", "TextStream", "next_tokens"]
