"""cffi out-of-line API build of `llamapy._native` from csrc/.

The cdef is the text of every csrc/*.h between its LP_API markers, so the C header and the Python
binding can't drift apart. Every csrc/*.c file is compiled; instruction-set files select their own
target with `#pragma GCC target`, so one build runs on any CPU of the architecture and the kernels
are picked at run time (see csrc/dispatch.c).
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")


def api_text() -> str:
    """The public declarations of every csrc/*.h, taken from between its LP_API markers."""
    parts = []
    for path in sorted(glob.glob(os.path.join(CSRC, "*.h"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"/\* LP_API_BEGIN \*/(.*?)/\* LP_API_END \*/", text, re.S):
            parts.append(m.group(1))
    if not parts:
        raise RuntimeError("csrc/*.h: no LP_API_BEGIN/LP_API_END section found")
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(api_text())

sources = sorted(glob.glob(os.path.join(CSRC, "*.c")))
extra = ["-O3", "-std=gnu11", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off"]
ffibuilder.set_source(
    "llamapy._native",
    "\n".join(f'#include "{os.path.basename(h)}"' for h in sorted(glob.glob(os.path.join(CSRC, "*.h")))),
    sources=[os.path.relpath(s, ROOT) for s in sources],
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=extra,
    extra_link_args=["-pthread", "-lm"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
