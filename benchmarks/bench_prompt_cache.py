"""`run --prompt-cache` on a long prompt: time to first token of the first run (evaluates the prompt, writes
the cache) and of a second run with the same prompt (loads the cache, evaluates one token), default model.

    python benchmarks/bench_prompt_cache.py [--tokens 1000] [-n 16] [-r 3] [--threads 2]

Both runs go through llamapy.run.run in this process, greedy, without echoing the prompt. Time to first token
is from the end of the model load to the first generated text written (so the load, the same in both, is left
out; the first run's includes writing the cache, as llama-cli writes it at the first sampled token). Pairs
alternate and medians are shown; the outputs of both runs must be identical. Timings on a shared machine are
noisy; the ratio, measured pair by pair, is the steadier figure.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.engine.engine import Engine  # noqa: E402
from llamapy.generation.params import SamplerParams  # noqa: E402
from llamapy.run import run  # noqa: E402
from llamapy.store.locate import resolve_model  # noqa: E402

LOADED: list[float] = []  # when each engine `run` makes finished loading
_init = Engine.__init__


def _recording_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    LOADED.append(time.perf_counter())


Engine.__init__ = _recording_init

SENTENCES = [
    "The committee met on the {n}th day to review the proposal for the new harbour bridge.",
    "Engineers measured the tide at {n} points along the river and wrote every reading down.",
    "A report of {n} pages described the soil, the wind and the traffic the bridge would carry.",
    "Citizens asked {n} questions about the cost, the noise and the years the work would take.",
]


def long_prompt(n_tokens: int) -> str:
    """Plain text of about n_tokens tokens of the default model."""

    with Engine(None, n_ctx=64, n_threads=1) as e:
        tok = e.tokenizer
        parts: list[str] = []
        i = 0
        while len(tok.encode(" ".join(parts), add_special=True)) < n_tokens:
            parts.append(SENTENCES[i % len(SENTENCES)].format(n=i + 3))
            i += 1
        return " ".join(parts) + " In the end, the committee decided"


class FirstWrite(io.StringIO):
    def __init__(self):
        super().__init__()
        self.t_first: float | None = None

    def write(self, s: str) -> int:
        if s and self.t_first is None:
            self.t_first = time.perf_counter()
        return super().write(s)


def one(prompt: str, cache: str, n: int, threads: int) -> tuple[float, str, str]:
    out, err = FirstWrite(), io.StringIO()
    n_loaded = len(LOADED)
    run(prompt=prompt, n_predict=n, ctx_size=2048, threads=threads, display_prompt=False,
        sampling=SamplerParams(temp=0.0), prompt_cache=cache, out=out, err=err)
    assert len(LOADED) == n_loaded + 1 and out.t_first is not None
    return 1e3 * (out.t_first - LOADED[-1]), out.getvalue(), err.getvalue()


def prompt_eval(err: str) -> int:
    return int(err.split("prompt eval time =")[1].split("/")[1].split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"model: {resolve_model(None)}")
    prompt = long_prompt(a.tokens)
    cold, warm, ratios = [], [], []
    same = True
    with tempfile.TemporaryDirectory() as d:
        cache = os.path.join(d, "prompt.cache")
        for _ in range(a.reps):
            if os.path.exists(cache):
                os.remove(cache)
            t1, out1, err1 = one(prompt, cache, a.n, a.threads)
            size = os.path.getsize(cache)
            t2, out2, err2 = one(prompt, cache, a.n, a.threads)
            same = same and out1 == out2
            cold.append(t1)
            warm.append(t2)
            ratios.append(t2 / t1)
        n1, n2 = prompt_eval(err1), prompt_eval(err2)
    print(f"prompt: {n1} tokens, generated {a.n} greedy, {a.threads} threads, {a.reps} pairs (medians)")
    print()
    print("| run                          | prompt tokens evaluated | time to first token (ms) |")
    print("|------------------------------|------------------------:|-------------------------:|")
    print(f"| first (no cache; writes it)  | {n1:23d} | {statistics.median(cold):24.1f} |")
    print(f"| second (--prompt-cache hit)  | {n2:23d} | {statistics.median(warm):24.1f} |")
    print()
    print(f"second / first: {statistics.median(ratios):.3f} (target < 0.25); cache file {size / 2**20:.1f} MiB; "
          f"same output: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
