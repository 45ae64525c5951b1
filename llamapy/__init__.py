"""llamapy: the llama.cpp toolchain as a Python package with C kernels."""
import os

__version__ = "0.1.0"

# The model runs on llamapy's own thread pool; numpy only holds its inputs and outputs. numpy's BLAS would
# start a thread per core that spins for a while after start-up, against the pool: on 2 cores it took a
# quarter of the CPU time of `llamapy run -n 1`. (No effect when numpy was imported first; set the variable
# to choose otherwise.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# llama-cpp-python's API (`from llamapy import Llama`), imported on first use so `import llamapy` and the
# command line stay fast (type checkers see the real names)
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import LLAMA_DEFAULT_SEED as LLAMA_DEFAULT_SEED
    from .api import Llama as Llama
    from .api import LlamaCache as LlamaCache
    from .api import LlamaDiskCache as LlamaDiskCache
    from .api import LlamaGrammar as LlamaGrammar
    from .api import LlamaRAMCache as LlamaRAMCache
    from .api import LlamaState as LlamaState
    from .api import LogitsProcessorList as LogitsProcessorList
    from .api import StoppingCriteriaList as StoppingCriteriaList
    from .api import llama_types as llama_types

_API_NAMES = ("Llama", "LlamaGrammar", "LlamaState", "LlamaCache", "LlamaDiskCache", "LlamaRAMCache",
              "LogitsProcessorList", "StoppingCriteriaList", "LLAMA_DEFAULT_SEED", "llama_types")


def __getattr__(name: str):
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'llamapy' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API_NAMES])
