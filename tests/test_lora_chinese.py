"""The Chinese-LLaMA-Alpaca deployment: a Meta LLaMA checkpoint and a LoRA adapter that resizes the vocabulary
to 49954 tokens, carries full embed_tokens and lm_head (modules_to_save) and its own tokenizer.model, converted
straight to Q4_0 with `llamapy convert llama-7b/ --lora chinese-alpaca-lora-7b/ --outtype q4_0`, then chatting
through `llamapy run -ins` (a tiny random model of that shape: the words are noise, the plumbing is real)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("peft", reason="the adapter is made by PEFT (the test extra)")

from cliutil import cli  # noqa: E402
from peftutil import base_meta, extend_spm, make_adapter  # noqa: E402

from llamapy.ggufio.reader import GGUFReader  # noqa: E402
from llamapy.tokenizer import Tokenizer  # noqa: E402

N_VOCAB = 49954


@pytest.fixture(scope="module")
def zh(tmp_path_factory, spm_model, vocab_n):
    root = tmp_path_factory.mktemp("zh")
    meta, hf = base_meta(root, spm_model, vocab_n)
    (root / "llama-7b").symlink_to(meta)
    pieces = extend_spm(spm_model, root / "zh-tokenizer.model", N_VOCAB)
    ad = make_adapter(hf, root / "chinese-alpaca-lora-7b", r=8, alpha=32, new_vocab=N_VOCAB,
                      modules_to_save=["embed_tokens", "lm_head"], tokenizer=root / "zh-tokenizer.model",
                      safetensors=False)
    return root, ad, pieces


def test_convert_to_q4_0_and_chat(zh, capsys):
    root, ad, pieces = zh
    out = root / "zh-alpaca-q4_0.gguf"
    code, _, err = cli(capsys, "convert", str(root / "llama-7b"), "--lora", str(ad), "--outtype", "q4_0",
                       "--outfile", str(out))
    assert code == 0, err
    assert "using the adapter's tokenizer" in err
    with GGUFReader(out) as r:
        assert r.get("llama.vocab_size") == N_VOCAB
        assert len(r.get("tokenizer.ggml.tokens")) == N_VOCAB
        assert r.tensors["token_embd.weight"].shape[1] == N_VOCAB
        assert r.tensors["output.weight"].shape[1] == N_VOCAB
        assert r.tensors["blk.0.attn_q.weight"].type_name == "Q4_0"
        tok = Tokenizer.from_gguf(r)
    ids = tok.encode(pieces[-1], add_special=False)  # a two-character word the adapter's tokenizer added
    assert tok.token_text(ids[-1]) == pieces[-1] and ids[-1] == N_VOCAB - 1
    p = subprocess.run([sys.executable, "-m", "llamapy", "run", "-m", str(out), "-ins", "-n", "12", "--temp", "0",
                        "-c", "256", "-p", "下面是一个指令。"], input=f"{pieces[5]}{pieces[9]}？\n",
                       capture_output=True, encoding="utf-8", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    head = " 下面是一个指令。\n> "  # the prompt as tokenized (SentencePiece's leading space), then our turn
    assert p.stdout.startswith(head)
    assert "\n> " in p.stdout[len(head) + 1:]  # an answer came back, then the next turn
    assert "total time" in p.stderr
