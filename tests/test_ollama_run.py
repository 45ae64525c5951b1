"""`llamapy run NAME [PROMPT]` for a stored model, as `ollama run`: the Modelfile's options, the prompt its
TEMPLATE builds (byte for byte), stop strings through the generation core, and the `>>>` chat."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from modelfiles import tutorial_modelfile

from llamapy.chat.ollama_repl import OllamaChat, repl, run_options
from llamapy.cli import main
from llamapy.errors import LlamapyError
from llamapy.store.modelfile import parse
from llamapy.store.models import create_model, model_settings

ROOT = Path(__file__).resolve().parent.parent


def llama3(src: str, num_predict: int = 6) -> str:
    return tutorial_modelfile(src, f"PARAMETER num_predict {num_predict}\n")


# the default model's own chat format, as a Modelfile TEMPLATE over .Messages
CHATML = '''FROM {src}
TEMPLATE """{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
SYSTEM You are a helpful assistant.
PARAMETER temperature 0
PARAMETER num_predict {n}
'''
SYS = "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant. 你是一个乐于助人的助手。<|eot_id|>"


def user(text):
    return f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"


ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPY_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def create(name, text, tmp_path):
    create_model(name, parse(text, str(tmp_path)), log=lambda s: None)
    return model_settings(name)


def test_parameters_map_onto_the_generation_options():
    o = run_options({"temperature": 0.2, "num_keep": 24, "stop": ["<|eot_id|>", "x"], "top_k": 5, "num_ctx": 512,
                     "num_predict": 7, "repeat_penalty": 1.3, "mirostat": 2, "mirostat_tau": 3.0, "seed": 9,
                     "num_gpu": 99})
    assert (o.sampling.temp, o.sampling.top_k, o.sampling.repeat_penalty, o.sampling.mirostat) == (0.2, 5, 1.3, 2)
    assert (o.sampling.mirostat_tau, o.sampling.seed) == (3.0, 9)
    assert (o.n_ctx, o.n_predict, o.n_keep, o.stop) == (512, 7, 24, ["<|eot_id|>", "x"])
    d = run_options({})  # Ollama's defaults, not llama-cli's
    assert (d.sampling.temp, d.sampling.top_p, d.sampling.min_p, d.sampling.repeat_penalty) == (0.8, 0.9, 0.0, 1.0)
    assert (d.n_ctx, d.n_predict, d.n_keep, d.stop) == (4096, -1, 4, [])
    with pytest.raises(LlamapyError, match="num_predict -5"):
        run_options({"num_predict": -5})
    with pytest.raises(LlamapyError, match="mirostat"):
        run_options({"mirostat": 3})


def test_the_prompt_is_the_modelfiles_template_and_system(models, tmp_path, default_model):
    chat = OllamaChat(create("llama3-zh-inst", llama3(default_model), tmp_path))
    assert chat.options.stop == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert chat.generate_prompt_text("你好") == SYS + user("你好") + ASSISTANT
    # a chat: legacy template, one render per turn; earlier answers followed by the added {{ .Response }}
    chat.messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}]
    assert chat.chat_prompt_text() == SYS + user("Hi") + ASSISTANT + "Hello" + user("Bye") + ASSISTANT
    chat.set_system("Be brief.")
    chat.set_system("Be very brief.")  # replaces the one just set
    chat.messages.append({"role": "user", "content": "Again"})
    assert chat.messages[-2] == {"role": "system", "content": "Be very brief."}
    assert chat.chat_prompt_text().endswith(ASSISTANT + "Hello" + user("Bye") + ASSISTANT
                                            + "<|start_header_id|>system<|end_header_id|>\n\nBe very brief.<|eot_id|>"
                                            + user("Again") + ASSISTANT)
    chat.clear()
    assert chat.messages == [{"role": "system", "content": "Be very brief."}]
    chat.close()


def test_a_small_context_drops_the_oldest_turns_but_keeps_the_system(models, tmp_path, default_model):
    chat = OllamaChat(create("m", llama3(default_model) + "PARAMETER num_ctx 200\n", tmp_path))
    chat.messages = [{"role": r, "content": f"{r} turn {i} " * 4} for i in range(6) for r in ("user", "assistant")]
    chat.messages.append({"role": "user", "content": "last"})
    text = chat.chat_prompt_text()
    assert chat.count_tokens(text) <= 200 and text.startswith(SYS) and text.endswith(user("last") + ASSISTANT)
    assert "turn 0" not in text
    chat.close()


def test_stop_strings_end_the_answer(models, tmp_path, default_model):
    free = OllamaChat(create("free", CHATML.format(src=default_model, n=24), tmp_path), out=io.StringIO())
    full = free.answer("What is 2+2?")
    free.close()
    words = full.split()
    assert len(words) >= 4, full
    cut_at = words[3]
    stopped = OllamaChat(create("stopped", CHATML.format(src=default_model, n=24) + f"PARAMETER stop {cut_at}\n",
                                tmp_path), out=io.StringIO())
    got = stopped.answer("What is 2+2?")
    assert stopped.stop_reason == "word"
    assert got == full[:full.index(cut_at)] and cut_at not in got
    assert stopped.out.getvalue() == got  # what was shown is what was kept
    assert stopped.last_prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                   "What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    stopped.close()


def test_the_tutorial_modelfile_answers_with_its_system_prompt_and_stops_at_eot_id(models, tmp_path, default_model):
    """The tutorial's Modelfile (FROM the default model, which is not Llama 3 and knows <|eot_id|> only as text):
    asked to say a word followed by <|eot_id|>, the answer ends at that stop string, not at a token limit."""
    chat = OllamaChat(create("llama3-zh-inst", llama3(default_model, 40), tmp_path), out=io.StringIO())
    chat.set_parameter("temperature", ["0"])  # the tutorial's 0.2, made repeatable
    got = chat.answer('Say "你好<|eot_id|>"')
    assert chat.last_prompt == SYS + user('Say "你好<|eot_id|>"') + ASSISTANT
    assert (chat.stop_reason, chat.stop_word) == ("word", "<|eot_id|>")
    assert got.strip() == "你好" and "<|eot_id|>" not in chat.out.getvalue()
    chat.close()


def test_the_repl_commands(models, tmp_path, default_model):
    chat = OllamaChat(create("c", CHATML.format(src=default_model, n=4), tmp_path), out=io.StringIO())
    lines = ["/set parameter num_predict 3", "/set parameter stop a b", "/set parameter top_k x",
             '/set system """Be', 'brief."""', "/show system", "/show parameters", "/show template",
             '"""Hello', 'there"""', "/nosuch", "/show nosuch", "/?", "/clear", "Hi", "/bye", "never read"]
    out, err = io.StringIO(), io.StringIO()
    chat.out = out
    repl(chat, io.StringIO("\n".join(lines) + "\n"), out, err)
    shown = out.getvalue()
    assert "Set parameter 'num_predict' to '3'" in shown and "Set parameter 'stop' to 'a, b'" in shown
    assert "Couldn't set parameter: parameter top_k: 'x' is not an integer" in shown
    assert "Set system message." in shown and "Be\nbrief.\n" in shown
    assert "Model defined parameters:\n  temperature" in shown and "User defined parameters:\n  num_predict" in shown
    assert "<|im_start|>{{ .Role }}" in shown
    assert "Unknown command '/nosuch'. Type /? for help" in shown and "Unknown command '/show nosuch'" in shown
    assert "Cleared session context" in shown and "Available Commands:" in err.getvalue()
    assert chat.options.n_predict == 3 and chat.options.stop == ["a", "b"]
    # after /clear: the system message set, then the last exchange only; the multi-line one was before
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[0]["content"] == "Be\nbrief." and chat.messages[1]["content"] == "Hi"
    assert chat.last_prompt.startswith("<|im_start|>system\nBe\nbrief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    chat.close()


def run_cli(args, stdin=""):
    return subprocess.run([sys.executable, "-m", "llamapy", "run", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONIOENCODING="utf-8"), timeout=120)


def test_cli_one_answer_and_piped_stdin(models, tmp_path, default_model):
    mf = tmp_path / "Modelfile_llama3"
    mf.write_text(llama3(default_model), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["create", "llama3-zh-inst", "-f", str(mf)])
    assert e.value.code in (0, None)
    r = run_cli(["llama3-zh-inst", "你好", "--verbose"])
    assert r.returncode == 0, r.stderr
    want = (SYS + user("你好") + ASSISTANT).replace("\n", "\\n")
    assert f"prompt: {want}\n" in r.stderr and r.stdout.endswith("\n\n")
    r = run_cli(["llama3-zh-inst", "--verbose"], stdin="你好")  # stdin, not a terminal: one answer
    assert r.returncode == 0 and f"prompt: {want}\n" in r.stderr
    r = run_cli(["llama3-zh-inst", "there", "--verbose"], stdin="Hi")  # stdin first, then the words
    assert user("Hi there").replace("\n", "\\n") in r.stderr
    for args, msg in ((["nosuch", "x"], "no model of that name"), (["llama3-zh-inst", "-p", "x"], "unknown option")):
        r = run_cli(args)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr


def test_cli_chat_in_a_terminal(models, tmp_path, default_model):
    pexpect = pytest.importorskip("pexpect")
    mf = tmp_path / "Modelfile"
    mf.write_text(CHATML.format(src=default_model, n=4), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["create", "tiny-chat", "-f", str(mf)])
    child = pexpect.spawn(sys.executable, ["-m", "llamapy", "run", "tiny-chat"], cwd=ROOT, encoding="utf-8",
                          env=dict(os.environ, TERM="xterm", PYTHONIOENCODING="utf-8"), timeout=120)
    child.expect_exact(">>> ")
    child.sendline('"""Hello')
    child.expect_exact("... ")
    child.sendline('friend"""')
    child.expect_exact(">>> ")
    child.sendline("/show system")
    child.expect_exact("You are a helpful assistant.")
    child.expect_exact(">>> ")
    child.sendintr()  # Ctrl-C at the prompt: a hint, not the end
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
