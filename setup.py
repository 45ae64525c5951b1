"""Build hook: the cffi extension `llamapy._native` is compiled from csrc/ by the package's own build."""
from setuptools import setup

setup(cffi_modules=["llamapy/_build.py:ffibuilder"])
