"""llamapy: the llama.cpp toolchain as a Python package with C kernels."""

__version__ = "0.1.0"
