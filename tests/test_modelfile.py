"""Ollama's Modelfile parser: every instruction, quoting, comments, paths and one-line errors."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelfiles import tutorial_modelfile

from llamapy.errors import LlamapyError
from llamapy.store.modelfile import PARAMETER_TYPES, Message, parse, parse_file, quote, resolve_from

TUTORIAL = tutorial_modelfile("D:\\work\\LLAMA-Chinese-Model\\llama-3-chinese-8b-instruct-v3-ggml-model-q8_0.gguf")


def test_the_tutorials_modelfile():
    mf = parse(TUTORIAL, "/models")
    assert mf.from_ == "D:\\work\\LLAMA-Chinese-Model\\llama-3-chinese-8b-instruct-v3-ggml-model-q8_0.gguf"
    assert mf.from_path == mf.from_  # a Windows path is kept as written, backslashes and all
    assert mf.template == ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
                           "{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}"
                           "<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert mf.system == "You are a helpful assistant. 你是一个乐于助人的助手。"
    assert mf.parameters == {"temperature": 0.2, "num_keep": 24,
                             "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    assert isinstance(mf.parameters["num_keep"], int) and isinstance(mf.parameters["temperature"], float)


def test_every_instruction_any_case_comments_and_quotes(tmp_path):
    text = (
        "# a comment line\n"
        "from ./model.gguf\n"
        "   # an indented comment\n"
        "Parameter TOP_K 40\n"
        "PARAMETER top_p 0.9\nPARAMETER min_p 0.05\nPARAMETER typical_p 1\nPARAMETER num_ctx 4096\n"
        "PARAMETER num_predict -1\nPARAMETER repeat_penalty 1.1\nPARAMETER repeat_last_n 64\n"
        "PARAMETER presence_penalty 0.5\nPARAMETER frequency_penalty 0\nPARAMETER seed 42\n"
        "PARAMETER mirostat 2\nPARAMETER mirostat_tau 5.0\nPARAMETER mirostat_eta 0.1\nPARAMETER num_thread 8\n"
        "PARAMETER num_batch 512\nPARAMETER penalize_newline false\nPARAMETER use_mmap TRUE\n"
        'PARAMETER stop "User:"\n'
        'PARAMETER stop " two words "\n'
        "system You are terse.\n"
        "MESSAGE user Is Paris in France?\n"
        'message ASSISTANT """Yes.\nIt is."""\n'
        'LICENSE """MIT\n\nfirst"""\n'
        "LICENSE second\n"
        "ADAPTER ./lora.gguf\n"
    )
    mf = parse(text, str(tmp_path))
    assert mf.from_ == "./model.gguf" and mf.from_path == os.path.join(str(tmp_path), "model.gguf")
    p = mf.parameters
    assert p["top_k"] == 40 and p["top_p"] == 0.9 and p["min_p"] == 0.05 and p["typical_p"] == 1.0
    assert p["num_ctx"] == 4096 and p["num_predict"] == -1 and p["seed"] == 42 and p["mirostat"] == 2
    assert p["penalize_newline"] is False and p["use_mmap"] is True
    assert p["stop"] == ["User:", " two words "]
    assert mf.system == "You are terse."
    assert mf.messages == [Message("user", "Is Paris in France?"), Message("assistant", "Yes.\nIt is.")]
    assert mf.licenses == ["MIT\n\nfirst", "second"]
    assert mf.adapters == [os.path.join(str(tmp_path), "lora.gguf")]
    assert set(PARAMETER_TYPES) >= {"temperature", "top_k", "top_p", "min_p", "typical_p", "num_ctx", "num_predict",
                                    "num_keep", "repeat_penalty", "repeat_last_n", "presence_penalty",
                                    "frequency_penalty", "seed", "stop", "mirostat", "mirostat_tau", "mirostat_eta",
                                    "num_thread", "num_batch", "penalize_newline"}


def test_from_a_name_a_folder_and_relative_paths(tmp_path):
    (tmp_path / "hf-model").mkdir()
    assert parse("FROM llama3:8b\n").from_path is None
    assert parse("FROM user/model\n").from_path is None
    assert parse("FROM hf-model\n", str(tmp_path)).from_path == str(tmp_path / "hf-model")  # exists: a path
    assert parse("FROM ../up/m.gguf\n", str(tmp_path)).from_path == os.path.normpath(tmp_path / "../up/m.gguf")
    assert parse("FROM /abs/m.gguf\n", str(tmp_path)).from_path == "/abs/m.gguf"
    assert resolve_from("~/m.gguf", "/x") == os.path.expanduser("~/m.gguf")
    assert resolve_from("sub\\m.gguf", "/x") == "/x/sub\\m.gguf"  # backslashes kept


def test_parse_file_resolves_against_the_modelfiles_folder(tmp_path, monkeypatch):
    d = tmp_path / "proj"
    d.mkdir()
    (d / "Modelfile").write_text("FROM ./m.gguf\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert parse_file("proj/Modelfile").from_path == str(d / "m.gguf")


@pytest.mark.parametrize("text, message", [
    ("FROM m\nFOO bar\n", "line 2: unknown instruction 'FOO' (allowed: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, "
                         "MESSAGE, LICENSE)"),
    ("FROM m\n\nPARAMETER temperature hot\n", "line 3: parameter temperature: 'hot' is not a number"),
    ("FROM m\nPARAMETER num_ctx 4k\n", "line 2: parameter num_ctx: '4k' is not an integer"),
    ("FROM m\nPARAMETER num_ctx 1.5\n", "line 2: parameter num_ctx: '1.5' is not an integer"),
    ("FROM m\nPARAMETER penalize_newline maybe\n", "line 2: parameter penalize_newline: 'maybe' is not true or false"),
    ("FROM m\nPARAMETER temperature nan\n", "line 2: parameter temperature: 'nan' is not a number"),
    ("FROM m\nPARAMETER temperature\n", "line 2: PARAMETER temperature needs a value"),
    ("FROM m\nPARAMETER\n", "line 2: PARAMETER needs a name and a value"),
    ("FROM m\nMESSAGE bot hi\n", "line 2: MESSAGE role 'bot' is not one of system, user, assistant, tool"),
    ('FROM m\nSYSTEM """never closed\n', 'line 2: unterminated """ string'),
    ('FROM m\nSYSTEM "never closed\n', 'line 2: unterminated " string'),
    ('FROM m\nSYSTEM """a\nb""" extra\n', 'line 3: unexpected text after the closing """'),
    ("PARAMETER seed 1\n", "the Modelfile has no FROM line"),
    ("FROM\n", "line 1: FROM needs a model path or name"),
])
def test_bad_input_is_one_line_with_the_line_number(text, message):
    with pytest.raises(LlamapyError) as e:
        parse(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_parameter_lists_the_allowed_ones():
    with pytest.raises(LlamapyError) as e:
        parse("FROM m\n# c\nPARAMETER temprature 0.2\n")
    msg = str(e.value)
    assert msg.startswith("line 3: unknown parameter 'temprature' (allowed: ")
    assert "temperature" in msg and "num_ctx" in msg and "\n" not in msg


def test_line_numbers_count_the_lines_of_triple_quoted_values():
    with pytest.raises(LlamapyError, match="^line 6: unknown instruction 'BAD'"):
        parse('FROM m\nTEMPLATE """a\nb\nc"""\n\nBAD x\n')


def test_crlf_and_bom():
    mf = parse('\ufeffFROM m\r\nSYSTEM "a \\"quoted\\" word\\n"\r\nPARAMETER seed 7\r\n')
    assert mf.from_ == "m" and mf.system == 'a "quoted" word\n' and mf.parameters == {"seed": 7}


@pytest.mark.parametrize("value", ["plain", "two\nlines", " lead", "has \"\"\" inside\n", 'ends with "', " back\\"])
def test_quote_round_trips(value):
    assert parse(f"FROM m\nSYSTEM {quote(value)}\n").system == value


def test_parse_file_errors_name_the_file(tmp_path):
    with pytest.raises(LlamapyError, match="no such Modelfile"):
        parse_file(tmp_path / "missing")
    p = tmp_path / "Modelfile"
    p.write_bytes(b"FROM m\nSYSTEM \xff\xfe\n")
    with pytest.raises(LlamapyError, match="not UTF-8"):
        parse_file(p)
    p.write_text("FROM m\nNOPE\n", encoding="utf-8")
    with pytest.raises(LlamapyError, match=r"Modelfile: line 2: unknown instruction"):
        parse_file(p)


def test_control_characters_in_errors_are_escaped():
    with pytest.raises(LlamapyError) as e:
        parse("FROM m\n\x1b[2Jbad x\n")
    assert "\x1b" not in str(e.value) and "\\x1b[2Jbad" in str(e.value)
    with pytest.raises(LlamapyError) as e:
        parse("FROM m\nPARAMETER seed \x07x\n")
    assert "\x07" not in str(e.value) and "\\x07x" in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["FROM", "from", "PARAMETER", "TEMPLATE", "SYSTEM", "MESSAGE", "LICENSE", "ADAPTER",
                                 "stop", "temperature", "num_ctx", "user", " ", "\t", "\n", "\r\n", "#", '"', '"""',
                                 "\\", "x", "0.5", "12", "true", "./m.gguf", "D:\\m.gguf", "\x1b", "é"]), max_size=30))
def test_any_text_parses_or_fails_with_one_line(pieces):
    try:
        mf = parse("".join(pieces))
    except LlamapyError as e:
        assert "\n" not in str(e) and "\x1b" not in str(e)
        return
    assert mf.from_ is not None
