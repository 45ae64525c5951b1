"""`llamapy serve` under load: requests/s and tokens/s at 1, 4 and 8 concurrent clients.

Starts a server (8 slots) on a free loopback port with the default model (or -m), then each client
sends streaming /v1/completions requests back to back: a short prompt, a fixed number of generated
tokens (ignore_eos, so every request generates exactly --n-predict). Prints one table row per level:

    clients | requests | wall s | req/s | gen tok/s | total tok/s | TTFT p50 ms | latency p50 s

gen tok/s counts generated tokens; total tok/s adds the prompt tokens. The reference row is
llama.cpp's single-stream decode (tg64) on this kind of machine, from ../shared/reference.md.

    .venv/bin/python benchmarks/bench_server.py [--n-predict 64] [--requests-per-client 3] [-m MODEL]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

REFERENCE_TG64 = 93.0  # llama.cpp tg64, SmolLM2-135M-Instruct Q4_1, 2 threads (shared/reference.md)
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright while moving.",
    "List some reasons people enjoy gardening.",
    "Describe the water cycle to a child.",
    "What are the benefits of learning a second language?",
    "Give advice to someone starting their first job.",
    "Summarize the plot of a detective novel you invent.",
    "Why is the sky blue during the day?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, n_slots: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", str(n_slots), "-c", str(512 * n_slots)]
    if model:
        cmd += ["-m", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


async def one_request(client: httpx.AsyncClient, prompt: str, n_predict: int) -> tuple[float, float, int, int]:
    """(time to first token, latency, generated tokens, prompt tokens) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": n_predict, "stream": True, "ignore_eos": True, "temperature": 0.8,
            "seed": 42, "stream_options": {"include_usage": True}, "cache_prompt": False}
    t0 = time.perf_counter()
    ttft = None
    usage = {}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if ttft is None and d["choices"] and d["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
            if d.get("usage"):
                usage = d["usage"]
    return ttft or 0.0, time.perf_counter() - t0, usage["completion_tokens"], usage["prompt_tokens"]


async def level(url: str, clients: int, per_client: int, n_predict: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker(w: int):
            return [await one_request(client, PROMPTS[(w + i) % len(PROMPTS)], n_predict) for i in range(per_client)]

        t0 = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    rows = [r for rs in per_worker for r in rs]
    gen = sum(r[2] for r in rows)
    prompt = sum(r[3] for r in rows)
    return {
        "clients": clients, "requests": len(rows), "wall": wall, "req_s": len(rows) / wall,
        "gen_tok_s": gen / wall, "total_tok_s": (gen + prompt) / wall,
        "ttft_ms": 1e3 * statistics.median(r[0] for r in rows), "latency": statistics.median(r[1] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--levels", default="1,4,8")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    port = free_port()
    proc = start_server(args.model, port, max(levels))
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(level(url, 1, 1, 8))  # warm up
        print(f"llamapy serve, {max(levels)} slots, {args.n_predict} generated tokens per request, "
              f"{os.cpu_count()} CPUs")
        print("| clients | requests | wall s | req/s | gen tok/s | total tok/s | TTFT p50 ms | latency p50 s |")
        print("|---|---|---|---|---|---|---|---|")
        results = []
        for c in levels:
            r = asyncio.run(level(url, c, args.requests_per_client, args.n_predict))
            results.append(r)
            print(f"| {r['clients']} | {r['requests']} | {r['wall']:.1f} | {r['req_s']:.2f} | {r['gen_tok_s']:.1f} | "
                  f"{r['total_tok_s']:.1f} | {r['ttft_ms']:.0f} | {r['latency']:.2f} |", flush=True)
        base = results[0]["gen_tok_s"]
        print()
        print(f"reference: llama.cpp single-stream decode (tg64) {REFERENCE_TG64:.0f} tok/s; "
              f"1 client here: {base:.1f} tok/s ({base / REFERENCE_TG64:.2f}x)")
        for r in results[1:]:
            print(f"{r['clients']} clients: {r['gen_tok_s'] / base:.2f}x the generated tokens/s of 1 client")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
