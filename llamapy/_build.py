"""cffi out-of-line API build of `llamapy._native` from csrc/.

The cdef is the text of the public header csrc/llamapy.h between its LP_API markers, so the C header
and the Python binding can't drift apart; the other csrc/*.h are internal to the C files. Every
csrc/*.c file is compiled; instruction-set files select their own target with `#pragma GCC target`,
so one build runs on any CPU of the architecture and the kernels are picked at run time (see
csrc/dispatch.c).
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
API_HEADER = "llamapy.h"


def api_text() -> str:
    """The public declarations of csrc/llamapy.h, taken from between its LP_API markers."""
    with open(os.path.join(CSRC, API_HEADER), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"/\* LP_API_BEGIN \*/(.*?)/\* LP_API_END \*/", text, re.S)
    if not m:
        raise RuntimeError(f"csrc/{API_HEADER}: no LP_API_BEGIN/LP_API_END section found")
    return m.group(1)


ffibuilder = FFI()
ffibuilder.cdef(api_text())

sources = sorted(glob.glob(os.path.join(CSRC, "*.c")))
extra = ["-O3", "-std=gnu11", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off"]
ffibuilder.set_source(
    "llamapy._native",
    f'#include "{API_HEADER}"',
    sources=[os.path.relpath(s, ROOT) for s in sources],
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=extra,
    extra_link_args=["-pthread", "-lm"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
