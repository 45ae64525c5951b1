"""llama-cpp-python's high-level API on llamapy: `from llamapy import Llama` (see llama.py)."""
from __future__ import annotations

from . import llama_types
from .llama import (
    LLAMA_DEFAULT_SEED,
    BaseLlamaCache,
    Llama,
    LlamaCache,
    LlamaRAMCache,
    LlamaState,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

__all__ = ["LLAMA_DEFAULT_SEED", "BaseLlamaCache", "Llama", "LlamaCache", "LlamaRAMCache", "LlamaState",
           "LogitsProcessor", "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList", "llama_types"]
