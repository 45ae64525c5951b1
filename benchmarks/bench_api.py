"""The Python API's streaming completion beside `llamapy run`: decode tokens per second on the default model.

    python benchmarks/bench_api.py [-n 128] [-r 5] [--threads 2]

Both generate n tokens greedily with end-of-text banned (run: --ignore-eos; the API: a logit bias of -inf on
the end-of-generation tokens, llama-cpp-python has no ignore_eos). Both are timed the same way: from the first
generated text to the last, as the caller receives it ((n - 1) tokens over that time), so the prompt and
the load are left out. Runs alternate; medians are shown. Timings on a shared machine are noisy: the time per
token spent outside the engine's C eval (sampling, text, the loop, building chunks) is the steadier figure.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.engine.engine import Engine  # noqa: E402
from llamapy.generation.params import SamplerParams  # noqa: E402
from llamapy.native import lib  # noqa: E402
from llamapy.run import run  # noqa: E402
from llamapy.store.locate import resolve_model  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


ENGINES: list = []  # the engine `run` made (to read the time spent inside the C eval)
_init = Engine.__init__


def _recording_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    ENGINES.append(self)


Engine.__init__ = _recording_init


def eval_seconds(eng) -> float:
    return float(lib.lp_engine_eval_seconds(eng._engine))


class Stamps(io.StringIO):
    """Output that notes when generated text arrives (wall time, and the engine's eval time)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, float]] = []

    def write(self, s: str) -> int:
        if s and not s.startswith("\n\n"):
            self.times.append((time.perf_counter(), eval_seconds(ENGINES[-1])))
        return super().write(s)


def rates(times: list[tuple[float, float]], n: int) -> tuple[float, float]:
    """Tokens per second, and the milliseconds per token spent outside the engine's eval."""
    wall = times[-1][0] - times[0][0]
    in_eval = times[-1][1] - times[0][1]
    return (n - 1) / wall, 1e3 * (wall - in_eval) / (n - 1)


def run_tps(model: str, n: int, threads: int | None) -> tuple[float, float]:
    out = Stamps()
    got = run(model=model, prompt=PROMPT, n_predict=n, ctx_size=512, threads=threads, display_prompt=False,
              sampling=SamplerParams(temp=0, ignore_eos=True), out=out, err=io.StringIO())
    assert got == n, got
    return rates(out.times, n)


def api_tps(llm, n: int) -> tuple[float, float]:
    bias = {t: float("-inf") for t in llm._eog}
    times = []
    count = 0
    for chunk in llm(PROMPT, max_tokens=n, temperature=0, logit_bias=bias, stream=True):
        if chunk["choices"][0]["text"]:
            times.append((time.perf_counter(), eval_seconds(llm._eng)))
        if chunk["choices"][0]["finish_reason"] is not None:
            count = chunk["choices"][0]["finish_reason"] == "length"
    assert count
    return rates(times, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from llamapy import Llama

    model = resolve_model(None)
    llm = Llama(model, n_ctx=512, n_threads=a.threads, verbose=False)
    runs, apis = [], []
    run_tps(model, 16, a.threads)  # warm the page cache and the kernels
    api_tps(llm, 16)
    for _ in range(a.r):
        runs.append(run_tps(model, a.n, a.threads))
        llm.reset()  # the prompt evaluated afresh, as run does
        apis.append(api_tps(llm, a.n))
    r, p = statistics.median(x for x, _ in runs), statistics.median(x for x, _ in apis)
    ro, po = statistics.median(y for _, y in runs), statistics.median(y for _, y in apis)
    print(f"| path (tg{a.n}, medians of {a.r}) | t/s | ms per token outside the engine's eval | runs (t/s) |")
    print("|---|---:|---:|---|")
    print(f"| llamapy run | {r:.1f} | {ro:.3f} | {', '.join(f'{x:.1f}' for x, _ in runs)} |")
    print(f"| Llama(...)(stream=True) | {p:.1f} | {po:.3f} | {', '.join(f'{x:.1f}' for x, _ in apis)} |")
    print(f"API / run: {p / r:.3f} (t/s)")


if __name__ == "__main__":
    main()
