"""Speculative decoding: target-only decode against decode with a draft model and with prompt lookup, on a
target made from the default model (its weights requantized to F16 or Q8_0) and a draft that is the default
model (Q4_1) or another requantization of it.

    python benchmarks/bench_speculative.py [-n 96] [--target F16] [--draft Q4_1] [--draft-max 8]
        [--draft-p-min 0.75] [--threads 2] [-r 1]

Two prompts: one whose answer repeats the prompt (where prompt lookup pays off) and a plain chat question.
Each row is greedy generation through the generation core in this process; decode t/s is the generated
tokens over the wall time after the prompt (drafting included; the draft model's own prompt is evaluated
before, as llama-speculative does before its decode timing). The profile columns split that time: the
draft model's steps, the target's steps (verify batches with exact rows, or single tokens), the rest
(sampling, Python). Greedy output must be identical to target-only (the 'same' column).

With LLAMAPY_REF_SPECULATIVE naming llama.cpp's llama-speculative, it runs on the same pair and prompts
(--temp 0, the same --draft-max / --draft-p-min and threads) and its decode speed and acceptance are shown.
Timings on a shared machine are noisy: the ratios, measured side by side in one run, are the steadier figure.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy import quantize as Q  # noqa: E402
from llamapy.engine.engine import Engine  # noqa: E402
from llamapy.generation.generate import steps  # noqa: E402
from llamapy.generation.params import SamplerParams  # noqa: E402
from llamapy.generation.sampling import Sampler  # noqa: E402
from llamapy.generation.sequence import Sequence, Timings  # noqa: E402
from llamapy.generation.speculative import DraftParams, LookupDrafter, ModelDrafter  # noqa: E402
from llamapy.store.locate import resolve_model  # noqa: E402

TEXT = ("The harbour committee met on Tuesday to review the plans for the new bridge. The engineers said the "
        "tide had been measured at twelve points along the river, and that the soil on the north bank would "
        "need deeper piles than the south bank.")
PROMPTS = {
    "repeats the prompt": f"<|im_start|>user\nCopy this text exactly, word for word:\n{TEXT}<|im_end|>\n"
                          "<|im_start|>assistant\n",
    "plain chat": "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n"
                  "<|im_start|>assistant\n",
}


class TimedDrafter:
    """A drafter whose draft() time is summed (the draft model's share of the decode time)."""

    def __init__(self, inner):
        self.inner, self.params, self.ms = inner, inner.params, 0.0

    def draft(self, context, n, seq_id=None):
        t0 = time.perf_counter()
        try:
            return self.inner.draft(context, n)
        finally:
            self.ms += 1e3 * (time.perf_counter() - t0)


def generate(llm, ids, n, drafter=None):
    t = Timings()
    seq = Sequence(Sampler(SamplerParams(temp=0.0), llm.n_vocab), llm.n_ctx, n_predict=n, ignore_eos=True,
                   timings=t)
    t0 = time.perf_counter()
    out = [s.token for s in steps(llm, seq, ids, reuse_prefix=False, drafter=drafter)]
    wall = 1e3 * (time.perf_counter() - t0) - t.prompt_ms
    return out, t, wall


def make_model(default: str, kind: str, d: str) -> str:
    if kind.upper() == "Q4_1":
        return default
    path = os.path.join(d, f"smollm2-{kind.lower()}.gguf")
    Q.quantize_file(default, path, getattr(Q.F, f"MOSTLY_{kind.upper()}"), 2, allow_requantize=True)
    return path


def reference(ref: str, target: str, draft: str, prompt: str, a) -> dict | None:
    cmd = [ref, "-m", target, "-md", draft, "-p", prompt, "-n", str(a.n), "--temp", "0", "-t", str(a.threads),
           "-td", str(a.threads), "--draft-max", str(a.draft_max), "--draft-p-min", str(a.draft_p_min),
           "-c", "1024", "-cd", "1024", "-s", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    text = r.stdout + r.stderr
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", text)
    dr, ac = re.search(r"n_drafted\s*=\s*(\d+)", text), re.search(r"n_accept\s*=\s*(\d+)", text)
    if r.returncode != 0 or not m:
        print(f"  reference failed ({r.returncode}): {text[-1000:]}", file=sys.stderr)
        return None
    return {"ts": float(m.group(3)), "drafted": int(dr.group(1)) if dr else 0,
            "accepted": int(ac.group(1)) if ac else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("--target", default="F16", help="the target: the default model requantized to this type")
    ap.add_argument("--draft", default="Q4_1", help="the draft: Q4_1 is the default model itself")
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--draft-p-min", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=1)
    a = ap.parse_args()
    ref = os.environ.get("LLAMAPY_REF_SPECULATIVE")
    default = resolve_model(None)
    with tempfile.TemporaryDirectory() as d:
        target, draft = make_model(default, a.target, d), make_model(default, a.draft, d)
        params = DraftParams(n_max=a.draft_max, p_min=a.draft_p_min)
        print(f"target: default model as {a.target.upper()}; draft: {a.draft.upper()}; {a.n} tokens greedy, "
              f"{a.threads} threads, draft max {a.draft_max}, p_min {a.draft_p_min}, {a.reps} rep(s) (medians)\n")
        print("| prompt | mode | decode t/s | speed-up | drafted | accepted | acceptance | tokens / target step "
              "| draft ms | target ms | other ms | same |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        refs = []
        with Engine(target, n_ctx=1024, n_threads=a.threads) as llm, \
                Engine(draft, n_ctx=1024, n_threads=a.threads) as dm:
            for name, prompt in PROMPTS.items():
                ids = llm.tokenizer.encode(prompt, add_special=True, parse_special=True)
                modes = {"target only": lambda: None,
                         "draft model": lambda: TimedDrafter(ModelDrafter(dm, params)),
                         "prompt lookup": lambda: TimedDrafter(LookupDrafter(params))}
                res: dict[str, list] = {m: [] for m in modes}
                for _ in range(a.reps):   # modes interleaved, so the machine's load hits them alike
                    for mode, mk in modes.items():
                        dm.kv_clear()
                        dm.eval(ids)   # the draft model's prompt, before the timing (as llama-speculative)
                        drafter = mk()
                        out, t, wall = generate(llm, ids, a.n, drafter)
                        res[mode].append((out, t, wall, drafter.ms if drafter else 0.0))
                base_out = res["target only"][0][0]
                base_ts = statistics.median(len(r[0]) / r[2] * 1e3 for r in res["target only"])
                for mode, rs in res.items():
                    out, t, wall, dms = rs[len(rs) // 2]
                    ts = statistics.median(len(r[0]) / r[2] * 1e3 for r in rs)
                    acc = f"{100 * t.draft_n_accepted / t.draft_n:.1f}%" if t.draft_n else "-"
                    n_steps = t.n_sample - t.draft_n_accepted   # target steps after the prompt
                    per_step = len(out) / max(n_steps, 1)
                    other = wall - dms - t.eval_ms
                    same = all(r[0] == base_out for r in rs)
                    print(f"| {name} | {mode} | {ts:.1f} | {ts / base_ts:.2f}x | {t.draft_n} | {t.draft_n_accepted} "
                          f"| {acc} | {per_step:.2f} | {dms:.0f} | {t.eval_ms:.0f} | {other:.0f} | "
                          f"{'yes' if same else 'NO'} |", flush=True)
                if ref:
                    refs.append((name, reference(ref, target, draft, prompt, a)))
        if ref:
            print("\n| prompt | llama-speculative decode t/s | drafted | accepted | acceptance |")
            print("|---|---:|---:|---:|---:|")
            for name, r in refs:
                if r is None:
                    print(f"| {name} | failed | - | - | - |")
                    continue
                acc = f"{100 * r['accepted'] / r['drafted']:.1f}%" if r["drafted"] else "-"
                print(f"| {name} | {r['ts']:.1f} | {r['drafted']} | {r['accepted']} | {acc} |")


if __name__ == "__main__":
    main()
