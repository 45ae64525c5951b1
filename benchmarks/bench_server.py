"""`llamapy serve` under load beside the reference server: generated tokens/s and time to first token at 1,
4 and 8 concurrent clients.

Starts `llamapy serve` (8 slots, -c 4096, 2 threads) on a free loopback port with the default model (or -m)
and, with LLAMAPY_REF_SERVER naming the reference's llama-server, that server with the same model and
settings (-cb). Each client sends streaming /v1/completions requests back to back: a short prompt, a fixed
number of generated tokens (ignore_eos, so every request generates exactly --n-predict). The levels run
alternately on the two servers (one idles while the other is measured), and the table gives, per level:

    clients | llamapy gen tok/s | reference gen tok/s | ratio | TTFT p50 ms llamapy / reference | ratio

Then one streaming client's decode rate (generated tokens after the first over the time after the first)
against the engine's own `bench` tg of the same length: the share HTTP, server-sent events and the
scheduler's Python leave to decoding. Timings on a shared machine are noisy: compare the ratios.

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


def wait_ready(proc: subprocess.Popen, port: int) -> subprocess.Popen:
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


def start_server(cmd: list[str], port: int) -> subprocess.Popen:
    # stderr to a file, not a pipe nobody reads (a chatty server would block on a full pipe)
    log = open(os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    return wait_ready(proc, port)


def server_commands(model: str, port: int, n_slots: int, ctx: int, threads: int, ref: str | None):
    ours = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", str(n_slots), "-c", str(ctx),
            "-t", str(threads), "-m", model]
    theirs = ([ref, "--port", str(port), "-np", str(n_slots), "-c", str(ctx), "-t", str(threads), "-cb", "-m", model]
              if ref else None)
    return ours, theirs


async def one_request(client: httpx.AsyncClient, prompt: str, n_predict: int) -> tuple[float, float, int, int]:
    """(time to first token, latency, generated tokens, prompt tokens) of one streamed completion (tokens
    from the usage record, else one per streamed piece of text)."""
    body = {"prompt": prompt, "max_tokens": n_predict, "stream": True, "ignore_eos": True, "temperature": 0.8,
            "seed": 42, "stream_options": {"include_usage": True}, "cache_prompt": False}
    t0 = time.perf_counter()
    ttft = None
    usage = {}
    pieces = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("choices") and d["choices"][0].get("text"):
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if d.get("usage"):
                usage = d["usage"]
    return (ttft or 0.0, time.perf_counter() - t0, usage.get("completion_tokens", pieces),
            usage.get("prompt_tokens", 0))


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
        "decode_tok_s": statistics.median((r[2] - 1) / (r[1] - r[0]) for r in rows if r[1] > r[0] and r[2] > 1),
    }


def engine_tg(model: str, n: int, threads: int) -> float:
    """The engine's own `bench` tg<n> tokens/s (no HTTP, no server)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from llamapy.bench import run_bench

    (r,) = run_bench(model, 0, n, threads, 3)
    return r.avg_ts()


def run_table(model: str, levels: list[int], n_predict: int, per_client: int, threads: int, ctx: int,
              ref: str | None) -> list[tuple[dict, dict | None]]:
    port, ref_port = free_port(), free_port()
    ours_cmd, _ = server_commands(model, port, max(levels), ctx, threads, None)
    _, ref_cmd = server_commands(model, ref_port, max(levels), ctx, threads, ref)
    procs = [start_server(ours_cmd, port)]
    urls = [f"http://127.0.0.1:{port}"]
    if ref_cmd:
        procs.append(start_server(ref_cmd, ref_port))
        urls.append(f"http://127.0.0.1:{ref_port}")
    try:
        for url in urls:
            asyncio.run(level(url, 1, 1, 8))  # warm up
        out = []
        for c in levels:  # alternate: ours, then the reference, level by level
            r = [asyncio.run(level(url, c, per_client, n_predict)) for url in urls]
            out.append((r[0], r[1] if ref_cmd else None))
        return out
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--levels", default="1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from llamapy.store.locate import resolve_model

    model = resolve_model(args.model)
    levels = [int(x) for x in args.levels.split(",")]
    ref = os.environ.get("LLAMAPY_REF_SERVER")
    rows = run_table(model, levels, args.n_predict, args.requests_per_client, args.threads, args.ctx_size, ref)
    print(f"\nserver under load: {max(levels)} slots, -c {args.ctx_size}, {args.threads} threads, streamed "
          f"/v1/completions of {args.n_predict} tokens (ignore_eos), {args.requests_per_client} requests per "
          f"client, {os.cpu_count()} CPUs (shared: noisy)\n")
    print("| clients | llamapy gen tok/s | reference gen tok/s | ratio | target | llamapy TTFT p50 ms "
          "| reference TTFT p50 ms | TTFT ratio | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ours, theirs in rows:
        c = ours["clients"]
        tgt, ttgt = ("-", "-") if c == 1 else (">= 2.0x", "<= 0.5x")
        if theirs:
            print(f"| {c} | {ours['gen_tok_s']:.1f} | {theirs['gen_tok_s']:.1f} | "
                  f"{ours['gen_tok_s'] / theirs['gen_tok_s']:.2f}x | {tgt} | {ours['ttft_ms']:.0f} | "
                  f"{theirs['ttft_ms']:.0f} | {ours['ttft_ms'] / theirs['ttft_ms']:.2f}x | {ttgt} |", flush=True)
        else:
            print(f"| {c} | {ours['gen_tok_s']:.1f} | - | - | {tgt} | {ours['ttft_ms']:.0f} | - | - | {ttgt} |")
    one = next((o for o, _ in rows if o["clients"] == 1), None)
    if one:
        tg = engine_tg(model, args.n_predict, args.threads)
        print(f"\none streaming client decodes at {one['decode_tok_s']:.1f} t/s, the engine's own bench "
              f"tg{args.n_predict} {tg:.1f} t/s: {100 * one['decode_tok_s'] / tg:.0f}% (target >= 90%)")


if __name__ == "__main__":
    main()
