"""What the benchmark scripts that time whole commands share: running one with its peak memory, comparing
outputs byte for byte, and printing the markdown table of results."""
from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(cmd: list[str], env=None) -> tuple[float, float, int]:
    """Run a command; its wall time in seconds, peak RSS in MiB and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read().decode(errors="replace")  # before waiting: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  command failed ({code}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as f1, open(b, "rb") as f2:
        while True:
            b1, b2 = f1.read(1 << 24), f2.read(1 << 24)
            if b1 != b2:
                return False
            if not b1:
                return True


def measure(cmd: list[str], out: str, ref_cmd: list[str] | None = None, ref_out: str = "",
            keep: bool = False) -> dict:
    """Run our command (which writes `out`) and, when given, the reference's (which writes `ref_out`).
    A result row: t, rss, ok, size (MiB), and the reference's rt, rrss, rok and whether its file has our
    bytes (same). The files are removed unless `keep`."""
    t, rss, code = run_measured(cmd)
    row = {"t": t, "rss": rss, "ok": code == 0, "size": os.path.getsize(out) / 2**20 if code == 0 else float("nan")}
    if ref_cmd:
        rt, rrss, rcode = run_measured(ref_cmd)
        row.update(rt=rt, rrss=rrss, rok=rcode == 0)
        if code == 0 and rcode == 0:
            row["same"] = same_bytes(out, ref_out)
    for path in (out, ref_out):
        if not keep and path and os.path.exists(path):
            os.unlink(path)
    return row


def warm(path: str) -> None:
    """Read a file (every file of a directory) once, so the timed commands start from a warm page cache."""
    paths = [os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


REF_COLUMNS = " reference s | ref RSS MiB | time ratio | same bytes |"


def ref_cells(r: dict) -> str:
    """A result row's REF_COLUMNS (from 'rt', 'rrss', 'rok', 'same'); dashes when the reference didn't run."""
    if "rt" not in r:
        return " - | - | - | - |"
    ratio = r["t"] / r["rt"] if r.get("rok", True) else float("nan")
    return f" {r['rt']:11.1f} | {r['rrss']:11.0f} | {ratio:9.2f}x | {r.get('same', '-')!s:>10} |"


def print_table(head: str, lines: list[str]) -> None:
    """A markdown table: the header row, its separator, then the rows."""
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for line in lines:
        print(line)
