"""SPM (`tokenizer.ggml.model = llama`) on vocabularies built here: a sentencepiece model trained on a small
corpus, the Python merge loop against the native path and against sentencepiece itself."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamapy.ggufio.reader import GGUFReader
from llamapy.ggufio.writer import GGUFWriter
from llamapy.tokenizer import spm as spm
from llamapy.tokenizer.core import (
    TYPE_BYTE,
    TYPE_CONTROL,
    TYPE_NORMAL,
    TYPE_UNKNOWN,
    TYPE_USER_DEFINED,
    StreamDecoder,
    Tokenizer,
)

CORPUS = [
    "Hello world, this is a test. The quick brown fox jumps over the lazy dog 1234567890! It's ok, we'll see.",
    "糖果的制作步骤 请列举5条文明乘车的建议 🦙🚀 😶‍🌫️ Führer нещо на Български",
    "def f(x):\n    return x**2  # square\n\n\tif x != 0:\n        pass\r\n",
] * 10
ALPHABET = list(" \t\n\r\x00\x7fHelowrdthis.,!?'0123 ▁") + list("糖果的制作步骤中文éÅ\u0301") + ["🦙", "🚀", "\u200d"]


def train_spm(vocab_size=500):
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return sentencepiece.SentencePieceProcessor(model_proto=buf.getvalue())


def sp_vocab(sp):
    """(texts, scores, GGUF types) of a sentencepiece model."""
    texts, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        texts.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(TYPE_UNKNOWN if sp.is_unknown(i) else TYPE_CONTROL if sp.is_control(i)
                     else TYPE_BYTE if sp.is_byte(i) else TYPE_NORMAL)
    return texts, scores, types


def write_spm_gguf(path, texts, scores, types, **extra):
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("tokenizer.ggml.model", "llama")
        w.add("tokenizer.ggml.tokens", list(texts))
        w.add("tokenizer.ggml.scores", np.array(scores, dtype=np.float32))
        w.add("tokenizer.ggml.token_type", np.array(types, dtype=np.int32))
        for k, v in extra.items():
            w.add("tokenizer.ggml." + k, v)
    return path


@pytest.fixture(scope="module")
def trained():
    return train_spm()


@pytest.fixture(scope="module")
def vocab_path(trained, tmp_path_factory):
    return write_spm_gguf(tmp_path_factory.mktemp("spm") / "v.gguf", *sp_vocab(trained), bos_token_id=1,
                          eos_token_id=2, unknown_token_id=0)


@pytest.fixture(scope="module")
def pair(vocab_path):
    return Tokenizer.from_gguf(vocab_path), Tokenizer.from_gguf(vocab_path, native=False)


def test_native_path_is_taken(pair):
    assert pair[0].fast and not pair[1].fast


@pytest.mark.parametrize("text", CORPUS[:3] + [
    "糖果的制作步骤", "请列举5条文明乘车的建议", " ", "   leading", "trailing   ", "\n\n\n", "x  \t  y", "🦙🦙🦙", "",
])
def test_python_native_and_sentencepiece_agree(trained, pair, text):
    ids = pair[0].encode(text, add_special=False)
    assert ids == pair[1].encode(text, add_special=False)
    if text:  # the reference's space prefix is sentencepiece's dummy prefix
        assert ids == trained.encode(text)
    assert pair[0].decode(ids) == (" " + text if text else "")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=ALPHABET, max_size=30))
def test_python_and_native_agree_on_any_text(trained, pair, text):
    ids = pair[0].encode(text, add_special=False)
    assert ids == pair[1].encode(text, add_special=False)
    if text:
        assert ids == trained.encode(text)


def test_bos_eos_and_special_parsing(pair, vocab_path):
    tok = pair[0]
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("Hello")[0] == 1 and tok.encode("Hello", add_special=False)[0] != 1
    assert tok.encode("") == [1] and tok.encode("", add_special=False) == []
    with_s = tok.encode("<s>Hello", add_special=False, parse_special=True)
    assert with_s[0] == 1 and with_s[1:] == tok.encode("Hello", add_special=False)  # space prefix after it
    assert 1 not in tok.encode("<s>Hello", add_special=False)
    tok2 = Tokenizer.from_gguf(write_spm_gguf(vocab_path.parent / "eos.gguf", *sp_vocab_of(tok), add_eos_token=True,
                                              add_bos_token=False))
    assert tok2.encode("Hello")[-1] == 2 and tok2.encode("Hello")[0] != 1


def sp_vocab_of(tok):
    return tok.tokens, tok.scores, tok.types


def test_user_defined_tokens_are_always_cut_out(pair, vocab_path):
    texts, scores, types = sp_vocab_of(pair[0])
    path = write_spm_gguf(vocab_path.parent / "ud.gguf", texts + ["<mask>"], scores + [0.0],
                          types + [TYPE_USER_DEFINED])
    mask = len(texts)
    for native in (True, False):
        tok = Tokenizer.from_gguf(path, native=native)
        base = Tokenizer.from_gguf(vocab_path, native=native)
        ids = tok.encode("Hello<mask>world", add_special=False)
        # cut out even without special parsing, and the text after it gets the space prefix again
        assert ids == base.encode("Hello", add_special=False) + [mask] + base.encode("world", add_special=False)
        assert tok.decode(ids) == " Hello<mask> world"


def test_byte_fallback_pieces_and_stream(pair):
    tok = pair[0]
    ids = tok.encode("🐍x", add_special=False)  # not in the training text: four byte tokens
    pieces = [tok.token_to_piece(i) for i in ids]
    assert pieces[1:5] == [bytes([b]) for b in "🐍".encode()]
    assert all(tok.token_type(i) == TYPE_BYTE for i in ids[1:5])
    assert b"".join(pieces) == " 🐍x".encode()
    dec = StreamDecoder(tok)
    out = [dec.add_token(i) for i in ids] + [dec.finalize()]
    assert out[1:4] == ["", "", ""] and out[4] == "🐍"
    assert "".join(out) == tok.decode(ids) == " 🐍x"
    assert tok.decode(ids[:-2]) == " \ufffd"  # a cut character decodes to a replacement character
    dec = StreamDecoder(tok)
    assert [dec.add_token(i) for i in ids[:3]] + [dec.finalize()] == [" ", "", "", "\ufffd"]


def test_control_pieces_and_detokenize(pair):
    tok = pair[0]
    ids = tok.encode("Hello world")
    assert tok.decode(ids) == "<s> Hello world"
    assert tok.decode(ids, special=False) == " Hello world"
    assert tok.token_to_piece(1, special=False) == b""
    # the reference drops the prefix space only from a first token that is not BOS
    assert tok.detokenize(ids) == " Hello world"
    assert tok.detokenize(ids, remove_special=True) == " Hello world"
    assert tok.detokenize(ids, unparse_special=True) == "<s> Hello world"
    assert tok.detokenize(ids[1:]) == "Hello world"


def test_invalid_utf8_is_tokenized_as_bytes(pair):
    # text from bytes decoded with surrogateescape (the CLI reads prompts that way)
    byte_ff = pair[0].find_token("<0xFF>")
    for tok in pair:
        ids = tok.encode(b"a\xffb".decode("utf-8", "surrogateescape"), add_special=False)
        assert byte_ff in ids
        assert b"".join(tok.token_to_piece(i) for i in ids) == b" a\xffb"


def test_vocab_without_byte_tokens_uses_unk(tmp_path):
    texts = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.7]
    types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_NORMAL] * 5
    tok = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "v.gguf", texts, scores, types))
    assert not tok.fast
    # the reference aborts on a character with no token and no byte token; llamapy writes <unk>
    assert tok.encode("ab中", add_special=False) == [6, 5, 0, 0, 0]


def test_reachable_reserved_token_keeps_the_python_path(trained, tmp_path):
    texts, scores, types = sp_vocab(trained)
    # "<0", "<0x", "<0x4", "<0x41" make the byte token "<0x41>" reachable by merging: sentencepiece never
    # merges into byte tokens, the reference does
    extra = ["<0", "<0x", "<0x4", "<0x41"]
    path = write_spm_gguf(tmp_path / "v.gguf", texts + extra, scores + [-1.0] * 4, types + [TYPE_NORMAL] * 4)
    tok = Tokenizer.from_gguf(path)
    assert not tok.fast
    assert texts.index("<0x41>") in tok.encode("<0x41>", add_special=False)


def test_reachable():
    vocab = {b"ab": 0, b"abc": 1, b"\xe4\xb8\xad\xe6\x96\x87": 2}
    assert spm.reachable(b"abc", vocab) and not spm.reachable(b"abd", vocab)
    assert spm.reachable("中文".encode(), vocab) and not spm.reachable(b"a", vocab)


def test_extended_chinese_llama_vocab(tmp_path):
    """A LLaMA vocabulary grown to 55,296 tokens with Chinese words, as Chinese-LLaMA/Alpaca did."""
    with GGUFReader(shared_path("testdata", "tokenizer", "ggml-vocab-llama-spm.gguf")) as r:
        texts = list(r.get("tokenizer.ggml.tokens"))
        scores = list(r.get("tokenizer.ggml.scores"))
        types = list(r.get("tokenizer.ggml.token_type"))
    words = ["▁糖果", "糖果", "制作", "步骤", "▁请", "列举", "文明", "乘车", "建议", "的制作"]
    have = set(texts)
    base = 0x4E00
    while len(texts) + len(words) < 55296:  # filler two-character words, as the real extension has
        w = chr(base) + chr(base + 1)
        base += 1
        if w not in have:
            words.append(w)
    words = words[: 55296 - len(texts)]
    texts += words
    scores += [-1000.0 - i for i in range(len(words))]
    types += [TYPE_NORMAL] * len(words)
    path = write_spm_gguf(tmp_path / "zh.gguf", texts, scores, types, bos_token_id=1, eos_token_id=2)
    fast, slow = Tokenizer.from_gguf(path), Tokenizer.from_gguf(path, native=False)
    assert fast.n_vocab == 55296 and fast.fast
    for text in ["糖果的制作步骤", "请列举5条文明乘车的建议", "Hello 糖果"]:
        ids = fast.encode(text)
        assert ids == slow.encode(text)
        assert fast.decode(ids) == "<s> " + text
    ids = fast.encode("糖果的制作步骤", add_special=False)
    assert [fast.token_text(i) for i in ids][:2] == ["▁糖果", "的制作"]


def test_word_splitter_only_when_no_token_joins_words():
    assert spm.word_splitter(["\u2581a", "\u2581\u2581", "b"]).findall("a  b\u2581c ") == ["a", "  b", "\u2581c", " "]
    assert spm.word_splitter(["\u2581a", "a\u2581b"]) is None


def test_whole_fragment_and_split_words_agree(pair, trained):
    tok = pair[1]
    tok.encode("x")
    whole = spm.SPMEncoder(tok._spm.merger)
    assert tok._spm.splitter is not None and whole.splitter is None
    for text in CORPUS[:3]:
        assert tok._spm.encode(" " + text) == whole.encode(" " + text) == trained.encode(text)
