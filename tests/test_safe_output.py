"""Text from files never reaches the terminal as control sequences or Rich markup, and error lines are
bounded: `info` (tables and --json), `quantize`, `run -cnv`'s template example, the CLI's error line."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

import numpy as np

from llamapy.ggufio.constants import TensorType as T
from llamapy.ggufio.writer import GGUFWriter
from llamapy.util.safe_text import json_escape_unsafe, printable

# ESC sequences (clear screen, set the title), a C1 CSI, bidi overrides and isolates, a DEL
HOSTILE_KEY = "evil\x1b[2J\x1b]0;pwned\x07key"
HOSTILE_VALUE = "[/bold] x \x9b31m \u202eevil\u2066 \x7f"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def llamapy(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, timeout=timeout, **kw)


def assert_clean(*streams: bytes) -> None:
    for b in streams:
        text = b.decode("utf-8")  # also: no lone surrogate or broken byte reached the stream
        assert not UNSAFE.search(text), repr(UNSAFE.search(text).group())


def tiny_model(path, name="[/bold] x", key=HOSTILE_KEY, value=HOSTILE_VALUE, tensor="blk.0.attn_q.weight"):
    """A small llama-shaped GGUF whose metadata holds hostile text."""
    rng = np.random.default_rng(0)
    dim, ffn, vocab = 64, 128, 32
    shapes = [("token_embd.weight", (dim, vocab)), ("blk.0.attn_norm.weight", (dim,)), (tensor, (dim, dim)),
              ("blk.0.attn_k.weight", (dim, dim)), ("blk.0.attn_v.weight", (dim, dim)),
              ("blk.0.attn_output.weight", (dim, dim)), ("blk.0.ffn_norm.weight", (dim,)),
              ("blk.0.ffn_gate.weight", (dim, ffn)), ("blk.0.ffn_up.weight", (dim, ffn)),
              ("blk.0.ffn_down.weight", (ffn, dim)), ("output_norm.weight", (dim,))]
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", name)
        w.add(key, value)
        w.add("llama.block_count", 1)
        w.add("llama.embedding_length", dim)
        w.add("llama.feed_forward_length", ffn)
        w.add("llama.attention.head_count", 4)
        w.add("llama.attention.head_count_kv", 4)
        for n, s in shapes:
            w.add_tensor_info(n, s, T.F32)
        w.write_header()
        for n, s in shapes:
            w.write_tensor_data(n, (0.05 * rng.standard_normal(tuple(reversed(s)))).astype(np.float32))
    return path


def test_printable_escapes_controls_and_bounds_length():
    assert printable("a\x1b[2Jb\x9b\u202ec\ud800") == "a\\x1b[2Jb\\x9b\\u202ec\\ud800"
    assert printable("line\nnext\ttab") == "line\\x0anext\\x09tab"
    assert printable("line\nnext", keep_newlines=True) == "line\nnext"
    assert printable("x" * 50, limit=10) == "x" * 9 + "\u2026"
    assert len(printable("\x1b" * 10**6, limit=100)) == 100
    assert json.loads(json_escape_unsafe(json.dumps({"k": "\x9b\u202e\x7f"}, ensure_ascii=False))) == \
        {"k": "\x9b\u202e\x7f"}


def test_info_shows_hostile_metadata_escaped(tmp_path):
    p = tiny_model(tmp_path / "m.gguf")
    r = llamapy("info", str(p))
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout, r.stderr)
    out = r.stdout.decode()
    assert "\\x1b[2J" in out and "\\u202e" in out and "[/bold] x" in out  # shown, as text


def test_info_json_has_no_raw_c1_or_bidi_and_is_the_same_data(tmp_path):
    p = tiny_model(tmp_path / "m.gguf")
    r = llamapy("info", "--json", str(p))
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert json.loads(r.stdout)["metadata"][HOSTILE_KEY] == HOSTILE_VALUE


def test_markup_in_file_names_is_text_in_info_and_quantize(tmp_path):
    (tmp_path / "[").mkdir()
    src = tiny_model(tmp_path / "[" / "bold]m.gguf")  # the path holds "[/bold]": a closing tag Rich can't match
    r = llamapy("info", "--no-tensors", str(src))
    assert r.returncode == 0, r.stderr
    assert "[/bold]m.gguf" in r.stdout.decode()
    (tmp_path / "br").mkdir()
    r = llamapy("quantize", str(src), str(tmp_path / "br" / "[red]out.gguf"), "Q8_0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout, r.stderr)
    assert f"wrote {tmp_path / 'br' / '[red]out.gguf'}" in r.stdout.decode()
    assert f"'{src}'" in r.stderr.decode()
    assert (tmp_path / "br" / "[red]out.gguf").exists()


def test_error_lines_are_escaped_and_bounded(tmp_path):
    # a duplicate key a megabyte long, with escape sequences in it: the error names it, escaped and cut
    key = "k\x1b]0;pwned\x07" + "x" * 10**6
    p = tmp_path / "dup.gguf"
    with GGUFWriter(p) as w:
        w.add("general.architecture", "llama")
        w.add(key, 1)
        w.write_header()
    data = bytearray(p.read_bytes())
    k2 = b"general.architecture"
    i = data.index(struct.pack("<Q", len(k2)) + k2)
    data[i:i + 8 + len(k2)] = struct.pack("<Q", len(k2)) + k2  # unchanged: then duplicate the long key below
    raw = key.encode()
    j = data.index(struct.pack("<Q", len(raw)) + raw)
    entry = data[j:j + 8 + len(raw) + 4 + 4]  # key, type UINT32, value
    data[j:j] = entry
    struct.pack_into("<Q", data, 16, struct.unpack_from("<Q", data, 16)[0] + 1)  # one more metadata entry
    p.write_bytes(bytes(data))
    r = llamapy("info", str(p))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1100, err[:200]
    assert "duplicate metadata key" in err and "\\x1b]0;pwned\\x07" in err and err.rstrip().endswith("\u2026")
    assert_clean(r.stderr)


def test_gguf_strings_that_are_not_utf8_are_refused(tmp_path):
    p = tmp_path / "bad.gguf"
    with GGUFWriter(p) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", "caf\udce9")  # written as the byte 0xE9 alone: not UTF-8
        w.write_header()
    r = llamapy("info", str(p))
    assert r.returncode == 1
    assert re.fullmatch(r"error: .*bad\.gguf: metadata 'general\.name': string at offset \d+ is not valid UTF-8 "
                        r"\(byte 3 of 4\)\n", r.stderr.decode()), r.stderr


def test_run_conversation_prints_the_template_example_escaped(default_model):
    tpl = "\x1b]0;pwned\x07\x1b[2J{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    r = llamapy("run", "-m", default_model, "-cnv", "--chat-template", tpl, "-n", "2", "--temp", "0",
                input=b"hi\n", timeout=300)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stderr)
    assert "\\x1b]0;pwned\\x07" in r.stderr.decode()


def test_convert_notes_and_errors_show_tensor_names_escaped_and_cut(tmp_path, spm_model, vocab_n):
    import shutil

    from test_convert_util import hf_config, meta_to_hf, meta_weights, save_hf

    w = meta_to_hf(meta_weights(vocab_n, seed=3))
    long_name = "model.evil\x1b]0;pwned\x07\x1b[2J" + "x" * 10**6
    w[long_name] = np.zeros(4, dtype=np.float32)
    d = tmp_path / "m"
    save_hf(d, w, hf_config(vocab_n))
    shutil.copy(spm_model, d / "tokenizer.model")
    r = llamapy("convert", str(d), "--outfile", str(tmp_path / "o.gguf"))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1100, err[:300]
    assert "\\x1b]0;pwned\\x07" in err
    assert_clean(r.stderr)
    r = llamapy("convert", str(d), "--outfile", str(tmp_path / "o.gguf"), "--skip-unknown")
    assert r.returncode == 0, r.stderr[-500:]
    assert_clean(r.stderr)
    note = [ln for ln in r.stderr.decode().splitlines() if "skipped unknown tensor" in ln]
    assert len(note) == 1 and len(note[0]) <= 1000 and "\\x1b[2J" in note[0]
