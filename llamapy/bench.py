"""`llamapy bench`: the reference benchmark's tests and table. pp<N>: a prompt of N random tokens in
batches; tg<N>: N tokens generated one at a time from an empty cache; pp<P>+tg<N> (-pg P,N): a prompt of P
then N generated after it, timed together (tokens per second over P + N). Each test is run once to warm up,
then `reps` times from an empty cache; tokens per second as mean ± sample standard deviation."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from .errors import LlamapyError


@dataclass
class BenchResult:
    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_prompt: int
    n_gen: int
    test_time: str
    samples_ns: list[int] = field(default_factory=list)
    type_k: str = "f16"
    type_v: str = "f16"

    @property
    def test(self) -> str:
        if self.n_prompt and not self.n_gen:
            return f"pp{self.n_prompt}"
        if self.n_gen and not self.n_prompt:
            return f"tg{self.n_gen}"
        return f"pp{self.n_prompt}+tg{self.n_gen}"

    def samples_ts(self) -> list[float]:
        n = self.n_prompt + self.n_gen
        return [1e9 * n / t for t in self.samples_ns]

    def avg_ts(self) -> float:
        ts = self.samples_ts()
        return sum(ts) / len(ts)

    def stdev_ts(self) -> float:
        return _stdev(self.samples_ts())


def _stdev(v: list[float]) -> float:
    if len(v) <= 1:
        return 0.0
    mean = sum(v) / len(v)
    sq = sum(x * x for x in v)
    var = sq / (len(v) - 1) - mean * mean * len(v) / (len(v) - 1)
    return math.sqrt(max(var, 0.0))


def cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _prompt(llm, rng, n: int, n_batch: int, bos: int | None) -> None:
    """A prompt of n random tokens (BOS first when the model adds one), in batches of n_batch."""
    toks = rng.integers(0, llm.n_vocab, size=n).tolist()
    if bos is not None:
        toks[0] = bos
    for i in range(0, n, n_batch):
        llm.eval(toks[i:i + n_batch])


def _gen(llm, rng, n: int, bos: int | None) -> None:
    """n single-token steps of random tokens (the first is BOS when the model adds one)."""
    tok = bos if bos is not None else int(rng.integers(llm.n_vocab))
    for _ in range(n):
        llm.eval([tok])
        tok = int(rng.integers(llm.n_vocab))


def run_bench(model: str | None, n_prompt: int = 512, n_gen: int = 128, n_threads: int | None = None,
              reps: int = 5, n_batch: int = 2048, n_ubatch: int = 512, seed: int = 0, type_k: str = "f16",
              type_v: str = "f16", pg: tuple[tuple[int, int], ...] = ()) -> list[BenchResult]:
    """Run the pp and tg tests (a count of 0 skips one), then each (prompt, generated) pair of `pg` as one
    combined test, and return their timings."""
    from .engine.engine import Engine
    from .engine.load import LoadOptions

    if reps < 1:
        raise LlamapyError(f"-r {reps}: at least one repetition")
    if n_prompt < 0 or n_gen < 0 or any(p < 0 or g < 0 for p, g in pg):
        raise LlamapyError("-p, -n and -pg can't be negative")
    if n_batch < 1 or n_ubatch < 1:
        raise LlamapyError("-b and -ub must be at least 1")
    load = LoadOptions(type_k=type_k, type_v=type_v)
    rng = np.random.default_rng(seed)
    results = []
    for n_p, n_g in ((n_prompt, 0), (0, n_gen), *pg):
        if n_p == 0 and n_g == 0:
            continue
        with Engine(model, n_ctx=max(n_p + n_g, 1), n_threads=n_threads, n_batch=min(n_batch, n_ubatch),
                    load=load) as llm:
            bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
            res = BenchResult(
                model_filename=llm.model_path, model_type=llm.desc, model_size=llm.model_size,
                model_n_params=llm.n_params, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=llm.n_threads,
                n_prompt=n_p, n_gen=n_g, test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                type_k=type_k, type_v=type_v,
            )

            if n_p:
                _prompt(llm, rng, n_p, n_batch, bos)  # warm-up
            if n_g:
                _gen(llm, rng, 1, bos if not n_p else None)
            for _ in range(reps):
                llm.kv_clear()
                t0 = time.perf_counter_ns()
                if n_p:
                    _prompt(llm, rng, n_p, n_batch, bos)
                if n_g:
                    _gen(llm, rng, n_g, bos if not n_p else None)
                res.samples_ns.append(time.perf_counter_ns() - t0)
            results.append(res)
    return results


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def markdown_header(show_k: bool = False, show_v: bool = False) -> str:
    """The table's header; the type_k / type_v columns when a list or a type other than f16 was asked for."""
    cols = [("model", -30), ("size", 10), ("params", 10), ("backend", -10), ("threads", 7)]
    cols += [("type_k", 6)] * show_k + [("type_v", 6)] * show_v + [("test", 13), ("t/s", 20)]
    head = "|" + "".join(f" {name:>{w}} |" if w > 0 else f" {name:<{-w}} |" for name, w in cols)
    rule = "|" + "".join(f" {'-' * (abs(w) - 1)}{':' if w > 0 else '-'} |" for _, w in cols)
    return head + "\n" + rule


def markdown_row(r: BenchResult, show_k: bool = False, show_v: bool = False) -> str:
    ts = f"{r.avg_ts():.2f} ± {r.stdev_ts():.2f}"
    types = f"| {r.type_k:>6} " * show_k + f"| {r.type_v:>6} " * show_v
    return (f"| {r.model_type:<30} | {_size(r.model_size):>10} | {_params(r.model_n_params):>10} | {'CPU':<10} "
            f"| {r.n_threads:>7} {types}| {r.test:>13} | {ts:>20} |")


def json_record(r: BenchResult) -> dict:
    """The reference's JSON fields (GPU-only ones at their CPU values)."""
    from . import __version__
    from .native import kernels_active

    avg_ns = int(sum(r.samples_ns) / len(r.samples_ns))
    return {
        "build_commit": f"llamapy-{__version__}", "build_number": 0, "cpu_info": cpu_info(), "gpu_info": "",
        "backends": "CPU", "model_filename": r.model_filename, "model_type": r.model_type,
        "model_size": r.model_size, "model_n_params": r.model_n_params, "n_batch": r.n_batch,
        "n_ubatch": r.n_ubatch, "n_threads": r.n_threads, "cpu_mask": "0x0", "cpu_strict": False, "poll": 50,
        "type_k": r.type_k, "type_v": r.type_v, "n_gpu_layers": 0, "split_mode": "layer", "main_gpu": 0,
        "no_kv_offload": False, "flash_attn": False, "tensor_split": "0.00", "use_mmap": True,
        "embeddings": False, "n_prompt": r.n_prompt, "n_gen": r.n_gen, "test_time": r.test_time,
        "avg_ns": avg_ns, "stddev_ns": int(_stdev([float(x) for x in r.samples_ns])),
        "avg_ts": r.avg_ts(), "stddev_ts": r.stdev_ts(),
        "samples_ns": list(r.samples_ns), "samples_ts": r.samples_ts(), "kernels": kernels_active(),
    }


def parse_pg(text: str | None) -> tuple[tuple[int, int], ...]:
    """-pg's value: `P,N` (a prompt of P then N generated), several separated by `;` or given as a list."""
    if not text:
        return ()
    pairs = []
    for item in text.replace(";", " ").split():
        parts = item.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            p, g = int(parts[0]), int(parts[1])
        except ValueError:
            raise LlamapyError(f"-pg {item}: expected <pp,tg>, two counts such as 512,128") from None
        if p < 0 or g < 0:
            raise LlamapyError(f"-pg {item}: the counts can't be negative")
        pairs.append((p, g))
    return tuple(pairs)


def bench(model: str | None = None, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
          reps: int = 5, output: str = "md", n_batch: int = 2048, n_ubatch: int = 512,
          out: TextIO | None = None, type_k: str = "f16", type_v: str = "f16",
          pg: tuple[tuple[int, int], ...] = ()) -> list[BenchResult]:
    """Run the benchmark and print its table (md) or records (json) to `out` (stdout). type_k / type_v: KV cache
    types, comma lists as llama-bench's -ctk / -ctv (every pair is a test, K the outer loop); pg: the combined
    prompt + generation tests after the pp and tg ones."""
    import sys

    from . import __version__
    from .native import kernels_active

    if output not in ("md", "json", "jsonl"):
        raise LlamapyError(f"-o {output}: use md, json or jsonl")
    from .engine.load import KV_TYPE_NAMES, kv_cache_type

    ks = [KV_TYPE_NAMES[kv_cache_type(t, "K")] for t in type_k.split(",")]
    vs = [KV_TYPE_NAMES[kv_cache_type(t, "V")] for t in type_v.split(",")]
    show_k, show_v = ks != ["f16"], vs != ["f16"]
    out = out or sys.stdout
    if output == "md":
        print(markdown_header(show_k, show_v), file=out, flush=True)
    results = []
    # one test at a time, so each row appears as soon as it is measured
    tests = ((n_prompt, 0), (0, n_gen), *pg)
    for tk, tv, (n_p, n_g) in ((tk, tv, t) for tk in ks for tv in vs for t in tests):
        if n_p == 0 and n_g == 0:
            continue
        if n_p and n_g:
            (r,) = run_bench(model, 0, 0, threads, reps, n_batch, n_ubatch, type_k=tk, type_v=tv, pg=((n_p, n_g),))
        else:
            (r,) = run_bench(model, n_p, n_g, threads, reps, n_batch, n_ubatch, type_k=tk, type_v=tv)
        results.append(r)
        if output == "md":
            print(markdown_row(r, show_k, show_v), file=out, flush=True)
        elif output == "jsonl":
            print(json.dumps(json_record(r)), file=out, flush=True)
    if output == "md":
        print(f"\nbuild: llamapy {__version__} ({kernels_active()}, {os.cpu_count()} cpus)", file=out)
    elif output == "json":
        print(json.dumps([json_record(r) for r in results], indent=2), file=out)
    return results
