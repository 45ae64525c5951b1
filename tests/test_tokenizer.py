"""Tokenizer: the reference's ids on the shared cases, the default model's specials, streaming decode, and
`llamapy tokenize`."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys

import pytest
from conftest import shared_path

from llamapy.errors import LlamapyError
from llamapy.tokenizer.core import ATTR_CONTROL, TYPE_CONTROL, StreamDecoder, Tokenizer
from llamapy.tokenizer.cxx_order import unordered_map_order

SEPARATOR = "\n__ggml_vocab_test__\n"


def shared_cases(out_name: str) -> list[tuple[str, list[int]]]:
    """(text, reference ids) of the shared vocab tests: cases end with the separator."""
    inp = shared_path("testdata", "tokenizer", "llama-spm.inp").read_text(encoding="utf-8")
    out = shared_path("testdata", "tokenizer", out_name).read_text(encoding="utf-8")
    texts = inp.split(SEPARATOR)
    assert texts[-1] == ""
    texts = texts[:-1]
    lines = out.split("\n")
    assert lines[-1] == ""
    ids = [[int(x) for x in line.split()] for line in lines[:-1]]
    assert len(texts) == len(ids) > 40
    return list(zip(texts, ids))


@pytest.fixture(scope="module")
def llama_spm():
    path = shared_path("testdata", "tokenizer", "ggml-vocab-llama-spm.gguf")
    return Tokenizer.from_gguf(path), Tokenizer.from_gguf(path, native=False)


@pytest.fixture(scope="module")
def smollm2(default_model):
    fast = Tokenizer.from_gguf(default_model)
    assert fast.fast  # builds the library's model now, so the cases below run in it
    return fast, Tokenizer.from_gguf(default_model, native=False)


@pytest.mark.parametrize("which", [0, 1], ids=["native", "python"])
@pytest.mark.parametrize("model,cases", [("llama_spm", "llama-spm.out"), ("smollm2", "smollm2.out")])
def test_shared_cases(request, model, cases, which):
    tok = request.getfixturevalue(model)[which]
    assert tok.fast == (which == 0)
    for text, ids in shared_cases(cases):
        assert tok.encode(text, add_special=False, parse_special=False) == ids, text


def test_shared_cases_decode_back(llama_spm, smollm2):
    for text, ids in shared_cases("smollm2.out"):
        assert smollm2[0].decode(ids) == text
    for text, ids in shared_cases("llama-spm.out"):
        assert llama_spm[0].decode(ids) == (" " + text if text else "")


def test_llama_spm_metadata(llama_spm):
    tok = llama_spm[0]
    assert (tok.model, tok.n_vocab, tok.bos_id, tok.eos_id, tok.unk_id, tok.nl_id) == ("llama", 32000, 1, 2, 0, 13)
    assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
    assert tok.eog_ids == {2} and tok.eot_id is None and tok.pad_id is None
    assert tok.encode("Hello world") == [1, 15043, 3186]
    assert tok.token_to_piece(13) == b"\n" and tok.token_to_piece(15043) == b" Hello"
    assert tok.token_text(15043) == "\u2581Hello" and tok.find_token("\u2581Hello") == 15043


def test_smollm2_metadata(smollm2):
    tok = smollm2[0]
    assert (tok.model, tok.pre, tok.n_vocab) == ("gpt2", "smollm", 49152)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.nl_id) == (1, 2, 0, 2, 198)
    assert not tok.add_bos and not tok.add_eos and not tok.add_space_prefix
    assert tok.eog_ids == {0, 2} and tok.is_eog(2) and tok.is_eog(0) and not tok.is_eog(1)
    # both <|im_end|> and <|endoftext|> could be EOT: the reference's hash-map walk meets token 0 first
    assert tok.eot_id == 0
    assert tok.find_token("<|im_end|>") == 2 and tok.token_type(2) == TYPE_CONTROL
    assert tok.encode("Hello") == tok.encode("Hello", add_special=False)  # no BOS for this model


# text from the tutorials, code, emoji, whitespace runs, and text that looks like special tokens
OWN_CASES = [
    "糖果的制作步骤", "请列举5条文明乘车的建议", "Building a website can be done in 10 simple steps:",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n-1) + fib(n-2)\n",
    "int main(void) { printf(\"%d\\n\", x->y[0]); }", "🦙🚀😶‍🌫️👍🏽 🇫🇷", "   \n\n\t\t  \r\n  x  ", "a\u3000b\u00a0c\u2003d",
    "<|im_start|>user\nHi<|im_end|>", "<|im_start|", "<|im_start|><|im_start|>", "<s></s><unk>", "<0x0A>",
    "y'all can't won't it's I'M", "1234567 ２０２４ ½ ⅷ", "ÀÉÎÕÜ ñ ß ſ İ K",
]


VOCABS = ["smollm2", "llama_spm"]


@pytest.mark.filterwarnings("ignore:the prompt starts with a BOS token")
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("parse_special", [False, True])
def test_own_cases_native_equals_python(request, vocab, parse_special):
    pair = request.getfixturevalue(vocab)
    for text in OWN_CASES:
        ids = pair[0].encode(text, add_special=True, parse_special=parse_special)
        assert ids == pair[1].encode(text, add_special=True, parse_special=parse_special), text
        assert pair[0].decode(ids, special=False).endswith(text) or parse_special, text


@pytest.mark.parametrize("text", OWN_CASES)
def test_own_cases_smollm2_match_its_hf_pipeline(smollm2, text):
    """SmolLM2's own Hugging Face pre-tokenizer (isolated digits, then the GPT-2 byte-level regex), run by
    the tokenizers library: a third implementation, equal to the reference's on text like this."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    tok = smollm2[0]
    merges = [tuple(m.split(" ", 1)) for m in tok.merges]
    hf = HFTokenizer(models.BPE(vocab=tok.token_to_id, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    assert tok.encode(text, add_special=False) == hf.encode(text, add_special_tokens=False).ids


def test_special_tokens_in_text(smollm2):
    tok = smollm2[0]
    chat = "<|im_start|>user\nHi<|im_end|>"
    ids = tok.encode(chat, parse_special=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1
    assert ids[1:-1] == tok.encode("user\nHi")
    plain = tok.encode(chat, parse_special=False)
    assert 1 not in plain and 2 not in plain and tok.decode(plain) == chat
    assert tok.encode("<|im_start|><|im_start|>", parse_special=True) == [1, 1]
    assert 1 not in tok.encode("<|im_start|", parse_special=True)
    assert tok.decode(ids) == chat and tok.decode(ids, special=False) == "user\nHi"


def test_llama_special_parsing(llama_spm):
    tok = llama_spm[0]
    assert tok.encode("<s>", add_special=False, parse_special=True) == [1]
    assert tok.encode("</s>x", add_special=False, parse_special=True) == [2] + tok.encode("x", add_special=False)
    assert tok.encode("<unk>", add_special=False, parse_special=True) == [0]
    assert 1 not in tok.encode("<s>", add_special=False)
    assert tok.attrs[1] & ATTR_CONTROL


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("text", ["糖果的制作步骤", "请列举5条文明乘车的建议", "🦙 said 你好 😶‍🌫️!"])
def test_stream_decoder_cjk(request, vocab, text):
    tok = request.getfixturevalue(vocab)[0]
    ids = tok.encode(text, add_special=False)
    dec = StreamDecoder(tok)
    pieces = [dec.add_token(i) for i in ids]
    pieces.append(dec.finalize())
    assert "".join(pieces) == tok.decode(ids)
    assert "\ufffd" not in "".join(pieces)
    # some characters span several tokens: the stream holds them back instead of breaking them
    assert "" in pieces[:-1]
    for p in pieces:
        p.encode("utf-8")  # never a lone surrogate or a broken sequence


def test_stream_decoder_flushes_a_cut_sequence(smollm2):
    tok = smollm2[0]
    ids = tok.encode("糖", add_special=False)
    dec = StreamDecoder(tok)
    assert [dec.add_token(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.finalize() == "\ufffd" == tok.decode(ids[:-1])


def test_token_id_range_is_checked(smollm2):
    with pytest.raises(LlamapyError, match="out of range"):
        smollm2[0].token_to_piece(49152)


def test_reference_hash_map_order_matches_libstdcxx(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: can't compare with libstdc++'s std::unordered_map")
    src = tmp_path / "order.cpp"
    src.write_text(
        "#include <unordered_map>\n#include <string>\n#include <iostream>\n#include <cstdio>\n"
        "int main(){ std::unordered_map<std::string,int> m; std::string s; int i = 0;\n"
        "  while (std::getline(std::cin, s)) m[s] = i++;\n"
        "  for (auto & kv : m) printf(\"%d\\n\", kv.second); }\n"
    )
    exe = tmp_path / "order"
    subprocess.run([gxx, "-O1", "-o", str(exe), str(src)], check=True)
    keys = [f"tok{i % 9000}_{'x' * (i % 13)}" for i in range(12000)] + ["<|im_end|>", "<|endoftext|>", "", "a"]
    out = subprocess.run([str(exe)], input="\n".join(keys) + "\n", capture_output=True, text=True, check=True)
    assert [int(x) for x in out.stdout.split()] == unordered_map_order([k.encode() for k in keys])


# -- llamapy tokenize -----------------------------------------------------------------------------------------

@pytest.fixture
def cli(capsysbinary, monkeypatch):
    """Run `llamapy tokenize ARGS` in this process: (exit code, stdout bytes, stderr text)."""
    from llamapy.cli import main

    def run(*args, stdin=b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsysbinary.readouterr()
        try:
            main(["tokenize", *args])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out, err = capsysbinary.readouterr()
        return code, out, err.decode()

    return run


def test_cli_ids_and_pieces(cli):
    vocab = str(shared_path("testdata", "tokenizer", "ggml-vocab-llama-spm.gguf"))
    assert cli("-m", vocab, "-p", "Hello world", "--ids")[1] == b"[1, 15043, 3186]\n"
    assert cli("-m", vocab, "-p", "Hello world", "--ids", "--no-bos")[1] == b"[15043, 3186]\n"
    code, out, _ = cli("-m", vocab, "-p", "Hello\\n<s>", "--show-count")
    assert code == 0
    assert out == (b"     1 -> '<s>'\n 15043 -> ' Hello'\n    13 -> '\n'\n     1 -> '<s>'\n"
                   b"Total number of tokens: 4\n")
    assert cli("-m", vocab, "-p", "<s>", "--ids", "--no-parse-special")[1] == b"[1, 529, 29879, 29958]\n"
    assert cli("-m", vocab, "-p", "a\\nb", "--ids", "--no-escape", "--no-bos")[1] == \
        cli("-m", vocab, "-p", "a\\\\nb", "--ids", "--no-bos")[1]
    # \xHH escapes can make bytes that are not UTF-8: they become byte tokens (0xFF is token 258)
    assert cli("-m", vocab, "-p", "\\xff", "--ids", "--no-bos")[1] == b"[29871, 258]\n"


def test_cli_stdin_file_and_errors(cli, tmp_path):
    vocab = str(shared_path("testdata", "tokenizer", "ggml-vocab-llama-spm.gguf"))
    f = tmp_path / "p.txt"
    f.write_bytes(b"Hello world")
    assert cli("-m", vocab, "-f", str(f), "--ids")[1] == b"[1, 15043, 3186]\n"
    assert cli("-m", vocab, "--stdin", "--ids", stdin=b"Hello world")[1] == b"[1, 15043, 3186]\n"
    code, _, err = cli("-m", vocab, "-p", "a", "--stdin")
    assert code == 1 and "mutually exclusive" in err and "Traceback" not in err
    code, _, err = cli("-m", vocab)
    assert code == 1 and "must specify one of" in err
    code, _, err = cli("-m", str(tmp_path / "none.gguf"), "-p", "a")
    assert code == 1 and "no such model file" in err
    code, _, err = cli("-m", vocab, "-f", str(tmp_path / "none.txt"))
    assert code == 1 and "could not open file" in err


def test_process_escapes():
    from llamapy.util.escapes import process_escapes

    assert process_escapes(rb"a\nb\t\\\'\"") == b"a\nb\t\\'\""
    assert process_escapes(b"\\x41\\x4g\\q\\") == b"A\\x4g\\q\\"
    assert process_escapes(b"\\x 9\\x-1") == b"\t\xff"  # read with strtol, as the reference does


def test_cli_as_a_user_runs_it(default_model):
    r = subprocess.run([sys.executable, "-m", "llamapy", "tokenize", "-p", "<|im_start|>Hello", "--ids"],
                       capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"[1, 19556]\n"


@pytest.mark.parametrize("vocab", VOCABS)
def test_lone_surrogates_are_read_as_their_bytes(request, vocab):
    # U+DC80..U+DCFF stand for undecodable bytes (surrogateescape), other surrogates for their UTF-8 form;
    # the reference reads such bytes without failing, and so does llamapy
    pair = request.getfixturevalue(vocab)
    for text in ["\udcff", "a\ud800b", "\udce4\udcb8 \ud83e"]:
        ids = pair[0].encode(text, add_special=False)
        assert ids == pair[1].encode(text, add_special=False) and ids
    if vocab == "smollm2":  # the BPE reader turns each unreadable byte into U+FFFD first
        assert pair[0].encode("\udcffa", add_special=False) == pair[0].encode("\ufffda", add_special=False)
