"""llamapy's engine against the reference engine, per architecture, with the reference's own measure:
llama-perplexity writes its log-probabilities (`--kl-divergence-base`) for a tiny random model of the
architecture, and `llamapy perplexity --kl-divergence` scores llamapy's engine on the same GGUF against
them (mean KL divergence, the largest |Δp| of the text's next token, how often the top token agrees).

The models: Hugging Face checkpoints with random weights (spreads as in test_arch, so that the logits are
peaked: the top token's probability is typically 0.3-0.9), a SentencePiece or byte-level BPE tokenizer,
converted by `llamapy convert` to F32, F16, Q8_0 and Q4_K_M (rows of 256, so the K-quants are used).
Every architecture the reference snapshot has: llama, Mixtral (llama with experts), qwen2, qwen2moe,
gemma2, phi3. (qwen3, qwen3moe and gemma3 came after it; test_arch checks them against transformers.)

Tolerances: the engines use the same quantization formats and, with AVX2, the same dot-product kernels
and F16 K/V rounding, so their logits differ by float summation order, plus, in the quantized types, by
the activations' own quantization (Q8_0, Q8_K): a step function, so that an ulp of difference upstream
now and then moves a value to the next step, which these random networks (and a mixture of experts'
top-k choice) amplify. Measured (mean KLD / max |Δp| / same top): F32 and F16 below 2.5e-6 / 0.05 % /
100 %; Q8_0 and Q4_K_M up to 1.1e-4 / 0.75 % / 99.5 % (qwen2moe Q8_0, gemma2 Q4_K_M). Held to: F32/F16
|KLD| < 2e-5, |Δp| < 0.2 %, same top 100 %; quantized |KLD| < 5e-4, |Δp| < 2 %, same top >= 98 %. The
Q4_K_M model scored against the F32 model's base must be 10x further off than any same-file score.

Needs LLAMAPY_REF_PERPLEXITY=/path/to/llama-perplexity (skipped without it), torch and transformers.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from test_arch import _config, _randomize
from test_convert_arch import bpe_tokenizer, qwen_pre  # noqa: F401 (a fixture)
from test_convert_util import corpus

from llamapy.convert import convert

REF = os.environ.get("LLAMAPY_REF_PERPLEXITY")
pytestmark = pytest.mark.skipif(not REF, reason="set LLAMAPY_REF_PERPLEXITY to the reference llama-perplexity "
                                                "to compare the engines")

ARCHS = ["llama", "mixtral", "qwen2", "qwen2moe", "gemma2", "phi3"]
OUTTYPES = ["f32", "f16", "q8_0", "q4_k_m"]
N_CTX, N_CHUNK = 64, 6
BPE = ("qwen2moe",)  # the reference reads only a tokenizer.json for these


def build_checkpoint(d, arch: str, spm_model, n_vocab: int):
    """A Hugging Face checkpoint of `arch` with random weights and a tokenizer, 256 wide (K-quant rows)."""
    import shutil

    import torch
    import transformers as tr

    cfg, cls = _config(tr, arch)
    wide = dict(hidden_size=256, intermediate_size=256, vocab_size=n_vocab, bos_token_id=1, eos_token_id=2)
    if arch == "qwen2moe":
        wide.update(moe_intermediate_size=256, shared_expert_intermediate_size=256)
    if arch == "gemma2":  # the reference knows gemma2 by its layer count (26: 2B); a logit cap that allows peaks
        wide.update(num_hidden_layers=26, final_logit_softcapping=30.0)
    if arch == "phi3":
        wide.update(original_max_position_embeddings=256)
    for k, v in wide.items():
        setattr(cfg, k, v)
    if hasattr(cfg, "layer_types"):
        cfg.layer_types = [cfg.layer_types[i % len(cfg.layer_types)] for i in range(cfg.num_hidden_layers)]
    torch.manual_seed(0)
    model = cls(cfg).eval()
    _randomize(torch, model, arch, 0)
    with torch.no_grad():  # logits of spread ~4, so that distributions are peaked (top p typically > 0.3)
        for name, p in model.named_parameters():
            if name == "lm_head.weight" and not cfg.tie_word_embeddings:
                p.mul_(4.0)
    model.save_pretrained(d, safe_serialization=True)
    if arch in BPE:
        bpe_tokenizer(d, n_vocab)
    else:
        shutil.copy(spm_model, d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text("\n".join(corpus(300, seed=3)) + "\n")
    return p


def ref_base(model: str, text, out) -> None:
    r = subprocess.run([REF, "-m", model, "-f", str(text), "-c", str(N_CTX), "--chunks", str(N_CHUNK), "-t", "2",
                        "--kl-divergence-base", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]


def score(gguf, base, n_seq: int = 2):
    """llamapy's engine on `gguf` against the saved base: (KLDStats, mean top probability of the base)."""
    import io

    from llamapy.engine.engine import Engine
    from llamapy.kl_divergence import decode_rows, kl_divergence, read_saved

    saved = read_saved(str(base))
    with Engine(str(gguf), n_ctx=saved.n_ctx, n_threads=2, n_batch=n_seq * saved.n_ctx, n_seq_max=n_seq) as llm:
        tok = llm.tokenizer
        stats = kl_divergence(llm, saved, tok.bos_id if tok.add_bos else None, io.StringIO(), n_seq=n_seq)
    top = np.mean([np.exp(decode_rows(saved.chunk(i), saved.n_vocab).max(axis=1)).mean()
                   for i in range(saved.n_chunk)])
    return stats, float(top)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_the_reference_engine(tmp_path, arch, spm_model, vocab_n, text_file, capsys, request):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if arch in BPE:
        request.getfixturevalue("qwen_pre")
    n_vocab = 320 if arch in BPE else vocab_n
    hf = build_checkpoint(tmp_path / "hf", arch, spm_model, n_vocab)
    rows = []
    for outtype in OUTTYPES:
        gguf = tmp_path / f"{arch}-{outtype}.gguf"
        convert(hf, gguf, outtype)
        base = tmp_path / f"{arch}-{outtype}.kld"
        ref_base(str(gguf), text_file, base)
        stats, top = score(gguf, base)
        rows.append((outtype, stats, top))
    # the check can tell: the Q4_K_M model against the F32 model's base is far outside the tolerances
    q4_vs_f32, _ = score(tmp_path / f"{arch}-q4_k_m.gguf", tmp_path / f"{arch}-f32.kld")
    with capsys.disabled():
        for outtype, st, top in rows + [("q4km/f32", q4_vs_f32, 0.0)]:
            print(f"\n{arch:9s} {outtype:8s} mean KLD {st.kld()[0]:10.3e}  max |Δp| {100 * st.max_p_diff:.4f} %  "
                  f"same top {100 * st.same_top()[0]:7.3f} %  base top p {top:.3f}  n {st.count}", end="")
    for outtype, st, top in rows:
        assert st.count == N_CHUNK * (N_CTX - 1 - N_CTX // 2)
        assert top > 0.2, (outtype, top)  # peaked distributions (uniform would be 1/n_vocab)
        exact = outtype in ("f32", "f16")
        assert abs(st.kld()[0]) < (2e-5 if exact else 5e-4), (outtype, st.kld())
        assert st.max_p_diff < (0.002 if exact else 0.02), (outtype, st.max_p_diff)
        assert st.same_top()[0] >= (1.0 if exact else 0.98), (outtype, st.same_top())
    worst = max(abs(st.kld()[0]) for _, st, _ in rows)
    assert q4_vs_f32.kld()[0] > 10 * worst and q4_vs_f32.max_p_diff > 0.01
