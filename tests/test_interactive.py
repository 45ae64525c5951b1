"""The interactive loop (llama-cli's -i / -r / -ins / -cnv), two ways:

1. exact token-level checks against a scripted byte-level model (every multi-character reverse prompt
   crosses token boundaries, every non-ASCII character is split over tokens), fed through pipes;
2. real terminal sessions (pexpect) with the default model: `llamapy run -i -r`, `-ins`, `llamapy chat`,
   Ctrl-C, Ctrl-D.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import numpy as np
import pytest

from llamapy.chat.interactive import InteractiveOptions, run_interactive
from llamapy.chat.templates import ChatTemplate
from llamapy.util.escapes import process_escapes_text

# -- a scripted model ---------------------------------------------------------------------------------------------

SPECIALS = ["<s>", "</s>", "<|eot|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, EOT, IM_START, IM_END = range(5)
N_VOCAB = len(SPECIALS) + 256


class ByteTokenizer:
    """One token per UTF-8 byte, plus a few special tokens."""

    bos_id, eos_id, eot_id = BOS, EOS, EOT

    def __init__(self, add_bos: bool):
        self.add_bos = add_bos

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        ids = [BOS] if add_special and self.add_bos else []
        i = 0
        while i < len(text):
            for sid, s in enumerate(SPECIALS) if parse_special else ():
                if text.startswith(s, i):
                    ids.append(sid)
                    i += len(s)
                    break
            else:
                ids += [len(SPECIALS) + b for b in text[i].encode("utf-8")]
                i += 1
        return ids

    def token_to_piece(self, tid: int, special: bool = False) -> bytes:
        if tid < len(SPECIALS):
            return SPECIALS[tid].encode() if special else b""
        return bytes([tid - len(SPECIALS)])

    def is_eog(self, tid: int) -> bool:
        return tid in (EOS, EOT, IM_END)


class ScriptedLlama:
    """A model that answers by script: when new input leaves the context ending in one of `replies`' keys,
    it writes that reply (then EOS, unless the reply ends its turn itself); otherwise it writes EOS.

    A token fed back that is the model's own prediction continues the reply; anything else is new input."""

    def __init__(self, replies: dict[str, str], n_ctx: int = 4096, add_bos: bool = False, after_eval=None):
        self.tokenizer = ByteTokenizer(add_bos)
        self.replies = replies
        self.n_ctx = n_ctx
        self.n_vocab = N_VOCAB
        self.cache: list[int] = []
        self.pending: list[int] = []
        self.expected: int | None = None
        self.shifts: list[tuple[int, int, int]] = []
        self.evals = 0
        self.after_eval = after_eval

    def n_past(self, seq_id: int = 0) -> int:
        return len(self.cache)

    def tokens(self, seq_id: int = 0) -> list[int]:
        return list(self.cache)

    def text(self) -> str:
        return b"".join(self.tokenizer.token_to_piece(t, True) for t in self.cache).decode()

    def context_shift(self, seq_id: int, n_keep: int, n_discard: int) -> None:
        self.shifts.append((seq_id, n_keep, n_discard))
        del self.cache[n_keep : n_keep + n_discard]

    def eval(self, tokens: list[int], seq_id: int = 0) -> np.ndarray:
        assert len(self.cache) + len(tokens) <= self.n_ctx, "context overflow"
        self.cache += tokens
        self.evals += 1
        if tokens == [self.expected]:
            self.pending.pop(0)
        else:
            text = self.text()
            reply = next((r for k, r in self.replies.items() if text.endswith(k)), "")
            self.pending = self.tokenizer.encode(reply, add_special=False, parse_special=True)
        nxt = self.pending[0] if self.pending else EOS
        if not self.pending:
            self.pending = [EOS]
        self.expected = nxt
        logits = np.zeros(N_VOCAB, dtype=np.float32)
        logits[nxt] = 1.0
        if self.after_eval:
            self.after_eval(self)
        return logits


class Greedy:
    def __init__(self):
        self.histories: list[list[int]] = []

    def sample(self, logits, history):
        self.histories.append(list(history))
        return int(np.argmax(logits))


def session(llm, stdin: str = "", **kw):
    """Run the loop over pipes; returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    opts = InteractiveOptions(**kw)
    status = run_interactive(llm, Greedy(), opts, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


BOB = "A chat with Bob.\nUser: Hi.\nBob: Hello.\nUser:"


# -- token-level behaviour -------------------------------------------------------------------------------------------


def test_reverse_prompt_returns_control_and_input_is_answered():
    llm = ScriptedLlama({"Where?\n": " Paris is the capital. Ask more?\nUser:"})
    status, out, err = session(llm, "Where?\n", prompt=BOB, interactive=True, reverse_prompts=["User:"])
    assert status == 0
    # the prompt ends with the reverse prompt: the user speaks first; pipes echo nothing they type
    assert out == BOB + " Paris is the capital. Ask more?\nUser:" + "\n\n"
    # the last sampled token (":") was never evaluated: the session ended at the next prompt
    assert llm.text() == BOB + "Where?\n" + " Paris is the capital. Ask more?\nUser"
    assert "Reverse prompt: 'User:'" in err and "prompt eval time" in err


def test_reverse_prompt_found_across_tokens_and_special_token():
    # "User:" arrives as 5 byte tokens; the loop must hand control back right after ':'
    llm = ScriptedLlama({"Q\n": "One.\nUser: never printed"})
    _, out, _ = session(
        llm, "Q\n", prompt="Q:", interactive=True, interactive_first=True, reverse_prompts=["User:"]
    )
    assert out == "Q:One.\nUser:\n\n"
    # a reverse prompt that is a single special token matches by id even though it prints as nothing
    llm = ScriptedLlama({"Q\n": "Answer.<|eot|>more"})
    _, out, _ = session(
        llm, "Q\n", prompt="Go", interactive=True, interactive_first=True, reverse_prompts=["<|eot|>"]
    )
    assert out.startswith("GoAnswer.\n")


def test_end_of_generation_queues_the_first_reverse_prompt():
    llm = ScriptedLlama({"a\n": "Sure.", "b\n": "Bye."})
    _, out, _ = session(llm, "a\nb\n", prompt="User:", interactive=True, reverse_prompts=["User:", "Q:"])
    assert out == "User:Sure.\nBye.\n\n\n"
    assert llm.text() == "User:a\nSure.</s>User:b\nBye."


def test_prefix_suffix_bos_and_escapes():
    llm = ScriptedLlama({"[/INST]": "ok"}, add_bos=True)
    _, out, err = session(
        llm,
        "hi\n",
        prompt="[INST] <<SYS>>\\nBe nice\\n<</SYS>> [/INST]",
        interactive_first=True,
        in_prefix_bos=True,
        in_prefix=" [INST] ",
        in_suffix=" [/INST]",
    )
    assert llm.text() == "<s>[INST] <<SYS>>\nBe nice\n<</SYS>> [/INST]<s> [INST] hi\n [/INST]ok"
    # prefix and suffix are shown around the (terminal-echoed) input; BOS prints as nothing
    assert out == "[INST] <<SYS>>\nBe nice\n<</SYS>> [/INST] [INST]  [/INST]ok\n [INST] \n\n"
    assert "Input prefix with BOS" in err and "Input prefix: ' [INST] '" in err


def test_llama3_style_prefix_suffix_with_special_tokens():
    llm = ScriptedLlama({"\n\n": "fine<|eot|>"})
    session(
        llm,
        "how are you\n",
        prompt="sys",
        interactive_first=True,
        reverse_prompts=["<|eot|>"],
        in_prefix="<|im_start|>user\\n\\n",
        in_suffix="<|eot|><|im_start|>assistant\\n\\n",
    )
    assert llm.text() == "sys<|im_start|>user\n\nhow are you\n<|eot|><|im_start|>assistant\n\nfine"
    # the special tokens in prefix and suffix are single tokens
    assert llm.tokens()[3] == IM_START and llm.tokens().count(EOT) == 1


def test_no_escape_keeps_backslashes():
    llm = ScriptedLlama({"b\n": "x"})
    session(llm, "a\\tb\n", prompt="p\\n", interactive_first=True, escape=False)
    assert llm.text() == "p\\na\\tb\nx"


def test_process_escapes():
    assert process_escapes_text(r"a\nb\tc\\d\'e\"f\x41\q\x4") == "a\nb\tc\\d'e\"fA\\q\\x4"
    assert process_escapes_text("end\\") == "end\\"
    # \xHH writes a byte, as the reference's std::string does: three of them make one Chinese character
    assert process_escapes_text(r"\xe4\xb8\xad文") == "中文"


def test_multiline_and_slash():
    llm = ScriptedLlama({"two\n": "r1", "three": "r2"})
    session(llm, "one\\\ntwo\nthree/\n", prompt="P", interactive_first=True)
    assert llm.text() == "Pone\ntwo\nr1</s>threer2"
    llm = ScriptedLlama({"two\n": "r1"})
    session(llm, "one\ntwo\\\n", prompt="P", interactive_first=True, multiline_input=True)
    assert llm.text() == "Pone\ntwo\nr1"


def test_empty_line_hands_control_back():
    llm = ScriptedLlama({"P": "first part. second part."})
    # control comes back after every n_predict tokens in interactive mode; an empty line lets the model go on
    _, out, _ = session(llm, "\n\n", prompt="P", interactive=True, n_predict=6)
    assert out == "Pfirst part. second\n\n"
    assert llm.text() == "Pfirst part. second"


def test_instruct_mode_framing():
    llm = ScriptedLlama({"2+2?\n\n\n### Response:\n\n": "Four.", "3+2?\n\n\n### Response:\n\n": "Five."})
    _, out, err = session(llm, "2+2?\n3+2?\n", prompt="Below is an instruction.", instruct=True)
    assert out.startswith("Below is an instruction.\n> Four.\n\n> Five.\n\n> ")
    assert llm.text() == (
        "Below is an instruction.\n\n### Instruction:\n\n2+2?\n\n\n### Response:\n\nFour.</s>"
        "### Instruction:\n\n3+2?\n\n\n### Response:\n\nFive."
    )
    assert "Reverse prompt: '### Instruction:\n\n'" in err


def test_conversation_mode_uses_the_chat_template():
    tpl = ChatTemplate.from_name("chatml")
    llm = ScriptedLlama(
        {
            "Hi\n<|im_end|>\n<|im_start|>assistant\n": "Hello!<|im_end|>",
            "?\n<|im_end|>\n<|im_start|>assistant\n": "Fine.<|im_end|>",
        }
    )
    _, out, err = session(llm, "Hi\nHow are you?\n", conversation=True, chat_template=tpl)
    assert llm.text() == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "\n<|im_start|>user\nHi\n<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>"
        "\n<|im_start|>user\nHow are you?\n<|im_end|>\n<|im_start|>assistant\nFine."
    )
    assert out == "system\nYou are a helpful assistant\n\n> Hello!\n\n> Fine.\n\n> \n\n"
    assert "Using default system message" in err and "built-in 'chatml'" in err


def test_conversation_system_prompt_and_first_message():
    tpl = ChatTemplate.from_name("llama3")
    llm = ScriptedLlama({"\n\n": "Yes.<|eot|>"})
    session(llm, "", conversation=True, chat_template=tpl, system_prompt="Be terse.", prompt="Ready?")
    assert llm.text().startswith(
        "<|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nReady?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYes."
    )


def test_ctrl_c_interrupts_generation_and_inserts_end_of_turn():
    def interrupt(llm):
        if llm.evals == 5:
            os.kill(os.getpid(), signal.SIGINT)

    tpl = ChatTemplate.from_name("chatml")
    llm = ScriptedLlama(
        {
            "go\n<|im_end|>\n<|im_start|>assistant\n": "abcdefghijklmnop<|im_end|>",
            "next\n<|im_end|>\n<|im_start|>assistant\n": "ok<|im_end|>",
        },
        after_eval=interrupt,
    )
    status, out, _ = session(llm, "go\nnext\n", conversation=True, chat_template=tpl)
    assert status == 0
    # the interrupted answer is closed with the vocabulary's end-of-turn token before the next user turn
    assert llm.text().endswith(
        "<|im_start|>user\ngo\n<|im_end|>\n<|im_start|>assistant\nabc"
        "<|eot|>\n<|im_start|>user\nnext\n<|im_end|>\n<|im_start|>assistant\nok"
    )
    assert out.endswith("\n> abc\n> ok\n\n> \n\n")


def test_context_shift_keeps_the_start():
    reply = "".join(chr(ord("a") + i % 26) for i in range(100))
    llm = ScriptedLlama({"rest": reply}, n_ctx=48)
    _, out, _ = session(llm, "", prompt="KEEP-rest", interactive=True, n_keep=4, n_predict=100)
    assert llm.shifts and all(s[:2] == (0, 4) for s in llm.shifts)
    assert out == "KEEP-rest" + reply + "\n\n"
    assert llm.text().startswith("KEEP") and llm.text().endswith(reply[-20:])


def test_non_interactive_reverse_prompt_and_end_of_text():
    llm = ScriptedLlama({"A:": "It is 4.\nQ: next"})
    status, out, _ = session(llm, prompt="Q: 2+2?\nA:", reverse_prompts=["Q:"])
    assert status == 0 and out == "Q: 2+2?\nA:It is 4.\nQ:\n\n"
    llm = ScriptedLlama({"Go.": "Done."})
    _, out, _ = session(llm, prompt="Go.")
    assert out == "Go.Done. [end of text]\n\n\n"


def test_utf8_split_over_tokens():
    llm = ScriptedLlama({"？\n": "你好，世界！\nUser:"})
    _, out, _ = session(llm, "你好吗？\n", prompt="User:", interactive=True, reverse_prompts=["User:"])
    assert out == "User:你好，世界！\nUser:\n\n"
    assert llm.text() == "User:你好吗？\n你好，世界！\nUser"


def test_penalty_history_restarts_at_each_turn():
    sampler = Greedy()
    llm = ScriptedLlama({"x\n": "ab", "y\n": "c"})
    opts = InteractiveOptions(prompt="P", interactive_first=True)
    run_interactive(
        llm, sampler, opts, stdin=io.StringIO("x\ny\n"), stdout=io.StringIO(), stderr=io.StringIO()
    )
    enc = llm.tokenizer.encode
    assert sampler.histories[0] == enc("x\n", add_special=False)
    assert sampler.histories[2] == enc("x\nab", add_special=False)  # then EOS, then the user's turn
    assert sampler.histories[3] == enc("y\n", add_special=False)


def test_empty_prompt_without_bos_is_an_error():
    from llamapy.errors import LlamapyError

    with pytest.raises(LlamapyError, match="prompt is empty"):
        session(ScriptedLlama({}), "", prompt="", interactive=True)
    with pytest.raises(LlamapyError, match="too long"):
        session(ScriptedLlama({}, n_ctx=16), "", prompt="x" * 20, interactive=True)


def test_n_predict_is_a_budget_per_answer():
    # a typed line longer than -n still gets its answer (llama.cpp would subtract it from the budget)
    llm = ScriptedLlama({"?\n": "Yes, it is."})
    _, out, _ = session(
        llm, "is this a rather long question?\n", prompt=">", interactive_first=True, n_predict=4
    )
    assert out == ">Yes,\n\n"


# -- real terminal sessions with the default model ---------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YELLOW, GREEN = "\x1b[33m", "\x1b[1m\x1b[32m"


def spawn(default_model, *args):
    """`llamapy ARGS` in a pseudo-terminal, greedy and with a small context, from the repository root."""
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, TERM="xterm", PYTHONIOENCODING="utf-8")
    argv = ["-m", "llamapy", *args, "-m", default_model, "--temp", "0", "-c", "512"]
    child = pexpect.spawn(
        sys.executable, argv, cwd=ROOT, env=env, encoding="utf-8", timeout=120, dimensions=(50, 300)
    )
    return pexpect, child


def finish(pexpect, child) -> str:
    """Ctrl-D at the prompt: the session must end by itself with status 0 and print the timing summary.

    A Ctrl-D typed ahead, before the prompt's line editor has taken the terminal, can be lost in the mode
    switch (as in any readline program), so it is typed again while the session is still alive."""
    for _ in range(12):
        child.sendeof()
        if child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=10) == 0:
            break
        if not child.isalive():
            break
    else:
        raise AssertionError(f"Ctrl-D did not end the session: {child.before[-300:]!r}")
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


def test_tty_reverse_prompt_returns_control_and_input_is_answered(default_model):
    pexpect, child = spawn(
        default_model,
        "run",
        "-n",
        "64",
        "--repeat_penalty",
        "1.0",
        "--color",
        "-i",
        "-r",
        "User:",
        "-f",
        "prompts/chat-with-bob.txt",
    )
    # the prompt, in yellow, ends with the reverse prompt: the user has the turn at once
    child.expect_exact(YELLOW + "This is a transcript")
    child.expect_exact("from east to west.\r\nUser:")
    child.sendline(" What is the capital of France?")
    child.expect_exact(GREEN + " What is the capital of France?")  # the terminal's echo, in green
    child.expect_exact("Paris")
    child.expect_exact("\r\nUser:")  # the model wrote the reverse prompt: our turn again
    child.sendline(" Thanks, Bob.")
    child.expect_exact("\r\nUser:")
    rest = finish(pexpect, child)
    assert "total time" in rest


def test_tty_chat_ctrl_c_and_second_ctrl_c(default_model):
    pexpect, child = spawn(default_model, "chat", "--color")
    child.expect_exact("\r\n> ")
    child.sendline("What is the capital of France?")
    child.expect_exact("Paris")
    child.expect_exact("\r\n> ")  # the answer ended (end-of-turn token): the user's turn
    child.sendline("Write a long story about a dragon who learns to fly.")
    child.expect_exact("Once upon a time")
    child.sendintr()  # Ctrl-C while the model writes: back to the prompt
    child.expect_exact("\r\n> ")
    child.sendline("Now tell me what 2+2 is.")
    child.expect_exact("4")
    child.expect_exact("\r\n> ")
    child.sendintr()  # Ctrl-C at the prompt: the session ends, cleanly
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "total time" in child.before


def test_tty_instruct_mode(default_model):
    pexpect, child = spawn(default_model, "run", "--color", "-f", "prompts/alpaca.txt", "-ins", "-n", "48")
    child.expect_exact("fully and correctly.")
    child.expect_exact("\r\n> ")
    child.sendline("List three primary colors.")
    child.expect("[Rr]ed")
    child.expect_exact("\r\n> ")  # the answer ended (end of text or "### Instruction:"): our turn
    finish(pexpect, child)


def run_piped(model: str, *args: str, input: str):
    """`llamapy run -m model --temp 0 args`, its stdin a pipe holding `input`."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "llamapy", "run", "-m", model, "--temp", "0", *args], check=False,
                          input=input, capture_output=True, encoding="utf-8", cwd=ROOT, timeout=300)


def test_piped_stdin_no_color_and_chinese(default_model):
    prompt = "对话记录。\n用户：你好！\n助手：你好！有什么可以帮你？\n用户："
    r = run_piped(default_model, "-c", "512", "-n", "16", "--color", "-i", "-r", "用户：", "-p", prompt,
                  input="请介绍一下你自己。\n")
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # not a terminal: no color codes even with --color
    assert r.stdout.startswith(prompt)  # every character whole, although byte-level tokens split them
    assert "\ufffd" not in r.stdout[: len(prompt)]
    assert "total time" in r.stderr


def test_context_shift_keeps_a_long_session_going(default_model):
    import re

    # 100 tokens through a 64-token context: the context shifts (keeping the prompt) instead of failing
    r = run_piped(default_model, "-c", "64", "-n", "100", "--ignore-eos", "--keep", "-1", "-i", "-p",
                  "Once upon a time", input="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time")
    assert re.search(r"eval time = .* /\s+100 runs", r.stderr), r.stderr


@pytest.mark.parametrize("verb", [["chat"], ["run", "-i", "-p", "hi"]])
def test_closed_stdin_is_the_end_of_input(default_model, verb):
    """`chat` / `run -i` with stdin closed (`0<&-`) end as at Ctrl+D: status 0, no traceback."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "llamapy", *verb, "-m", default_model, "-n", "4", "--temp", "0"],
                       preexec_fn=lambda: os.close(0), capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in r.stderr
