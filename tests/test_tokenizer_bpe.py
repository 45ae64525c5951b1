"""Byte-level BPE: Unicode classes, the reference's pre-tokenizer splits, and merges on crafted vocabularies
(native library path against the Python merge loop)."""
from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamapy.ggufio.writer import GGUFWriter
from llamapy.tokenizer import bpe as bpe
from llamapy.tokenizer import bpe_merges as bpe_merges
from llamapy.tokenizer.core import TYPE_CONTROL, TYPE_NORMAL, Tokenizer, TokenizerWarning

CORPUS = [
    "Hello world, this is a test. The quick brown fox jumps over the lazy dog 1234567890! It's ok, we'll see.",
    "糖果的制作步骤 请列举5条文明乘车的建议 🦙🚀 😶‍🌫️ Führer нещо на Български",
    "def f(x):\n    return x**2  # square\n\n\tif x != 0:\n        pass\r\n",
] * 10

# characters that exercise every branch of the splitters: cases for contractions, digits of several
# scripts, whitespace of several kinds (incl. U+0085, U+00A0, U+3000), punctuation/symbols ('~' is
# a symbol only outside the collapsed tables), marks, CJK, astral letters/digits/emoji, unassigned
ALPHABET = (
    list(" \t\n\r\x0b\x0c\x85\xa0\u3000\u2003\u1680'sStTrReEvVlLmMdDaZ09²٣!?.,;~$+<=>^|`-_()[]{}/\\\"")
    + list("中文糖果가ࠀ。、…，ı\u0301éÅ\u200d\ufe0f\u0130\u212a\x00\x7f")
    + [chr(c) for c in (0x1F999, 0x10400, 0x1D7CE, 0x10100, 0x1D165, 0x20000, 0x2EBF0, 0x31350, 0x40000, 0xE0100,
                        0xF0000, 0x10D40, 0x1F3FB, 0xFFFD)]
)
texts = st.text(alphabet=ALPHABET, max_size=24)


def train_byte_bpe(vocab_size=700):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tk.train_from_iterator(CORPUS, trainer)
    model = json.loads(tk.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges


def write_bpe_gguf(path, tokens, merges, pre="smollm", types=None, **extra):
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("tokenizer.ggml.model", "gpt2")
        if pre is not None:
            w.add("tokenizer.ggml.pre", pre)
        w.add("tokenizer.ggml.tokens", list(tokens))
        if types is None:
            types = [TYPE_CONTROL if t.startswith("<|") and t.endswith("|>") else TYPE_NORMAL for t in tokens]
        w.add("tokenizer.ggml.token_type", np.array(types, dtype=np.int32))
        w.add("tokenizer.ggml.merges", list(merges))
        for k, v in extra.items():
            w.add("tokenizer.ggml." + k, v)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_byte_bpe()


# -- Unicode tables ------------------------------------------------------------------------------------

def test_unicode_tables_are_the_references_version():
    assert bpe.unicode_version() == "15.1.0"


def test_nothing_but_other_characters_past_the_scanned_ranges():
    ud = bpe._unicodedata()
    lo, hi = bpe._SCAN_LIMITS[0][1], bpe._SCAN_LIMITS[1][0]
    outside = list(range(lo, hi)) + list(range(bpe._SCAN_LIMITS[1][1], 0x110000))
    cats = {ud.category(chr(c)) for c in outside}
    assert cats <= {"Cn", "Co", "Cf"}, cats


def test_category_ranges_tile_the_scanned_code_points():
    rows = sorted((lo, hi) for rs in bpe.category_ranges().values() for lo, hi in rs)
    assert rows[0][0] == 0
    for (_, a), (b, _) in itertools.pairwise(rows):
        assert b == a + 1 or (a, b) == (bpe._SCAN_LIMITS[0][1] - 1, bpe._SCAN_LIMITS[1][0])


def test_category_table_is_the_database():
    """llamapy/tokenizer/unicode_categories.py (read at start instead of scanning) holds exactly the database's runs."""
    from llamapy.tokenizer import unicode_categories

    ud = bpe._unicodedata()
    assert unicode_categories.VERSION == ud.unidata_version
    bpe.category_ranges.cache_clear()
    assert bpe.category_ranges() == bpe.scan_category_ranges(ud)


# -- pre-tokenizer splits (expected pieces follow the reference's expressions by hand) ----------------------

@pytest.mark.parametrize("stages,text,pieces", [
    ("gpt2", "Hello world's  end", ["Hello", " world", "'s", " ", " end"]),
    ("gpt2", "a \tb", ["a", " ", "\t", "b"]),
    ("gpt2", "x  ", ["x", "  "]),
    ("gpt2", " (a)!!", [" (", "a", ")!!"]),
    ("gpt2", "it'S 123", ["it", "'", "S", " 123"]),
    ("llama3", "Hello 12345 world's\n\n  x", ["Hello", " ", "123", "45", " world", "'s", "\n\n", " ", " x"]),
    ("llama3", "IT'S", ["IT", "'S"]),
    ("llama3", "a!!\n\nb", ["a", "!!\n\n", "b"]),
    ("llama3", "(x", ["(x"]),
    ("qwen2", "12345", ["1", "2", "3", "4", "5"]),
    ("starcoder", "abc123 4", ["abc", "1", "2", "3", " ", "4"]),
    ("starcoder", "a  1", ["a", "  ", "1"]),
    ("default", "a+b=12345", ["a", "+", "b", "=", "123", "45"]),
    ("falcon", "x `y` 1234", ["x", " ", "`", "y", "`", " ", "123", "4"]),
    ("deepseek-llm", "Hi, 中文!\n", ["Hi", ",", " ", "中文", "!", "\n"]),
    ("bloom", "hello, world.", ["hello", ",", " world", "."]),
])
def test_pre_split(stages, text, pieces):
    assert bpe.pre_split(text, stages) == pieces


def test_collapsed_symbol_class_has_no_tilde():
    # deepseek-v3's " ?[\p{P}\p{S}]+" runs on collapsed text, whose symbol table lacks '~'
    assert bpe.pre_split("a~~b", "deepseek-v3") == ["a", "~", "~b"]  # with "~" a symbol: "a", "~~", "b"
    assert bpe.pre_split("a$$b", "deepseek-v3") == ["a", "$$", "b"]


def test_whitespace_inside_literal_ranges_is_not_matched():
    # U+3000 sits inside deepseek-llm's "　-。" range but is whitespace, which the reference turns into
    # U+000B before matching
    assert "\u3000" in bpe.pre_split("。\u3000。", "deepseek-llm")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.sampled_from(sorted(bpe._STAGES)))
def test_pre_split_keeps_every_character(text, stages):
    assert "".join(bpe.pre_split(text, stages)) == text
    assert all(bpe.pre_split(text, stages))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.sampled_from(sorted(bpe._STAGES)))
def test_astral_stand_ins_split_like_full_classes(text, stages):
    pieces = [text] if text else []
    for t in bpe._STAGES[stages]:
        pat = bpe._pat("(" + t + ")", False)
        pieces = [x for p in pieces for x in pat.split(p) if x]
    assert bpe.pre_split(text, stages) == pieces


def test_reference_utf8_reading():
    assert bpe.cpts_from_utf8(b"a\xe4\xb8\xad") == "a中"
    assert bpe.cpts_from_utf8(b"\xff\x80a") == "\ufffd\ufffda"
    assert bpe.cpts_from_utf8(b"\xe4\xb8") == "\ufffd\ufffd"  # cut short: one U+FFFD per byte
    assert bpe.cpts_from_utf8(b"\xc0\x80") == "\x00"  # overlong forms pass


# -- byte characters ---------------------------------------------------------------------------------------

def test_byte_characters_round_trip():
    raw = bytes(range(256))
    chars = bpe.to_byte_chars(raw)
    assert chars[:3] == "ĀāĂ" and chars[0x21] == "!" and chars[0x20] == "Ġ" and chars[0x0A] == "Ċ"
    assert bpe.decode_byte_chars(chars) == raw


def test_text_outside_the_byte_alphabet_is_marked():
    assert bpe.decode_byte_chars("a中") == b"a[UNK_BYTE_0xe4b8ada\xe4\xb8\xad]"


# -- crafted vocabularies ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "qwen2", "gpt-2", "default", "deepseek-llm", "tekken"])
def test_native_and_python_merges_agree(tmp_path, trained, pre):
    tokens, merges = trained
    path = write_bpe_gguf(tmp_path / "v.gguf", tokens, merges, pre=pre)
    fast = Tokenizer.from_gguf(path)
    slow = Tokenizer.from_gguf(path, native=False)
    assert fast.fast and not slow.fast
    for text in CORPUS[:3] + ["糖果的制作步骤", "请列举5条文明乘车的建议", "  \n\n\t x", "<|im_start|>user"]:
        ids = fast.encode(text, add_special=False)
        assert ids == slow.encode(text, add_special=False)
        assert fast.decode(ids) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_native_and_python_merges_agree_on_any_text(tmp_path_factory, trained, text):
    toks = _pair(tmp_path_factory, trained)
    ids = toks[0].encode(text, add_special=False, parse_special=True)
    assert ids == toks[1].encode(text, add_special=False, parse_special=True)
    assert toks[0].decode(ids) == text


_PAIRS: dict = {}


def _pair(tmp_path_factory, trained):
    if "p" not in _PAIRS:
        path = write_bpe_gguf(tmp_path_factory.mktemp("bpe") / "v.gguf", *trained, pre="llama-bpe")
        _PAIRS["p"] = (Tokenizer.from_gguf(path), Tokenizer.from_gguf(path, native=False))
    return _PAIRS["p"]


def _manual_vocab(extra_tokens=(), merges=(), drop=()):
    tokens = [c for c in bpe.BYTE_CHARS if c not in drop] + list(extra_tokens)
    return tokens, list(merges)


def test_missing_byte_character_blocks_merges(tmp_path):
    # U+0104 stands for byte 0x04; without it the reference keeps the character as a symbol that
    # merges never cross and writes nothing for it; the library would skip it and merge "!!"
    tokens, merges = _manual_vocab(["!!", "<|im_end|>"], ["! !"], drop={"Ą"})
    path = write_bpe_gguf(tmp_path / "v.gguf", tokens, merges, pre="gpt-2")
    bang, bangbang = tokens.index("!"), tokens.index("!!")
    for native in (True, False):
        tok = Tokenizer.from_gguf(path, native=native)
        assert tok.encode("!\x04!", add_special=False) == [bang, bang]
        assert tok.encode("!!", add_special=False) == [bangbang]


def test_merge_into_a_missing_token_writes_the_bytes(tmp_path):
    # "a b" names a result that is not a token: the reference merges anyway, then writes the single
    # bytes' tokens; the library would refuse the merge list, so the Python loop takes over
    tokens, merges = _manual_vocab([], ["a b"])
    path = write_bpe_gguf(tmp_path / "v.gguf", tokens, merges, pre="gpt-2")
    tok = Tokenizer.from_gguf(path)
    assert not tok.fast
    assert tok.encode("ab", add_special=False) == [tokens.index("a"), tokens.index("b")]


def test_ignore_merges_for_llama3(tmp_path):
    # "xyz" is a token no merge builds: llama3-style pre-tokenizers take whole-word tokens first
    tokens, merges = _manual_vocab(["xy", "xyz"], ["x y"])
    xyz = tokens.index("xyz")
    p3 = write_bpe_gguf(tmp_path / "l3.gguf", tokens, merges, pre="llama-bpe")
    p2 = write_bpe_gguf(tmp_path / "g2.gguf", tokens, merges, pre="gpt-2")
    for native in (True, False):
        assert Tokenizer.from_gguf(p3, native=native).encode("xyz", add_special=False) == [xyz]
        assert Tokenizer.from_gguf(p2, native=native).encode("xyz", add_special=False) == [
            tokens.index("xy"), tokens.index("z")]


def test_duplicate_merge_keeps_its_first_rank():
    ranks = bpe_merges.parse_merges(["a b", "c d", "a b"])
    assert ranks == {("a", "b"): 0, ("c", "d"): 1}
    assert bpe_merges.parse_merges([" a b"]) == {(" a", "b"): 0}  # split at the first space after the first character


@pytest.mark.parametrize("merges", [["a b", "c d", "a b", "ab cd"], [" a b", "a b", "ab c d", "x"], ["a\x01 b", "a b c"]])
def test_joined_ranks_are_parse_merges(merges):
    """The ranks keyed by joined strings hold exactly the pairs of parse_merges, with the same ranks."""
    joined, sep = bpe_merges.joined_ranks(merges)
    pairs = bpe_merges.parse_merges(merges)
    assert joined == {a + sep + b: r for (a, b), r in pairs.items()}
    assert (sep == " ") == (merges[0] == "a b")  # the merge strings themselves only when each has one space


def test_library_model_is_built_after_enough_words(tmp_path, trained):
    """Short prompts merge in Python (the library's model costs more to build than they take); past
    NATIVE_AFTER distinct words the model is built and used, with the same ids."""
    tokens, merges = trained
    path = write_bpe_gguf(tmp_path / "v.gguf", tokens, merges, pre="llama-bpe")
    tok = Tokenizer.from_gguf(path)
    short = tok.encode("Hello world", add_special=False)
    assert tok._bpe._native is None and tok._bpe._want_native
    words = " ".join(f"w{i}x" for i in range(bpe_merges.BPEMerger.NATIVE_AFTER + 1))
    ids = tok.encode(words, add_special=False)
    assert tok._bpe._native is not None
    slow = Tokenizer.from_gguf(path, native=False)
    assert ids == slow.encode(words, add_special=False) and short == slow.encode("Hello world", add_special=False)
    assert slow._bpe.native is None and not slow.fast


def test_missing_or_unknown_pre_tokenizer_warns(tmp_path, trained):
    tokens, merges = trained
    for pre, words in [(None, "missing"), ("no-such-pre", "unknown pre-tokenizer 'no-such-pre'")]:
        path = write_bpe_gguf(tmp_path / f"{pre}.gguf", tokens, merges, pre=pre)
        with pytest.warns(TokenizerWarning, match=words) as rec:
            tok = Tokenizer.from_gguf(path)
        assert "'default'" in str(rec[0].message)
        assert tok.pre == "default"
        assert tok.encode("a+b", add_special=False) == [tokens.index("a"), tokens.index("+"), tokens.index("b")]


def test_bpe_defaults_and_metadata_overrides(tmp_path, trained):
    tokens, merges = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = Tokenizer.from_gguf(write_bpe_gguf(tmp_path / "a.gguf", tokens, merges, pre="llama-bpe"))
    # llama3 pre-tokenizers add BOS by default; with no id in the metadata, BOS and EOS are token 11
    assert tok.add_bos and not tok.add_eos and tok.bos_id == 11 and tok.eos_id == 11
    assert tok.encode("hi")[0] == 11
    tok = Tokenizer.from_gguf(write_bpe_gguf(
        tmp_path / "b.gguf", tokens, merges, pre="llama-bpe", bos_token_id=1, eos_token_id=2, add_bos_token=False,
        add_eos_token=True))
    assert tok.encode("hi")[-1] == 2 and tok.encode("hi")[0] != 1
    assert tok.eog_ids == {0, 2}  # <|endoftext|> and <|im_end|> by their text, and EOS
    assert tok.nl_id == tok.encode("\n", add_special=False)[0]


def test_special_tokens_only_when_parsing_specials(tmp_path, trained):
    tokens, merges = trained
    tok = Tokenizer.from_gguf(write_bpe_gguf(tmp_path / "a.gguf", tokens, merges))
    im_start = tokens.index("<|im_start|>")
    assert tok.encode("<|im_start|>user", add_special=False, parse_special=True)[0] == im_start
    plain = tok.encode("<|im_start|>user", add_special=False)
    assert im_start not in plain and tok.decode(plain) == "<|im_start|>user"


@pytest.mark.parametrize("text,clean", [
    ("Hello , world !", "Hello, world!"),
    ("a ' b", "a'b"),
    ("x ' ' y", "x'' y"),  # the space after a joined quote is blanked: the second quote keeps its space
    ("it 's I 'm we 're they 've I 'll he 'd don 't", "it's I'm we're they've I 'll he 'd don 't"),
    (" .", "."),
])
def test_detokenize_cleans_spaces_like_the_reference(tmp_path, text, clean):
    tokens, merges = _manual_vocab()
    tok = Tokenizer.from_gguf(write_bpe_gguf(tmp_path / "v.gguf", tokens, merges, pre="gpt-2"))
    ids = tok.encode(text, add_special=False)
    assert tok.decode(ids) == text
    assert tok.detokenize(ids) == clean
    smol = Tokenizer.from_gguf(write_bpe_gguf(tmp_path / "s.gguf", tokens, merges, pre="smollm"))
    assert smol.detokenize(smol.encode(text, add_special=False)) == text  # smollm: no cleaning
