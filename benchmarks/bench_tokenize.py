"""Benchmark tokenizing ~1 MB of mixed English/Chinese text on one core.

    python benchmarks/bench_tokenize.py [-m MODEL.gguf ...] [--file TEXT] [--size 1000000]

Text: English from Python's own documentation (pydoc_data.topics) interleaved with Chinese, half and
half by bytes. The Chinese is made from the paragraphs below by cutting windows of 4 to 24 characters
at random (seeded) and joining them with punctuation and numbers, so most Chinese words are new to the
tokenizer's word cache: a harder case than real text, which repeats itself more.

Vocabularies: the default model (SmolLM2, byte-level BPE, pre-tokenizer `smollm`), the shared LLaMA
SPM vocabulary when ../shared is there, and any -m given. Each runs with its native library path and
with merges in Python only, and then the library doing all the work as the alternative llamapy does not
take ("library"). "cold" is the first pass over the text with an empty word cache, "warm"
the second; MB/s is per CPU second of this process (one core; wall time is shown too, as the machine
may be busy). Target: at least 1 MB/s cold on the native path. "same" says whether both paths gave
the same ids.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.store.locate import default_model_path
from llamapy.tokenizer.core import Tokenizer

TARGET_MBS = 1.0

CHINESE = (
    "糖果的制作步骤：首先准备好白砂糖、麦芽糖和清水，按照一定的比例放入锅中。用中火慢慢加热，一边加热一边搅拌，"
    "直到糖完全溶化。然后继续熬煮，当温度达到一百五十度左右时关火。接着可以加入少量的色素和香精，搅拌均匀后倒入模具中。"
    "请列举5条文明乘车的建议：上车时要自觉排队，先下后上，不要拥挤。在车厢内不要大声喧哗，接打电话时尽量压低声音。"
    "主动给老人、孕妇、残疾人和抱小孩的乘客让座。不要在车内吃有气味的食物，保持车厢的干净整洁。遵守乘车规定，"
    "不携带危险物品上车，注意自身和他人的安全。人工智能是计算机科学的一个分支，它试图理解智能的实质，并生产出一种新的"
    "能以人类智能相似的方式做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。"
    "北京是中华人民共和国的首都，是全国的政治中心、文化中心、国际交往中心和科技创新中心。北京有着三千多年的建城史和"
    "八百多年的建都史，拥有故宫、天坛、颐和园、长城等众多名胜古迹。学习一门新的编程语言需要耐心和坚持。建议先从基础"
    "语法开始，了解变量、数据类型、条件语句和循环结构，然后学习函数和模块的使用方法。多读优秀的开源代码，多动手实践。"
)


def mixed_text(size: int, seed: int = 0) -> str:
    """About `size` bytes: English paragraphs and generated Chinese ones, alternating."""
    import pydoc_data.topics

    rng = random.Random(seed)
    english = [t for _, t in sorted(pydoc_data.topics.topics.items())]
    han = [c for c in CHINESE if "\u4e00" <= c <= "\u9fff"]
    parts, n_en, n_zh, i = [], 0, 0, 0
    while n_en + n_zh < size:
        if n_en <= n_zh:
            p = english[i % len(english)]
            i += 1
            n_en += len(p.encode())
        else:
            words = []
            for _ in range(40):
                k = rng.randint(4, 24)
                j = rng.randrange(len(han) - k)
                words.append("".join(han[j : j + k]))
                if rng.random() < 0.2:
                    words.append(str(rng.randint(1, 2025)))
            p = "".join(w + rng.choice("，，，。、：；") for w in words) + "\n"
            n_zh += len(p.encode())
        parts.append(p)
    return "\n".join(parts)


def measure(tok, text: str):
    t0, c0 = time.perf_counter(), time.process_time()
    ids = tok.encode(text, add_special=False)
    t1, c1 = time.perf_counter(), time.process_time()
    return ids, c1 - c0, t1 - t0


class LibraryOnly:
    """The alternative llamapy does not take, for comparison: the library doing everything.

    BPE: a `tokenizers` pipeline with the same regex stages (Split, isolated) and byte-level mapping.
    SPM: sentencepiece on the whole text, without llamapy's word cache.
    """

    def __init__(self, tok: Tokenizer):
        from llamapy.tokenizer import bpe as bpe

        tok.encode("warm up")
        self.name = "library" if tok.fast else None
        if tok.model == "gpt2" and tok.fast:
            from tokenizers import Regex, pre_tokenizers
            from tokenizers import Tokenizer as HFTokenizer

            hf = HFTokenizer(tok._bpe.native)
            stages = [pre_tokenizers.Split(Regex(bpe._pat(t, False).pattern), "isolated")
                      for t in bpe._STAGES[tok._stages]]
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [*stages, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            self.encode = lambda text, add_special=False: hf.encode(text, add_special_tokens=False).ids
        elif tok.model == "llama" and tok.fast:
            sp = tok._spm.native
            self.encode = lambda text, add_special=False: sp.encode(" " + text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", action="append", default=[], help="GGUF file (repeatable)")
    ap.add_argument("--file", help="tokenize this UTF-8 file instead of the generated text")
    ap.add_argument("--size", type=int, default=1_000_000, help="bytes of generated text")
    args = ap.parse_args(argv)

    if args.file:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = mixed_text(args.size)
    nbytes = len(text.encode())
    models = list(args.model)
    if not models:
        d = default_model_path()
        if d:
            models.append(d)
        spm_vocab = os.path.join(ROOT, "..", "shared", "testdata", "tokenizer", "ggml-vocab-llama-spm.gguf")
        if os.path.exists(spm_vocab):
            models.append(spm_vocab)
    if not models:
        print("no model: install the default model or pass -m", file=sys.stderr)
        return 1

    print(f"text: {nbytes / 1e6:.2f} MB ({'file' if args.file else 'English + generated Chinese'})")
    head = f"| {'vocabulary':<28} | {'path':<7} | {'load s':>6} | {'cold MB/s':>9} | {'warm MB/s':>9} | " \
           f"{'wall MB/s':>9} | {'tokens':>8} | same |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    worst = None
    for path in models:
        name = os.path.basename(path)
        results = {}
        for native in (True, False):
            t0 = time.perf_counter()
            tok = Tokenizer.from_gguf(path, native=native)
            tok.encode("warm up", add_special=False)  # builds the merge machinery
            load = time.perf_counter() - t0
            ids, cold_cpu, cold_wall = measure(tok, text)
            _, warm_cpu, _ = measure(tok, text)
            results[native] = ids
            kind = ("native" if tok.fast else "python*") if native else "python"
            same = "" if native else ("yes" if results[True] == ids else "NO")
            cold = nbytes / cold_cpu / 1e6
            if native:
                worst = cold if worst is None else min(worst, cold)
            print(f"| {name[:28]:<28} | {kind:<7} | {load:6.2f} | {cold:9.2f} | {nbytes / warm_cpu / 1e6:9.2f} | "
                  f"{nbytes / cold_wall / 1e6:9.2f} | {len(ids):8d} | {same:<4} |")
        lib = LibraryOnly(Tokenizer.from_gguf(path))
        if lib.name:
            ids, cold_cpu, cold_wall = measure(lib, text)
            _, warm_cpu, _ = measure(lib, text)
            same = "yes" if ids == results[True] else "NO"
            print(f"| {name[:28]:<28} | {lib.name:<7} | {'':6} | {nbytes / cold_cpu / 1e6:9.2f} | "
                  f"{nbytes / warm_cpu / 1e6:9.2f} | {nbytes / cold_wall / 1e6:9.2f} | {len(ids):8d} | {same:<4} |")
    print(f"target: >= {TARGET_MBS:.1f} MB/s cold on the default path; slowest here: {worst:.2f} MB/s "
          f"({'ok' if worst >= TARGET_MBS else 'BELOW TARGET'})")
    print("python* = the native library declined this vocabulary (see llamapy/tokenizer/*.py)")
    print("library = the library alone (tokenizers' whole pipeline / sentencepiece on the whole text), "
          "for comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
