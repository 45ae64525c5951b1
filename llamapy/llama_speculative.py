"""llama-cpp-python's `llama_cpp.llama_speculative` module: `from llamapy.llama_speculative import
LlamaPromptLookupDecoding`, then `Llama(model_path, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))`."""
from __future__ import annotations

from .api.speculative import LlamaDraftModel, LlamaPromptLookupDecoding

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]
