"""The inner model: pure PyTorch (torch + standard library only)."""

from llamactl.model.config import LlamaConfig, ModelConfigError
from llamactl.model.kv_cache import KVCache, cache_attention_mask
from llamactl.model.llama import Llama, LlamaOutput
from llamactl.model.loss import IGNORE_INDEX, fused_linear_cross_entropy

__all__ = ["IGNORE_INDEX", "KVCache", "Llama", "LlamaConfig", "LlamaOutput", "ModelConfigError",
           "cache_attention_mask", "fused_linear_cross_entropy"]
