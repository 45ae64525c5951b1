"""llamapy: the llama.cpp toolchain as a Python package with C kernels."""
import os

__version__ = "0.1.0"

# The model runs on llamapy's own thread pool; numpy only holds its inputs and outputs. numpy's BLAS would
# start a thread per core that spins for a while after start-up, against the pool: on 2 cores it took a
# quarter of the CPU time of `llamapy run -n 1`. (No effect when numpy was imported first; set the variable
# to choose otherwise.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
