"""Soak test of `llamapy serve`: streaming clients against a few slots for minutes; errors and memory.

    python benchmarks/soak_server.py [--seconds 300] [--clients 8] [--parallel 4] [--model M]

Starts `llamapy serve -np P` on a free loopback port, runs C clients that each stream /v1/completions
(64 tokens, ignore_eos) and /v1/chat/completions in turn until the time is up, samples the server's resident
memory every 10 s, and prints a table: requests, errors, tokens/s and RSS over time. Exits 1 on any error
or when the RSS of the last minute grew more than 10% over the first minute's after warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stream(url: str, body: dict, timeout: float) -> int:
    """POST a streaming request; the number of data chunks (raises on an HTTP or protocol error)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    n = 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return n
            json.loads(line[6:])
            n += 1
    raise RuntimeError("stream ended without [DONE]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", str(a.parallel), "-c",
           str(512 * a.parallel), "-t", str(a.threads)] + (["-m", a.model] if a.model else [])
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    print(server.stderr.read().decode(errors="replace"), file=sys.stderr)
                    return 1
                time.sleep(0.5)
        counts = {"requests": 0, "errors": 0, "chunks": 0}
        errors: list[str] = []
        lock = threading.Lock()
        end = time.time() + a.seconds

        def client(i: int) -> None:
            k = 0
            while time.time() < end:
                k += 1
                try:
                    if k % 2:
                        n = stream(base + "/v1/completions", {"prompt": f"Client {i} says", "max_tokens": 64,
                                                              "stream": True, "ignore_eos": True}, 120)
                    else:
                        n = stream(base + "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": f"Count to {k % 10 + 3}."}],
                                    "max_tokens": 64, "stream": True}, 120)
                    with lock:
                        counts["requests"] += 1
                        counts["chunks"] += n
                except Exception as e:  # every failure is counted and shown
                    with lock:
                        counts["errors"] += 1
                        errors.append(f"client {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        samples: list[tuple[float, float]] = []
        while any(t.is_alive() for t in threads):
            samples.append((time.time() - t0, rss_mib(server.pid)))
            time.sleep(10)
        for t in threads:
            t.join()
        took = time.time() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"| clients | slots | seconds | requests | errors | chunks/s |\n|---:|---:|---:|---:|---:|---:|\n"
          f"| {a.clients} | {a.parallel} | {took:.0f} | {counts['requests']} | {counts['errors']} | "
          f"{counts['chunks'] / took:.1f} |")
    print("\n| t (s) | server RSS (MiB) |\n|---:|---:|")
    for t, m in samples:
        print(f"| {t:.0f} | {m:.1f} |")
    for e in errors[:10]:
        print(e, file=sys.stderr)
    warm = [m for t, m in samples if 30 <= t < 90]
    last = [m for t, m in samples if t >= took - 60]
    grew = bool(warm and last) and max(last) > 1.10 * max(warm)
    if grew:
        print(f"memory grew: {max(warm):.1f} -> {max(last):.1f} MiB", file=sys.stderr)
    return 1 if counts["errors"] or grew else 0


if __name__ == "__main__":
    sys.exit(main())
