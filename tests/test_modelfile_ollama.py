"""Ollama's Modelfile parser tests, ported: what each instruction's value reads as, and what is refused.

Ollama's parser takes any PARAMETER name and leaves the check to `create`; llamapy checks names while
parsing, so the cases that use made-up names (param1, num_gqa) use real ones here."""
from __future__ import annotations

import pytest

from llamapy.errors import LlamapyError
from llamapy.store.modelfile import parse, parse_file

LLAMA3 = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
          "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
          "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")


def test_spaces_inside_quotes_are_kept():
    mf = parse('\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER seed        1\n'
               f'PARAMETER top_k    2\nTEMPLATE """   {LLAMA3}   """    \n')
    assert (mf.from_, mf.adapters, mf.licenses) == ("     model 1", ["adapter3"], ["MIT       "])
    assert mf.parameters == {"seed": 1, "top_k": 2}
    assert mf.template == f"   {LLAMA3}   "


@pytest.mark.parametrize("text, want", [
    ('FROM "FOO  BAR  "', "FOO  BAR  "),
    ('FROM "FOO BAR"\nPARAMETER seed 1', "FOO BAR"),
    ("FROM     FOOO BAR    ", "FOOO BAR"),
    ("FROM /what/is/the path ", "/what/is/the path"),
    ("FROM foo", "foo"),
    ("FROM /path/to/model", "/path/to/model"),
    ("FROM /path/to/model/fp16.bin", "/path/to/model/fp16.bin"),
    ("FROM llama3:latest", "llama3:latest"),
    ("FROM llama3:7b-instruct-q4_K_M", "llama3:7b-instruct-q4_K_M"),
    ("PARAMETER seed 1\nFROM foo", "foo"),
    ("PARAMETER stop the \nFROM lemons make lemonade ", "lemons make lemonade"),
])
def test_from(text, want):
    assert parse(text).from_ == want


@pytest.mark.parametrize("text, what", [
    ("", "no FROM line"),
    ("PARAMETER seed 1", "no FROM line"),
    ("\nFROM foo\nPARAMETER seed\n", "needs a value"),
    ("\nFROM foo\nBADCOMMAND param1 value1\n", "line 3: unknown instruction 'BADCOMMAND'"),
    ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", "line 3: MESSAGE role 'badguy'"),
    ("\nFROM foo\nMESSAGE system\n", "line 3: MESSAGE system needs its content"),
    ("\nFROM foo\nMESSAGE system", "line 3: MESSAGE system needs its content"),
    ('\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t', 'unterminated """'),
    ('\nFROM foo\nSYSTEM "\n\t\t\t', 'unterminated "'),
])
def test_refused(text, what):
    with pytest.raises(LlamapyError, match=what):
        parse(text)


@pytest.mark.parametrize("text, want", [
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
     [("system", "You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
     [("system", "You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
     "MESSAGE assistant Hello, I want to parse all the things!\n",
     [("system", "You are a file parser. Always parse things."), ("user", "Hey there!"),
      ("assistant", "Hello, I want to parse all the things!")]),
    ('\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
     [("system", "\nYou are a multiline file parser. Always parse things.\n")]),
])
def test_messages(text, want):
    assert [(m.role, m.content) for m in parse(text).messages] == want


@pytest.mark.parametrize("text, want", [
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
    ('\nFROM foo\nSYSTEM """This is a\nmultiline system."""\n\t\t\t', "This is a\nmultiline system."),
    ('\nFROM foo\nSYSTEM """This is a multiline system."""\n\t\t\t', "This is a multiline system."),
    ('\nFROM foo\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
     '\nThis is a multiline system with "quotes".\n'),
    ('\nFROM foo\nSYSTEM """"""\n', ""),
    ('\nFROM foo\nSYSTEM ""\n', ""),
    ("\nFROM foo\nSYSTEM \"'\"\n", "'"),
    ('\nFROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
])
def test_quoted(text, want):
    assert parse(text).system == want


def test_quoted_template():
    assert parse('\nFROM foo\nTEMPLATE """\n{{ .Prompt }}\n"""').template == "\n{{ .Prompt }}\n"


PARAMETERS = {
    "numa true": ("numa", True), "num_ctx 1": ("num_ctx", 1), "num_batch 1": ("num_batch", 1),
    "num_gpu 1": ("num_gpu", 1), "main_gpu 1": ("main_gpu", 1), "use_mmap true": ("use_mmap", True),
    "num_thread 1": ("num_thread", 1), "num_keep 1": ("num_keep", 1), "seed 1": ("seed", 1),
    "num_predict 1": ("num_predict", 1), "top_k 1": ("top_k", 1), "top_p 1.0": ("top_p", 1.0),
    "min_p 0.05": ("min_p", 0.05), "typical_p 1.0": ("typical_p", 1.0), "repeat_last_n 1": ("repeat_last_n", 1),
    "temperature 1.0": ("temperature", 1.0), "repeat_penalty 1.0": ("repeat_penalty", 1.0),
    "presence_penalty 1.0": ("presence_penalty", 1.0), "frequency_penalty 1.0": ("frequency_penalty", 1.0),
    "penalize_newline true": ("penalize_newline", True),
    "stop ### User:": ("stop", ["### User:"]), "stop ### User: ": ("stop", ["### User:"]),
    'stop "### User:"': ("stop", ["### User:"]), 'stop "### User: "': ("stop", ["### User: "]),
    'stop """### User:"""': ("stop", ["### User:"]), 'stop """### User:\n"""': ("stop", ["### User:\n"]),
    "stop <|endoftext|>": ("stop", ["<|endoftext|>"]), "stop <|eot_id|>": ("stop", ["<|eot_id|>"]),
    "stop </s>": ("stop", ["</s>"]),
}


@pytest.mark.parametrize("line", PARAMETERS)
def test_parameters(line):
    name, value = PARAMETERS[line]
    assert parse(f"FROM foo\nPARAMETER {line}\n").parameters == {name: value}


def test_comments():
    assert parse("\n# comment\nFROM foo\n\t").from_ == "foo"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be"])
def test_utf16_files_with_a_byte_order_mark(tmp_path, encoding):
    bom = {"utf-8": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    p = tmp_path / "Modelfile"
    p.write_bytes(bom + "FROM bob\nPARAMETER seed 1\nPARAMETER num_ctx 4096\n\tSYSTEM 你好👋\n".encode(encoding))
    mf = parse_file(p)
    assert (mf.from_, mf.parameters, mf.system) == ("bob", {"seed": 1, "num_ctx": 4096}, "你好👋")


@pytest.mark.parametrize("text", [
    "\nFROM foo\nLICENSE MIT\nPARAMETER seed 1\nPARAMETER stop x\nTEMPLATE template1\n"
    "MESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
    "MESSAGE assistant Hello, I want to parse all the things!\n",
    '\nFROM foo\nLICENSE """\nVery long and boring legal text.\nBlah blah blah.\n"Oh look, a quote!"\n"""\n\n'
    'PARAMETER top_p 0.5\nTEMPLATE template1\nMESSAGE system """\nYou are a store greeter. Always respond with '
    '"Hello!".\n"""\nMESSAGE user Hey there!\n',
    '\nFROM foo\nSYSTEM ""\n',
])
def test_a_shown_modelfile_parses_back_to_the_same(text):
    from llamapy.store.models import ModelSettings, render_modelfile
    from llamapy.store.store import parse_name

    mf = parse(text)
    shown = render_modelfile(ModelSettings(parse_name("x"), "foo", mf.template, mf.system, mf.parameters,
                                           mf.messages, mf.licenses))
    back = parse(shown)
    assert (back.template, back.system, back.parameters, back.messages, back.licenses) == (
        mf.template, mf.system, mf.parameters, mf.messages, mf.licenses)
