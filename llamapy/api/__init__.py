"""llama-cpp-python's high-level API on llamapy: `from llamapy import Llama` (see llama.py)."""
from __future__ import annotations

from . import llama_types
from .llama import *  # noqa: F403 - Llama and its companions, as llama.py lists them in __all__
from .llama import __all__ as _llama_all

__all__ = [*_llama_all, "llama_types"]
