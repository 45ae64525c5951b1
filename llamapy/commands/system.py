"""Process settings the command line asks for before the engine starts: CPU affinity (-C, -Cr), priority
(--prio), and the device list (--list-devices)."""
from __future__ import annotations

import os
import sys

from ..errors import LlamapyError


def parse_cpu_mask(mask: str) -> set[int]:
    """llama.cpp's -C: a hex mask of any length, bit i = CPU i ("0x" optional)."""
    s = mask.strip().lower()
    s = s[2:] if s.startswith("0x") else s
    try:
        bits = int(s, 16) if s else -1
    except ValueError:
        bits = -1
    if bits <= 0:
        raise LlamapyError(f"-C {mask}: expected a non-zero hex mask, like 0x3 or ff")
    return {i for i in range(bits.bit_length()) if bits >> i & 1}


def parse_cpu_range(spec: str) -> set[int]:
    """llama.cpp's -Cr: lo-hi (either end may be left out: 0 and the last CPU)."""
    lo, sep, hi = spec.partition("-")
    try:
        a = int(lo) if lo.strip() else 0
        b = int(hi) if hi.strip() else (os.cpu_count() or 1) - 1
    except ValueError:
        a, b, sep = 0, -1, ""
    if not sep or a < 0 or b < a:
        raise LlamapyError(f"-Cr {spec}: expected a range lo-hi of CPU numbers, like 0-3")
    return set(range(a, b + 1))


# llama.cpp's priority classes as nice values (3, realtime, needs privileges as there)
_NICE = {-1: 5, 0: 0, 1: -5, 2: -10, 3: -20}


def set_priority(prio: int) -> None:
    """--prio: raise the process's scheduling priority (a warning when the system refuses)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _NICE[prio])
    except (OSError, KeyError) as e:
        print(f"warning: --prio {prio}: can't set the priority ({getattr(e, 'strerror', None) or e}); "
              "running at the normal priority", file=sys.stderr)


def cpu_device_line() -> str:
    """The CPU as --list-devices shows a device: name and memory."""
    name = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2**20
        return f"CPU: {name} ({mem} MiB, {free} MiB free)"
    except (ValueError, OSError):
        return f"CPU: {name}"
